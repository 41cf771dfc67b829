"""The local queue: no daemon. Whoever notices free capacity starts the next job.

A host has `hosts.gpus` slots (1 on a CPU host); a job holds `gpu_config.count` slots on
each of its hosts from the moment it is claimed (`initializing`) until it ends. Jobs
start FIFO per host (by `queued_at`): a job that does not fit blocks the later ones on
its hosts. `kick()` is called by `train`, by every finishing supervisor and (through
`kick_if_needed`) by any brightrun command; it first marks dead jobs failed, then claims
what fits in one BEGIN IMMEDIATE transaction (so concurrent kicks never over-fill a
host) and spawns one detached supervisor per claimed job (or hands the first to the
standby supervisor that `train` started ahead: `Standby`).

Liveness (after SkyPilot's job_lib): a started job is alive while a process with its
`supervisor_pid` exists and carries its `supervisor_marker` on the command line (pid
reuse cannot fake that). A claimed job whose supervisor never registered a pid is dead
once its heartbeat is older than CLAIM_GRACE_S.

Imports here stay light (stdlib at module level): `kick_if_needed` runs on every command.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import signal
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from brightrun_cli.registry.tables import TrainingJob
    from brightrun_cli.services.workspace import Workspace

CLAIM_GRACE_S = 30.0  # a claimed job may take this long to get its supervisor's pid recorded
REAP_STOP_GRACE_S = 10.0  # how long a command waits for a dead job's orphaned trainer to save and exit
SUPERVISOR_MODULE = "brightrun_cli.services.supervisor"


def kick_if_needed(home: Path) -> None:
    """Cheap check for any command: only when the registry has active jobs, reap and start."""
    if _has_active_jobs(home):
        from brightrun_cli.services.workspace import Workspace

        kick(Workspace.open(home))


def _has_active_jobs(home: Path) -> bool | None:
    """Whether the registry has a queued or started job, read with plain sqlite3 (no
    SQLAlchemy import); None without a usable registry (the command itself reports that)."""
    db = home / "registry.db"
    if not db.exists():
        return None
    try:
        conn = sqlite3.connect(db, timeout=5)
        try:
            return bool(conn.execute("SELECT 1 FROM training_jobs WHERE status IN ('queued','initializing','running') LIMIT 1").fetchone())
        finally:
            conn.close()
    except sqlite3.Error:
        return None


def new_marker() -> str:
    """The token a supervisor carries on its command line: pid reuse cannot fake it."""
    return "brsup-" + secrets.token_hex(8)


def kick(ws: "Workspace", standby: "Standby | None" = None) -> list[str]:
    """Mark dead jobs failed, then start every queued job that fits; return the started job ids.
    A standby supervisor (`train` starts one) takes the first job started, if it is still there."""
    reap_dead(ws)
    started = []
    for job_id, marker in _claim(ws, standby.marker if standby is not None else None):
        if standby is None or marker != standby.marker or not standby.assign(ws, job_id):
            spawn_supervisor(ws, job_id, marker)
        started.append(job_id)
    return started


class Standby:
    """A supervisor started before its job exists, so that its imports (SQLAlchemy, pydantic,
    the runners: ~0.5 s) overlap the `train` command's validation instead of following it.

    It waits on a pipe for the id of the job it is to supervise; the end of the pipe
    without an id (bad input, a dry run, a job that queues behind others, `train` killed)
    makes it exit without a trace. Its marker is on its command line from the start, and
    the queue claims the job with that marker, so liveness checks work as for any other."""

    def __init__(self, proc: subprocess.Popen, marker: str):
        self.proc = proc
        self.marker = marker
        _reap_later(proc, "standby")

    def assign(self, ws: "Workspace", job_id: str) -> bool:
        """Hand it the claimed job; False when it is gone (the caller then spawns a supervisor)."""
        if self.proc.stdin.closed:
            return False
        try:
            self.proc.stdin.write(f"{job_id}\n".encode())
            self.proc.stdin.close()
        except OSError:  # it died (its own start-up failed): the queue starts a fresh one
            return False
        _record_pid(ws, job_id, self.marker, self.proc.pid)
        return True

    def release(self) -> None:
        """Not needed after all: closing its pipe makes it exit."""
        with contextlib.suppress(OSError):
            self.proc.stdin.close()


def start_standby(home: Path) -> Standby | None:
    """Start a standby supervisor for a job about to be submitted, when one would start at
    once: only while the registry has no active job (else the new job most likely queues,
    and a supervisor that starts later imports in its own time)."""
    if _has_active_jobs(home) is not False:
        return None
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
def standing_by(home: Path) -> Iterator[Standby | None]:
    """A standby supervisor for the job a command is about to queue (start_standby), released
    when the command is done with it: whatever happens, none outlives the command unused."""
    turn = _standby_turn(home) if home.is_dir() else None
    standby = start_standby(home) if turn is not None else None
    try:
        yield standby
    finally:
        if standby is not None:
            standby.release()
        if turn is not None:
            os.close(turn)  # drops the lock


def _reap_later(proc: subprocess.Popen, name: str) -> None:
    """Reap it when it ends, so a long-lived caller (tests, `train` following) keeps no zombie."""
    threading.Thread(target=proc.wait, name=f"reap-{name}", daemon=True).start()


def _record_pid(ws: "Workspace", job_id: str, marker: str, pid: int) -> None:
    from sqlmodel import col, update

    from brightrun_cli.services import jobs

    with ws.registry.write() as session:
        session.exec(update(jobs.TrainingJob).where(col(jobs.TrainingJob.id) == job_id, col(jobs.TrainingJob.supervisor_marker) == marker,
                                                    col(jobs.TrainingJob.supervisor_pid).is_(None)).values(supervisor_pid=pid))


def _claim(ws: "Workspace", first_marker: str | None = None) -> list[tuple[str, str]]:
    """Claim what fits; the first job claimed gets `first_marker` (a standby's) when given."""
    from sqlmodel import col, select

    from brightrun_cli.registry.tables import Host, TrainingJob
    from brightrun_cli.registry.timeutil import utcnow
    from brightrun_cli.services import jobs

    claimed: list[tuple[str, str]] = []
    with ws.registry.write() as session:
        queued = session.exec(
            select(TrainingJob).where(col(TrainingJob.status) == jobs.QUEUED).order_by(col(TrainingJob.queued_at), col(TrainingJob.id))
        ).all()
        if not queued:
            return []
        slots = {h.name: h.gpus for h in session.exec(select(Host)).all()}
        for running in session.exec(select(TrainingJob).where(col(TrainingJob.status).in_(jobs.STARTED))).all():
            for name in _job_hosts(running, session):
                slots[name] = slots.get(name, 0) - _need(running)
        blocked: set[str] = set()
        for job in queued:
            names = _job_hosts(job, session)
            missing = [n for n in names if n not in slots]
            if missing:
                if jobs.transition(session, job.id, jobs.FAILED, only_from=(jobs.QUEUED,), error_message=f"host '{missing[0]}' no longer exists"):
                    _notify_failed(session, job, f"host '{missing[0]}' no longer exists")
                continue
            if any(n in blocked for n in names) or any(slots[n] < _need(job) for n in names):
                blocked.update(names)
                continue
            marker = first_marker if first_marker and not claimed else new_marker()
            if jobs.transition(session, job.id, jobs.INITIALIZING, supervisor_marker=marker, supervisor_pid=None,
                               heartbeat_at=utcnow(), current_stage="starting"):
                for n in names:
                    slots[n] -= _need(job)
                claimed.append((job.id, marker))
    return claimed


def _need(job: "TrainingJob") -> int:
    return max(1, int((job.gpu_config or {}).get("count") or 1))


def _job_hosts(job: "TrainingJob", session) -> list[str]:
    if job.hosts:
        return list(job.hosts)
    from brightrun_cli.registry.tables import Host

    host = session.get(Host, job.host_id) if job.host_id else None
    return [host.name if host else "local"]


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
    from brightrun_cli.config import ensure_private_dir

    run_dir = ensure_private_dir(ws.runs_dir / job_id)
    return run_dir, os.open(run_dir / "supervisor.log", os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o600)


def spawn_supervisor(ws: "Workspace", job_id: str, marker: str) -> int:
    """Start the detached supervisor of a claimed job (own session: it survives the terminal)."""
    from brightrun_cli.services import jobs

    argv = [sys.executable, "-m", SUPERVISOR_MODULE, job_id, "--marker", marker, "--home", str(ws.home)]
    run_dir, fd = open_supervisor_log(ws, job_id)
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=fd, stderr=fd, cwd=run_dir,
                                env=supervisor_env(), start_new_session=True, close_fds=True)
    except OSError as exc:
        with ws.registry.write() as session:
            if jobs.transition(session, job_id, jobs.FAILED, marker=marker, error_message=f"cannot start the supervisor: {exc}"):
                job = session.get(jobs.TrainingJob, job_id)
                _notify_failed(session, job, f"cannot start the supervisor: {exc}")
        return 0
    finally:
        os.close(fd)
    _reap_later(proc, job_id)
    _record_pid(ws, job_id, marker, proc.pid)
    return proc.pid


