"""Send a past run, read from the registry, to a tracker (`brightrun jobs export JOB --to ...`).

The same writers and metric names as a live run's (`trackers.sinks`, `trackers.points`),
so an exported job and one trained with `report_to` look alike in the tracker. Each
export makes a new tracker run (MLflow: a new run named after the job, tagged
brightrun.job_id and brightrun.source=export; TensorBoard: a new event file in the
directory given).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from brightrun_cli.errors import OperationError, UsageError

from . import SETTINGS, check_settings
from .points import Point, epoch_seconds, final_values, point_from_registry_row, run_params

EXPORT_TARGETS = ("mlflow", "tensorboard")


@dataclass(frozen=True)
class ExportResult:
    tracker: str
    where: str  # the TensorBoard directory, or the MLflow tracking URI
    run_id: str | None  # MLflow's run id
    points: int
    artifact: str | None  # where the adapter went (MLflow), None when not sent


def export_run(
    to: str,
    run: dict[str, Any],
    points: list[dict[str, Any]],
    *,
    quality: dict[str, Any] | None = None,
    eval_summary: dict[str, Any] | None = None,
    adapter_dir: Path | None = None,
    settings: dict[str, str] | None = None,
    directory: Path | None = None,
    source: str = "export",
    replace: bool = False,
) -> ExportResult:
    """Send job `run` to tracker `to` and say where it went.

    run: the job's fields (id, base_model, hyperparameters, gpu_config {type, count},
      status, queued_at/started_at/completed_at, final_cost or current_cost,
      estimated_total_cost); missing ones are left out.
    points: its metrics_points rows (step, split, epoch, training_loss, validation_loss,
      learning_rate, gradient_norm, throughput, gpu_utilization, gpu_memory, timestamp).
    quality: the model's quality_metrics; eval_summary: final/eval_summary.json;
    adapter_dir: the adapter's files, stored with the run where the tracker keeps files.
    settings: the tracker's settings (as the spec's `trackers.<name>`: tracking_uri, experiment).
    directory: TensorBoard: where the event files go (required); MLflow: the store used
      when neither settings nor MLFLOW_TRACKING_URI name one (sqlite:///<directory>/mlflow.db).
    source: the run's brightrun.source tag (export; remote for a remote job's run copied home).
    replace: MLflow only: delete (MLflow's soft delete) the job's earlier runs of the same
      source in that experiment, so that copying a resumed job again leaves one run.
    """
    from .sinks import TrackerUnavailable, describe_error, open_sink

    if to not in EXPORT_TARGETS:
        raise UsageError(f"cannot export to {to!r}", f"use one of {', '.join(EXPORT_TARGETS)}")
    try:
        settings = check_settings({to: settings or {}})[to]
    except ValueError as exc:
        raise UsageError(str(exc), f"{to} settings: {', '.join(SETTINGS[to]) or 'none'}") from None
    if directory is None:
        raise UsageError(f"exporting to {to} needs a directory", "pass the directory for its local files")
    if replace and to != "mlflow":
        raise UsageError(f"replace applies to MLflow runs, not {to}", "export without replace")
    info = _run_info(run, source)
    converted = sorted((p for p in map(point_from_registry_row, points) if p is not None), key=_in_order)
    numbers, texts = final_values(quality=quality, eval=eval_summary, cost=_costs(run))
    status = str(run.get("status") or "unknown")
    texts["run/status"] = status
    try:
        sink = open_sink(to, settings, directory, info)
        sink.log_points(converted)
        sink.log_final(max((p.step for p in converted), default=0), numbers, texts)
        artifact = sink.log_artifact(adapter_dir) if adapter_dir is not None and sink.keeps_files else None
        sink.close(status, epoch_seconds(run.get("completed_at")))
        if replace:  # only once the new run is complete
            sink.delete_other_runs({"brightrun.job_id": info.job_id, "brightrun.source": source})
    except TrackerUnavailable as exc:
        raise UsageError(exc.message, exc.hint) from None
    except Exception as exc:
        raise OperationError(f"export of job {info.job_id} to {to} failed: {describe_error(exc)}",
                             "check the tracker's settings (tracking_uri, experiment) and that it is reachable") from None
    return ExportResult(tracker=to, where=sink.where, run_id=sink.run_id, points=len(converted), artifact=artifact)


def _in_order(point: Point) -> tuple[int, bool]:
    """As the trainer wrote them: the base model's step-0 validation point before the
    first step; at later steps the training point, then that step's validation point."""
    return point.step, (point.split == "validation") != (point.step == 0)


def _run_info(run: dict[str, Any], source: str):
    from .sinks import RunInfo

    gpu = run.get("gpu_config") or {}
    params = run_params(str(run.get("base_model") or ""), dict(run.get("hyperparameters") or {}),
                        gpu_type=gpu.get("type"), gpu_count=gpu.get("count"))
    tags = {"brightrun.job_id": str(run.get("id") or ""), "brightrun.source": source,
            "brightrun.status": str(run.get("status") or "")}
    start = epoch_seconds(run.get("started_at")) or epoch_seconds(run.get("queued_at"))
    return RunInfo(job_id=str(run.get("id") or ""), params=params, tags=tags, start_time=start)


def _costs(run: dict[str, Any]) -> dict[str, float | None]:
    cost = run.get("final_cost") if run.get("final_cost") is not None else run.get("current_cost")
    return {"usd": cost, "estimated_usd": run.get("estimated_total_cost")}
