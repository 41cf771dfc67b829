"""Starting supervisors, and telling whether one is alive.

A supervisor is `python -m brightrun_cli.supervisor JOB --marker M --home H` in a session
of its own (it outlives the terminal that submitted the job). Liveness, after SkyPilot's
job_lib: a started job is alive while a process with its `supervisor_pid` exists and
carries its `supervisor_marker` on its command line, which pid reuse cannot fake.

A *standby* (`--standby`) is a supervisor started before its job exists, so that its
imports overlap the `train` command's validation (`standing_by`). The queue claims the
new job with the standby's marker and hands it the id through a pipe.

Imports stay light here (stdlib, the registry's read side): every command may start one.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from brightrun_cli import lifecycle
from brightrun_cli.home import ensure_private_dir
from brightrun_cli.registry import jobs as job_rows
from brightrun_cli.registry.engine import DatabaseError, peek
from brightrun_cli.registry.rows import JobRow
from brightrun_cli.registry.timeutil import utcnow

if TYPE_CHECKING:
    import subprocess

    from brightrun_cli.workspace import Workspace

SUPERVISOR_MODULE = "brightrun_cli.supervisor"
CLAIM_GRACE_S = 30.0  # a claimed job may take this long to get its supervisor's pid recorded


def new_marker() -> str:
    """The token a supervisor carries on its command line: pid reuse cannot fake it."""
    import secrets  # here, not at the top: ~7 ms (hmac, random) of every command's start, used only to launch

    return "brsup-" + secrets.token_hex(8)


def supervisor_env() -> dict[str, str]:
    """The supervisor must run this very brightrun, whatever the caller's PYTHONPATH says."""
    import brightrun_cli

    package_root = str(Path(brightrun_cli.__file__).resolve().parents[1])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([package_root, *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))])
    return env


def open_supervisor_log(ws: "Workspace", job_id: str) -> tuple[Path, int]:
    """The job's run dir (created, private) and a descriptor appending to its supervisor.log:
    a supervisor's stdout and stderr, whether spawned for the job or a standby handed it."""
    run_dir = ensure_private_dir(ws.runs_dir / job_id)
    return run_dir, os.open(run_dir / "supervisor.log", os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o600)


def record_pid(ws: "Workspace", job_id: str, marker: str, pid: int) -> None:
    with ws.registry.write() as tx:
        job_rows.record_pid(tx, job_id, marker, pid)


def spawn_supervisor(ws: "Workspace", job_id: str, marker: str) -> int:
    """Start the detached supervisor of a claimed job; its pid. OSError when it cannot start."""
    import subprocess  # here and in start_standby: every command imports this module (the queue's check), few launch

    argv = [sys.executable, "-m", SUPERVISOR_MODULE, job_id, "--marker", marker, "--home", str(ws.home)]
    run_dir, fd = open_supervisor_log(ws, job_id)
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=fd, stderr=fd, cwd=run_dir,
                                env=supervisor_env(), start_new_session=True, close_fds=True)
    finally:
        os.close(fd)
    reap_later(proc, job_id)
    record_pid(ws, job_id, marker, proc.pid)
    return proc.pid


def reap_later(proc: subprocess.Popen, name: str) -> None:
    """Reap it when it ends, so a long-lived caller (tests, `train` following) keeps no zombie."""
    threading.Thread(target=proc.wait, name=f"reap-{name}", daemon=True).start()


def supervisor_alive(pid: int | None, marker: str | None) -> bool:
    if not pid or not marker:
        return False
    import psutil

    try:
        proc = psutil.Process(pid)
        for _ in range(50):
            if proc.status() == psutil.STATUS_ZOMBIE:
                return False
            cmdline = proc.cmdline()
            if cmdline:
                return marker in cmdline
            # an empty command line is a process in the middle of exec: Popen returns once the
            # exec is past its point of no return, a moment before the kernel sets the new argv
            time.sleep(0.01)
        return False
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False


def signal_supervisor(pid: int, marker: str, sig: int = signal.SIGTERM) -> bool:
    """Signal the supervisor only if `pid` is still that supervisor; returns whether it was sent."""
    if not supervisor_alive(pid, marker):
        return False
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return False
    return True