def supervisor_alive(pid: int | None, marker: str | None) -> bool:
    if not pid or not marker:
        return False
    import psutil

    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return marker in proc.cmdline()
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


def claim_is_stale(job: "TrainingJob") -> bool:
    from brightrun_cli.registry.timeutil import utcnow

    return job.heartbeat_at is None or utcnow() - job.heartbeat_at > timedelta(seconds=CLAIM_GRACE_S)


def reap_dead(ws: "Workspace") -> list[str]:
    """Mark started jobs whose supervisor is gone as failed ("supervisor lost"), record their cost
    so far, and stop their orphaned trainer (TERM: it checkpoints, so `jobs resume` can continue)."""
    from sqlmodel import col, select

    from brightrun_cli.registry.tables import TrainingJob
    from brightrun_cli.registry.timeutil import utcnow
    from brightrun_cli.services import jobs

    with ws.registry.session() as session:
        started = session.exec(select(TrainingJob).where(col(TrainingJob.status).in_(jobs.STARTED))).all()
    dead = [j for j in started if not supervisor_alive(j.supervisor_pid, j.supervisor_marker)
            and (j.supervisor_pid is not None or claim_is_stale(j))]
    reaped = []
    for job in dead:
        last_seen = job.heartbeat_at or utcnow()
        reason = (f"supervisor lost (pid {job.supervisor_pid} ended without recording an end; last heartbeat {last_seen:%Y-%m-%d %H:%M:%S} UTC)"
                  if job.supervisor_pid else "supervisor lost (it never started)")
        if end_without_supervisor(ws, job, jobs.FAILED, reason):
            reaped.append(job.id)
    return reaped


