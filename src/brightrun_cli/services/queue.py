"""The local queue's policy: no daemon; whoever notices free capacity starts the next job.

A host has `hosts.gpus` slots (1 on a CPU host); a job holds `gpu_config.count` slots on
each of its hosts from the moment it is claimed (`initializing`) until it ends. Jobs
start FIFO per host (by `queued_at`): a job that does not fit blocks the later ones on
its hosts. A Slurm host has no slots here: its jobs are claimed at once and wait in
Slurm's queue, which owns the cluster (the job shows Slurm's reason meanwhile). `kick()` is called by `train`, by every finishing supervisor and (through
supervisor.launch.needs_kick, a plain read first) by any brightrun command: it marks dead jobs failed (`reap_dead`),
then claims what fits in one BEGIN IMMEDIATE transaction (so concurrent kicks never
over-fill a host) and starts one supervisor per claimed job (supervisor.launch), the
first one possibly a standby that a command started ahead.

Everything is checked with plain reads first: a kick that finds nothing to reap and
nothing that fits writes nothing (and imports no SQLAlchemy), so a read command run
while jobs train stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from brightrun_cli import lifecycle
from brightrun_cli.errors import BrightrunError
from brightrun_cli.registry import hosts as host_rows
from brightrun_cli.registry import jobs as job_rows
from brightrun_cli.registry.engine import read_in
from brightrun_cli.registry.rows import JobRow
from brightrun_cli.registry.timeutil import utcnow
from brightrun_cli.runners import get_runner
from brightrun_cli.services import notifications
from brightrun_cli.supervisor import launch
from brightrun_cli.workspace import Workspace

if TYPE_CHECKING:
    from brightrun_cli.registry.engine import Connection

REAP_STOP_GRACE_S = 10.0  # how long a command waits for a dead job's orphaned trainer to save and exit


def kick_if_needed(home: Path) -> None:
    """Any command's housekeeping on its way in: a plain read (supervisor.launch.needs_kick),
    and a kick only when there is something to do."""
    if launch.needs_kick(home):
        kick(Workspace.open(home))


def kick(ws: Workspace, standby: launch.Standby | None = None) -> list[str]:
    """Mark dead jobs failed, then start every queued job that fits; return the started job ids.
    A standby supervisor (`train` starts one) takes the first job started, if it is still there."""
    reap_dead(ws)
    started = []
    for job_id, marker in _claim(ws, standby.marker if standby is not None else None):
        if standby is None or marker != standby.marker or not standby.assign(ws, job_id):
            _start_supervisor(ws, job_id, marker)
        started.append(job_id)
    return started


def _start_supervisor(ws: Workspace, job_id: str, marker: str) -> None:
    try:
        launch.spawn_supervisor(ws, job_id, marker)
    except OSError as exc:
        with ws.registry.write() as tx:
            if lifecycle.transition(tx, job_id, lifecycle.FAILED, marker=marker, error_message=f"cannot start the supervisor: {exc}"):
                notify_failed(tx, job_rows.get_in(tx, job_id), f"cannot start the supervisor: {exc}")


def _fits(conn: "Connection") -> list[JobRow]:
    """The queued jobs that fit in the free slots now, FIFO per host (a plain read: the claim
    re-checks under the write lock)."""
    queued = job_rows.in_status(conn, (lifecycle.QUEUED,))
    if not queued:
        return []
    slots = host_rows.slots(conn)
    scheduled = host_rows.names_of_kind(conn, "slurm")  # Slurm queues these jobs itself
    for running in job_rows.in_status(conn, lifecycle.STARTED):
        for name in _job_hosts(running, conn):
            slots[name] = slots.get(name, 0) - _need(running)
    fitting, blocked = [], set()
    for job in queued:
        names = _job_hosts(job, conn)
        if any(n not in slots for n in names) or all(n in scheduled for n in names):
            fitting.append(job)  # its host is gone (the claim fails it), or Slurm queues it
            continue
        if any(n in blocked for n in names) or any(slots[n] < _need(job) for n in names):
            blocked.update(names)
            continue
        for n in names:
            slots[n] -= _need(job)
        fitting.append(job)
    return fitting


def _claim(ws: Workspace, first_marker: str | None = None) -> list[tuple[str, str]]:
    """Claim what fits; the first job claimed gets `first_marker` (a standby's) when given."""
    with ws.registry.reading() as conn:
        if not _fits(conn):
            return []
    claimed: list[tuple[str, str]] = []
    with ws.registry.write() as tx:
        conn = read_in(tx)
        known = host_rows.slots(conn)
        for job in _fits(conn):
            missing = [n for n in _job_hosts(job, conn) if n not in known]
            if missing:
                reason = f"host '{missing[0]}' no longer exists"
                if lifecycle.transition(tx, job.id, lifecycle.FAILED, only_from=(lifecycle.QUEUED,), error_message=reason):
                    notify_failed(tx, job, reason)
                continue
            marker = first_marker if first_marker and not claimed else launch.new_marker()
            if lifecycle.transition(tx, job.id, lifecycle.INITIALIZING, supervisor_marker=marker, supervisor_pid=None,
                                    heartbeat_at=utcnow(), current_stage="starting"):
                claimed.append((job.id, marker))
    return claimed


def _need(job: JobRow) -> int:
    return max(1, int((job.gpu_config or {}).get("count") or 1))


def _job_hosts(job: JobRow, conn: "Connection") -> list[str]:
    if job.hosts:
        return list(job.hosts)
    host = host_rows.get(conn, job.host_id) if job.host_id else None
    return [host.name if host else "local"]


def reap_dead(ws: Workspace) -> list[str]:
    """Mark started jobs whose supervisor is gone as failed ("supervisor lost"), record their cost
    so far, and stop their orphaned trainer (TERM: it checkpoints, so `jobs resume` can continue).
    A submitted Slurm job is left running in Slurm instead: `jobs resume` re-attaches a new
    supervisor to it, so losing a supervisor costs a cluster job no progress."""
    with ws.registry.reading() as conn:
        dead = [job for job in job_rows.in_status(conn, lifecycle.STARTED) if launch.is_lost(job)]
        scheduled = host_rows.names_of_kind(conn, "slurm")
        in_slurm_ids = {job.id for job in dead if job.external_job_id and set(_job_hosts(job, conn)) <= scheduled}
    reaped = []
    for job in dead:
        last_seen = job.heartbeat_at or utcnow()
        reason = (f"supervisor lost (pid {job.supervisor_pid} ended without recording an end; last heartbeat {last_seen:%Y-%m-%d %H:%M:%S} UTC)"
                  if job.supervisor_pid else "supervisor lost (it never started)")
        in_slurm = job.id in in_slurm_ids
        if in_slurm:
            reason += f"; its Slurm job keeps going: 'brightrun jobs resume {job.id}' follows it again"
        if end_without_supervisor(ws, job, lifecycle.FAILED, reason, stop=not in_slurm):
            reaped.append(job.id)
    return reaped


def end_without_supervisor(ws: Workspace, job: JobRow, status: str, reason: str, *, stop: bool = True) -> bool:
    """End a started job whose supervisor is gone: status, cost up to its last heartbeat and the
    notification in one transaction (CAS on its attempt), then (unless `stop` is False) stop
    its orphaned trainer."""
    last_seen = job.heartbeat_at or utcnow()
    with ws.registry.write() as tx:
        if not lifecycle.transition(tx, job.id, status, marker=job.supervisor_marker, error_message=reason):
            return False
        lifecycle.record_attempt_cost(tx, job, attempt_start=job.started_at, attempt_end=last_seen)
        if status == lifecycle.CANCELLED:
            notify_cancelled(tx, job, "(its supervisor was already gone)")
        else:
            notify_failed(tx, job, reason)
    if job.external_job_id and stop:
        _stop_orphan(ws, job)
    return True


def _stop_orphan(ws: Workspace, job: JobRow) -> None:
    try:
        with ws.registry.reading() as conn:
            hosts = host_rows.of_job(conn, job)
        get_runner(ws, hosts).stop(job.external_job_id, grace_s=REAP_STOP_GRACE_S)
    except BrightrunError:
        pass  # unreachable host: the next supervisor of this job (resume) stops it before launching


def notify_failed(tx, job: JobRow, reason: str) -> None:
    # A trainer that was launched is stopped with TERM right after this (it checkpoints):
    # resume can continue it. One never launched left nothing to resume from.
    if job.status == lifecycle.QUEUED:
        next_step = f"brightrun jobs show {job.id}"
    elif job.external_job_id:
        next_step = f"brightrun jobs resume {job.id}"
    else:
        next_step = f"brightrun jobs retry {job.id}"
    notifications.notify(tx, "job_failed", "Training failed", f"Job {job.id[:10]} failed: {reason}", priority="high",
                         action_command=next_step, job_id=job.id, dataset_id=job.dataset_id)


def notify_cancelled(tx, job: JobRow, how: str) -> None:
    notifications.notify(tx, "job_cancelled", "Training cancelled", f"Job {job.id[:10]} was cancelled {how}",
                         priority="medium", action_command=f"brightrun jobs retry {job.id}", job_id=job.id, dataset_id=job.dataset_id)
