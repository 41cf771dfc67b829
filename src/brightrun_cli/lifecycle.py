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


# ---------------------------------------------------------------------------- attempts and their cost


def hourly_rate(job: JobRow) -> float:
    return float((job.gpu_config or {}).get("hourly_rate") or 0.0)


def record_attempt_cost(tx: "Tx", job: JobRow, *, attempt_start: datetime | None, attempt_end: datetime,
                        storage_bytes: int | None = None) -> float:
    """Record this attempt's compute cost (GPU-hours x rate), and storage when given; set the
    job's current and final cost to its total, and return it."""
    period = attempt_end.strftime("%Y-%m-01")
    gpu = job.gpu_config or {}
    count = int(gpu.get("count") or 1)
    start = attempt_start or attempt_end
    hours = max(0.0, (attempt_end - start).total_seconds() / 3600)
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
