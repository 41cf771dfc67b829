"""Typed rows: what every read of the registry returns.

One frozen dataclass per table, its fields named and ordered as the migrated schema's
columns (tests/test_registry.py checks them against a freshly migrated database). They
are read with plain sqlite3, without SQLAlchemy (~0.3-0.9 s to import): each class
knows its SELECT list, how to decode a stored value (naive-UTC text -> aware datetime,
JSON text -> dict/list, 0/1 -> bool) and how SQLite itself can render a row as JSON
for `--json` lists (`json_sql`), so that listing 10,000 rows never builds a Python
object per row. A column's kind comes from its annotation: `datetime` is a time,
`dict`/`list` is JSON, `bool` is a boolean.

Writes still go through the SQLModel tables (registry/tables.py); `from_model` turns
what a write transaction holds into the same row type, so services and commands only
ever see rows.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from functools import cache
from typing import Any, ClassVar, TypeVar

import msgspec

R = TypeVar("R", bound="Row")

PLAIN, TIME, JSON, BOOL = "plain", "time", "json", "bool"


def parse_time(value: str | None) -> datetime | None:
    """A stored time (`YYYY-MM-DD HH:MM:SS[.ffffff]`, naive UTC) as an aware datetime."""
    if value is None:
        return None
    return datetime.fromisoformat(value).replace(tzinfo=timezone.utc)


def _parse_json(value: str | None) -> Any:
    return None if value is None else json.loads(value)  # SQLAlchemy stores a JSON None as 'null'


_DECODERS = {TIME: parse_time, JSON: _parse_json, BOOL: bool}


def iso(value: datetime | None) -> str | None:
    """ISO 8601 with microseconds and a Z: the one form every `--json` time takes."""
    if value is None:
        return None
    return value.astimezone(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _kind(annotation: str) -> str:
    if "datetime" in annotation:
        return TIME
    if annotation.startswith(("dict", "list")):
        return JSON
    if annotation.startswith("bool"):
        return BOOL
    return PLAIN


class Row(msgspec.Struct, frozen=True):
    """Base of the typed rows: frozen msgspec Structs (cheap to define and to build, unlike
    slotted dataclasses, ~3 ms a class of this width), each naming its `TABLE`."""

    TABLE: ClassVar[str]

    @classmethod
    @cache
    def columns(cls) -> tuple[str, ...]:
        return cls.__struct_fields__

    @classmethod
    @cache
    def kinds(cls) -> tuple[str, ...]:
        annotations: dict[str, Any] = {}
        for klass in reversed(cls.__mro__):
            annotations.update(getattr(klass, "__annotations__", {}))
        return tuple(_kind(str(annotations[c])) for c in cls.columns())

    @classmethod
    @cache
    def _decoders(cls) -> tuple[tuple[int, Any], ...]:
        return tuple((i, _DECODERS[k]) for i, k in enumerate(cls.kinds()) if k != PLAIN)

    @classmethod
    def columns_sql(cls, alias: str = "") -> str:
        """Every column, in field order (qualified by `alias` when given)."""
        prefix = f"{alias}." if alias else ""
        return ", ".join(f'{prefix}"{c}"' for c in cls.columns())

    @classmethod
    def select_sql(cls, alias: str = "") -> str:
        """`SELECT <every column> FROM <table> [alias]`."""
        return f"SELECT {cls.columns_sql(alias)} FROM {cls.TABLE}{f' {alias}' if alias else ''}"

    @classmethod
    def decode(cls: type[R], values: tuple) -> R:
        """A row from the values of `select_sql()`, in column order."""
        decoders = cls._decoders()
        if decoders:
            values = list(values)
            for i, decode in decoders:
                values[i] = decode(values[i])
        return cls(*values)

    @classmethod
    def json_sql(cls, alias: str = "", columns: tuple[str, ...] | None = None) -> str:
        """A `json_object(...)` expression of a row (or of `columns` of it), rendered by SQLite
        exactly as `to_json` renders the decoded row: times ISO 8601 with microseconds and a Z,
        JSON columns nested, booleans true/false."""
        prefix = f"{alias}." if alias else ""
        kinds = dict(zip(cls.columns(), cls.kinds()))
        parts = []
        for column in columns or cls.columns():
            ref = f'{prefix}"{column}"'
            kind = kinds[column]
            if kind == TIME:
                # Stored with microseconds (SQLAlchemy's and the ingestion's format); NULL stays NULL.
                expr = f"replace({ref}, ' ', 'T') || 'Z'"
            elif kind == JSON:
                expr = f"json({ref})"
            elif kind == BOOL:
                expr = f"json(CASE WHEN {ref} THEN 'true' ELSE 'false' END)"
            else:
                expr = ref
            parts.append(f"'{column}', {expr}")
        return f"json_object({', '.join(parts)})"

    def to_json(self) -> dict[str, Any]:
        """The row as `--json` prints it: the registry's field names, ISO times."""
        return {c: iso(v) if k == TIME else v for c, k, v in zip(self.columns(), self.kinds(), self._values())}

    def to_fields(self) -> dict[str, Any]:
        """Column -> Python value, as a write function takes them."""
        return dict(zip(self.columns(), self._values()))

    def replace(self: R, **changes: Any) -> R:
        """A copy with `changes` (rows are frozen)."""
        return msgspec.structs.replace(self, **changes)

    def _values(self) -> tuple:
        return tuple(getattr(self, c) for c in self.columns())

    @classmethod
    def from_model(cls: type[R], model: Any) -> R:
        """The row of a SQLModel object (inside a write transaction, or just written)."""
        # SQLAlchemy reserves `metadata`: a model names that column `metadata_`.
        return cls(*(getattr(model, f"{c}_" if c == "metadata" else c) for c in cls.columns()))


