"""A job's lifecycle: its statuses, the moves between them, its attempts, and its run directory.

    queued -> initializing -> running -> completed | failed | cancelled

Every status change is one compare-and-set (`transition`) naming the statuses it may
leave, so concurrent writers (the supervisor, a queue kick in any command, `jobs
cancel`) never move a job backwards and never leave a terminal status. The one
deliberate way back is `jobs resume`, which reopens a failed or cancelled job as a new
*attempt* (resume_count + 1, a new supervisor marker): every write of an attempt is
conditioned on its marker (`transition(marker=)`, `update_attempt`), so an earlier
attempt can never touch a later one. Each ended attempt records its compute cost.

The queue, the supervisor, watch, hosts and the job commands take their vocabulary and
rules from here; the statements themselves are registry/jobs.py's.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from brightrun_cli.registry import costs as cost_records
from brightrun_cli.registry import jobs as job_rows
from brightrun_cli.registry.rows import JobRow
from brightrun_cli.registry.timeutil import utcnow

if TYPE_CHECKING:
    from brightrun_cli.registry.engine import Tx

QUEUED, INITIALIZING, RUNNING = "queued", "initializing", "running"
COMPLETED, FAILED, CANCELLED = "completed", "failed", "cancelled"
ACTIVE = (QUEUED, INITIALIZING, RUNNING)  # holds or waits for a slot
STARTED = (INITIALIZING, RUNNING)  # has (or is getting) a supervisor
TERMINAL = (COMPLETED, FAILED, CANCELLED)  # final, but for resume
RESUMABLE = (FAILED, CANCELLED)
STATUSES = ACTIVE + TERMINAL
# What each status may be reached from; anything else is refused by `transition`.
ALLOWED_FROM: dict[str, tuple[str, ...]] = {
    QUEUED: (),
    INITIALIZING: (QUEUED,),
    RUNNING: (INITIALIZING,),
    COMPLETED: STARTED,
    FAILED: ACTIVE,
    CANCELLED: ACTIVE,
}
# A started job whose Slurm job waits in Slurm's queue (submitted, or requeued) keeps its
# status, since statuses only move forward, and says so in current_stage:
# "queued in Slurm: Resources". Commands show such a job as "queued in Slurm" (shown_status).
SLURM_QUEUED = "queued in Slurm"
STORAGE_USD_PER_GB_MONTH = 0.021  # the reference's storage price
LOG_FILES = {"trainer": "trainer.log", "launcher": "launcher.log", "supervisor": "supervisor.log"}


def transition(tx: "Tx", job_id: str, to: str, *, marker: str | None = None,
               only_from: tuple[str, ...] | None = None, **values: Any) -> bool:
    """Compare-and-set the job's status to `to` (plus `values`) in the transaction `tx`.

    Applies only when the job is in a status `to` may follow (narrowed by `only_from`)
    and, when `marker` is given, still belongs to that supervisor attempt. Returns
    whether it applied."""
    if not ALLOWED_FROM.get(to):
        raise ValueError(f"no transition leads to {to!r}")
    sources = tuple(s for s in ALLOWED_FROM[to] if only_from is None or s in only_from)
    if to in TERMINAL:
        values.setdefault("completed_at", utcnow())
    values.setdefault("current_stage", to if to != RUNNING else "training")
    return job_rows.compare_and_set(tx, job_id, statuses=sources, marker=marker, values={"status": to, **values})


def update_attempt(tx: "Tx", job_id: str, marker: str, **values: Any) -> bool:
    """Update fields of a started job only while `marker`'s attempt still owns it (not terminal)."""
    return job_rows.compare_and_set(tx, job_id, statuses=STARTED, marker=marker, values=values)


def parse_statuses(text: str | None) -> tuple[str, ...]:
    """`--status` of the job commands: comma-separated statuses, or `active`. Empty: all."""
    from brightrun_cli.errors import UsageError

    if not text:
        return ()
    if text.strip() == "active":
        return ACTIVE
    wanted = tuple(s.strip() for s in text.split(",") if s.strip())
    bad = [s for s in wanted if s not in STATUSES]
    if bad or not wanted:
        raise UsageError(f"unknown job status '{bad[0] if bad else text}'", f"use one of {', '.join(STATUSES)} or active (comma-separated)")
    return wanted


