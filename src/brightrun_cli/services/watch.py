"""Incremental reads for `watch`: what changed in the registry and the run directory
since the last look.

`watch` polls about four times a second for as long as a job runs, so every poll must
cost next to nothing: one `PRAGMA data_version` (which only changes when another
connection commits), and only when it changed the job row plus the metric points
with an id above the last one seen. Log files are read from the last byte offset.
Plain sqlite3 (`Registry.connect()`): no SQLAlchemy on the hot path.
"""

from __future__ import annotations

import json
import sqlite3
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from brightrun_cli.registry.timeutil import parse_db_time
from brightrun_cli.services.jobs import run_dir

ACTIVE_STATUSES = ("queued", "initializing", "running")
TERMINAL_STATUSES = ("completed", "failed", "cancelled")
# launcher.log is left out: it repeats trainer.log (the trainer logs to stderr as well).
LOG_FILES = ("trainer.log", "supervisor.log")
KEPT_LOG_LINES = 200
# On a first look at a big log only its end matters (the dashboard shows the last lines).
LOG_FIRST_READ_BYTES = 64 * 1024

_JOB_SELECT = """
SELECT j.*, d.name AS dataset_name, h.name AS host_name
FROM training_jobs j
LEFT JOIN datasets d ON d.id = j.dataset_id
LEFT JOIN hosts h ON h.id = j.host_id
"""
# `+job_id` keeps SQLite off the (job_id, step, split) index, so the scan walks the
# rowid range above the last seen id (only new rows), not all of this job's points.
_NEW_POINTS = """
SELECT id, job_id, timestamp, epoch, step, split, training_loss, validation_loss, learning_rate,
       gradient_norm, throughput, gpu_utilization, gpu_memory
FROM metrics_points WHERE id > ? AND +job_id = ? ORDER BY id
"""
_LATEST_TRAIN_POINT = """
SELECT training_loss, throughput FROM metrics_points
WHERE job_id = ? AND split = 'train' ORDER BY step DESC LIMIT 1
"""


@dataclass(frozen=True)
class JobView:
    """One training_jobs row as watch shows it (registry field names), plus the names it refers to."""

    id: str
    dataset_id: str
    dataset_name: str | None
    preset_id: str
    base_model: str
    host_name: str | None
    hosts: list[str]
    gpu_type: str | None
    gpu_count: int | None
    status: str
    current_stage: str
    progress: float
    current_epoch: int
    total_epochs: int
    current_step: int
    total_steps: int | None
    tokens_processed: int
    current_metrics: dict
    queued_at: datetime | None
    started_at: datetime | None
    completed_at: datetime | None
    estimated_completion_at: datetime | None
    current_cost: float
    estimated_total_cost: float
    max_cost: float | None
    final_cost: float | None
    error_message: str | None
    run_dir: str | None

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    @property
    def cost(self) -> float:
        return self.final_cost if self.final_cost is not None else self.current_cost

    @property
    def fraction(self) -> float:
        """Progress in 0..1, from steps when known (the row's `progress` is a percentage)."""
        if self.status == "completed":
            return 1.0
        if self.total_steps:
            return min(1.0, self.current_step / self.total_steps)
        return min(1.0, max(0.0, self.progress / 100.0))

    def elapsed(self, now: datetime) -> timedelta | None:
        """Time running (or waiting, while queued)."""
        start = self.started_at or (self.queued_at if self.status == "queued" else None)
        if start is None:
            return None
        end = self.completed_at if self.terminal and self.completed_at else now
        return max(timedelta(0), end - start)

    def eta(self, now: datetime) -> timedelta | None:
        """Time left: the supervisor's estimate, else extrapolated from the step rate so far."""
        if self.status != "running":
            return None
        if self.estimated_completion_at is not None:
            return max(timedelta(0), self.estimated_completion_at - now)
        if self.started_at and self.total_steps and self.current_step > 0:
            per_step = (now - self.started_at) / self.current_step
            return per_step * max(0, self.total_steps - self.current_step)
        return None


@dataclass(frozen=True)
class Point:
    """One metrics_points row (registry field names)."""

    id: int
    job_id: str
    timestamp: datetime | None
    epoch: float
    step: int
    split: str
    training_loss: float | None
    validation_loss: float | None
    learning_rate: float | None
    gradient_norm: float | None
    throughput: float | None
    gpu_utilization: float | None
    gpu_memory: float | None

    @property
    def loss(self) -> float | None:
        return self.validation_loss if self.split == "validation" else self.training_loss


@dataclass
class WatchState:
    """Everything the dashboard shows for one job; grows as the job runs."""

    job: JobView
    points: list[Point] = field(default_factory=list)
    log_lines: deque[str] = field(default_factory=lambda: deque(maxlen=KEPT_LOG_LINES))

    def last(self, split: str, back: int = 0) -> Point | None:
        """The latest point of `split` (or the one `back` before it)."""
        seen = 0
        for point in reversed(self.points):
            if point.split == split:
                if seen == back:
                    return point
                seen += 1
        return None


@dataclass(frozen=True)
class Change:
    status_changed: bool
    job_changed: bool
    new_points: list[Point]
    new_log_lines: list[str]

    @property
    def any(self) -> bool:
        return self.job_changed or bool(self.new_points) or bool(self.new_log_lines)


@dataclass(frozen=True)
class BoardRow:
    """A line of the all-jobs view: the job and its latest training point."""

    job: JobView
    training_loss: float | None
    throughput: float | None


def _loads(text: str | None, default):
    value = json.loads(text) if text else None  # SQLAlchemy stores a JSON None as 'null'
    return default if value is None else value


