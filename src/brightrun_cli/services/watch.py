"""Incremental reads for `watch`: what changed in the registry and the run directory
since the last look.

`watch` polls about four times a second for as long as a job runs, so every poll must
cost next to nothing: one `PRAGMA data_version` (which only changes when another
connection commits), and only when it changed the job row plus the metric points
with an id above the last one seen. Log files are read from the last byte offset.
The read layer's plain sqlite3 (registry/jobs.py, registry/points.py): no SQLAlchemy on
the hot path.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from brightrun_cli import lifecycle
from brightrun_cli.errors import NotFoundError
from brightrun_cli.registry import costs as cost_rows
from brightrun_cli.registry import jobs as job_rows
from brightrun_cli.registry import points as point_rows
from brightrun_cli.registry.rows import JobRow, PointRow
from brightrun_cli.trackers.records import TRACKERS_FILE, read_records
from brightrun_cli.workspace import Workspace

# A watched job's metric point (registry field names; `loss` is the point's split's loss).
Point = PointRow
# launcher.log is left out: it repeats trainer.log (the trainer logs to stderr as well).
LOG_FILES = ("trainer.log", "supervisor.log")
KEPT_LOG_LINES = 200
# On a first look at a big log only its end matters (the dashboard shows the last lines).
LOG_FIRST_READ_BYTES = 64 * 1024

class JobView(JobRow, frozen=True):
    """A training_jobs row as watch shows it, plus the names of its dataset and host."""

    dataset_name: str | None = None
    host_name: str | None = None
    earlier_attempts_s: float = 0.0  # how long it ran before this attempt (a resumed job)

    @property
    def gpu_type(self) -> str | None:
        return (self.gpu_config or {}).get("type")

    @property
    def gpu_count(self) -> int | None:
        return (self.gpu_config or {}).get("count")

    @property
    def nodes(self) -> int:
        """Machines: the job's SSH hosts, or its Slurm nodes."""
        return max(1, len(self.host_names)) * int((self.gpu_config or {}).get("nodes") or 1)

    @property
    def shown_status(self) -> str:
        """lifecycle.shown_status: "queued in Slurm" while its Slurm job waits there."""
        return lifecycle.shown_status(self.status, self.current_stage)

    @property
    def terminal(self) -> bool:
        return self.status in lifecycle.TERMINAL

    @property
    def waiting(self) -> bool:
        """Queued: in brightrun's queue, or (started) in Slurm's."""
        return self.shown_status in (lifecycle.QUEUED, lifecycle.SLURM_QUEUED)

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
        start = self.started_at or (self.queued_at if self.waiting else None)
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


@dataclass
class WatchState:
    """Everything the dashboard shows for one job; grows as the job runs."""

    job: JobView
    points: list[Point] = field(default_factory=list)
    log_lines: deque[str] = field(default_factory=lambda: deque(maxlen=KEPT_LOG_LINES))
    # Trackers dropped or cut short (trackers.json), one line each: tracker name -> line.
    tracker_problems: dict[str, str] = field(default_factory=dict)

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
    new_tracker_problems: list[str] = field(default_factory=list)

    @property
    def any(self) -> bool:
        return self.job_changed or bool(self.new_points) or bool(self.new_log_lines) or bool(self.new_tracker_problems)


@dataclass(frozen=True)
class BoardRow:
    """A line of the all-jobs view: the job and its latest training point."""

    job: JobView
    training_loss: float | None
    throughput: float | None


def job_view(job: JobRow, dataset_name: str | None, host_name: str | None, earlier_attempts_s: float = 0.0) -> JobView:
    return JobView(**job.to_fields(), dataset_name=dataset_name, host_name=host_name, earlier_attempts_s=earlier_attempts_s)


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


