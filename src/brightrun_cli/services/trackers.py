"""Experiment trackers of jobs: what `train --report-to` puts in the spec, what became of
each tracker (`jobs show`), sending a past job to one (`jobs export`), and copying a run
that ran on another host into this machine's MLflow store.

Where MLflow data goes. config.toml's `[trackers.mlflow] tracking_uri`, else a SQLite
store in the home (`sqlite:///<home>/mlflow/mlflow.db`): one store for every job, so
`mlflow ui --backend-store-uri sqlite:///$HOME/.brightrun/mlflow/mlflow.db` shows them
all. MLFLOW_TRACKING_URI is not read: a job's destination must not depend on which
shell queued or resumed it. A local job's trainer logs into that store live. An SSH or
Slurm job's trainer cannot reach a store that is a file on this machine: it logs into a
store in its own run directory (which `collect` brings home as `runs/<id>/mlflow/`),
and when the job ends the supervisor copies the run from the registry into the
configured store (`copy_remote_mlflow`), so that store holds every job wherever it
ran. A server URI (http, https, databricks) is reached by every host directly.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from brightrun_cli import lifecycle
from brightrun_cli.errors import ConflictError, UsageError
from brightrun_cli.registry import costs as cost_rows
from brightrun_cli.registry import jobs as job_rows
from brightrun_cli.registry import models as model_rows
from brightrun_cli.registry import points as point_rows
from brightrun_cli.registry.rows import HostRow, JobRow, ModelRow
from brightrun_cli.services.jobs import wait_for_model
from brightrun_cli.trackers import TRACKERS, check_report_to
from brightrun_cli.trackers.records import read_records, write_records
from brightrun_cli.workspace import Workspace

if TYPE_CHECKING:
    from brightrun_cli.trackers.export import ExportResult

log = logging.getLogger("brightrun.supervisor")

SERVER_SCHEMES = ("http://", "https://", "databricks")
# The Python module each tracker's writer imports, and the package that provides it.
LIBRARIES = {"tensorboard": ("tensorboard", "tensorboard"), "mlflow": ("mlflow", "mlflow-skinny"), "wandb": ("wandb", "wandb")}
EVAL_SUMMARY = "eval_summary.json"


def home_mlflow_uri(home: Path) -> str:
    """The default MLflow store: a SQLite file in the home."""
    return f"sqlite:///{(home / 'mlflow' / 'mlflow.db').resolve()}"


def mlflow_uri(ws: Workspace) -> str:
    """Where this home's MLflow runs go: config.toml's tracking_uri, else the home's store."""
    return ws.config.trackers.get("mlflow", {}).get("tracking_uri") or home_mlflow_uri(ws.home)


def is_server_uri(uri: str) -> bool:
    return uri.startswith(SERVER_SCHEMES)


# ---------------------------------------------------------------------------- train


def parse_report_to(text: str | None, default: list[str]) -> list[str]:
    """`--report-to tensorboard,mlflow` as tracker names; None: config.toml's report_to;
    `none`: no trackers (overrides the config)."""
    if text is None:
        return list(default)
    if text.strip() == "none":
        return []
    names = [name.strip() for name in text.split(",") if name.strip()]
    if "none" in names:
        raise UsageError(f"--report-to {text}: 'none' means no trackers and cannot be combined with others",
                         f"pass --report-to none alone, or a comma-separated list of {', '.join(TRACKERS)}")
    try:
        return check_report_to(names, "--report-to")
    except ValueError as exc:
        raise UsageError(str(exc), f"pass a comma-separated list of {', '.join(TRACKERS)}, or none") from None


def tracker_spec(ws: Workspace, report_to: str | None, hosts: list[HostRow]) -> dict[str, Any]:
    """The spec's `report_to` and `trackers` keys for a job on `hosts` ({} without trackers).

    A local job gets the MLflow store spelled out (the trainer would otherwise pick a store
    in its run dir); a remote one only a server URI (see the module docstring). A tracker
    whose library this machine lacks is refused for a local job here rather than dropped
    by the trainer with a warning after the job started."""
    names = parse_report_to(report_to, ws.config.report_to)
    if not names:
        return {}
    local = all(h.kind == "local" for h in hosts)
    if local:
        missing = [LIBRARIES[name][1] for name in names if importlib.util.find_spec(LIBRARIES[name][0]) is None]
        if missing:
            raise UsageError(f"--report-to {','.join(names)}: {', '.join(missing)} is not installed",
                             "pip install 'brightrun-cli[trackers]', or leave that tracker out")
    settings = {name: dict(ws.config.trackers.get(name, {})) for name in names}
    if "mlflow" in names:
        uri = mlflow_uri(ws)
        if local or is_server_uri(uri):
            settings["mlflow"]["tracking_uri"] = uri
        else:
            settings["mlflow"].pop("tracking_uri", None)
    spec: dict[str, Any] = {"report_to": names}
    if any(settings.values()):
        spec["trackers"] = {name: values for name, values in settings.items() if values}
    return spec


