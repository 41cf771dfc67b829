"""One writer per tracker, each driving the tracker's own library (imported when opened).

A sink is opened with the run's identity and params, takes batches of points, the final
values and (where the tracker keeps files) the adapter directory, and is closed with the
run's status. Every method may raise: the trainer drops a sink that does
(`trainer/trackers.py`), `export_run` reports it.

The libraries are used directly rather than through accelerate's tracker classes: those
log a point with the current time only (an exported past run must keep its own times),
send one request per call (no batches), keep global state (mlflow's active run, the
tracking URI) and take settings from MLFLOW_* environment variables over the caller's.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from .points import Point

# MLflow's defaults retry an unreachable server 7 times with exponential backoff (minutes);
# a tracker must fail fast instead of holding the end of a job.
MLFLOW_HTTP_RETRIES = "2"
MLFLOW_HTTP_TIMEOUT_S = "20"
DEFAULT_PROJECT = "brightrun"  # MLflow experiment and W&B project when the settings name none


@dataclass(frozen=True)
class RunInfo:
    """Who the run is, as every tracker records it."""

    job_id: str
    params: dict[str, str | int | float | bool]
    tags: dict[str, str] = field(default_factory=dict)  # MLflow run tags (brightrun.job_id, ...)
    start_time: float | None = None  # epoch seconds; None: now
    resume_run_id: str | None = None  # the tracker's own id of this job's run, to continue it (MLflow)


class TrackerUnavailable(Exception):
    """The tracker's library is not installed here: `message` says which, `hint` how to get it."""

    def __init__(self, package: str, detail: str):
        self.message = f"{package} is not installed on this host ({detail})"
        self.hint = f"pip install 'brightrun-cli[trackers]' (or pip install {package})"
        super().__init__(f"{self.message}; install it with {self.hint}")


