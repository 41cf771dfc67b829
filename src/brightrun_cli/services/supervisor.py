"""The per-job supervisor: a detached process that runs one attempt of one job.

    python -m brightrun_cli.services.supervisor JOB_ID --marker TOKEN --home HOME

Started by the queue (`services.queue.spawn_supervisor`) in its own session, so it
outlives the terminal that submitted the job. It prepares the run directory (dataset
split, spec.json), launches the trainer through the job's runner, and until the
trainer ends: ingests new `metrics.jsonl` lines into `metrics_points` (Core INSERT OR
IGNORE in batches, so re-read lines are harmless), keeps progress / epoch / step /
ETA / current metrics / running cost / heartbeat on the job row, and enforces
`max_cost`. At the end it records the final status, cost records and notification in
one transaction, asks for the model artifact, and starts the next queued job.

Every write is conditioned on `--marker`: once the job is cancelled, reaped or resumed
by someone else, this process can no longer change it. SIGTERM (from `jobs cancel`)
stops the trainer's process tree (TERM, grace, KILL) and records the job cancelled.
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import logging
import math
import os
import shutil
import signal
import sqlite3
import sys
import time
from collections.abc import Iterable
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

if TYPE_CHECKING:
    from brightrun_cli.registry.tables import TrainingJob
    from brightrun_cli.services.workspace import Workspace

log = logging.getLogger("brightrun.supervisor")

POLL_S = 0.2  # how often new metrics are looked for
FIRST_POLL_S = 0.05  # until this attempt's first point: submit -> first point waits on it
HEARTBEAT_S = 2.0
STOP_GRACE_S = 30.0  # TERM -> KILL: time for the trainer to save its checkpoint
MULTI_ROWS = 1000  # rows per INSERT statement (insert_points): 12,000 variables, SQLite 3.32+ allows 32,766
LOG_TAIL_LINES = 40


# ---------------------------------------------------------------------------- metric ingestion


class MetricLine(msgspec.Struct, gc=False):
    """The trainer's metrics.jsonl line (its file contract names).

    Decoding straight into a Struct is ingestion's fast path: about 3x less CPU than
    json/orjson building a dict per line and reading it back key by key. Unknown keys are
    ignored; a line without an integer step, or with a wrongly typed value, is bad.
    gc=False: the fields are scalars, so a line can never be part of a reference cycle,
    and a catch-up batch of 100,000 lines no longer sets off collections that rescan it."""

    step: int
    time: float | None = None
    epoch: float | None = None
    split: str | None = None
    total_steps: int | None = None
    training_loss: float | None = None
    validation_loss: float | None = None
    learning_rate: float | None = None
    grad_norm: float | None = None
    tokens_per_sec: float | None = None
    tokens_seen: int | None = None
    gpu_utilization: float | None = None
    gpu_memory: float | None = None


_line_decoder = msgspec.json.Decoder(MetricLine)
_decode_line = _line_decoder.decode
_decode_lines = _line_decoder.decode_lines  # newline-delimited, blank lines skipped, no copy of the batch


def metric_lines(items: Iterable[dict[str, Any]]) -> list[MetricLine]:
    """Dicts in the metrics.jsonl format -> the line objects MetricsTail.read() returns."""
    return [msgspec.convert(item, MetricLine) for item in items]


class MetricsTail:
    """Reads only the complete lines appended to `metrics.jsonl` since the last call."""

    def __init__(self, path: Path):
        self.path = path
        self.offset = 0
        self.bad_lines = 0
        self._partial = b""

    def read(self) -> list[MetricLine]:
        """New complete lines, in file order."""
        try:
            with self.path.open("rb") as fh:
                fh.seek(self.offset)
                chunk = fh.read()
        except FileNotFoundError:
            return []
        if not chunk:
            return []
        self.offset += len(chunk)
        data = self._partial + chunk if self._partial else chunk
        cut = data.rfind(b"\n") + 1
        self._partial = data[cut:]  # an unfinished last line waits for its newline
        if not cut:
            return []
        body = memoryview(data)[:cut]
        try:  # the whole batch in one decode, read in place: the fast path
            return _decode_lines(body)
        except msgspec.DecodeError:  # a torn, foreign or mistyped line: line by line, skipping the bad ones
            out = []
            for line in bytes(body).split(b"\n"):
                if not line.strip():
                    continue
                try:
                    out.append(_decode_line(line))
                except msgspec.DecodeError:
                    self.bad_lines += 1
            return out


POINT_COLUMNS = ("job_id", "timestamp", "epoch", "step", "split", "training_loss", "validation_loss", "learning_rate",
                 "gradient_norm", "throughput", "gpu_utilization", "gpu_memory")


@functools.lru_cache(maxsize=256)
def _db_second(second: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(second))


# A timestamp's fraction as two table lookups: formatting it (f"{us:06d}") was most of
# point_values' time, twice the cost of the lookups and the join.
_MILLIS = tuple(f".{i:03d}" for i in range(1000))
_DIGITS3 = tuple(f"{i:03d}" for i in range(1000))
_YEAR_10000 = 253402300800.0


def point_values(job_id: str, lines: Iterable[MetricLine]) -> list:
    """MetricLines -> metrics_points values, flat: one row after another in POINT_COLUMNS order.

    Values are already in their stored form: this is the hot path, and SQLAlchemy's
    per-row bind processing would cost several times the insert itself. Timestamps are
    formatted inline (one strftime per distinct second, the microseconds by lookup), as
    SQLAlchemy stores them. One flat list rather than a tuple per row: it feeds multi-row
    INSERTs as is, and 100,000 live tuples would set off garbage collections that rescan
    them all (twice the CPU of building them)."""
    seconds: dict[int, str] = {}
    now = time.time()
    values: list = []
    extend, join, millis, digits = values.extend, "".join, _MILLIS, _DIGITS3
    for m in lines:
        t = m.time
        if t is None or not 0.0 <= t < _YEAR_10000:  # a line without its time (or a bogus one) is stamped now
            t = now
        whole = int(t)
        day = seconds.get(whole)
        if day is None:
            day = seconds[whole] = _db_second(whole)
        us = int((t - whole) * 1e6)
        extend((job_id, join((day, millis[us // 1000], digits[us % 1000])), m.epoch or 0.0, m.step, m.split or "train",
                m.training_loss, m.validation_loss, m.learning_rate, m.grad_norm, m.tokens_per_sec,
                m.gpu_utilization, m.gpu_memory))
    return values


@functools.lru_cache(maxsize=1)
def _insert_row_sql() -> tuple[str, str]:
    """("INSERT OR IGNORE INTO metrics_points (...)", "(?, ..., ?)"), compiled once by SQLAlchemy Core."""
    from sqlalchemy import insert
    from sqlalchemy.dialects import sqlite

    from brightrun_cli.registry.tables import MetricPoint

    statement = insert(MetricPoint.__table__).prefix_with("OR IGNORE").values({c: None for c in POINT_COLUMNS})
    head, _, row = str(statement.compile(dialect=sqlite.dialect(paramstyle="qmark"))).partition(" VALUES ")
    return head, row


@functools.lru_cache(maxsize=64)
def _insert_sql(rows: int) -> str:
    head, row = _insert_row_sql()
    return f"{head} VALUES {', '.join([row] * rows)}"


def insert_points(connection, values: list) -> int:
    """Bulk INSERT OR IGNORE (unique on job, step, split) of point_values() on a Core
    connection; returns the rows offered.

    Multi-row statements: one sqlite3_step per 1,000 rows instead of one per row (with its
    bind/reset and GIL round trip) is about 1.4x the rows per CPU-second of executemany."""
    width = len(POINT_COLUMNS)
    count = len(values) // width
    # MULTI_ROWS (12,000 variables) where SQLite allows that many (3.32 on), else under the old 999.
    per = MULTI_ROWS if sqlite3.sqlite_version_info >= (3, 32, 0) else 999 // width
    full = count - count % per
    if full:
        sql, size = _insert_sql(per), per * width
        connection.exec_driver_sql(sql, [tuple(values[i:i + size]) for i in range(0, full * width, size)])
    if count > full:
        connection.exec_driver_sql(_insert_sql(count - full), tuple(values[full * width:]))
    return count


# ---------------------------------------------------------------------------- the supervisor


class Supervisor:
    def __init__(self, ws: "Workspace", job_id: str, marker: str):
        from brightrun_cli.services import jobs

        self.ws = ws
        self.job_id = job_id
        self.marker = marker
        self.jobs = jobs
        self.job: "TrainingJob | None" = None
        self.attempt_start: datetime | None = None
        self.previous_cost = 0.0
        self.last_train: MetricLine | None = None  # the newest line of each split
        self.last_validation: MetricLine | None = None
        self.first_point: tuple[float, int] | None = None  # (monotonic time, step) of this attempt's first new point
        self.runner = None
        self.local = True  # every host of the job is this machine (set in _prepare)
        self.handle: str | None = None

    # -- plumbing

    @property
    def stop_reason(self) -> str | None:
        return _stop["reason"]

    @stop_reason.setter
    def stop_reason(self, value: str | None) -> None:
        _stop["reason"] = value

    def _update(self, **values: Any) -> bool:
        with self.ws.registry.write() as session:
            return self.jobs.update_attempt(session, self.job_id, self.marker, **values)

    def run(self) -> int:
        from brightrun_cli.errors import BrightrunError
        from brightrun_cli.registry.tables import TrainingJob
        from brightrun_cli.registry.timeutil import utcnow

        if not self._update(supervisor_pid=os.getpid(), heartbeat_at=utcnow()):
            log.info("job %s is no longer claimed by %s; nothing to do", self.job_id, self.marker)
            return 0
        with self.ws.registry.session() as session:
            self.job = session.get(TrainingJob, self.job_id)
            self.previous_cost = self.jobs.previous_compute_cost(session, self.job_id)
        log.info("supervising job %s, attempt %d (pid %d, marker %s)", self.job_id, self.job.resume_count + 1, os.getpid(), self.marker)
        try:
            request = self._prepare()
            if self.stop_reason:
                return self._finish(self.jobs.CANCELLED, "cancelled while initializing")
            self.attempt_start = utcnow()
            if not self._update(started_at=self.attempt_start, current_stage="launching", current_cost=self.previous_cost):
                log.info("job %s was ended by someone else before launch", self.job_id)
                return 0
            if request is None:
                _collect_from_now_on()
                self.handle = self.job.external_job_id
                self._update(current_stage="reattached")
                return self._follow()
            log.info("launching: %s", _shlex(self.runner.launch_argv(request)))
            self.handle = self.runner.start(request)
            _collect_from_now_on()
            self._update(external_job_id=self.handle, current_stage="loading")
            return self._follow()
        except BrightrunError as exc:
            log.error("job failed: %s", exc)
            self._stop_trainer()
            return self._finish(self.jobs.FAILED, str(exc))
        except Exception as exc:  # the supervisor's own bug must still end the job and its trainer
            log.exception("supervisor error")
            self._stop_trainer()
            return self._finish(self.jobs.FAILED, f"supervisor error: {type(exc).__name__}: {exc}")

    def _reattachable(self, handle: str) -> bool:
        """A remote trainer of an earlier attempt that is still running, or that finished
        cleanly while nobody watched (its outputs are still to be collected)."""
        from brightrun_cli.runners.base import RunnerUnreachable

        try:
            return self.runner.poll(handle) in (None, 0)
        except RunnerUnreachable:
            return False

    def _prepare(self):
        """Run dir with the dataset split and spec.json; stop a previous attempt's trainer first.

        Returns the LaunchRequest, or None when this attempt re-attaches to the trainer of
        an earlier one: a remote trainer still running (or finished uncollected), or a local
        trainer that completed while its supervisor was gone."""
        import json

        from brightrun_cli.registry.tables import Dataset
        from brightrun_cli.runners import get_runner
        from brightrun_cli.services.datasets import split_paths

        job = self.job
        hosts = self.jobs.hosts_of(self.ws, job)
        self.runner = get_runner(self.ws, hosts)
        self.local = all(h.kind == "local" for h in hosts)
        if job.external_job_id:
            if not self.local and self._reattachable(job.external_job_id):
                # The job was failed for a lost connection but its remote trainer kept going:
                # follow it again instead of stopping it and restarting from a checkpoint.
                log.info("re-attaching to trainer %s, still running on the remote host", job.external_job_id)
                return None
            if (self.local and self.jobs.finished_uncollected(self.jobs.run_dir(self.ws, job))
                    and self.runner.poll(job.external_job_id) is not None):
                # The supervisor died after its trainer completed: collect, don't retrain.
                log.info("trainer %s completed while unsupervised; collecting its outputs", job.external_job_id)
                return None
            # Resumed: the earlier trainer must be gone before a new one writes here.
            log.info("making sure the previous trainer %s has stopped", job.external_job_id)
            self.runner.stop(job.external_job_id, grace_s=STOP_GRACE_S)
        path = self.jobs.run_dir(self.ws, job)
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        with self.ws.registry.session() as session:
            dataset = session.get(Dataset, job.dataset_id)
        train_src, val_src = split_paths(self.ws, dataset)
        for src, name in ((train_src, "train.jsonl"), (val_src, "validation.jsonl")):
            _place(Path(src), path / name)
        resume = job.resume_count > 0 and (not self.local or self.jobs.latest_checkpoint(path) is not None)
        spec = dict(job.spec or {}, job_id=job.id, resume=resume)
        tmp = path / "spec.json.tmp"
        fd = os.open(tmp, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(spec, fh, indent=2)
        os.replace(tmp, path / "spec.json")
        (path / "result.json").unlink(missing_ok=True)  # an earlier attempt's outcome must not pass for this one's
        gpu = job.gpu_config or {}
        request = self.jobs.launch_request(self.ws, job.id, gpus=int(gpu.get("count") or 1),
                                           gpu_type=hosts[0].gpu_type, resume=resume)
        if spec.get("accelerate_config"):
            request.accelerate_config = spec["accelerate_config"]
            request.distributed_type = _distributed_type(path / spec["accelerate_config"])
        return request

    def _follow(self) -> int:
        # Ingestion's commits never wait for a WAL checkpoint (its copy and fsyncs): a
        # thread of this process does them, alongside.
        with self.ws.registry.checkpoints_in_background():
            return self._follow_trainer()

    def _follow_trainer(self) -> int:
        from brightrun_cli.runners.base import RunnerLost, RunnerUnreachable

        tail = MetricsTail(self.jobs.run_dir(self.ws, self.job) / "metrics.jsonl")
        last_beat = 0.0
        unreachable = False
        while True:
            code = None
            try:
                self.runner.sync(self.handle)
                code = self.runner.poll(self.handle)
                if unreachable:
                    log.info("runner reachable again")
                    unreachable = False
            except RunnerLost as exc:
                return self._end_after_stop(tail, self.jobs.FAILED, str(exc))
            except RunnerUnreachable as exc:
                if not unreachable:
                    log.warning("runner unreachable: %s", exc)
                unreachable = True
            lines = tail.read()
            now = time.monotonic()
            if lines or now - last_beat >= HEARTBEAT_S:
                if not self._ingest(lines, stage="reconnecting" if unreachable else None):
                    log.info("job %s was ended by someone else; stopping the trainer", self.job_id)
                    self._stop_trainer()
                    return 0
                last_beat = now
            if self.stop_reason is None and self.job.max_cost is not None and self._running_cost() > self.job.max_cost:
                log.warning("running cost %.4f is over max_cost %.4f", self._running_cost(), self.job.max_cost)
                self.stop_reason = "budget"
            if self.stop_reason:
                self._stop_trainer()
                return self._end(tail, None)
            if code is not None:
                return self._end(tail, code)
            # A local trainer's first point is worth a closer look (a poll is a stat);
            # a remote one is a round trip over SSH each time.
            time.sleep(FIRST_POLL_S if self.local and self.first_point is None else POLL_S)

    def _running_cost(self) -> float:
        from brightrun_cli.registry.timeutil import utcnow

        hours = (utcnow() - self.attempt_start).total_seconds() / 3600 if self.attempt_start else 0.0
        return self.previous_cost + hours * self.jobs.hourly_rate(self.job)

    def _ingest(self, lines: list[MetricLine], stage: str | None = None) -> bool:
        """Insert new points and refresh the job row in one transaction; False once the job is not ours."""
        from brightrun_cli.registry.timeutil import utcnow
        from brightrun_cli.services.notifications import notify

        for m in lines:
            if m.split == "validation":
                self.last_validation = m
            else:
                self.last_train = m
        if lines and self.first_point is None:
            self.first_point = (time.monotonic(), max(m.step for m in lines))
        values: dict[str, Any] = {"heartbeat_at": utcnow(), "current_cost": round(self._running_cost(), 6)}
        if stage:
            values["current_stage"] = stage
        latest = self.last_train or self.last_validation
        if latest is not None:
            values.update(self._progress(latest))
        # Without SQLite's per-row foreign-key lookup (~15% of the insert): every point is
        # this job's, whose row exists (rows are never deleted: rm only hides them) and is
        # this transaction's own compare-and-set target below.
        with self.ws.registry.write(foreign_keys=not lines) as session:
            if lines:
                insert_points(session.connection(), point_values(self.job_id, lines))
            if self._trainer_wrote(lines) and self.jobs.transition(session, self.job_id, self.jobs.RUNNING, marker=self.marker):
                gpu = self.job.gpu_config or {}
                notify(session, "job_started", "Training started",
                       f"Job {self.job_id[:10]} is training on {gpu.get('count', 1)}x {gpu.get('type', 'cpu')} ({', '.join(self.job.hosts or [])})",
                       priority="medium", action_command=f"brightrun watch {self.job_id}", job_id=self.job_id, dataset_id=self.job.dataset_id)
            return self.jobs.update_attempt(session, self.job_id, self.marker, **values)

    def _trainer_wrote(self, lines: list[MetricLine]) -> bool:
        """Whether this attempt's trainer wrote any of `lines` (a resumed run dir holds older ones)."""
        since = self.attempt_start.timestamp() if self.attempt_start else 0.0
        return any(m.time is None or m.time >= since for m in lines)

    def _progress(self, latest: MetricLine) -> dict[str, Any]:
        from brightrun_cli.registry.timeutil import utcnow

        step = latest.step
        total = latest.total_steps or self.job.total_steps
        epoch = latest.epoch or 0.0
        train, validation = self.last_train, self.last_validation
        metrics = {
            "epoch": epoch, "step": step,
            "training_loss": train and train.training_loss,
            "validation_loss": validation and validation.validation_loss,
            "learning_rate": train and train.learning_rate,
            "gradient_norm": train and train.grad_norm,
            "throughput": train and train.tokens_per_sec,
            "gpu_utilization": latest.gpu_utilization,
            "gpu_memory": latest.gpu_memory,
        }
        values: dict[str, Any] = {
            "current_step": step,
            "current_epoch": min(self.job.total_epochs, math.ceil(epoch)) if epoch > 0 else 0,
            "current_metrics": metrics,
        }
        if latest.tokens_seen is not None:
            values["tokens_processed"] = latest.tokens_seen
        if total:
            values["total_steps"] = int(total)
            values["progress"] = round(min(100.0, 100.0 * step / int(total)), 2)
            if self.first_point is not None and step > self.first_point[1]:
                per_step = (time.monotonic() - self.first_point[0]) / (step - self.first_point[1])
                values["estimated_completion_at"] = utcnow() + timedelta(seconds=per_step * max(0, int(total) - step))
        return values

    # -- the end

    def _stop_trainer(self) -> None:
        if self.runner is None or self.handle is None:
            return
        try:
            self.runner.stop(self.handle, grace_s=STOP_GRACE_S)
            self.runner.collect(self.handle)
        except Exception as exc:  # already stopping; record the job's end regardless
            log.warning("stopping the trainer: %s", exc)

    def _end_after_stop(self, tail: MetricsTail, status: str, error: str) -> int:
        self._stop_trainer()
        self._ingest(tail.read())
        return self._finish(status, error)

    def _end(self, tail: MetricsTail, code: int | None) -> int:
        from brightrun_cli.runners.base import RunnerUnreachable

        if code is not None:
            try:
                self.runner.collect(self.handle)
            except RunnerUnreachable as exc:
                log.warning("collecting the results: %s", exc)
        self._ingest(tail.read())
        # accelerate turns every failure into exit 1: the trainer's own status is in result.json.
        result = self.jobs.read_result(self.jobs.run_dir(self.ws, self.job)) or {}
        if result.get("exit_code") is not None and code is not None:
            code = int(result["exit_code"])
        if tail.bad_lines:
            log.warning("%d unreadable metrics.jsonl lines were skipped", tail.bad_lines)
        if code == 0 and result.get("status", "completed") == "completed":
            return self._finish(self.jobs.COMPLETED, None)
        if self.stop_reason == "budget":
            return self._finish(self.jobs.CANCELLED, f"stopped: running cost went over --max-cost ${self.job.max_cost:,.2f}", budget=True)
        if self.stop_reason == "cancelled":
            return self._finish(self.jobs.CANCELLED, "cancelled by the user")
        return self._finish(self.jobs.FAILED, *self._failure(code, result))

    def _failure(self, code: int | None, result: dict[str, Any]) -> tuple[str, str]:
        path = self.jobs.run_dir(self.ws, self.job)
        # launcher.log (local) holds everything the processes printed, tracebacks included;
        # remote runners bring trainer.log home.
        tail = [line for line in _log_tail(path / "launcher.log") if not line.startswith("$ ")] or _log_tail(path / "trainer.log")
        last = next((line for line in reversed(tail) if line.strip()), "")
        if result.get("error"):
            message = str(result["error"])
        elif code == 75:
            message = "the trainer was stopped by SIGTERM after saving a checkpoint"
        else:
            how = f"was killed by signal {-code}" if code is not None and code < 0 else f"exited with code {code}"
            message = f"the trainer {how}" + (f": {last.strip()}" if last else "")
        return message[:2000], "\n".join(tail[-LOG_TAIL_LINES:])

    def _finish(self, status: str, error: str | None, stack: str | None = None, *, budget: bool = False) -> int:
        from sqlmodel import col, update

        from brightrun_cli.registry.tables import TrainingJob
        from brightrun_cli.registry.timeutil import utcnow
        from brightrun_cli.services.notifications import notify

        path = self.jobs.run_dir(self.ws, self.job)
        end = utcnow()
        storage = _tree_bytes(path / "final") + _tree_bytes(path / "checkpoints") if status == self.jobs.COMPLETED else None
        extra: dict[str, Any] = {"error_message": error, "error_stack": stack, "heartbeat_at": end}
        if status == self.jobs.COMPLETED:
            extra.update(progress=100.0, current_stage="completed", estimated_completion_at=end)
        with self.ws.registry.write() as session:
            if not self.jobs.transition(session, self.job_id, status, marker=self.marker, **extra):
                log.info("job %s was already ended by someone else", self.job_id)
                return 0
            job = session.get(TrainingJob, self.job_id)
            total = self.jobs.record_attempt_cost(session, job, attempt_start=self.attempt_start or end, attempt_end=end, storage_bytes=storage)
            session.exec(update(TrainingJob).where(col(TrainingJob.id) == self.job_id).values(current_cost=total, final_cost=total))
            kind, title, message, options = self._event(job, status, error, total, budget)
            notify(session, kind, title, message, job_id=job.id, dataset_id=job.dataset_id, **options)
        log.info("job %s %s (cost $%.4f)%s", self.job_id, status, total, f": {error}" if error else "")
        if status == self.jobs.COMPLETED:
            self._artifact()
        return 0 if status == self.jobs.COMPLETED else 1

    def _event(self, job: "TrainingJob", status: str, error: str | None, total: float, budget: bool):
        short = job.id[:10]
        if budget:
            return ("budget_exceeded", "Budget exceeded", f"Job {short} was stopped at ${total:,.2f}: over its --max-cost ${job.max_cost:,.2f}; its checkpoint is kept",
                    {"priority": "high", "action_command": f"brightrun jobs resume {job.id} --max-cost {2 * (job.max_cost or 0):g}"})
        if status == self.jobs.COMPLETED:
            return ("job_completed", "Training completed", f"Job {short} completed {job.current_step} steps for ${total:,.2f}",
                    {"priority": "medium", "action_command": "brightrun models list"})
        if status == self.jobs.CANCELLED:
            return ("job_cancelled", "Training cancelled", f"Job {short} was cancelled at step {job.current_step}; its checkpoint is kept (${total:,.2f} spent)",
                    {"priority": "medium", "action_command": f"brightrun jobs resume {job.id}"})
        return ("job_failed", "Training failed", f"Job {short} failed: {error}",
                {"priority": "high", "action_command": f"brightrun jobs logs {job.id}"})

    def _artifact(self) -> None:
        try:
            from brightrun_cli.services.artifacts import create_artifact
        except ImportError:
            log.info("no artifact step in this build; the adapter stays in %s", self.job.run_dir)
            return
        try:
            artifact = create_artifact(self.ws, self.job_id)
            log.info("artifact %s created", artifact.id)
        except Exception as exc:  # the job itself completed; its run dir still holds the adapter
            log.exception("artifact creation failed")
            from sqlmodel import col, update

            from brightrun_cli.registry.tables import TrainingJob

            with self.ws.registry.write() as session:
                session.exec(update(TrainingJob).where(col(TrainingJob.id) == self.job_id)
                             .values(error_message=f"artifact creation failed: {exc}"[:2000]))


