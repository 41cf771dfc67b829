"""A real OpenSSH server on 127.0.0.1 for the SSH host tests (no mocks).

Each server gets its own directory with a host key, an authorized client key, a
known_hosts file and an ssh client config pointing at them, so nothing touches the
user's ~/.ssh. brightrun is pointed at that client config through `ssh_config` in the
test home's config.toml (`write_brightrun_config`).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


def sshd_available() -> bool:
    return os.path.exists(SSHD) and shutil.which("ssh") is not None and shutil.which("rsync") is not None


requires_sshd = pytest.mark.skipif(
    not sshd_available(), reason="needs openssh-server, openssh-client and rsync (scripts/system-deps.sh installs them)"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "brightrun-test", "-f", str(path)], check=True)


@dataclass
class SSHServer:
    root: Path
    port: int
    user: str
    client_key: Path
    known_hosts: Path
    client_config: Path
    proc: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def target(self) -> str:
        """What `hosts add --ssh` takes."""
        return f"{self.user}@127.0.0.1:{self.port}"

    def start(self) -> None:
        if os.geteuid() == 0:  # privilege separation needs it; a non-root sshd does without
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        log = open(self.root / "sshd.log", "ab")
        self.proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(self.root / "sshd_config")], stdout=log, stderr=log)
        log.close()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sshd exited: {(self.root / 'sshd.log').read_text()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("sshd did not start listening within 30 s")

    def session_pids(self) -> list[int]:
        """The per-connection sshd processes (children of the listener)."""
        import psutil

        if self.proc is None:
            return []
        try:
            return [c.pid for c in psutil.Process(self.proc.pid).children(recursive=False)]
        except psutil.NoSuchProcess:
            return []

    def stop(self) -> None:
        """Kill the listener and every live connection, as a crashed or rebooted sshd would."""
        import psutil

        if self.proc is None:
            return
        for pid in self.session_pids():
            try:
                psutil.Process(pid).kill()
            except psutil.NoSuchProcess:
                pass
        self.proc.kill()
        self.proc.wait(timeout=30)
        self.proc = None

    def ssh(self, *remote: str, timeout: float = 60) -> subprocess.CompletedProcess:
        """Run a command on the server with the test client key (outside brightrun)."""
        return subprocess.run(
            ["ssh", "-F", str(self.client_config), "-p", str(self.port), "-l", self.user, "127.0.0.1", *remote],
            capture_output=True, text=True, timeout=timeout,
        )


def start_sshd(root: Path, *, known: bool = True, extra_config: tuple[str, ...] = ()) -> SSHServer:
    """Start sshd on a free 127.0.0.1 port. `known=False` leaves known_hosts empty
    (first contact: the host key is unknown to the client); `extra_config` adds
    sshd_config lines (e.g. SetEnv for the sessions)."""
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o700)
    _keygen(root / "host_key")
    _keygen(root / "client_key")
    (root / "authorized_keys").write_text((root / "client_key.pub").read_text())
    port = free_port()
    user = os.environ.get("USER") or __import__("getpass").getuser()
    (root / "sshd_config").write_text(
        "\n".join(
            [
                f"Port {port}",
                "ListenAddress 127.0.0.1",
                f"HostKey {root / 'host_key'}",
                f"PidFile {root / 'sshd.pid'}",
                f"AuthorizedKeysFile {root / 'authorized_keys'}",
                # The temp dir is below world-writable /tmp.
                "StrictModes no",
                "PubkeyAuthentication yes",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "UsePAM no",
                "PermitRootLogin prohibit-password",
                "MaxStartups 100:30:200",
                "MaxSessions 100",
                "LogLevel ERROR",
                *extra_config,
                "",
            ]
        )
    )
    host_pub = (root / "host_key.pub").read_text().split()
    (root / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_pub[0]} {host_pub[1]}\n" if known else "")
    (root / "ssh_config").write_text(
        "\n".join(
            [
                "Host *",
                f"  UserKnownHostsFile {root / 'known_hosts'}",
                "  GlobalKnownHostsFile /dev/null",
                f"  IdentityFile {root / 'client_key'}",
                "  IdentitiesOnly yes",
                "  BatchMode yes",
                "",
            ]
        )
    )
    server = SSHServer(root, port, user, root / "client_key", root / "known_hosts", root / "ssh_config")
    server.start()
    return server


def write_brightrun_config(home: Path, server: SSHServer) -> None:
    """Point brightrun's ssh at the server's client config (known_hosts, key)."""
    (home / "config.toml").write_text(f'ssh_config = "{server.client_config}"\n')


@pytest.fixture
def sshd(tmp_path_factory, brightrun_home):
    """A running sshd with its client config wired into the test's brightrun home."""
    server = start_sshd(tmp_path_factory.mktemp("sshd"))
    write_brightrun_config(brightrun_home, server)
    yield server
    server.stop()


# -- a self-contained trainer run dir (what the supervisor hands a runner) -------------------

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "support_conversations.jsonl"


def make_run_dir(ws, job_id: str, *, epochs: int = 1, n_train: int = 48, n_val: int = 8, batch_size: int = 8) -> Path:
    """runs/<job_id>/ with train/validation splits from the shipped example and a spec
    for builtin:tiny on the CPU (the tiny preset's values)."""
    import json

    lines = EXAMPLES.read_text(encoding="utf-8").splitlines()
    run_dir = ws.runs_dir / job_id
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "train.jsonl").write_text("\n".join(lines[:n_train]) + "\n")
    (run_dir / "validation.jsonl").write_text("\n".join(lines[n_train:n_train + n_val]) + "\n")
    spec = {
        "version": 1, "job_id": job_id, "base_model": "builtin:tiny",
        "train_file": "train.jsonl", "validation_file": "validation.jsonl", "output_dir": ".", "seed": 42,
        "hyperparameters": {
            "learning_rate": 1e-3, "batch_size": batch_size, "num_epochs": epochs, "lora_rank": 8, "lora_alpha": 16,
            "lora_dropout": 0.0, "warmup_steps": 2, "weight_decay": 0.0, "max_seq_length": 256,
            "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"], "gradient_accumulation_steps": 1,
            "lr_scheduler": "cosine", "max_grad_norm": 1.0, "packing": True, "gradient_checkpointing": False,
            "assistant_only_loss": True, "precision": "fp32",
        },
        "logging_steps": 1, "save_steps": 0, "max_steps": None, "resume": False,
    }
    (run_dir / "spec.json").write_text(json.dumps(spec, indent=2))
    return run_dir


def seed_job(ws) -> str:
    """A dataset + job row, so metric points can be ingested into the registry."""
    from brightrun_cli.registry.tables import Dataset, TrainingJob

    with ws.registry.write() as session:
        dataset = Dataset(name=f"ssh-bench-{time.time_ns()}", storage_path=f"datasets/{time.time_ns()}/data.jsonl",
                          file_name="data.jsonl", file_size=0, status="ready", training_ready=True)
        session.add(dataset)
        session.flush()
        job = TrainingJob(dataset_id=dataset.id, preset_id="tiny", base_model="builtin:tiny", hyperparameters={},
                          gpu_config={"type": "cpu", "count": 1}, total_epochs=1, estimated_total_cost=0.0)
        session.add(job)
        session.flush()
        return job.id