# ---------------------------------------------------------------------------- jobs show


class JobTrackers(msgspec.Struct, frozen=True):
    """A job and what became of each of its trackers (trackers.json records, by name)."""

    job: JobRow
    trackers: dict[str, dict[str, Any]]
    attempts: list[dict[str, Any]] = []  # each attempt's run time and compute cost (registry.costs.attempts)

    def to_json(self) -> dict[str, Any]:
        return {**self.job.to_json(), "trackers": self.trackers, "attempts": self.attempts}


def show_job(ws: Workspace, ref: str) -> JobTrackers:
    """`jobs show`: the job row and its trackers' records. A tracker the spec names that
    has no record is `pending` while the job is queued or starting, `not_started` once it
    ended (its trainer never got to the trackers)."""
    with ws.registry.reading() as conn:
        job = job_rows.resolve(conn, ref)
        attempts = cost_rows.attempts(conn, job.id)
    records = read_records(lifecycle.run_dir(ws.home, job))
    status = "not_started" if job.status in lifecycle.TERMINAL else "pending"
    for name in (job.spec or {}).get("report_to") or []:
        records.setdefault(name, {"status": status, "where": None, "run_id": None, "points": 0, "artifact": None, "error": None})
    return JobTrackers(job, records, attempts)


# ---------------------------------------------------------------------------- export


EXPORT_HINT = {"tensorboard": "tensorboard --logdir {where}", "mlflow": "mlflow ui --backend-store-uri {where}"}


def export_job(ws: Workspace, ref: str, to: str, out: Path | None = None) -> "ExportResult":
    """`jobs export JOB --to mlflow|tensorboard [--out DIR]`: send a past (or running) job,
    read from the registry, to a tracker. MLflow: the configured store, or a SQLite store
    in `out`; TensorBoard: event files in `out` (default `<home>/tensorboard/<job id>`),
    which must not hold an earlier export (TensorBoard would draw both)."""
    from brightrun_cli.trackers.export import EXPORT_TARGETS

    if to not in EXPORT_TARGETS:
        raise UsageError(f"--to {to}: cannot export there", f"use one of {', '.join(EXPORT_TARGETS)}")
    with ws.registry.reading() as conn:
        job = job_rows.resolve(conn, ref)
        has_points = point_rows.first(conn, job.id) is not None
    if job.started_at is None and not has_points:  # queued, or ended before it started: an empty run in the tracker
        if job.status in lifecycle.TERMINAL:
            raise ConflictError(f"job {job.id} {job.status} before it started: it has no metrics to export", "export a job that ran")
        raise ConflictError(f"job {job.id} has not started: it has no metrics to export yet",
                            f"export it once it runs (brightrun watch {job.id}), or report it live with 'train --report-to {to}'")
    if to == "mlflow":
        settings = dict(ws.config.trackers.get("mlflow", {}))
        directory = (out or ws.home / "mlflow").expanduser().resolve()
        settings["tracking_uri"] = f"sqlite:///{directory / 'mlflow.db'}" if out is not None else mlflow_uri(ws)
    else:
        settings = {}
        directory = (out or ws.home / "tensorboard" / job.id).expanduser().resolve()
        if directory.is_dir() and any(directory.glob("events.out.tfevents.*")):
            raise ConflictError(f"{directory} already holds TensorBoard event files", "pass another --out DIR, or remove that directory")
    return _export(ws, job, to, settings, directory)


