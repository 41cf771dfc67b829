"""`trackers.json` in a run directory: what became of each tracker of a run.

Written by the trainer's trackers process (`trainer/trackers.py`) and, for a job that
ran on another host, by the supervisor once it copied the run into this machine's MLflow
store (`services/trackers.py`); read by `jobs show` and `jobs report`. Here, not in the
trainer, because both sides read and write it and the services may not import the
trainer.

    {"version": 1, "updated": 1764100000.1,
     "trackers": {"mlflow": {"status": "done", "where": "sqlite:////.../mlflow.db", "run_id": "3f2a...",
                             "points": 52, "artifact": "file:///.../adapter", "error": null}, ...}}
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

TRACKERS_FILE = "trackers.json"
STATUSES = ("running", "done", "failed", "incomplete")


def empty_record(status: str = "running", error: str | None = None) -> dict[str, Any]:
    return {"status": status, "where": None, "run_id": None, "points": 0, "artifact": None, "error": error}


def read_records(run_dir: Path) -> dict[str, dict[str, Any]]:
    """trackers.json's per-tracker records ({} when the run has none, or it is unreadable)."""
    try:
        records = json.loads((run_dir / TRACKERS_FILE).read_text()).get("trackers", {})
    except (OSError, ValueError, AttributeError):
        return {}
    return records if isinstance(records, dict) else {}


def write_records(run_dir: Path, records: dict[str, dict[str, Any]]) -> None:
    """Replace trackers.json atomically (a reader sees the old file or the new one)."""
    path = run_dir / TRACKERS_FILE
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"version": 1, "updated": round(time.time(), 3), "trackers": records}, indent=2) + "\n")
    os.replace(tmp, path)
