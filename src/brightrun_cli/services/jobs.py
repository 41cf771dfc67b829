"""Training jobs once submitted: list/show, logs, cancel, retry, resume, rm.

The statuses, their moves and the attempt bookkeeping are the lifecycle's
(brightrun_cli/lifecycle.py); the queue decides when a job starts (services/queue.py);
a supervisor runs each attempt (brightrun_cli/supervisor/). Planning and submitting a
new run is services/training.py.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from brightrun_cli import lifecycle
from brightrun_cli.errors import ConflictError, NotFoundError, OperationError, UsageError
from brightrun_cli.home import ensure_private_dir
from brightrun_cli.registry import jobs as job_rows
from brightrun_cli.registry import models as model_rows
from brightrun_cli.registry.ids import new_id
from brightrun_cli.registry.rows import JobRow, ModelRow
from brightrun_cli.registry.timeutil import utcnow
from brightrun_cli.services import queue
from brightrun_cli.services.hosts import hosts_of
from brightrun_cli.services.notifications import notify
from brightrun_cli.supervisor import launch
from brightrun_cli.workspace import Workspace

CANCEL_WAIT_S = 90.0  # supervisor grace for the trainer (30 s) plus final bookkeeping, with room for a slow machine


# ---------------------------------------------------------------------------- reading


def get_job(ws: Workspace, ref: str) -> JobRow:
    with ws.registry.reading() as conn:
        return job_rows.resolve(conn, ref)


def shown_status(job: JobRow) -> str:
    """The status as the commands show it: 'queued in Slurm' for a started job whose Slurm job
    waits in Slurm's queue (its current_stage holds Slurm's reason), else its status."""
    return lifecycle.shown_status(job.status, job.current_stage)


def list_jobs(ws: Workspace, *, status: str | None = None, limit: int | None = None) -> list[JobRow]:
    """Live jobs, newest first (`--status`: statuses, comma-separated, or `active`)."""
    statuses = lifecycle.parse_statuses(status)
    with ws.registry.reading() as conn:
        return job_rows.list_live(conn, statuses, limit)


def list_jobs_json(ws: Workspace, *, status: str | None = None, limit: int | None = None) -> bytes:
    """`list_jobs` as a JSON array text rendered by SQLite (10,000 jobs without a Python object each)."""
    statuses = lifecycle.parse_statuses(status)
    with ws.registry.reading() as conn:
        return job_rows.list_live_json(conn, statuses, limit)


def count_jobs(ws: Workspace, *, status: str | None = None) -> int:
    with ws.registry.reading() as conn:
        return job_rows.count_live(conn, lifecycle.parse_statuses(status))


def follow_log(ws: Workspace, ref: str, *, which: str = "trainer", follow: bool = False, poll_s: float = 0.5) -> Iterator[str]:
    """Yield the log's text; with `follow`, keep yielding new text until the job ends."""
    job = get_job(ws, ref)
    path = lifecycle.log_path(ws.home, job, which)
    if not follow and not path.exists():
        raise NotFoundError(f"job {job.id} has no {which} log yet ({job.status})",
                            "it appears once the job starts; use 'brightrun jobs logs JOB -f' to wait for it")
    offset = 0
    while True:
        with ws.registry.reading() as conn:
            ended = job_rows.status_of(conn, job.id) in lifecycle.TERMINAL
        if path.exists():
            with path.open("rb") as fh:
                fh.seek(offset)
                chunk = fh.read()
            if chunk:
                offset += len(chunk)
                yield chunk.decode("utf-8", errors="replace")
        if not follow or ended:
            return
        time.sleep(poll_s)


MODEL_WAIT_S = 600.0  # storing a model is an upload: allow a slow link


def wait_for_model(ws: Workspace, job_id: str, *, timeout_s: float = MODEL_WAIT_S, poll_s: float = 0.25) -> ModelRow | None:
    """The model of a completed job. The supervisor marks the job completed, then stores its
    adapter and registers the model: wait for that, unless it failed (the job's
    error_message says so), the supervisor is gone, or `timeout_s` passed (None)."""
    deadline = time.monotonic() + timeout_s
    while True:
        with ws.registry.reading() as conn:
            job = job_rows.get(conn, job_id)
            model = model_rows.of_job(conn, job_id) if job is not None and job.artifact_id else None
        if model is not None:
            return model
        if job is None or job.status != lifecycle.COMPLETED or (job.error_message or "").startswith("artifact creation failed"):
            return None
        if not launch.supervisor_alive(job.supervisor_pid, job.supervisor_marker) or time.monotonic() > deadline:
            with ws.registry.reading() as conn:  # it may have registered it just before leaving
                return model_rows.of_job(conn, job_id)
        time.sleep(poll_s)


# ---------------------------------------------------------------------------- changing


def place_accelerate_config(source: Path, run_dir: Path, name: str) -> None:
    """Copy the job's accelerate config into its run dir (atomically), where runners ship it with the spec."""
    import shutil  # here and in remove_job: shutil (zlib, bz2, lzma) is ~5 ms of every `jobs` command

    ensure_private_dir(run_dir)
    tmp = run_dir / f".{name}.tmp"
    shutil.copyfile(source, tmp)
    os.replace(tmp, run_dir / name)