def claim_is_stale(job: JobRow) -> bool:
    """A claimed job whose supervisor never recorded its pid within the grace period."""
    return job.heartbeat_at is None or utcnow() - job.heartbeat_at > timedelta(seconds=CLAIM_GRACE_S)


def is_lost(job: JobRow) -> bool:
    """A started job whose supervisor is gone (its pid ended or is someone else's), or never came."""
    return not supervisor_alive(job.supervisor_pid, job.supervisor_marker) and (job.supervisor_pid is not None or claim_is_stale(job))


# ---------------------------------------------------------------------------- the standby


class Standby:
    """A supervisor started before its job exists, so that its imports (SQLAlchemy, pydantic,
    the runners: ~0.5 s) overlap the command's validation instead of following it.

    It waits on a pipe for the id of the job it is to supervise; the end of the pipe
    without an id (bad input, a dry run, a job that queues behind others, the command
    killed) makes it exit without a trace. Its marker is on its command line from the
    start, and the queue claims the job with that marker, so liveness checks work as for
    any other supervisor."""

    def __init__(self, proc: subprocess.Popen, marker: str):
        self.proc = proc
        self.marker = marker
        reap_later(proc, "standby")

    def assign(self, ws: "Workspace", job_id: str) -> bool:
        """Hand it the claimed job; False when it is gone (the caller then spawns a supervisor)."""
        if self.proc.stdin.closed:
            return False
        try:
            self.proc.stdin.write(f"{job_id}\n".encode())
            self.proc.stdin.close()
        except OSError:  # it died (its own start-up failed): the queue starts a fresh one
            return False
        record_pid(ws, job_id, self.marker, self.proc.pid)
        return True

    def release(self) -> None:
        """Not needed after all: closing its pipe makes it exit."""
        with contextlib.suppress(OSError):
            self.proc.stdin.close()


def has_active_jobs(home: Path) -> bool | None:
    """Whether the registry has a queued or started job (without opening or migrating it);
    None without a usable registry (the command itself reports that)."""
    with peek(home) as conn:
        if conn is None:
            return None
        try:
            return job_rows.any_in(conn, lifecycle.ACTIVE)
        except DatabaseError:
            return None


def needs_kick(home: Path) -> bool:
    """Whether the queue has something to do: a queued job to place, or a started job whose
    supervisor is gone. A plain read: what every command checks on its way in."""
    with peek(home) as conn:
        if conn is None:
            return False
        try:
            if not job_rows.any_in(conn, lifecycle.ACTIVE):
                return False
            return job_rows.any_in(conn, (lifecycle.QUEUED,)) or any(is_lost(job) for job in job_rows.in_status(conn, lifecycle.STARTED))
        except DatabaseError:
            return False


def start_standby(home: Path) -> Standby | None:
    """Start a standby supervisor for a job about to be submitted, when one would start at
    once: only while the registry has no active job (else the new job most likely queues,
    and a supervisor that starts later imports in its own time)."""
    if has_active_jobs(home) is not False:
        return None
    import subprocess

    marker = new_marker()
    argv = [sys.executable, "-m", SUPERVISOR_MODULE, "--standby", "--marker", marker, "--home", str(home)]
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=home,
                                env=supervisor_env(), start_new_session=True, close_fds=True)
    except OSError:
        return None
    return Standby(proc, marker)


def _standby_turn(home: Path) -> int | None:
    """The home's standby lock (flock, non-blocking): its descriptor, or None while another
    command holds it. Of commands submitting at once only one starts a standby, as only
    one job can start first; the others would each spend an interpreter's imports on a
    standby that exits unused."""
    locks = home / "cache" / "locks"
    try:
        locks.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(locks / "standby.lock", os.O_CREAT | os.O_RDWR, 0o600)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


@contextlib.contextmanager
def standing_by(home: Path, *, wanted: bool = True) -> Iterator[Standby | None]:
    """A standby supervisor for the job a command is about to queue (start_standby), released
    when the command is done with it: whatever happens, none outlives the command unused."""
    turn = _standby_turn(home) if wanted and home.is_dir() else None
    standby = start_standby(home) if turn is not None else None
    try:
        yield standby
    finally:
        if standby is not None:
            standby.release()
        if turn is not None:
            os.close(turn)  # drops the lock