class DatasetRow(Row, frozen=True):
    TABLE: ClassVar[str] = "datasets"

    id: str
    name: str
    description: str | None
    format: str
    status: str
    storage_path: str
    file_name: str
    file_size: int
    source_uri: str | None
    content_sha256: str | None
    total_conversations: int | None
    total_training_pairs: int | None
    total_validation_pairs: int | None
    total_tokens: int | None
    avg_turns_per_conversation: float | None
    avg_tokens_per_turn: float | None
    token_count_method: str | None
    base_model: str | None
    val_split: float
    stats: dict | None
    training_ready: bool
    validated_at: datetime | None
    validation_errors: list | None
    validation_error_count: int
    sample_data: list | None
    error_message: str | None
    created_at: datetime
    updated_at: datetime
    deleted_at: datetime | None
    validation_warnings: list | None
    validation_warning_count: int
    skipped_lines: int

    @property
    def sources(self) -> list[str]:
        """What it was added from: one path or URL, or, for shards added together, each in
        order (stored as a JSON list; a single source is a path, made absolute, or a URL,
        so it never starts with '[')."""
        uri = self.source_uri or self.file_name
        if uri.startswith("["):
            import json

            return json.loads(uri)
        return [uri]

    @property
    def tokens_counted(self) -> bool:
        """Whether its token counts came from a tokenizer (`tokenizer:<model>`, of
        `base_model`), not the characters / 4 approximation."""
        return (self.token_count_method or "").startswith("tokenizer:")

    @property
    def counted_chat_template(self) -> str:
        """The chat template its tokens were counted with: "model" (the base model's own) or
        "chatml" (`dataset add/validate --chat-template chatml`)."""
        return (self.stats or {}).get("chat_template") or "model"


class HostRow(Row, frozen=True):
    TABLE: ClassVar[str] = "hosts"

    id: str
    name: str
    kind: str
    ssh_user: str | None
    ssh_host: str | None
    ssh_port: int | None
    identity_file: str | None
    gpus: int
    gpu_type: str
    python: str | None
    workdir: str | None
    options: dict | None
    last_check: dict | None
    last_checked_at: datetime | None
    created_at: datetime
    updated_at: datetime


class JobRow(Row, frozen=True):
    TABLE: ClassVar[str] = "training_jobs"

    id: str
    dataset_id: str
    preset_id: str
    base_model: str
    hyperparameters: dict
    gpu_config: dict
    host_id: str | None
    hosts: list | None
    status: str
    current_stage: str
    progress: float
    current_epoch: int
    total_epochs: int
    current_step: int
    total_steps: int | None
    tokens_processed: int
    current_metrics: dict | None
    queued_at: datetime
    started_at: datetime | None
    completed_at: datetime | None
    estimated_completion_at: datetime | None
    estimated_duration_hours: float | None
    current_cost: float
    estimated_total_cost: float
    max_cost: float | None
    final_cost: float | None
    error_message: str | None
    error_stack: str | None
    retry_count: int
    resume_count: int
    external_job_id: str | None
    artifact_id: str | None
    spec: dict | None
    run_dir: str | None
    supervisor_pid: int | None
    supervisor_marker: str | None
    heartbeat_at: datetime | None
    created_at: datetime
    updated_at: datetime
    deleted_at: datetime | None

    @property
    def cost(self) -> float:
        """What the job has cost: final once it ended, else so far."""
        return self.final_cost if self.final_cost is not None else self.current_cost

    @property
    def host_names(self) -> list[str]:
        return list(self.hosts or [])


class PointRow(Row, frozen=True):
    TABLE: ClassVar[str] = "metrics_points"

    id: int
    job_id: str
    timestamp: datetime
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


class ModelRow(Row, frozen=True):
    TABLE: ClassVar[str] = "model_artifacts"

    id: str
    job_id: str
    dataset_id: str
    name: str
    version: str
    description: str | None
    status: str
    base_model: str | None
    storage_path: str | None
    deployed_at: datetime | None
    quality_metrics: dict
    training_summary: dict
    configuration: dict
    artifacts: dict
    parent_model_id: str | None
    created_at: datetime
    updated_at: datetime
    deleted_at: datetime | None


class ModelEvalRow(Row, frozen=True):
    TABLE: ClassVar[str] = "model_evals"

    id: str
    model_id: str
    dataset_id: str | None
    source: str
    sample_count: int
    max_new_tokens: int | None
    base: dict | None
    tuned: dict | None
    samples_path: str | None
    created_at: datetime


class CostRow(Row, frozen=True):
    TABLE: ClassVar[str] = "cost_records"

    id: str
    job_id: str | None
    cost_type: str
    amount: float
    gpu_type: str | None
    details: dict | None
    billing_period: str
    recorded_at: datetime


class NotificationRow(Row, frozen=True):
    TABLE: ClassVar[str] = "notifications"

    id: str
    type: str
    title: str
    message: str
    priority: str
    read: bool
    action_command: str | None
    job_id: str | None
    dataset_id: str | None
    artifact_id: str | None
    metadata: dict | None
    created_at: datetime


ROW_TYPES: tuple[type[Row], ...] = (DatasetRow, HostRow, JobRow, PointRow, ModelRow, ModelEvalRow, CostRow, NotificationRow)