def cancel_job(ws: Workspace, ref: str, *, wait_s: float = CANCEL_WAIT_S) -> JobRow:
    """Cancel a job: a queued one at once; a started one through its supervisor (TERM the trainer's
    process tree, grace, KILL; checkpoint kept; cost so far recorded). Returns the final row."""
    job = get_job(ws, ref)
    if job.status == lifecycle.CANCELLED:  # what was asked is so: a script's second cancel succeeds
        return job
    if job.status in lifecycle.TERMINAL:
        raise ConflictError(f"job {job.id} is already {job.status}", "nothing to cancel")
    deadline = time.monotonic() + wait_s
    signalled = None
    while time.monotonic() < deadline:
        if job.status in lifecycle.TERMINAL:
            return job
        if job.status == lifecycle.QUEUED:  # (again, when resumed or released between reads)
            _cancel_queued(ws, job)
        elif job.supervisor_pid is not None:
            if signalled != job.supervisor_marker and launch.signal_supervisor(job.supervisor_pid, job.supervisor_marker):
                signalled = job.supervisor_marker  # it stops the trainer and records the end itself
            elif not launch.supervisor_alive(job.supervisor_pid, job.supervisor_marker):
                queue.end_without_supervisor(ws, job, lifecycle.CANCELLED, "cancelled by the user (its supervisor was already gone)")
        elif launch.claim_is_stale(job):
            queue.end_without_supervisor(ws, job, lifecycle.CANCELLED, "cancelled by the user (its supervisor never started)")
        time.sleep(0.2 if job.status != lifecycle.QUEUED else 0)
        job = get_job(ws, job.id)
    raise OperationError(f"job {job.id} is still stopping after {wait_s:.0f}s", f"check 'brightrun jobs show {job.id}' in a moment")


def _cancel_queued(ws: Workspace, job: JobRow) -> None:
    with ws.registry.write() as tx:
        if lifecycle.transition(tx, job.id, lifecycle.CANCELLED, only_from=(lifecycle.QUEUED,), error_message="cancelled while queued"):
            queue.notify_cancelled(tx, job, "while queued")


def retry_job(ws: Workspace, ref: str, *, max_cost: float | None = None) -> JobRow:
    """A new attempt from scratch: a new queued job with the same configuration, retry_count+1,
    and the same budget unless `max_cost` gives a new one."""
    with launch.standing_by(ws.home) as standby:
        old = get_job(ws, ref)
        if old.status not in lifecycle.RESUMABLE:
            raise ConflictError(f"job {old.id} is {old.status}; only failed or cancelled jobs can be retried",
                                "cancel it first" if old.status in lifecycle.ACTIVE else "start a new one with 'brightrun train'")
        _check_new_budget(max_cost)
        if max_cost is not None and old.estimated_total_cost and max_cost < old.estimated_total_cost:
            raise UsageError(f"the estimated cost ${old.estimated_total_cost:,.2f} is over --max-cost ${max_cost:,.2f}",
                             "raise --max-cost, or start a cheaper run with 'brightrun train' (see 'brightrun estimate')")
        if max_cost is None and budget_spent(old):
            raise UsageError(f"job {old.id} was stopped by its budget (--max-cost ${old.max_cost:,.2f}) at ${old.current_cost:,.2f}; "
                             "the same run from scratch would stop there again",
                             f"give it a budget that covers the run: brightrun jobs retry {old.id} --max-cost {_room(old)}")
        hosts_of(ws, old)  # a removed host: refused here rather than queued to fail at once
        new_job_id = new_id()
        spec = dict(old.spec or {}, job_id=new_job_id, resume=False)
        if spec.get("accelerate_config"):
            source = lifecycle.run_dir(ws.home, old) / spec["accelerate_config"]
            if not source.is_file():
                raise ConflictError(f"job {old.id}'s accelerate config ({source}) is gone",
                                    "start a new job with 'brightrun train --accelerate-config FILE'")
            place_accelerate_config(source, ws.runs_dir / new_job_id, spec["accelerate_config"])
        with ws.registry.write() as tx:
            job = job_rows.insert(
                tx, id=new_job_id, dataset_id=old.dataset_id, preset_id=old.preset_id, base_model=old.base_model,
                hyperparameters=old.hyperparameters, gpu_config=old.gpu_config, host_id=old.host_id, hosts=old.hosts,
                total_epochs=old.total_epochs, total_steps=old.total_steps, estimated_duration_hours=old.estimated_duration_hours,
                estimated_total_cost=old.estimated_total_cost, max_cost=old.max_cost if max_cost is None else max_cost, spec=spec,
                run_dir=f"runs/{new_job_id}",
                retry_count=old.retry_count + 1,
            )
            notify(tx, "job_queued", "Training queued (retry)", f"Job {job.id[:10]} retries {old.id[:10]} (attempt {job.retry_count + 1})",
                   priority="low", action_command=f"brightrun watch {job.id}", job_id=job.id, dataset_id=job.dataset_id,
                   metadata={"retry_of": old.id})
        queue.kick(ws, standby=standby)
    return get_job(ws, job.id)


