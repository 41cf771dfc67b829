"""Registry tables. Field names follow the reference's migration (minus user_id/RLS:
the registry is one user's own file); brightrun's additions are commented.

These classes describe the schema as the numbered migrations in `migrations.py`
leave it; `tests/test_registry.py` checks the two agree. Change the schema only by
adding a migration *and* updating the class.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from datetime import timezone

from sqlalchemy import JSON, Column, Index, UniqueConstraint, text
from sqlalchemy.types import DateTime, TypeDecorator
from sqlmodel import Field, SQLModel

from brightrun_cli.registry.ids import new_id
from brightrun_cli.registry.migrations import MEASURED_JOBS
from brightrun_cli.registry.timeutil import utcnow


class UTCDateTime(TypeDecorator):
    """Naive UTC in the database, timezone-aware in Python."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the registry; use timeutil.utcnow()")
        return value.astimezone(timezone.utc).replace(tzinfo=None)

    def process_result_value(self, value, dialect):
        return None if value is None else value.replace(tzinfo=timezone.utc)


def _json(nullable: bool = True) -> Any:
    return Field(default=None, sa_column=Column(JSON, nullable=nullable))


def _time(nullable: bool = True, default: bool = False) -> Any:
    if default:
        return Field(default_factory=utcnow, sa_column=Column(UTCDateTime, nullable=False))
    return Field(default=None, sa_column=Column(UTCDateTime, nullable=nullable))


class Dataset(SQLModel, table=True):
    __tablename__ = "datasets"
    __table_args__ = (
        # Names are unique among live (not soft-deleted) datasets.
        Index("ux_datasets_live_name", "name", unique=True, sqlite_where=text("deleted_at IS NULL")),
        Index("ix_datasets_status", "status"),
        Index("ix_datasets_created_id", "created_at", "id"),
    )

    id: str = Field(default_factory=new_id, primary_key=True)
    name: str
    description: str | None = None
    format: str = "brightrun_lora_v4"  # format of the *source*; storage always holds v4
    status: str = "uploading"  # uploading -> validating -> ready | error
    storage_path: str = Field(unique=True)  # relative to the storage root, never a URL
    file_name: str
    file_size: int
    source_uri: str | None = None  # brightrun: where it was added from (path or URL)
    content_sha256: str | None = None  # brightrun: of the stored v4 file
    total_conversations: int | None = None  # brightrun
    total_training_pairs: int | None = None
    total_validation_pairs: int | None = None
    total_tokens: int | None = None
    avg_turns_per_conversation: float | None = None
    avg_tokens_per_turn: float | None = None
    token_count_method: str | None = None  # brightrun: "tokenizer:<name>" or "approx:<rule>"
    base_model: str | None = None  # brightrun: model whose tokenizer/context was used
    val_split: float = 0.1  # brightrun
    stats: dict | None = _json()  # brightrun: length distribution and other stats
    training_ready: bool = False
    validated_at: datetime | None = _time()
    validation_errors: list | None = _json()  # first N: [{line, error, suggestion}]
    validation_error_count: int = 0  # brightrun: count of all errors
    sample_data: list | None = _json()
    error_message: str | None = None  # brightrun: why status is error (one line)
    created_at: datetime = _time(default=True)
    updated_at: datetime = _time(default=True)
    deleted_at: datetime | None = _time()
    # brightrun, migration 4: first N warnings [{line, warning, suggestion}] and their count
    # (they do not block training); lines left out by `dataset add --skip-invalid` (their
    # problems are the validation_errors of a ready dataset).
    validation_warnings: list | None = _json()
    validation_warning_count: int = 0
    skipped_lines: int = 0


class Host(SQLModel, table=True):
    """brightrun: a compute target. `local` always exists (created by migration 1)."""

    __tablename__ = "hosts"

    id: str = Field(default_factory=new_id, primary_key=True)
    name: str = Field(unique=True)
    kind: str = "ssh"  # local | ssh
    ssh_user: str | None = None
    ssh_host: str | None = None
    ssh_port: int | None = None
    identity_file: str | None = None  # a path only; never key material
    gpus: int = 1  # slots for the queue
    gpu_type: str = "cpu"
    python: str | None = None
    workdir: str | None = None
    options: dict | None = _json()
    last_check: dict | None = _json()
    last_checked_at: datetime | None = _time()
    created_at: datetime = _time(default=True)
    updated_at: datetime = _time(default=True)