class TrackerProblems:
    """Trackers of one run that failed or were cut short (its trackers.json), each once:
    one line saying which and why. The job goes on without them, so only watch says so."""

    def __init__(self, run_dir: Path, job_id: str):
        self.path, self.job_id = run_dir / TRACKERS_FILE, job_id
        self._stamp: tuple[int, int] | None = None
        self._said: set[str] = set()

    def read(self) -> dict[str, str]:
        try:
            stat = self.path.stat()
        except OSError:
            return {}
        if (stat.st_mtime_ns, stat.st_size) == self._stamp:
            return {}
        self._stamp = (stat.st_mtime_ns, stat.st_size)
        new = {}
        for name, record in read_records(self.path.parent).items():
            status = record.get("status") if isinstance(record, dict) else None
            if status in ("failed", "incomplete") and name not in self._said:
                self._said.add(name)
                why = _short_reason(str(record.get("error") or "no reason recorded"))
                goes_on = "the job goes on without it" if status == "failed" else "its run may lack the last data"
                new[name] = f"tracker {name} {status}: {why}; {goes_on} (see 'brightrun jobs show {self.job_id}')"
        return new


def _short_reason(error: str) -> str:
    """A tracker's error, on one line: a server that could not be reached is said as that
    (MLflow's message is a urllib3 retry report of 300 characters)."""
    unreachable = re.search(r"request to (https?://[^/\s]+)\S* failed with exception .*?"
                            r"(Max retries exceeded|NewConnectionError|Connection refused|timed out)", error)
    if unreachable:
        doing = error.split(": ", 1)[0] + ": " if ": " in error else ""
        return f"{doing}cannot connect to {unreachable.group(1)}"
    return error.splitlines()[0][:300] if error.strip() else "no reason recorded"


class JobFollower:
    """Polls one job. `poll()` returns what changed; `state` holds everything seen so far."""

    def __init__(self, ws: Workspace, job_id: str):
        self._conn = ws.registry.connect()
        self._job_id = job_id
        self._last_point_id = 0
        self._data_version: int | None = None
        row = self._read_job()
        run_dir = ws.home / (row.run_dir or f"runs/{row.id}")
        self._logs = [LogTail(run_dir / name) for name in LOG_FILES]
        self._trackers = TrackerProblems(run_dir, row.id)
        self.state = WatchState(job=row)

    def _read_job(self) -> JobView:
        found = job_rows.with_names(self._conn, self._job_id)
        if found is None:
            raise NotFoundError(f"job {self._job_id} was removed while being watched", "run 'brightrun jobs list' to see the jobs")
        job = found[0]
        earlier = 3600.0 * sum(a["hours"] or 0.0 for a in cost_rows.attempts(self._conn, job.id)
                               if a["attempt"] < job.resume_count) if job.resume_count else 0.0
        return job_view(*found, earlier_attempts_s=earlier)

    def poll(self) -> Change:
        version = job_rows.data_version(self._conn)
        job_changed, status_changed, new_points = False, False, []
        if version != self._data_version:
            self._data_version = version
            # Job first, then points: a terminal status is committed after the job's last
            # points, so reading in this order never ends a watch with points unseen.
            job = self._read_job()
            job_changed = job != self.state.job
            status_changed = job.status != self.state.job.status
            self.state.job = job
            new_points = point_rows.since(self._conn, self._job_id, self._last_point_id)
            if new_points:
                self._last_point_id = new_points[-1].id
                self.state.points.extend(new_points)
        new_lines = [line for tail in self._logs for line in tail.read()]
        self.state.log_lines.extend(new_lines)
        return Change(status_changed, job_changed, new_points, new_lines, self.new_tracker_problems())

    def new_tracker_problems(self) -> list[str]:
        """Tracker problems not seen before (also after the job ended: a remote job's MLflow
        run is copied home once it has)."""
        problems = self._trackers.read()
        self.state.tracker_problems.update(problems)
        return list(problems.values())

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> "JobFollower":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class JobsBoard:
    """Polls the all-jobs view: queued and running jobs plus the most recent finished ones."""

    def __init__(self, ws: Workspace, *, recent: int = 5):
        self._conn = ws.registry.connect()
        self._recent = recent
        self._data_version: int | None = None
        self.rows: list[BoardRow] = []

    def poll(self) -> bool:
        """Re-read when the registry changed; True when the rows are new."""
        version = job_rows.data_version(self._conn)
        if version == self._data_version:
            return False
        self._data_version = version
        rows = []
        for job, dataset_name, host_name in job_rows.board(self._conn, lifecycle.ACTIVE, lifecycle.TERMINAL, self._recent):
            rows.append(BoardRow(job_view(job, dataset_name, host_name), *point_rows.latest_train(self._conn, job.id)))
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