def budget_spent(job: JobRow) -> bool:
    """Whether the job has cost its --max-cost (a budget stop leaves it so): run again on that
    budget, it would be stopped at once (resume) or where it was (retry)."""
    return job.max_cost is not None and job.current_cost >= job.max_cost


def again_command(job: JobRow, *, resumable: bool) -> str:
    """What runs a failed or cancelled job again: resume from its checkpoint, else retry; with
    a new budget when its own is spent (either would be refused without one)."""
    command = f"brightrun jobs {'resume' if resumable else 'retry'} {job.id}"
    if budget_spent(job):
        command += f" --max-cost {_room(job)}"
    return command


def _check_new_budget(max_cost: float | None) -> None:
    if max_cost is not None and not max_cost > 0:
        raise UsageError(f"--max-cost must be positive (got {max_cost:g})", "pass a budget in USD, e.g. --max-cost 25")


def _room(job: JobRow) -> str:
    """A budget to suggest after a budget stop: what it cost so far plus its whole estimate."""
    import math

    return f"{math.ceil(job.current_cost + (job.estimated_total_cost or job.max_cost or 0)):d}"


def has_progress_to_resume(ws: Workspace, job: JobRow) -> bool:
    """Whether `jobs resume` has something to continue from: a checkpoint (or a finished,
    uncollected run) in the local run dir. On SSH hosts the checkpoints live remotely, and
    the resumed supervisor looks there."""
    path = lifecycle.run_dir(ws.home, job)
    try:
        hosts = hosts_of(ws, job)
    except NotFoundError:  # its host was removed: nothing can continue there
        return False
    if not all(h.kind == "local" for h in hosts):
        return True
    return lifecycle.latest_checkpoint(path) is not None or lifecycle.finished_uncollected(path)


def resume_job(ws: Workspace, ref: str, *, max_cost: float | None = None) -> JobRow:
    """Continue a failed or cancelled job from its last checkpoint: same job id, a new attempt."""
    with launch.standing_by(ws.home) as standby:
        job = get_job(ws, ref)
        if job.status not in lifecycle.RESUMABLE:
            raise ConflictError(f"job {job.id} is {job.status}; only failed or cancelled jobs can be resumed",
                                "wait for it to end" if job.status in lifecycle.ACTIVE else "completed jobs are done")
        if not has_progress_to_resume(ws, job):
            raise ConflictError(f"job {job.id} has no checkpoint to resume from", f"run 'brightrun jobs retry {job.id}' to start it again")
        _check_new_budget(max_cost)
        if max_cost is not None and max_cost <= job.current_cost:
            raise UsageError(f"--max-cost ${max_cost:,.2f} is not above what the job has already cost (${job.current_cost:,.2f})", "pass a higher --max-cost")
        if max_cost is None and budget_spent(job):
            raise UsageError(f"job {job.id} has cost ${job.current_cost:,.2f}, at or over its budget (--max-cost ${job.max_cost:,.2f}): "
                             "a resumed run would be stopped at once",
                             f"give it more: brightrun jobs resume {job.id} --max-cost {_room(job)}")
        values: dict[str, Any] = dict(
            status=lifecycle.QUEUED, current_stage=lifecycle.QUEUED, queued_at=utcnow(), completed_at=None, error_message=None,
            error_stack=None, final_cost=None, supervisor_pid=None, supervisor_marker=None, heartbeat_at=None,
            estimated_completion_at=None, resume_count=job.resume_count + 1,
        )
        if max_cost is not None:
            values["max_cost"] = max_cost
        with ws.registry.write() as tx:
            # The deliberate way back: CAS on the status and attempt we saw, so two resumes make one attempt.
            if not job_rows.reopen(tx, job.id, status=job.status, resume_count=job.resume_count, values=values):
                raise ConflictError(f"job {job.id} changed while resuming", "look at 'brightrun jobs show' and try again")
            notify(tx, "job_queued", "Training queued (resume)", f"Job {job.id[:10]} resumes from its last checkpoint (attempt {job.resume_count + 2})",
                   priority="low", action_command=f"brightrun watch {job.id}", job_id=job.id, dataset_id=job.dataset_id)
        queue.kick(ws, standby=standby)
    return get_job(ws, job.id)


def remove_job(ws: Workspace, ref: str) -> JobRow:
    """Forget a finished job: hide the row, drop its metric points and local run directory.

    Its model artifact (if any) stays, and so do its cost records (spend is history)."""
    job = get_job(ws, ref)
    if job.status in lifecycle.ACTIVE:
        raise ConflictError(f"job {job.id} is {job.status}", f"cancel it first: brightrun jobs cancel {job.id}")
    with ws.registry.write() as tx:
        if not job_rows.soft_delete(tx, job.id, statuses=lifecycle.TERMINAL):
            raise ConflictError(f"job {job.id} changed while removing it", "look at 'brightrun jobs show' and try again")
    import shutil

    shutil.rmtree(lifecycle.run_dir(ws.home, job), ignore_errors=True)
    return job