class TrainingJob(SQLModel, table=True):
    __tablename__ = "training_jobs"
    __table_args__ = (
        Index("ix_training_jobs_status", "status"),
        Index("ix_training_jobs_dataset_id", "dataset_id"),
        Index("ix_training_jobs_host_queue", "host_id", "status", "queued_at"),
        Index("ix_training_jobs_live_queued", "deleted_at", "queued_at", "id"),
        Index("ix_training_jobs_ended", "status", "completed_at", "started_at"),
        Index("ix_training_jobs_measured", text("json_extract(gpu_config, '$.type')"), "base_model", "completed_at", sqlite_where=text(MEASURED_JOBS)),
    )

    id: str = Field(default_factory=new_id, primary_key=True)
    dataset_id: str = Field(foreign_key="datasets.id")
    preset_id: str
    base_model: str  # brightrun
    hyperparameters: dict = _json(nullable=False)
    gpu_config: dict = _json(nullable=False)  # {"type": "A100-80GB", "count": 2}
    host_id: str | None = Field(default=None, foreign_key="hosts.id")  # brightrun
    hosts: list | None = _json()  # brightrun: host names of a multi-node job
    status: str = "queued"
    current_stage: str = "queued"
    progress: float = 0.0
    current_epoch: int = 0
    total_epochs: int
    current_step: int = 0
    total_steps: int | None = None
    tokens_processed: int = 0  # brightrun
    current_metrics: dict | None = _json()
    queued_at: datetime = _time(default=True)
    started_at: datetime | None = _time()
    completed_at: datetime | None = _time()
    estimated_completion_at: datetime | None = _time()
    estimated_duration_hours: float | None = None  # brightrun
    current_cost: float = 0.0
    estimated_total_cost: float
    max_cost: float | None = None  # brightrun: --max-cost budget
    final_cost: float | None = None
    error_message: str | None = None
    error_stack: str | None = None
    retry_count: int = 0
    resume_count: int = 0  # brightrun
    external_job_id: str | None = Field(default=None, unique=True)
    artifact_id: str | None = None
    spec: dict | None = _json()  # brightrun: resolved trainer spec
    run_dir: str | None = None  # brightrun: relative to the home, e.g. runs/<id>
    supervisor_pid: int | None = None  # brightrun
    supervisor_marker: str | None = None  # brightrun: token on the supervisor's argv
    heartbeat_at: datetime | None = _time()  # brightrun
    created_at: datetime = _time(default=True)
    updated_at: datetime = _time(default=True)
    deleted_at: datetime | None = _time()


class MetricPoint(SQLModel, table=True):
    __tablename__ = "metrics_points"
    __table_args__ = (
        # Re-sent points (resume, reconnect) are ignored, not duplicated.
        UniqueConstraint("job_id", "step", "split", name="ux_metrics_points_job_step_split"),
    )

    id: int | None = Field(default=None, primary_key=True)  # integer: fast bulk inserts
    job_id: str = Field(foreign_key="training_jobs.id")
    timestamp: datetime = _time(default=True)
    epoch: float
    step: int
    split: str = "train"  # brightrun: train | validation
    training_loss: float | None = None
    validation_loss: float | None = None
    learning_rate: float | None = None
    gradient_norm: float | None = None
    throughput: float | None = None  # tokens per second
    gpu_utilization: float | None = None
    gpu_memory: float | None = None  # brightrun: GiB


class ModelArtifact(SQLModel, table=True):
    __tablename__ = "model_artifacts"
    __table_args__ = (Index("ix_model_artifacts_live_created", "deleted_at", "created_at", "id"), Index("ix_model_artifacts_name", "name", "created_at"))

    id: str = Field(default_factory=new_id, primary_key=True)
    job_id: str = Field(foreign_key="training_jobs.id", unique=True)
    dataset_id: str = Field(foreign_key="datasets.id")
    name: str
    version: str = "1.0.0"
    description: str | None = None
    status: str = "stored"
    base_model: str | None = None  # brightrun
    storage_path: str | None = None  # brightrun: e.g. models/<id>, relative to the storage root
    deployed_at: datetime | None = _time()
    quality_metrics: dict = _json(nullable=False)
    training_summary: dict = _json(nullable=False)
    configuration: dict = _json(nullable=False)
    artifacts: dict = _json(nullable=False)
    parent_model_id: str | None = Field(default=None, foreign_key="model_artifacts.id")
    created_at: datetime = _time(default=True)
    updated_at: datetime = _time(default=True)
    deleted_at: datetime | None = _time()


class ModelEval(SQLModel, table=True):
    """brightrun: an answer eval of a model (migration 6): base and tuned aggregates per metric."""

    __tablename__ = "model_evals"
    __table_args__ = (Index("ix_model_evals_model_created", "model_id", "created_at"),)

    id: str = Field(default_factory=new_id, primary_key=True)
    model_id: str = Field(foreign_key="model_artifacts.id")
    dataset_id: str | None = Field(default=None, foreign_key="datasets.id")  # the held-out split evaluated on
    source: str  # job (the eval at the end of training) | command (models eval)
    sample_count: int
    max_new_tokens: int | None = None
    base: dict | None = _json()  # the base model's aggregates (generation/metrics.py names)
    tuned: dict | None = _json()  # the tuned model's
    samples_path: str | None = None  # storage key of the eval.jsonl
    created_at: datetime = _time(default=True)


class CostRecord(SQLModel, table=True):
    __tablename__ = "cost_records"
    __table_args__ = (Index("ix_cost_records_billing_period", "billing_period"), Index("ix_cost_records_recorded", "recorded_at", "amount"))

    id: str = Field(default_factory=new_id, primary_key=True)
    job_id: str | None = Field(default=None, foreign_key="training_jobs.id")
    cost_type: str  # compute | storage
    amount: float
    gpu_type: str | None = None  # brightrun: for `costs --by gpu`
    details: dict | None = _json()
    billing_period: str  # first day of the month, YYYY-MM-01
    recorded_at: datetime = _time(default=True)


class Notification(SQLModel, table=True):
    __tablename__ = "notifications"
    __table_args__ = (Index("ix_notifications_read_created", "read", "created_at"),)

    id: str = Field(default_factory=new_id, primary_key=True)
    type: str
    title: str
    message: str
    priority: str = "medium"  # low | medium | high
    read: bool = False
    action_command: str | None = None  # brightrun: the command to run next (was action_url)
    job_id: str | None = None  # brightrun
    dataset_id: str | None = None  # brightrun
    artifact_id: str | None = None  # brightrun
    metadata_: dict | None = Field(default=None, sa_column=Column("metadata", JSON, nullable=True))
    created_at: datetime = _time(default=True)


ALL_TABLES = [Dataset, Host, TrainingJob, MetricPoint, ModelArtifact, CostRecord, Notification]