def end_without_supervisor(ws: "Workspace", job: "TrainingJob", status: str, reason: str) -> bool:
    """End a started job whose supervisor is gone: status, cost up to its last heartbeat and the
    notification in one transaction (CAS on its attempt), then stop its orphaned trainer."""
    from sqlmodel import col, update

    from brightrun_cli.registry.tables import TrainingJob
    from brightrun_cli.registry.timeutil import utcnow
    from brightrun_cli.services import jobs

    last_seen = job.heartbeat_at or utcnow()
    with ws.registry.write() as session:
        if not jobs.transition(session, job.id, status, marker=job.supervisor_marker, error_message=reason):
            return False
        total = jobs.record_attempt_cost(session, job, attempt_start=job.started_at, attempt_end=last_seen)
        session.exec(update(TrainingJob).where(col(TrainingJob.id) == job.id).values(current_cost=total, final_cost=total))
        if status == jobs.CANCELLED:
            jobs.notify_cancelled(session, job, "(its supervisor was already gone)")
        else:
            _notify_failed(session, job, reason)
    if job.external_job_id:
        _stop_orphan(ws, job)
    return True


def _stop_orphan(ws: "Workspace", job: "TrainingJob") -> None:
    from brightrun_cli.errors import BrightrunError
    from brightrun_cli.runners import get_runner
    from brightrun_cli.services import jobs

    try:
        get_runner(ws, jobs.hosts_of(ws, job)).stop(job.external_job_id, grace_s=REAP_STOP_GRACE_S)
    except BrightrunError:
        pass  # unreachable host: the next supervisor of this job (resume) stops it before launching


def _notify_failed(session, job: "TrainingJob", reason: str) -> None:
    from brightrun_cli.services.notifications import notify

    notify(session, "job_failed", "Training failed", f"Job {job.id[:10]} failed: {reason}", priority="high",
           action_command=f"brightrun jobs resume {job.id}" if job.status != "queued" else f"brightrun jobs show {job.id}",
           job_id=job.id, dataset_id=job.dataset_id)