def _export(ws: Workspace, job: JobRow, to: str, settings: dict[str, str], directory: Path, **options: Any) -> "ExportResult":
    """export_run fed from the registry (`options`: export_run's source and replace)."""
    from brightrun_cli.trackers.export import export_run

    if to == "mlflow":
        _quiet_mlflow_logging()
    with ws.registry.reading() as conn:
        points = [p.to_json() for p in point_rows.of_job(conn, job.id)]
        model = model_rows.of_job(conn, job.id)
    if model is None and job.status == lifecycle.COMPLETED:  # just ended: its supervisor is still storing the model
        model = wait_for_model(ws, job.id)
    model = model if model is not None and model.deleted_at is None else None
    with tempfile.TemporaryDirectory(dir=ws.cache_dir, prefix="export-") as scratch:
        adapter = _adapter_dir(ws, model, Path(scratch))
        return export_run(to, job.to_json(), points, quality=model.quality_metrics if model else None,
                          eval_summary=eval_summary(ws, job, model), adapter_dir=adapter, settings=settings,
                          directory=directory, **options)


def _quiet_mlflow_logging() -> None:
    """MLflow logs at INFO to stderr ("Updating database tables" on each new SQLite store):
    its loggers (and alembic's, which it migrates with) to WARNING. After mlflow's import,
    which sets its loggers up (MLFLOW_LOGGING_LEVEL, INFO by default)."""
    try:
        import mlflow  # noqa: F401
    except ImportError:  # export_run says what is missing
        return
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _adapter_dir(ws: Workspace, model: ModelRow | None, scratch: Path) -> Path | None:
    """The model's stored files as a local directory (a remote store's are fetched into `scratch`)."""
    if model is None or not model.storage_path:
        return None
    local = ws.storage.local_path(model.storage_path)
    if local is not None:
        return local if local.is_dir() else None
    fetched = ws.storage.fetch_dir(model.storage_path, scratch / "adapter")
    return fetched if fetched.is_dir() else None


def eval_summary(ws: Workspace, job: JobRow, model: ModelRow | None) -> dict[str, Any] | None:
    """The job's answer-eval summary: final/eval_summary.json in its run dir, else the copy
    stored with its model; None when the job has none."""
    text = model_file(ws, job, model, EVAL_SUMMARY)
    try:
        summary = json.loads(text) if text is not None else None
    except ValueError:
        return None
    return summary if isinstance(summary, dict) else None


def model_file(ws: Workspace, job: JobRow, model: ModelRow | None, name: str) -> str | None:
    """A file of the job's final/ (its run dir), else of its stored model; None when neither has it."""
    path = lifecycle.run_dir(ws.home, job) / "final" / name
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        pass
    if model is None or not model.storage_path or not any(f.get("path") == name for f in model.artifacts.get("files", [])):
        return None
    try:
        with ws.storage.open(f"{model.storage_path}/{name}") as handle:
            return handle.read().decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return None


# ---------------------------------------------------------------------------- a remote job's MLflow run


def copy_remote_mlflow(ws: Workspace, job_id: str) -> None:
    """After an SSH or Slurm job ended and its files were collected: copy its run into this
    machine's MLflow store, and say so in its trackers.json (the mlflow record then names
    that store, with the trainer's own record on the host under `remote`). Only for a job whose spec
    sent MLflow to a store in the remote run dir (no server URI); never raises (the job
    has ended already; a failure is recorded in trackers.json and the supervisor's log)."""
    with ws.registry.reading() as conn:
        job = job_rows.get(conn, job_id)
    spec = (job.spec or {}) if job is not None else {}
    if "mlflow" not in (spec.get("report_to") or []) or spec.get("trackers", {}).get("mlflow", {}).get("tracking_uri"):
        return
    run_dir = lifecycle.run_dir(ws.home, job)
    records = read_records(run_dir)
    if "mlflow" not in records:  # the trainer never got to its trackers: nothing was sent anywhere
        return
    remote = records["mlflow"]
    try:
        settings = dict(ws.config.trackers.get("mlflow", {}), tracking_uri=mlflow_uri(ws))
        # A resumed job is copied again when its new attempt ends: that run replaces the earlier copy.
        result = _export(ws, job, "mlflow", settings, ws.home / "mlflow", source="remote", replace=True)
        records["mlflow"] = {"status": "done", "where": result.where, "run_id": result.run_id, "points": result.points,
                             "artifact": result.artifact, "error": None, "remote": remote}
        log.info("MLflow run of job %s copied into %s (run %s)", job_id, result.where, result.run_id)
    except Exception as exc:  # a tracker never fails a job
        error = f"copying the run into this machine's MLflow store: {getattr(exc, 'message', None) or exc}"
        records["mlflow"] = {**remote, "status": "failed", "error": error, "remote": remote}
        log.warning("job %s: %s", job_id, error)
    write_records(run_dir, records)
