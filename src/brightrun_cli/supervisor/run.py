"""The supervisor of one attempt of one job.

It prepares the run directory (dataset split, spec.json), launches the trainer through
the job's runner, and until the trainer ends: ingests new `metrics.jsonl` lines into
`metrics_points` (supervisor/ingest.py), keeps progress / epoch / step / ETA / current
metrics / running cost / heartbeat on the job row, and enforces `max_cost`. At the end
it records the final status, cost records and notification in one transaction, and
asks for the model artifact.

Every write is conditioned on its marker (lifecycle.transition / update_attempt): once
the job is cancelled, reaped or resumed by someone else, this process can no longer
change it. SIGTERM (from `jobs cancel`) stops the trainer's process tree (TERM, grace,
KILL) and records the job cancelled.

A job on a Slurm host is followed through Slurm's view of it (`SlurmRunner.state`):
while Slurm has it queued the job keeps its status and its current_stage says "queued in
Slurm: <reason>" (lifecycle.slurm_queued_stage); GPU time is billed only while Slurm runs
it (from the first time it is seen running; a requeue pauses the clock); and its end
takes Slurm's status and reason (a CANCELLED not asked for by brightrun, a time limit, a
node failure, ...).
"""

from __future__ import annotations

import gc
import json
import logging
import math
import os
import shlex
import shutil
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from brightrun_cli import lifecycle
from brightrun_cli.errors import BrightrunError, OperationError
from brightrun_cli.registry import costs as cost_records
from brightrun_cli.registry import datasets as dataset_rows
from brightrun_cli.registry import jobs as job_rows
from brightrun_cli.registry import points as point_rows
from brightrun_cli.registry.rows import JobRow
from brightrun_cli.registry.timeutil import utcnow
from brightrun_cli.runners import get_runner
from brightrun_cli.runners.base import LaunchRequest, RunnerLost, RunnerUnreachable
from brightrun_cli.services import notifications
from brightrun_cli.services.hosts import hosts_of
from brightrun_cli.services.jobs import has_progress_to_resume
from brightrun_cli.services.trackers import copy_remote_mlflow
from brightrun_cli.supervisor import stop
from brightrun_cli.supervisor.ingest import MetricLine, MetricsTail, point_values

if TYPE_CHECKING:
    from brightrun_cli.runners.base import Runner
    from brightrun_cli.runners.slurm import SlurmState
    from brightrun_cli.workspace import Workspace

log = logging.getLogger("brightrun.supervisor")

POLL_S = 0.2  # how often new metrics are looked for
FIRST_POLL_S = 0.05  # until this attempt's first point: submit -> first point waits on it
HEARTBEAT_S = 2.0
STOP_GRACE_S = 30.0  # TERM -> KILL: time for the trainer to save its checkpoint
LOG_TAIL_LINES = 40

