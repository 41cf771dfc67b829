"""A run as trackers see it: metric points under tracker names, flat params, final values.

The trainer's metrics.jsonl and the registry's `metrics_points` name the same quantities
differently (`grad_norm` / `gradient_norm`, `tokens_per_sec` / `throughput`, `time` /
`timestamp`); both become the same `Point`, so a live run and an exported past run land
in a tracker under the same metric names:

    train/loss  train/learning_rate  train/grad_norm  train/tokens_per_sec  train/tokens_seen
    train/epoch  gpu/utilization  gpu/memory_gib  validation/loss
    quality/<key> (final quality)  eval/<path> (final/eval_summary.json)  cost/<key> (export)
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

# metrics.jsonl field -> tracker metric name, per split. Registry rows are renamed to the
# trainer's field names first (REGISTRY_FIELDS).
TRAIN_METRICS = {
    "training_loss": "train/loss",
    "learning_rate": "train/learning_rate",
    "grad_norm": "train/grad_norm",
    "tokens_per_sec": "train/tokens_per_sec",
    "tokens_seen": "train/tokens_seen",
    "epoch": "train/epoch",
    "gpu_utilization": "gpu/utilization",
    "gpu_memory": "gpu/memory_gib",
}
VALIDATION_METRICS = {"validation_loss": "validation/loss"}
REGISTRY_FIELDS = {"gradient_norm": "grad_norm", "throughput": "tokens_per_sec", "timestamp": "time"}


@dataclass(frozen=True)
class Point:
    """One metric point: its step, split (train | validation), wall time (epoch seconds,
    None when unknown) and values under tracker metric names (finite numbers only)."""

    step: int
    split: str
    time: float | None
    values: dict[str, float] = field(default_factory=dict)


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def epoch_seconds(value: Any) -> float | None:
    """A time as epoch seconds: a number, a datetime (naive = UTC, as the registry stores
    them) or an ISO-8601 string (`...Z`, or SQLite's `YYYY-MM-DD HH:MM:SS`)."""
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value.timestamp()
    return None


def point_from_metrics_line(line: dict[str, Any]) -> Point | None:
    """A metrics.jsonl line (docs/ARCHITECTURE.md) as a Point; None for a line without a step."""
    step = line.get("step")
    if isinstance(step, bool) or not isinstance(step, int):
        return None
    split = "validation" if line.get("split") == "validation" else "train"
    names = VALIDATION_METRICS if split == "validation" else TRAIN_METRICS
    values = {name: v for key, name in names.items() if (v := _finite(line.get(key))) is not None}
    return Point(step=step, split=split, time=epoch_seconds(line.get("time")), values=values)


def point_from_registry_row(row: dict[str, Any]) -> Point | None:
    """A `metrics_points` row (step, split, epoch, training_loss, validation_loss,
    learning_rate, gradient_norm, throughput, gpu_*, timestamp) as a Point."""
    return point_from_metrics_line({REGISTRY_FIELDS.get(key, key): value for key, value in row.items()})


def _param_value(value: Any) -> str | int | float | bool | None:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return json.dumps(value, sort_keys=True)


def run_params(base_model: str, hyperparameters: dict[str, Any], **extra: Any) -> dict[str, str | int | float | bool]:
    """Flat params for a tracker: the base model, every hyperparameter (lists joined with
    commas, as `target_modules` reads on the command line) and `extra` (seed, GPUs, ...)."""
    params: dict[str, Any] = {"base_model": base_model}
    params.update(hyperparameters)
    params.update(extra)
    return {key: value for key, raw in params.items() if (value := _param_value(raw)) is not None}


def _flatten(prefix: str, value: Any, numbers: dict[str, float], texts: dict[str, str]) -> None:
    if isinstance(value, dict):
        for key, inner in value.items():
            _flatten(f"{prefix}/{key}", inner, numbers, texts)
    elif isinstance(value, bool):
        numbers[prefix] = float(value)
    elif (number := _finite(value)) is not None:
        numbers[prefix] = number
    elif isinstance(value, str):
        texts[prefix] = value
    elif isinstance(value, (list, tuple)):
        texts[prefix] = json.dumps(value)


def final_values(**groups: dict[str, Any] | None) -> tuple[dict[str, float], dict[str, str]]:
    """(numbers, texts) of the final results, each key prefixed by its group name:
    final_values(quality={...}, eval=summary) -> {"quality/overall_score": 4.0, "eval/tuned/rougeL": ...},
    {"quality/score_reason": "..."}. Nested dicts become paths; non-finite numbers and
    None are left out (a tracker stores no null)."""
    numbers: dict[str, float] = {}
    texts: dict[str, str] = {}
    for group, values in groups.items():
        if values:
            _flatten(group, values, numbers, texts)
    return numbers, texts