def _job_view(row: sqlite3.Row) -> JobView:
    gpu = _loads(row["gpu_config"], {})
    return JobView(
        id=row["id"],
        dataset_id=row["dataset_id"],
        dataset_name=row["dataset_name"],
        preset_id=row["preset_id"],
        base_model=row["base_model"],
        host_name=row["host_name"],
        hosts=_loads(row["hosts"], []),
        gpu_type=gpu.get("type"),
        gpu_count=gpu.get("count"),
        status=row["status"],
        current_stage=row["current_stage"],
        progress=row["progress"] or 0.0,
        current_epoch=row["current_epoch"] or 0,
        total_epochs=row["total_epochs"],
        current_step=row["current_step"] or 0,
        total_steps=row["total_steps"],
        tokens_processed=row["tokens_processed"] or 0,
        current_metrics=_loads(row["current_metrics"], {}),
        queued_at=parse_db_time(row["queued_at"]),
        started_at=parse_db_time(row["started_at"]),
        completed_at=parse_db_time(row["completed_at"]),
        estimated_completion_at=parse_db_time(row["estimated_completion_at"]),
        current_cost=row["current_cost"] or 0.0,
        estimated_total_cost=row["estimated_total_cost"],
        max_cost=row["max_cost"],
        final_cost=row["final_cost"],
        error_message=row["error_message"],
        run_dir=row["run_dir"],
    )


def _point(row: sqlite3.Row) -> Point:
    return Point(**{**dict(row), "timestamp": parse_db_time(row["timestamp"])})


class LogTail:
    """New complete lines of one growing file, read from the last offset."""

    def __init__(self, path: Path):
        self.path = path
        self._offset: int | None = None
        self._partial = b""

    def read(self) -> list[str]:
        try:
            size = self.path.stat().st_size
        except OSError:
            return []
        if self._offset is None:
            self._offset = max(0, size - LOG_FIRST_READ_BYTES)
        if size < self._offset:  # truncated or replaced: start over
            self._offset, self._partial = 0, b""
        if size == self._offset:
            return []
        with self.path.open("rb") as handle:
            handle.seek(self._offset)
            data = handle.read(size - self._offset)
        self._offset += len(data)
        *lines, self._partial = (self._partial + data).split(b"\n")
        return [line.decode("utf-8", "replace").rstrip("\r") for line in lines]


class JobFollower:
    """Polls one job. `poll()` returns what changed; `state` holds everything seen so far."""

    def __init__(self, ws, job_id: str):
        self._conn = ws.registry.connect()
        self._job_id = job_id
        self._last_point_id = 0
        self._data_version: int | None = None
        row = self._read_job()
        self._logs = [LogTail(run_dir(ws, row) / name) for name in LOG_FILES]
        self.state = WatchState(job=row)

    def _read_job(self) -> JobView:
        row = self._conn.execute(_JOB_SELECT + " WHERE j.id = ?", (self._job_id,)).fetchone()
        if row is None:
            from brightrun_cli.errors import NotFoundError

            raise NotFoundError(f"job {self._job_id} was removed while being watched", "run 'brightrun jobs list' to see the jobs")
        return _job_view(row)

    def poll(self) -> Change:
        version = self._conn.execute("PRAGMA data_version").fetchone()[0]
        job_changed, status_changed, new_points = False, False, []
        if version != self._data_version:
            self._data_version = version
            # Job first, then points: a terminal status is committed after the job's last
            # points, so reading in this order never ends a watch with points unseen.
            job = self._read_job()
            job_changed = job != self.state.job
            status_changed = job.status != self.state.job.status
            self.state.job = job
            rows = self._conn.execute(_NEW_POINTS, (self._last_point_id, self._job_id)).fetchall()
            new_points = [_point(r) for r in rows]
            if new_points:
                self._last_point_id = new_points[-1].id
                self.state.points.extend(new_points)
        new_lines = [line for tail in self._logs for line in tail.read()]
        self.state.log_lines.extend(new_lines)
        return Change(status_changed, job_changed, new_points, new_lines)

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> "JobFollower":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class JobsBoard:
    """Polls the all-jobs view: queued and running jobs plus the most recent finished ones."""

    def __init__(self, ws, *, recent: int = 5):
        self._conn = ws.registry.connect()
        self._recent = recent
        self._data_version: int | None = None
        self.rows: list[BoardRow] = []

    def poll(self) -> bool:
        """Re-read when the registry changed; True when the rows are new."""
        version = self._conn.execute("PRAGMA data_version").fetchone()[0]
        if version == self._data_version:
            return False
        self._data_version = version
        active = ",".join("?" * len(ACTIVE_STATUSES))
        terminal = ",".join("?" * len(TERMINAL_STATUSES))
        jobs = self._conn.execute(
            _JOB_SELECT
            + f""" WHERE j.deleted_at IS NULL AND (j.status IN ({active}) OR j.id IN (
                SELECT id FROM training_jobs WHERE deleted_at IS NULL AND status IN ({terminal})
                ORDER BY completed_at DESC, id DESC LIMIT ?))
            ORDER BY j.status IN ({terminal}), j.queued_at, j.id""",
            (*ACTIVE_STATUSES, *TERMINAL_STATUSES, self._recent, *TERMINAL_STATUSES),
        ).fetchall()
        rows = []
        for job in map(_job_view, jobs):
            latest = self._conn.execute(_LATEST_TRAIN_POINT, (job.id,)).fetchone()
            rows.append(BoardRow(job, *(latest if latest else (None, None))))
        changed = rows != self.rows
        self.rows = rows
        return changed

    @property
    def active(self) -> bool:
        return any(not row.job.terminal for row in self.rows)

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> "JobsBoard":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