def _require(module: str, package: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise TrackerUnavailable(package, str(exc)) from None


class Sink(Protocol):
    """What the three writers have in common. `where`: a path or URI a user can open;
    `run_id`: the tracker's id of the run when it has one; `keeps_files`: whether it
    stores artifacts (`log_artifact`)."""

    name: str
    keeps_files: bool
    where: str
    run_id: str | None

    def log_points(self, points: Sequence[Point]) -> None: ...

    def log_final(self, step: int, numbers: dict[str, float], texts: dict[str, str]) -> None: ...

    def log_artifact(self, directory: Path) -> str:
        """Store `directory` (the adapter) with the run; returns where it went."""
        ...

    def close(self, status: str, end_time: float | None = None) -> None: ...


# ---------------------------------------------------------------- TensorBoard

class TensorBoardSink:
    """Event files in `directory` (one file per process that wrote to it: a resumed run
    adds one), written with tensorboard's own EventFileWriter; params as the HParams
    dashboard's session, texts in the Text dashboard. No artifacts."""

    name, keeps_files, run_id = "tensorboard", False, None

    def __init__(self, directory: Path, run: RunInfo):
        _require("tensorboard", "tensorboard")
        from tensorboard.compat.proto import event_pb2, summary_pb2
        from tensorboard.plugins.hparams import summary_v2 as hparams
        from tensorboard.plugins.text import summary_v2 as text
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        self._event, self._summary, self._text = event_pb2.Event, summary_pb2.Summary, text.text_pb
        directory.mkdir(parents=True, exist_ok=True)
        self._writer = EventFileWriter(str(directory))
        self.where = str(directory)
        start = run.start_time or time.time()
        self._add(hparams.hparams_pb(run.params, trial_id=run.job_id or None, start_time_secs=start), 0, start)
        self._writer.flush()

    def _add(self, summary, step: int, wall_time: float | None) -> None:
        self._writer.add_event(self._event(wall_time=wall_time or time.time(), step=step, summary=summary))

    def _scalars(self, values: dict[str, float]):
        return self._summary(value=[self._summary.Value(tag=tag, simple_value=value) for tag, value in values.items()])

    def log_points(self, points: Sequence[Point]) -> None:
        for point in points:
            if point.values:
                self._add(self._scalars(point.values), point.step, point.time)
        self._writer.flush()

    def log_final(self, step: int, numbers: dict[str, float], texts: dict[str, str]) -> None:
        if numbers:
            self._add(self._scalars(numbers), step, None)
        for tag, value in texts.items():
            self._add(self._text(tag, value), step, None)
        self._writer.flush()

    def close(self, status: str, end_time: float | None = None) -> None:
        self._writer.close()


# ---------------------------------------------------------------- MLflow

# brightrun's end states as MLflow's; a job exported before it ended stays RUNNING there.
MLFLOW_STATUS = {"completed": "FINISHED", "failed": "FAILED", "stopped": "KILLED", "cancelled": "KILLED"}


def _mlflow_store_lock(uri: str):
    """Creating a fresh SQLite store runs MLflow's schema migrations: two jobs starting
    together on one store would race. A lock file next to the database serialises opening."""
    if not uri.startswith("sqlite:///"):
        return contextlib.nullcontext()
    import fcntl

    database = Path(uri[len("sqlite:///"):])
    database.parent.mkdir(parents=True, exist_ok=True)

    @contextlib.contextmanager
    def held():
        with open(database.with_name(database.name + ".lock"), "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    return held()


def mlflow_artifact_location(uri: str) -> str | None:
    """Where a new experiment in a local SQLite store keeps its artifacts: mlartifacts/ beside
    the database (MLflow's own default is ./mlruns under whatever directory the process runs
    in), each run in a directory named by its unique id. None for other stores, whose
    server decides."""
    if not uri.startswith("sqlite:///"):
        return None
    return (Path(uri[len("sqlite:///"):]).parent / "mlartifacts").resolve().as_uri()


class MlflowSink:
    """A run in an MLflow tracking store, through MlflowClient (no global active run).
    Without a tracking_uri (settings, then MLFLOW_TRACKING_URI), a SQLite store in
    `directory`: sqlite:///<directory>/mlflow.db."""

    name, keeps_files = "mlflow", True

    def __init__(self, settings: dict[str, str], directory: Path, run: RunInfo):
        for variable, value in (("MLFLOW_HTTP_REQUEST_MAX_RETRIES", MLFLOW_HTTP_RETRIES),
                                ("MLFLOW_HTTP_REQUEST_TIMEOUT", MLFLOW_HTTP_TIMEOUT_S)):
            os.environ.setdefault(variable, value)
        _require("mlflow", "mlflow-skinny")
        from mlflow.entities import Param, RunTag
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient
        from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH, MAX_PARAMS_TAGS_PER_BATCH

        uri = settings.get("tracking_uri") or os.environ.get("MLFLOW_TRACKING_URI") or \
            f"sqlite:///{(directory / 'mlflow.db').resolve()}"
        self.experiment = settings.get("experiment", DEFAULT_PROJECT)
        self.where = uri
        with _mlflow_store_lock(uri):
            self._client = client = MlflowClient(tracking_uri=uri)
            found = client.get_experiment_by_name(self.experiment)
            if found is None:
                try:
                    experiment_id = client.create_experiment(self.experiment, mlflow_artifact_location(uri))
                except MlflowException:  # created meanwhile by another process
                    experiment_id = client.get_experiment_by_name(self.experiment).experiment_id
            else:
                experiment_id = found.experiment_id
        if run.resume_run_id and self._continue(run.resume_run_id):
            self.run_id = run.resume_run_id
        else:
            start = int((run.start_time or time.time()) * 1000)
            self.run_id = client.create_run(experiment_id, start_time=start, tags=run.tags,
                                            run_name=run.job_id or None).info.run_id
            params = [Param(key, str(value)[:MAX_PARAM_VAL_LENGTH]) for key, value in run.params.items()]
            for chunk in _chunks(params, MAX_PARAMS_TAGS_PER_BATCH):
                client.log_batch(self.run_id, params=chunk)
        self._tag, self._tag_limit = RunTag, 5000  # MLflow's smallest tag-value limit across stores

    def _continue(self, run_id: str) -> bool:
        """Reopen this job's run from an earlier attempt (a resumed job); False when gone."""
        from mlflow.exceptions import MlflowException

        try:
            self._client.get_run(run_id)
        except MlflowException:
            return False
        self._client.update_run(run_id, status="RUNNING")
        return True

    def delete_other_runs(self, tags: dict[str, str]) -> int:
        """Delete (MLflow's soft delete: restorable, out of the UI) the experiment's other runs
        carrying every one of `tags`; how many. Tag values are brightrun's own ids and words."""
        experiment = self._client.get_run(self.run_id).info.experiment_id
        query = " and ".join(f"tags.`{key}` = '{value}'" for key, value in tags.items())
        others = [r.info.run_id for r in self._client.search_runs([experiment], filter_string=query) if r.info.run_id != self.run_id]
        for run_id in others:
            self._client.delete_run(run_id)
        return len(others)

    def log_points(self, points: Sequence[Point]) -> None:
        from mlflow.entities import Metric
        from mlflow.utils.validation import MAX_METRICS_PER_BATCH

        now = int(time.time() * 1000)
        metrics = [Metric(key, value, int(point.time * 1000) if point.time else now, point.step)
                   for point in points for key, value in point.values.items()]
        for chunk in _chunks(metrics, MAX_METRICS_PER_BATCH):
            self._client.log_batch(self.run_id, metrics=chunk)

    def log_final(self, step: int, numbers: dict[str, float], texts: dict[str, str]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(key, value, now, step) for key, value in numbers.items()]
        tags = [self._tag(key, value[: self._tag_limit]) for key, value in texts.items()]
        for chunk in _chunks(metrics, 100):
            self._client.log_batch(self.run_id, metrics=chunk)
        for chunk in _chunks(tags, 100):
            self._client.log_batch(self.run_id, tags=chunk)

    def log_artifact(self, directory: Path) -> str:
        self._client.log_artifacts(self.run_id, str(directory), artifact_path="adapter")
        return self._client.get_run(self.run_id).info.artifact_uri.rstrip("/") + "/adapter"

    def close(self, status: str, end_time: float | None = None) -> None:
        if status in MLFLOW_STATUS:
            self._client.set_terminated(self.run_id, MLFLOW_STATUS[status], end_time=int((end_time or time.time()) * 1000))


def _chunks(items: list, size: int) -> Iterable[list]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


# ---------------------------------------------------------------- Weights & Biases

class WandbSink:
    """A W&B run, offline unless the settings say `mode: online`: files under
    `directory`/wandb/offline-run-*/ that `wandb sync` uploads later. The run id is the
    job id, so a resumed job continues the same run. No console capture (the trainer's
    log is its own) and no system-stats sampler (the trainer logs GPU figures itself)."""

    name, keeps_files = "wandb", True

    def __init__(self, settings: dict[str, str], directory: Path, run: RunInfo):
        wandb = _require("wandb", "wandb")
        self._wandb = wandb
        mode = settings.get("mode", "offline")
        directory.mkdir(parents=True, exist_ok=True)
        self._run = wandb.init(
            project=settings.get("project", DEFAULT_PROJECT), entity=settings.get("entity"), dir=str(directory),
            id=run.job_id or None, name=run.job_id or None, resume="allow", mode=mode, config=run.params,
            reinit="create_new",
            settings=wandb.Settings(console="off", x_disable_stats=True, silent=True),
        )
        self.run_id = self._run.id
        self.where = str(Path(self._run.dir).parent) if mode == "offline" else (self._run.url or "")
        self._job_id = run.job_id

    def log_points(self, points: Sequence[Point]) -> None:
        for point in points:
            if point.values:
                self._run.log(dict(point.values), step=point.step)

    def log_final(self, step: int, numbers: dict[str, float], texts: dict[str, str]) -> None:
        self._run.summary.update({**numbers, **texts})

    def log_artifact(self, directory: Path) -> str:
        artifact = self._wandb.Artifact(f"adapter-{self._job_id or self.run_id}", type="model")
        artifact.add_dir(str(directory))
        self._run.log_artifact(artifact)
        return f"{self.where} (artifact {artifact.name})"

    def close(self, status: str, end_time: float | None = None) -> None:
        self._run.finish(exit_code=0 if status == "completed" else 1)


def open_sink(name: str, settings: dict[str, str], directory: Path, run: RunInfo) -> Sink:
    """Open tracker `name` for `run`. `directory` holds what the tracker writes locally:
    TensorBoard's event files, the default MLflow store, W&B's run files."""
    if name == "tensorboard":
        return TensorBoardSink(directory, run)
    if name == "mlflow":
        return MlflowSink(settings, directory, run)
    if name == "wandb":
        return WandbSink(settings, directory, run)
    raise ValueError(f"unknown tracker {name!r}")


def describe_error(exc: BaseException) -> str:
    """One line for trackers.json and the log: the exception's type and first line."""
    if isinstance(exc, TrackerUnavailable):
        return str(exc)
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {first[:300]}" if first else type(exc).__name__


def local_directory(name: str, run_dir: Path) -> Path:
    """Where tracker `name` writes locally for a run directory: TensorBoard's event files
    in tensorboard/, the default MLflow store in mlflow/, W&B's files in wandb/."""
    return run_dir if name == "wandb" else run_dir / name