def _place(src: Path, dst: Path) -> None:
    """Hard link (or copy) a dataset split into the run dir, so the run dir is self-contained."""
    if dst.exists():
        return
    try:
        os.link(src, dst)
    except OSError:
        tmp = dst.with_suffix(".tmp")
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)


def _distributed_type(config: Path) -> str:
    """The distributed_type of the accelerate config copied into the run dir at submit."""
    from brightrun_cli.errors import OperationError
    from brightrun_cli.trainer.spec import SpecError, load_accelerate_config

    try:
        return load_accelerate_config(config).distributed_type
    except SpecError as exc:
        raise OperationError(f"the job's accelerate config is unusable: {exc}", "start it again with 'brightrun train --accelerate-config FILE'") from None


def _log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> list[str]:
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 16384))
            return fh.read().decode("utf-8", errors="replace").splitlines()[-lines:]
    except OSError:
        return []


def _tree_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def _shlex(argv: list[str]) -> str:
    import shlex

    return shlex.join(argv)


_stop: dict[str, str | None] = {"reason": None}  # "cancelled" (SIGTERM from `jobs cancel`) | "budget"


def _collect_from_now_on() -> None:
    """Start-up's objects live as long as the supervisor: freeze them out of collections, then collect."""
    gc.freeze()
    gc.enable()