class Supervisor:
    def __init__(self, ws: "Workspace", job_id: str, marker: str):
        self.ws = ws
        self.job_id = job_id
        self.marker = marker
        self.job: JobRow | None = None
        self.attempt_start: datetime | None = None
        self.previous_cost = 0.0
        self.last_train: MetricLine | None = None  # the newest line of each split
        self.last_validation: MetricLine | None = None
        self.first_point: tuple[float, int] | None = None  # (monotonic time, step) of this attempt's first new point
        self.runner: "Runner | None" = None
        self.local = True  # every host of the job is this machine (set in _prepare)
        self.handle: str | None = None
        # The billing clock: closed running periods, and when the current one began (None
        # while not running: before launch, or while a Slurm job waits in Slurm's queue).
        self.billed_s = 0.0
        self.running_since: datetime | None = None
        self.lines_since: datetime | None = None  # metric lines from then on are this attempt's trainer's
        self.scheduled = False  # a Slurm host: Slurm starts (and may restart) the trainer (set in _prepare)
        self.slurm_state: "SlurmState | None" = None  # what Slurm said last
        self.trainer_running = False  # the job has reached `running` in this attempt

    # -- plumbing

    @property
    def stop_reason(self) -> str | None:
        return stop["reason"]

    @stop_reason.setter
    def stop_reason(self, value: str | None) -> None:
        stop["reason"] = value

    @property
    def run_dir(self) -> Path:
        return lifecycle.run_dir(self.ws.home, self.job)

    def _update(self, **values: Any) -> bool:
        with self.ws.registry.write() as tx:
            return lifecycle.update_attempt(tx, self.job_id, self.marker, **values)

    def run(self) -> int:
        if not self._update(supervisor_pid=os.getpid(), heartbeat_at=utcnow()):
            log.info("job %s is no longer claimed by %s; nothing to do", self.job_id, self.marker)
            return 0
        with self.ws.registry.reading() as conn:
            self.job = job_rows.get(conn, self.job_id)
            self.previous_cost = cost_records.job_total(conn, self.job_id, "compute")
        log.info("supervising job %s, attempt %d (pid %d, marker %s)", self.job_id, self.job.resume_count + 1, os.getpid(), self.marker)
        try:
            request = self._prepare()
            if self.stop_reason:
                return self._finish(lifecycle.CANCELLED, "cancelled while initializing")
            now = utcnow()
            self.lines_since = now
            if self.scheduled:  # billed from when Slurm runs it (_follow_slurm), not from the submission
                values: dict[str, Any] = {"started_at": None, "current_stage": "submitting to Slurm"}
            else:
                self.attempt_start = self.running_since = now
                values = {"started_at": now, "current_stage": "launching"}
            if not self._update(**values, current_cost=self.previous_cost):
                log.info("job %s was ended by someone else before launch", self.job_id)
                return 0
            if request is None:
                _collect_from_now_on()
                self.handle = self.job.external_job_id
                self._update(current_stage="reattached")
                return self._follow()
            log.info("launching: %s", shlex.join(self.runner.launch_argv(request)))
            self.handle = self.runner.start(request)
            _collect_from_now_on()
            self._update(external_job_id=self.handle, current_stage=lifecycle.SLURM_QUEUED if self.scheduled else "loading")
            return self._follow()
        except BrightrunError as exc:
            log.error("job failed: %s", exc)
            self._stop_trainer()
            return self._finish(lifecycle.FAILED, str(exc))
        except Exception as exc:  # the supervisor's own bug must still end the job and its trainer
            log.exception("supervisor error")
            self._stop_trainer()
            return self._finish(lifecycle.FAILED, f"supervisor error: {type(exc).__name__}: {exc}")

    def _reattachable(self, handle: str) -> bool:
        """A remote trainer of an earlier attempt that is still running, or that finished
        cleanly while nobody watched (its outputs are still to be collected)."""
        try:
            return self.runner.poll(handle) in (None, 0)
        except RunnerUnreachable:
            return False

    def _prepare(self) -> LaunchRequest | None:
        """Run dir with the dataset split and spec.json; stop a previous attempt's trainer first.

        Returns the LaunchRequest, or None when this attempt re-attaches to the trainer of
        an earlier one: a remote trainer still running (or finished uncollected), or a local
        trainer that completed while its supervisor was gone."""
        from brightrun_cli.services.datasets import split_paths

        job = self.job
        hosts = hosts_of(self.ws, job)
        self.runner = get_runner(self.ws, hosts)
        self.local = all(h.kind == "local" for h in hosts)
        self.scheduled = hosts[0].kind == "slurm"
        path = self.run_dir
        if job.external_job_id:
            if not self.local and self._reattachable(job.external_job_id):
                # The job was failed for a lost connection (or a lost supervisor: a Slurm job
                # goes on in Slurm) but its remote trainer kept going: follow it again instead
                # of stopping it and restarting from a checkpoint.
                log.info("re-attaching to trainer %s, still running (or queued) on the remote host", job.external_job_id)
                return None
            if self.local and lifecycle.finished_uncollected(path) and self.runner.poll(job.external_job_id) is not None:
                # The supervisor died after its trainer completed: collect, don't retrain.
                log.info("trainer %s completed while unsupervised; collecting its outputs", job.external_job_id)
                return None
            # Resumed: the earlier trainer must be gone before a new one writes here.
            log.info("making sure the previous trainer %s has stopped", job.external_job_id)
            self.runner.stop(job.external_job_id, grace_s=STOP_GRACE_S)
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        with self.ws.registry.reading() as conn:
            dataset = dataset_rows.get(conn, job.dataset_id)
        train_src, val_src = split_paths(self.ws, dataset)
        for src, name in ((train_src, "train.jsonl"), (val_src, "validation.jsonl")):
            _place(Path(src), path / name)
        resume = job.resume_count > 0 and (not self.local or lifecycle.latest_checkpoint(path) is not None)
        spec = dict(job.spec or {}, job_id=job.id, resume=resume)
        tmp = path / "spec.json.tmp"
        fd = os.open(tmp, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(spec, fh, indent=2)
        os.replace(tmp, path / "spec.json")
        (path / "result.json").unlink(missing_ok=True)  # an earlier attempt's outcome must not pass for this one's
        gpu = job.gpu_config or {}
        request = LaunchRequest.for_job(self.ws.home, job.id, gpus=int(gpu.get("count") or 1), gpu_type=hosts[0].gpu_type, resume=resume)
        request.nodes = int(gpu.get("nodes") or 1)
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
        tail = MetricsTail(self.run_dir / "metrics.jsonl")
        last_beat = 0.0
        unreachable = False
        while True:
            code = None
            try:
                self.runner.sync(self.handle)
                code = self._follow_slurm() if self.scheduled else self.runner.poll(self.handle)
                if unreachable:
                    log.info("runner reachable again")
                    unreachable = False
            except RunnerLost as exc:
                return self._end_after_stop(tail, lifecycle.FAILED, str(exc))
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

    def _follow_slurm(self) -> int | None:
        """Slurm's view of the job -> its stage and the billing clock; the runner's poll code.
        Acts on changes only: Slurm is asked every few seconds, so a record may lag the
        trainer's own output (which moves the job to `running` as usual)."""
        state = self.runner.state(self.handle)
        previous, self.slurm_state = self.slurm_state, state
        if previous is not None and (previous.status, previous.reason, previous.restarts) == (state.status, state.reason, state.restarts):
            return state.poll_code
        now = utcnow()
        values: dict[str, Any] = {}
        if state.status == lifecycle.QUEUED:
            values["current_stage"] = lifecycle.slurm_queued_stage(state.reason, state.restarts)
            if self.running_since is not None:  # requeued (preemption, node failure, scontrol requeue)
                self.billed_s += (now - self.running_since).total_seconds()
                self.running_since = None
                log.info("Slurm job %s is queued again (%s); billing paused", state.slurm_job_id, state.reason or state.state)
        elif state.status == lifecycle.RUNNING and self.running_since is None:
            self.running_since = now
            if self.attempt_start is None:
                self.attempt_start = values["started_at"] = now
            values["current_stage"] = "training" if self.trainer_running else "loading"
            log.info("Slurm job %s is running on %s", state.slurm_job_id, ",".join(state.nodes) or "?")
        if values:
            self._update(**values)
        return state.poll_code

    def _billed_s(self, now: datetime) -> float:
        return self.billed_s + ((now - self.running_since).total_seconds() if self.running_since else 0.0)

    def _running_cost(self) -> float:
        return self.previous_cost + self._billed_s(utcnow()) / 3600 * lifecycle.hourly_rate(self.job)

    def _ingest(self, lines: list[MetricLine], stage: str | None = None) -> bool:
        """Insert new points and refresh the job row in one transaction; False once the job is not ours."""
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
        with self.ws.registry.write(foreign_keys=not lines) as tx:
            if lines:
                point_rows.insert_many(tx.connection(), point_values(self.job_id, lines))
            if self._trainer_wrote(lines) and lifecycle.transition(tx, self.job_id, lifecycle.RUNNING, marker=self.marker):
                self.trainer_running = True
                gpu = self.job.gpu_config or {}
                notifications.notify(
                    tx, "job_started", "Training started",
                    f"Job {self.job_id[:10]} is training on {gpu.get('count', 1)}x {gpu.get('type', 'cpu')} ({', '.join(self.job.host_names)})",
                    priority="medium", action_command=f"brightrun watch {self.job_id}", job_id=self.job_id, dataset_id=self.job.dataset_id)
            return lifecycle.update_attempt(tx, self.job_id, self.marker, **values)

    def _trainer_wrote(self, lines: list[MetricLine]) -> bool:
        """Whether this attempt's trainer wrote any of `lines` (a resumed run dir holds older ones)."""
        since = self.lines_since.timestamp() if self.lines_since else 0.0
        return any(m.time is None or m.time >= since for m in lines)

    def _progress(self, latest: MetricLine) -> dict[str, Any]:
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
        if code is not None:
            try:
                self.runner.collect(self.handle)
            except RunnerUnreachable as exc:
                log.warning("collecting the results: %s", exc)
        self._ingest(tail.read())
        # accelerate turns every failure into exit 1: the trainer's own status is in result.json.
        result = lifecycle.read_result(self.run_dir) or {}
        if result.get("exit_code") is not None and code is not None:
            code = int(result["exit_code"])
        if tail.bad_lines:
            log.warning("%d unreadable metrics.jsonl lines were skipped", tail.bad_lines)
        if code == 0 and result.get("status", "completed") == "completed":
            return self._finish(lifecycle.COMPLETED, None)
        if code is None and self.stop_reason and result.get("status") == "completed":
            # Stopped (budget, cancel) after the adapter was saved: only the answer eval was
            # cut short (recorded in final/eval_summary.json), so the training is not lost.
            log.info("the trainer had saved its adapter when it was stopped (%s): the job completed", self.stop_reason)
            return self._finish(lifecycle.COMPLETED, None)
        if self.stop_reason == "budget":
            return self._finish(lifecycle.CANCELLED, f"stopped: running cost went over --max-cost ${self.job.max_cost:,.2f}", budget=True)
        if self.stop_reason == "cancelled":
            return self._finish(lifecycle.CANCELLED, "cancelled by the user")
        if self.scheduled and self.slurm_state is not None and self.slurm_state.ended:
            return self._end_in_slurm(self.slurm_state, code, result)
        return self._finish(lifecycle.FAILED, *self._failure(code, result))

    def _end_in_slurm(self, state: "SlurmState", code: int | None, result: dict[str, Any]) -> int:
        """A Slurm job's end with Slurm's status and reason: cancelled in Slurm (scancel, not
        brightrun's), or failed for the time limit, a node failure, memory, a preemption
        (Slurm's words), or for what the trainer said (a FAILED job whose trainer failed)."""
        where = f"Slurm job {state.slurm_job_id}, {state.state}"
        if state.status == lifecycle.CANCELLED:
            return self._finish(lifecycle.CANCELLED, f"{state.reason or 'cancelled'} ({where})")
        message, stack = self._failure(code, result)
        if state.state != "FAILED" or state.reason == "time limit":
            message = f"{state.reason} ({where})"
            if result.get("status") == "stopped":
                message += f"; the trainer saved a checkpoint: 'brightrun jobs resume {self.job_id}' continues from it"
        else:
            message = f"{message} ({where})"
        return self._finish(lifecycle.FAILED, message[:2000], stack)

    def _failure(self, code: int | None, result: dict[str, Any]) -> tuple[str, str]:
        path = self.run_dir
        # launcher.log (local) holds everything the processes printed, tracebacks included;
        # remote runners bring trainer.log home.
        tail = [line for line in _log_tail(path / "launcher.log") if not line.startswith("$ ")] or _log_tail(path / "trainer.log")
        last = next((line for line in reversed(tail) if line.strip()), "")
        if result.get("error"):
            message = str(result["error"])
        elif code == 75:
            message = "the trainer was stopped by SIGTERM after saving a checkpoint"
        elif code is not None and code < 0:
            # A signal is not something the trainer said: its last log line would mislead.
            message = f"the trainer was killed by signal {-code}" + (
                " (SIGKILL: out of memory, or killed from outside; see the system log)" if code == -9 else "")
        else:
            message = f"the trainer exited with code {code}" + (f": {last.strip()}" if last else "")
        return message[:2000], "\n".join(tail[-LOG_TAIL_LINES:])

    def _finish(self, status: str, error: str | None, stack: str | None = None, *, budget: bool = False) -> int:
        path = self.run_dir
        end = utcnow()
        storage = _tree_bytes(path / "final") + _tree_bytes(path / "checkpoints") if status == lifecycle.COMPLETED else None
        extra: dict[str, Any] = {"error_message": error, "error_stack": stack, "heartbeat_at": end}
        if status == lifecycle.COMPLETED:
            extra.update(progress=100.0, current_stage="completed", estimated_completion_at=end)
        with self.ws.registry.write() as tx:
            if not lifecycle.transition(tx, self.job_id, status, marker=self.marker, **extra):
                log.info("job %s was already ended by someone else", self.job_id)
                return 0
            job = job_rows.get_in(tx, self.job_id)
            total = lifecycle.record_attempt_cost(tx, job, attempt_start=self.attempt_start or end, attempt_end=end,
                                                  running_s=self._billed_s(end), storage_bytes=storage)
            kind, title, message, options = self._event(job, status, error, total, budget)
            notifications.notify(tx, kind, title, message, job_id=job.id, dataset_id=job.dataset_id, **options)
        log.info("job %s %s (cost $%.4f)%s", self.job_id, status, total, f": {error}" if error else "")
        if status == lifecycle.COMPLETED:
            self._artifact()
        if not self.local:  # its MLflow run went to a store in the remote run dir: copy it here
            copy_remote_mlflow(self.ws, self.job_id)
        return 0 if status == lifecycle.COMPLETED else 1

    def _event(self, job: JobRow, status: str, error: str | None, total: float, budget: bool):
        short = job.id[:10]
        if budget:
            return ("budget_exceeded", "Budget exceeded", f"Job {short} was stopped at ${total:,.2f}: over its --max-cost ${job.max_cost:,.2f}; its checkpoint is kept",
                    {"priority": "high", "action_command": f"brightrun jobs resume {job.id} --max-cost {2 * (job.max_cost or 0):g}"})
        if status == lifecycle.COMPLETED:
            return ("job_completed", "Training completed", f"Job {short} completed {job.current_step} steps for ${total:,.2f}",
                    {"priority": "medium", "action_command": "brightrun models list"})
        if status == lifecycle.CANCELLED:
            if has_progress_to_resume(self.ws, job):
                kept, again = "its checkpoint is kept", f"brightrun jobs resume {job.id}"
            else:  # stopped before the trainer saved anything: only a fresh start can follow
                kept, again = "nothing to resume from", f"brightrun jobs retry {job.id}"
            return ("job_cancelled", "Training cancelled", f"Job {short} was cancelled at step {job.current_step}; {kept} (${total:,.2f} spent)",
                    {"priority": "medium", "action_command": again})
        return ("job_failed", "Training failed", f"Job {short} failed: {error}",
                {"priority": "high", "action_command": f"brightrun jobs logs {job.id}"})

    def _artifact(self) -> None:
        from brightrun_cli.services.artifacts import create_artifact

        try:
            artifact = create_artifact(self.ws, self.job_id)
            log.info("artifact %s created", artifact.id)
        except Exception as exc:  # the job itself completed; its run dir still holds the adapter
            log.exception("artifact creation failed")
            with self.ws.registry.write() as tx:
                job_rows.set_fields(tx, self.job_id, error_message=f"artifact creation failed: {exc}"[:2000])


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


def _collect_from_now_on() -> None:
    """Start-up's objects live as long as the supervisor: freeze them out of collections, then collect."""
    gc.freeze()
    gc.enable()