def slurm_queued_stage(reason: str | None, restarts: int = 0) -> str:
    """current_stage of a started job waiting in Slurm's queue, with Slurm's reason
    (Priority, Resources, BeginTime after a requeue, ...) and how often it was requeued."""
    text = f"{SLURM_QUEUED}: {reason}" if reason else SLURM_QUEUED
    return text + (f" (requeued {restarts}x)" if restarts else "")


def shown_status(status: str, stage: str | None) -> str:
    """The status as the commands show it: 'queued in Slurm' for a started job that waits in
    Slurm's queue (its status stays initializing or running), else the status itself."""
    if status in STARTED and (stage or "").startswith(SLURM_QUEUED):
        return SLURM_QUEUED
    return status


# ---------------------------------------------------------------------------- attempts and their cost


def hourly_rate(job: JobRow) -> float:
    return float((job.gpu_config or {}).get("hourly_rate") or 0.0)


def devices(job: JobRow) -> int:
    """The GPUs (processes, on a CPU host) the job runs on: gpu_config's count per node, times
    its Slurm nodes (gpu_config's `nodes`) or its SSH hosts."""
    gpu = job.gpu_config or {}
    return int(gpu.get("count") or 1) * int(gpu.get("nodes") or 1) * max(1, len(job.hosts or []))


def record_attempt_cost(tx: "Tx", job: JobRow, *, attempt_start: datetime | None, attempt_end: datetime,
                        running_s: float | None = None, storage_bytes: int | None = None) -> float:
    """Record this attempt's compute cost (hours x the job's hourly rate, which covers all its
    GPUs), and storage when given; set the job's current and final cost to its total, and
    return it. `running_s`: the seconds it actually ran, when less than start to end (a Slurm
    job requeued waits in Slurm's queue unbilled)."""
    period = attempt_end.strftime("%Y-%m-01")
    gpu = job.gpu_config or {}
    count = devices(job)
    start = attempt_start or attempt_end
    seconds = (attempt_end - start).total_seconds() if running_s is None else running_s
    hours = max(0.0, seconds / 3600)
    rate = hourly_rate(job)
    cost_records.add(
        tx, job_id=job.id, cost_type="compute", amount=round(hours * rate, 6), gpu_type=gpu.get("type"), billing_period=period,
        details={"attempt": job.resume_count, "hours": round(hours, 6), "gpu_hours": round(hours * count, 6),
                 "gpus": count, "hourly_rate": rate, "started_at": start.isoformat(), "ended_at": attempt_end.isoformat()},
    )
    if storage_bytes is not None:
        cost_records.add(
            tx, job_id=job.id, cost_type="storage", amount=round(storage_bytes / 1e9 * STORAGE_USD_PER_GB_MONTH, 6),
            gpu_type=gpu.get("type"), billing_period=period,
            details={"bytes": storage_bytes, "usd_per_gb_month": STORAGE_USD_PER_GB_MONTH},
        )
    total = round(cost_records.total_in(tx, job.id), 6)
    job_rows.set_fields(tx, job.id, current_cost=total, final_cost=total)
    return total


# ---------------------------------------------------------------------------- the run directory


def run_dir(home: Path, job: JobRow) -> Path:
    """The job's local run directory (runs/<id> below the home): the supervisor/trainer file contract."""
    return home / (job.run_dir or f"runs/{job.id}")


def log_path(home: Path, job: JobRow, which: str = "trainer") -> Path:
    from brightrun_cli.errors import UsageError

    if which not in LOG_FILES:
        raise UsageError(f"unknown log '{which}'", f"use one of {', '.join(LOG_FILES)}")
    return run_dir(home, job) / LOG_FILES[which]


def latest_checkpoint(path: Path) -> Path | None:
    """Newest complete checkpoint (`checkpoints/step-<N>`; the trainer renames them into place)."""
    found = []
    for entry in (path / "checkpoints").glob("step-*"):
        suffix = entry.name.removeprefix("step-")
        if entry.is_dir() and suffix.isdigit():
            found.append((int(suffix), entry))
    return max(found)[1] if found else None


def read_result(path: Path) -> dict[str, Any] | None:
    """The trainer's result.json, or None when absent or unreadable (a killed trainer writes none)."""
    try:
        data = json.loads((path / "result.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def finished_uncollected(path: Path) -> bool:
    """The trainer in this run dir completed and saved its adapter (a supervisor that died
    before recording that leaves the job failed): a resume only has to collect it."""
    result = read_result(path) or {}
    return result.get("status") == "completed" and result.get("exit_code") == 0 and (path / "final" / "adapter_model.safetensors").is_file()
