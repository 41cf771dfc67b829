"""Turning a completed job's run directory into a stored model artifact.

`create_artifact(ws, job_id)` is called by the supervisor when a job completes, and
may be called again after a crash. The artifact is assembled in a local staging
directory (`cache/artifacts/<job_id>/`), uploaded to `models/<artifact_id>/`, and
only then becomes visible: the `model_artifacts` row, the job's `artifact_id` and the
`artifact_ready` notification commit in one transaction. The artifact id is chosen
once and remembered in the staging directory, so a re-run after a crash midway
replaces the partial upload under the same key instead of leaving a second one:
exactly one complete artifact per job.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from datetime import datetime
from pathlib import Path

from brightrun_cli import lifecycle
from brightrun_cli.errors import NotFoundError, OperationError
from brightrun_cli.generation import evaluate as answer_eval
from brightrun_cli.registry import datasets as dataset_rows
from brightrun_cli.registry import jobs as job_rows
from brightrun_cli.registry import models as model_rows
from brightrun_cli.registry import points as point_rows
from brightrun_cli.registry.engine import DuplicateRow
from brightrun_cli.registry.ids import new_id
from brightrun_cli.registry.rows import DatasetRow, JobRow, ModelRow, PointRow
from brightrun_cli.registry.timeutil import utcnow
from brightrun_cli.services.evals import record_job_eval
from brightrun_cli.services.model_card import render_model_card
from brightrun_cli.services.notifications import notify
from brightrun_cli.services.quality import quality_metrics
from brightrun_cli.workspace import Workspace

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
METRICS_FILE = "metrics.jsonl"
RESULT_FILE = "result.json"
CARD_FILE = "README.md"


def storage_prefix(artifact_id: str) -> str:
    return f"models/{artifact_id}"


def create_artifact(ws: Workspace, job_id: str) -> ModelRow:
    """Store the adapter of completed job `job_id` and register it; idempotent.

    Returns the job's artifact (the existing one when it was already created).
    Raises NotFoundError for an unknown job and OperationError when the run
    directory has no final adapter.
    """
    with ws.registry.reading() as conn:
        job = job_rows.get(conn, job_id)
        if job is None:
            raise NotFoundError(f"no job '{job_id}'", "run 'brightrun jobs list' to see them")
        existing = model_rows.of_job(conn, job_id)
        dataset = dataset_rows.get(conn, job.dataset_id)
        points = point_rows.of_job(conn, job_id)
    staging = ws.cache_dir / "artifacts" / job_id
    if existing is not None:
        shutil.rmtree(staging, ignore_errors=True)
        return existing

    final = lifecycle.run_dir(ws.home, job) / "final"
    missing = [name for name in ADAPTER_FILES if not (final / name).is_file()]
    if missing:
        raise OperationError(
            f"job {job_id} has no final adapter ({', '.join(missing)} missing in {final})",
            "only a completed job yields a model; see 'brightrun jobs show'",
        )
    artifact_id = _claim_id(staging)
    files = staging / "files"
    shutil.rmtree(files, ignore_errors=True)
    shutil.copytree(final, files)
    artifact, answers = _assemble(ws, artifact_id, job, dataset, points, files)

    # A previous attempt may have uploaded part of this artifact: start its key afresh.
    ws.storage.delete(artifact.storage_path)
    ws.storage.put_dir(files, artifact.storage_path)
    stored = _register(ws, artifact, answers)
    shutil.rmtree(staging, ignore_errors=True)
    return stored


def _assemble(ws: Workspace, artifact_id: str, job: JobRow, dataset: DatasetRow | None, points: list[PointRow],
              files: Path) -> tuple[ModelRow, dict]:
    """Add result.json, the metrics history and the model card to `files` (a copy of final/,
    with the job's answer eval when it ran); return the row to store and the eval summary."""
    result = _read_json(lifecycle.run_dir(ws.home, job) / RESULT_FILE)
    answers = _read_json(files / answer_eval.SUMMARY_FILE)
    if result:
        (files / RESULT_FILE).write_text(json.dumps(result, indent=2) + "\n")
    _write_metrics(files / METRICS_FILE, points)
    train = [(p.step, p.training_loss) for p in points if p.split == "train" and p.training_loss is not None]
    validation = [(p.step, p.validation_loss) for p in points if p.split == "validation" and p.validation_loss is not None]
    name = _name(dataset, job)
    with ws.registry.reading() as conn:
        version = f"1.{model_rows.versions_of(conn, name)}.0"  # 1.0.0, then 1.1.0, ... (removed ones count)
    now = utcnow()
    artifact = ModelRow(
        id=artifact_id, job_id=job.id, dataset_id=job.dataset_id, name=name, version=version, description=None,
        status="stored", base_model=job.base_model, storage_path=storage_prefix(artifact_id), deployed_at=None,
        quality_metrics=quality_metrics(
            train,
            validation,
            base_validation_loss=result.get("base_validation_loss"),
            final_validation_loss=result.get("final_validation_loss"),
            final_training_loss=result.get("final_training_loss"),
            answers=answers,
        ),
        training_summary=_training_summary(job, result),
        configuration={"preset_id": job.preset_id, "hyperparameters": job.hyperparameters, "gpu_config": job.gpu_config},
        artifacts={}, parent_model_id=None, created_at=now, updated_at=now, deleted_at=None,
    )
    versions = _read_json(files / "versions.json")
    card = render_model_card(artifact, dataset, train, validation, versions, answers=answers, samples=_eval_samples(files))
    (files / CARD_FILE).write_text(card)
    return artifact.replace(artifacts={"files": _describe(files)}), answers


def _eval_samples(files: Path) -> list[dict]:
    try:
        text = (files / answer_eval.EVAL_FILE).read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _register(ws: Workspace, artifact: ModelRow, answers: dict) -> ModelRow:
    """Row, job link and notification in one transaction: the artifact exists only once all three do."""
    try:
        with ws.registry.write() as tx:
            stored = model_rows.insert(tx, **artifact.to_fields())
            record_job_eval(tx, stored, answers)
            job_rows.set_fields(tx, artifact.job_id, artifact_id=artifact.id)
            score = artifact.quality_metrics["overall_score"]
            notify(
                tx,
                "artifact_ready",
                "Model ready",
                f"{artifact.name} v{artifact.version} is stored. Quality score: {score}/5",
                priority="high",
                action_command=f"brightrun models show {artifact.id}",
                job_id=artifact.job_id,
                dataset_id=artifact.dataset_id,
                artifact_id=artifact.id,
                metadata={"artifact_id": artifact.id, "job_id": artifact.job_id, "overall_score": score},
            )
    except DuplicateRow:
        # Another process registered this job's artifact first (same staging id, same key).
        with ws.registry.reading() as conn:
            existing = model_rows.of_job(conn, artifact.job_id)
        if existing is None:
            raise
        return existing
    return stored


def _claim_id(staging: Path) -> str:
    """The artifact id of this job's attempts: chosen once, reused by every re-run."""
    staging.mkdir(parents=True, exist_ok=True)
    marker = staging / "artifact_id"
    if marker.is_file():
        return marker.read_text().strip()
    tmp = staging / f".artifact_id.{os.getpid()}"
    tmp.write_text(new_id())
    os.replace(tmp, marker)
    return marker.read_text().strip()


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise OperationError(f"cannot read {path}: {exc}", "the run directory is damaged; rerun the job") from exc


def _write_metrics(path: Path, points) -> None:
    """The metrics history in the trainer's metrics.jsonl format (docs/ARCHITECTURE.md)."""
    with path.open("w") as handle:
        for p in points:
            line = {
                "time": p.timestamp.timestamp(),
                "split": p.split,
                "epoch": p.epoch,
                "step": p.step,
                "training_loss": p.training_loss,
                "validation_loss": p.validation_loss,
                "learning_rate": p.learning_rate,
                "grad_norm": p.gradient_norm,
                "tokens_per_sec": p.throughput,
                "gpu_utilization": p.gpu_utilization,
                "gpu_memory": p.gpu_memory,
            }
            handle.write(json.dumps(line) + "\n")


def _describe(files: Path) -> list[dict]:
    described = []
    for path in sorted(p for p in files.rglob("*") if p.is_file()):
        with path.open("rb") as handle:
            digest = hashlib.file_digest(handle, "sha256").hexdigest()
        described.append({"path": path.relative_to(files).as_posix(), "size": path.stat().st_size, "sha256": digest})
    return described


def _name(dataset: DatasetRow | None, job: JobRow) -> str:
    when: datetime = job.completed_at or utcnow()
    return f"{dataset.name if dataset else 'model'}-{when:%Y-%m-%d}"


def _training_summary(job: JobRow, result: dict) -> dict:
    duration = result.get("duration_s")
    if duration is None and job.started_at and job.completed_at:
        duration = (job.completed_at - job.started_at).total_seconds()
    final_loss = result.get("final_training_loss")
    if final_loss is None and job.current_metrics:
        final_loss = job.current_metrics.get("training_loss")
    return {
        "epochs_completed": result.get("epochs", job.current_epoch),
        "total_steps": result.get("steps", job.current_step),
        "total_tokens": result.get("tokens", job.tokens_processed),
        "final_loss": final_loss if final_loss is None or math.isfinite(final_loss) else None,
        "duration_s": duration,
        "training_duration_hours": None if duration is None else duration / 3600,
        "total_cost": job.final_cost if job.final_cost is not None else job.current_cost,
    }
