"""What the trainer writes into its run directory (docs/ARCHITECTURE.md, file contract)."""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

METRIC_FIELDS = (
    "time", "split", "epoch", "step", "total_steps", "training_loss", "validation_loss", "learning_rate",
    "grad_norm", "tokens_per_sec", "tokens_seen", "gpu_utilization", "gpu_memory",
)


class MetricsWriter:
    """Appends one flushed JSON line per point, so the supervisor can tail the file."""

    def __init__(self, path: Path, enabled: bool):
        self._fh = open(path, "a", encoding="utf-8") if enabled else None

    def write(self, **point: Any) -> None:
        if self._fh is None:
            return
        # A diverged run's NaN/inf loss is written as null: NaN is not JSON, and a reader
        # would have to drop the whole line (its step, learning rate, ...) to skip it.
        line = {key: None if isinstance(v := point.get(key), float) and not math.isfinite(v) else v for key in METRIC_FIELDS}
        line["time"] = round(time.time(), 3)
        self._fh.write(json.dumps(line) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()


def write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def setup_logging(run_dir: Path, rank: int, main: bool, prefix: str | None = None) -> logging.Logger:
    """The trainer's log: stderr, and trainer.log on the main process. `prefix` marks the
    lines of another process of the trainer's (default: the rank, when not 0)."""
    log = logging.getLogger("brightrun.trainer")
    log.setLevel(logging.INFO)
    log.handlers.clear()
    log.propagate = False
    if prefix is None:
        prefix = f"[rank {rank}] " if rank else ""
    fmt = logging.Formatter(f"%(asctime)s.%(msecs)03d %(levelname)s {prefix}%(message)s", "%Y-%m-%dT%H:%M:%S")
    stream = logging.StreamHandler(sys.stderr)
    stream.setFormatter(fmt)
    log.addHandler(stream)
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        file = logging.FileHandler(run_dir / "trainer.log", encoding="utf-8")
        file.setFormatter(fmt)
        log.addHandler(file)
    return log


def library_versions() -> dict[str, str]:
    from brightrun_cli.generation.evaluate import package_versions

    return package_versions(("brightrun-cli", "torch", "transformers", "peft", "accelerate", "tokenizers",
                             "safetensors", "liger-kernel"))
