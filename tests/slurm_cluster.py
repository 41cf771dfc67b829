"""A real one-machine Slurm cluster for the tests (no mocks, no systemd).

munged, slurmctld and two slurmd run as plain processes with every state, spool, log,
socket and PID file under one temp dir, and are stopped by PID at the end. Debian's
Slurm is built with multiple-slurmd support, so this machine is two nodes, n1 and n2,
each its own slurmd on its own port at 127.0.0.1. Partitions: `debug` (n1 and n2, the
default) and `solo` (n1 only: a second job there waits for the first). Each node has
one CPU in Slurm's eyes, so one job fills a node; with task/none nothing binds the
job's processes, which still use every core of the machine.

No slurmdbd: `JobCompType=jobcomp/filetxt` lets `sacct -c` report finished jobs, and
the controller keeps them for MinJobAge (600 s). Every Slurm command needs SLURM_CONF
(the `slurm` fixture sets it); an SSH login node gets it from sshd's SetEnv.

Packages: slurmctld slurmd slurm-client munge (scripts/system-deps.sh). Needs root
(slurmd starts jobs as their users).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from sshd import free_port

SBIN = Path("/usr/sbin")
NODES = ("n1", "n2")


def slurm_available() -> bool:
    return (all((SBIN / d).exists() for d in ("munged", "slurmctld", "slurmd")) and shutil.which("sbatch") is not None
            and os.geteuid() == 0)


requires_slurm = pytest.mark.skipif(
    not slurm_available(),
    reason="needs root and Debian's slurmctld slurmd slurm-client munge (scripts/system-deps.sh installs them)",
)


@dataclass
class SlurmCluster:
    root: Path

    @property
    def conf(self) -> Path:
        return self.root / "slurm.conf"

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def run(self, *argv: str, check: bool = True, timeout: float = 60) -> str:
        """A Slurm command against this cluster (outside brightrun); its stdout."""
        proc = subprocess.run(list(argv), env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)}: {proc.stderr.strip()}")
        return proc.stdout

    def job(self, slurm_job_id: str) -> dict[str, str]:
        """`scontrol show job` as a dict (JobState, Reason, Restarts, ExitCode, ...)."""
        line = self.run("scontrol", "show", "job", "-o", slurm_job_id)
        return dict(item.split("=", 1) for item in line.split() if "=" in item)

    def wait_state(self, slurm_job_id: str, states: tuple[str, ...], timeout: float = 120) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while True:
            job = self.job(slurm_job_id)
            if job.get("JobState") in states:
                return job
            if time.monotonic() > deadline:
                raise AssertionError(f"Slurm job {slurm_job_id} is {job.get('JobState')}, not {states}, after {timeout} s")
            time.sleep(0.5)

    def nodes_idle(self) -> bool:
        states = self.run("sinfo", "-h", "-N", "-p", "debug", "-o", "%T", check=False).split()
        return len(states) == len(NODES) and all(s == "idle" for s in states)

    def wait_idle(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not self.nodes_idle():
            if time.monotonic() > deadline:
                raise RuntimeError(f"nodes not idle after {timeout} s: {self.run('sinfo', '-N', check=False)}")
            time.sleep(0.3)

    def cancel_all(self) -> None:
        """End every job (a failed test must not leave a node busy for the next one)."""
        ids = self.run("squeue", "-h", "-o", "%i", check=False).split()
        if ids:
            self.run("scancel", *ids, check=False)
        self.wait_idle(timeout=60)

    def log_tail(self, lines: int = 30) -> str:
        parts = []
        for log in sorted((self.root / "log").glob("*.log")):
            parts.append(f"== {log.name}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-lines:]))
        return "\n".join(parts)

    def stop_controller(self) -> None:
        _terminate(_read_pid(self.root / "run" / "slurmctld.pid"))

    def start_controller(self) -> None:
        """slurmctld again, from its saved state (jobs and nodes as they were)."""
        subprocess.run([str(SBIN / "slurmctld")], env=self.env, check=True, capture_output=True, timeout=30)

    def stop(self) -> None:
        """Stop the daemons by their PID files, then whatever of this cluster's jobs is left
        (slurmstepd and job processes carry this cluster's SLURM_CONF in their environment)."""
        for pid_file in [*(self.root / "run").glob("slurmd-*.pid"), self.root / "run" / "slurmctld.pid",
                         self.root / "munge" / "munged.pid"]:
            _terminate(_read_pid(pid_file))
        needle = f"SLURM_CONF={self.conf}".encode()
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and int(entry.name) != os.getpid():
                try:
                    if needle in (entry / "environ").read_bytes().split(b"\0"):
                        os.kill(int(entry.name), signal.SIGKILL)
                except OSError:
                    pass


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _terminate(pid: int | None, timeout: float = 10) -> None:
    if pid is None:
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _config(root: Path, ctld_port: int, node_ports: dict[str, int]) -> str:
    nodes = "\n".join(
        f"NodeName={n} NodeAddr=127.0.0.1 NodeHostname=localhost CPUs=1 Boards=1 SocketsPerBoard=1 CoresPerSocket=1 "
        f"ThreadsPerCore=1 RealMemory=1000 Port={port} State=UNKNOWN"
        for n, port in node_ports.items()
    )
    return f"""ClusterName=brtest
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={root}/munge/munged.socket
CredType=cred/munge
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool/%n
SlurmctldPidFile={root}/run/slurmctld.pid
SlurmdPidFile={root}/run/slurmd-%n.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
JobRequeue=1
MinJobAge=600
KillWait=10
MailProg=/bin/true
ReturnToService=2
MpiDefault=none
JobCompType=jobcomp/filetxt
JobCompLoc={root}/log/jobcomp.txt
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
{nodes}
PartitionName=debug Nodes={','.join(node_ports)} Default=YES MaxTime=INFINITE State=UP
PartitionName=solo Nodes={next(iter(node_ports))} MaxTime=INFINITE State=UP
"""


def start_cluster(root: Path) -> SlurmCluster:
    """Configure and start munged, slurmctld and one slurmd per node; wait until the nodes are idle."""
    for sub in ("munge", "state", "run", "log", *(f"spool/{n}" for n in NODES)):
        (root / sub).mkdir(parents=True, exist_ok=True)
    os.chmod(root / "munge", 0o700)
    key = root / "munge" / "munge.key"
    key.write_bytes(os.urandom(128))  # a key of its own: nothing shared with the machine's munge
    os.chmod(key, 0o600)
    cluster = SlurmCluster(root)
    cluster.conf.write_text(_config(root, free_port(), {n: free_port() for n in NODES}))
    try:
        # munged refuses root unless forced; its socket is private to this cluster.
        subprocess.run([str(SBIN / "munged"), "--force", f"--socket={root}/munge/munged.socket", f"--key-file={key}",
                        f"--log-file={root}/log/munged.log", f"--pid-file={root}/munge/munged.pid",
                        f"--seed-file={root}/munge/munged.seed"], check=True, capture_output=True, timeout=30)
        subprocess.run([str(SBIN / "slurmctld")], env=cluster.env, check=True, capture_output=True, timeout=30)
        for node in NODES:
            subprocess.run([str(SBIN / "slurmd"), "-N", node], env=cluster.env, check=True, capture_output=True, timeout=30)
        cluster.wait_idle(timeout=30)
    except BaseException as exc:
        log = cluster.log_tail()
        cluster.stop()
        if isinstance(exc, subprocess.CalledProcessError):
            raise RuntimeError(f"{exc.cmd[0]} failed: {exc.stderr.decode(errors='replace')}\n{log}") from exc
        raise
    return cluster


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    cluster = start_cluster(tmp_path_factory.mktemp("slurm"))
    yield cluster
    cluster.stop()


@pytest.fixture
def slurm(slurm_cluster, monkeypatch):
    """The cluster, with SLURM_CONF set for brightrun's Slurm commands; every job is
    ended (and the nodes idle) after the test."""
    monkeypatch.setenv("SLURM_CONF", str(slurm_cluster.conf))
    yield slurm_cluster
    slurm_cluster.cancel_all()
