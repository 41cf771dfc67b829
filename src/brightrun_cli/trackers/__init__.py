"""Experiment trackers (TensorBoard, MLflow, Weights & Biases): what a run sends them.

One vocabulary and one set of writers serve both the trainer, which streams a live run
to the trackers its spec names (`trainer/trackers.py`), and `export_run`, which sends a
past run read from the registry (`trackers/export.py`):

- `trackers.points`: a metric point as trackers see it (`Point`), built from a line of
  the trainer's metrics.jsonl or from a `metrics_points` row; hyperparameters as flat
  params; the quality and eval summary as final values.
- `trackers.sinks`: one class per tracker, driving the tracker's own library.

This module imports nothing heavy: the trainer's spec validation and (later) the CLI's
config checks use it to validate `report_to` and the per-tracker settings.
"""

from __future__ import annotations

from typing import Any

TRACKERS = ("tensorboard", "mlflow", "wandb")

# The settings each tracker accepts under the spec's (and config's) `trackers.<name>`.
SETTINGS: dict[str, dict[str, str]] = {
    "tensorboard": {},
    "mlflow": {
        "tracking_uri": "MLflow tracking URI (sqlite:///path/mlflow.db, http://host:5000, ...)",
        "experiment": "MLflow experiment name (default: brightrun)",
    },
    "wandb": {
        "project": "W&B project (default: brightrun)",
        "entity": "W&B entity (team or user); default: the account's own",
        "mode": "offline (default: files only, `wandb sync` them later) or online",
    },
}
WANDB_MODES = ("offline", "online")


def check_report_to(value: Any, where: str = "report_to") -> list[str]:
    """The tracker names of a `report_to` value, in order; ValueError naming the problem."""
    if not isinstance(value, list) or not all(isinstance(name, str) for name in value):
        raise ValueError(f"{where} must be a list of tracker names ({', '.join(TRACKERS)})")
    unknown = [name for name in value if name not in TRACKERS]
    if unknown:
        raise ValueError(f"{where}: unknown tracker(s) {', '.join(unknown)} (known: {', '.join(TRACKERS)})")
    if len(set(value)) != len(value):
        raise ValueError(f"{where} names a tracker twice: {', '.join(value)}")
    return list(value)


def check_settings(value: Any, where: str = "trackers") -> dict[str, dict[str, str]]:
    """Per-tracker settings ({"mlflow": {"tracking_uri": ...}, ...}); ValueError naming the key."""
    if not isinstance(value, dict):
        raise ValueError(f"{where} must be an object of per-tracker settings ({', '.join(TRACKERS)})")
    checked: dict[str, dict[str, str]] = {}
    for name, settings in value.items():
        if name not in SETTINGS:
            raise ValueError(f"{where}: unknown tracker {name!r} (known: {', '.join(TRACKERS)})")
        if not isinstance(settings, dict):
            raise ValueError(f"{where}.{name} must be an object of settings")
        known = SETTINGS[name]
        for key, setting in settings.items():
            if key not in known:
                allowed = ", ".join(known) if known else "none"
                raise ValueError(f"{where}.{name}: unknown setting {key!r} (known: {allowed})")
            if not isinstance(setting, str) or not setting.strip():
                raise ValueError(f"{where}.{name}.{key} must be a non-empty string, got {setting!r}")
        if name == "wandb" and settings.get("mode", "offline") not in WANDB_MODES:
            raise ValueError(f"{where}.wandb.mode must be one of {', '.join(WANDB_MODES)}, got {settings['mode']!r}")
        checked[name] = dict(settings)
    return checked