def _import_for_run() -> None:
    """What Supervisor.run imports on its way to the launch, loaded while a standby waits."""
    import brightrun_cli.registry.tables  # noqa: F401  (SQLModel, SQLAlchemy, pydantic)
    import brightrun_cli.runners.local  # noqa: F401
    import brightrun_cli.services.datasets  # noqa: F401
    import brightrun_cli.services.jobs  # noqa: F401
    import brightrun_cli.services.notifications  # noqa: F401


def _log_to(ws: "Workspace", job_id: str) -> None:
    """A standby started with no run dir to log to: from here on, stdout and stderr go to the
    job's supervisor.log (as for a supervisor spawned for the job), and it works from there."""
    from brightrun_cli.services.queue import open_supervisor_log

    run_dir, fd = open_supervisor_log(ws, job_id)
    for target in (1, 2):
        os.dup2(fd, target)
    os.close(fd)
    os.chdir(run_dir)


def _on_signal(signum, _frame) -> None:
    log.info("received signal %d: stopping the job", signum)
    _stop["reason"] = _stop["reason"] or "cancelled"


def main(argv: list[str] | None = None) -> int:
    # First thing: a cancel that arrives while we are still importing must not kill us unrecorded.
    signal.signal(signal.SIGTERM, _on_signal)
    # No cyclic collections until the trainer is launched (Supervisor.run): start-up only
    # builds long-lived objects, and every collection before the launch delays the job.
    gc.disable()
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    parser = argparse.ArgumentParser(prog="brightrun-supervisor", description="Supervise one attempt of one brightrun job.")
    parser.add_argument("job_id", nargs="?", help="the job (claimed with --marker); with --standby, read from stdin")
    parser.add_argument("--marker", required=True, help="the attempt's token (also how liveness checks recognise this process)")
    parser.add_argument("--home", required=True)
    parser.add_argument("--standby", action="store_true",
                        help="started before the job exists (queue.Standby): import, then wait for its id on stdin")
    args = parser.parse_args(argv)
    if args.standby == bool(args.job_id):
        parser.error("give either a job id or --standby")
    from brightrun_cli.registry.ids import is_id
    from brightrun_cli.services import queue
    from brightrun_cli.services.workspace import Workspace

    ws = Workspace.open(args.home)
    job_id = args.job_id
    if args.standby:
        _import_for_run()
        job_id = sys.stdin.readline().strip()
        if not is_id(job_id):
            return 0  # no job after all (bad input, or it queued behind others): leave no trace
        _log_to(ws, job_id)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s")
    code = Supervisor(ws, job_id, args.marker).run()
    try:
        queue.kick(ws)  # this slot is free now: start the next queued job
    except Exception:
        log.exception("starting the next queued job")
    return code


if __name__ == "__main__":
    sys.exit(main())
