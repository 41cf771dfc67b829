"""What a run report shows, as typed input: the integrator fills it from the registry
(job row, metrics_points, the model's quality_metrics, notifications, cost records) and
the run directory (final/eval.jsonl, final/eval_summary.json, trackers.json)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any

Time = datetime | float | str  # a datetime (naive = UTC), epoch seconds, or ISO-8601


@dataclass(frozen=True)
class ReportPoint:
    """One metric point, under the registry's `metrics_points` names."""

    step: int
    split: str = "train"  # train | validation
    epoch: float | None = None
    training_loss: float | None = None
    validation_loss: float | None = None
    learning_rate: float | None = None
    gradient_norm: float | None = None
    throughput: float | None = None  # tokens per second
    timestamp: Time | None = None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> ReportPoint:
        """From a metrics_points row (or any dict with those keys; others are ignored)."""
        names = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in row.items() if key in names})


@dataclass(frozen=True)
class EvalSample:
    """One generation-eval sample: the prompt, the reference answer, the base and tuned
    models' answers, and whether the tuned one matched (None when not judged)."""

    prompt: str
    reference: str
    base: str | None = None
    tuned: str | None = None
    match: bool | None = None


@dataclass(frozen=True)
class TimelineEvent:
    """A moment of the job's life: a status change or a notification."""

    time: Time
    label: str
    detail: str = ""


@dataclass
class ReportData:
    """Everything `render_report` draws. Only job_id, status and base_model are required:
    a queued job, a failed one without points or a run without validation renders too."""

    job_id: str
    status: str
    base_model: str
    dataset: str | None = None
    host: str | None = None
    gpu_type: str | None = None
    gpu_count: int | None = None
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    points: list[ReportPoint] = field(default_factory=list)
    quality: dict[str, Any] | None = None  # a model's quality_metrics (services.quality)
    eval_summary: dict[str, Any] | None = None  # final/eval_summary.json
    eval_samples: list[EvalSample] = field(default_factory=list)
    cost: float | None = None  # final cost, or the running cost of an unfinished job (USD)
    estimated_cost: float | None = None
    max_cost: float | None = None
    cost_breakdown: dict[str, float] = field(default_factory=dict)  # cost type -> USD
    queued_at: Time | None = None
    started_at: Time | None = None
    completed_at: Time | None = None
    events: list[TimelineEvent] = field(default_factory=list)  # notifications and other moments
    error: str | None = None  # a failed job's error message
    trackers: dict[str, dict[str, Any]] = field(default_factory=dict)  # trackers.json records
    generated_at: Time | None = None  # when the report was made (shown in the footer)
    version: str | None = None  # brightrun's version
