"""Metric ingestion: the trainer's `metrics.jsonl` lines -> `metrics_points` values.

The supervisor tails the file (`MetricsTail`, only complete new lines), decodes each
batch straight into typed structs (`MetricLine`) and turns them into the flat values
that registry/points.py inserts in multi-row statements (`point_values`). This is the
supervisor's hot path: 100,000+ points a second (bench/bench_jobs.py).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import msgspec

class MetricLine(msgspec.Struct, gc=False):
    """The trainer's metrics.jsonl line (its file contract names).

    Decoding straight into a Struct is ingestion's fast path: about 3x less CPU than
    json/orjson building a dict per line and reading it back key by key. Unknown keys are
    ignored; a line without an integer step, or with a wrongly typed value, is bad.
    gc=False: the fields are scalars, so a line can never be part of a reference cycle,
    and a catch-up batch of 100,000 lines no longer sets off collections that rescan it."""

    step: int
    time: float | None = None
    epoch: float | None = None
    split: str | None = None
    total_steps: int | None = None
    training_loss: float | None = None
    validation_loss: float | None = None
    learning_rate: float | None = None
    grad_norm: float | None = None
    tokens_per_sec: float | None = None
    tokens_seen: int | None = None
    gpu_utilization: float | None = None
    gpu_memory: float | None = None


_line_decoder = msgspec.json.Decoder(MetricLine)
_decode_line = _line_decoder.decode
_decode_lines = _line_decoder.decode_lines  # newline-delimited, blank lines skipped, no copy of the batch


def metric_lines(items: Iterable[dict[str, Any]]) -> list[MetricLine]:
    """Dicts in the metrics.jsonl format -> the line objects MetricsTail.read() returns."""
    return [msgspec.convert(item, MetricLine) for item in items]


class MetricsTail:
    """Reads only the complete lines appended to `metrics.jsonl` since the last call."""

    def __init__(self, path: Path):
        self.path = path
        self.offset = 0
        self.bad_lines = 0
        self._partial = b""

    def read(self) -> list[MetricLine]:
        """New complete lines, in file order."""
        try:
            with self.path.open("rb") as fh:
                fh.seek(self.offset)
                chunk = fh.read()
        except FileNotFoundError:
            return []
        if not chunk:
            return []
        self.offset += len(chunk)
        data = self._partial + chunk if self._partial else chunk
        cut = data.rfind(b"\n") + 1
        self._partial = data[cut:]  # an unfinished last line waits for its newline
        if not cut:
            return []
        body = memoryview(data)[:cut]
        try:  # the whole batch in one decode, read in place: the fast path
            return _decode_lines(body)
        except msgspec.DecodeError:  # a torn, foreign or mistyped line: line by line, skipping the bad ones
            out = []
            for line in bytes(body).split(b"\n"):
                if not line.strip():
                    continue
                try:
                    out.append(_decode_line(line))
                except msgspec.DecodeError:
                    self.bad_lines += 1
            return out


@functools.lru_cache(maxsize=256)
def _db_second(second: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(second))


# A timestamp's fraction as two table lookups: formatting it (f"{us:06d}") was most of
# point_values' time, twice the cost of the lookups and the join.
_MILLIS = tuple(f".{i:03d}" for i in range(1000))
_DIGITS3 = tuple(f"{i:03d}" for i in range(1000))
_YEAR_10000 = 253402300800.0


def point_values(job_id: str, lines: Iterable[MetricLine]) -> list:
    """MetricLines -> metrics_points values, flat: one row after another in registry.points.POINT_COLUMNS order.

    Values are already in their stored form: this is the hot path, and SQLAlchemy's
    per-row bind processing would cost several times the insert itself. Timestamps are
    formatted inline (one strftime per distinct second, the microseconds by lookup), as
    SQLAlchemy stores them. One flat list rather than a tuple per row: it feeds multi-row
    INSERTs as is, and 100,000 live tuples would set off garbage collections that rescan
    them all (twice the CPU of building them)."""
    seconds: dict[int, str] = {}
    now = time.time()
    values: list = []
    extend, join, millis, digits = values.extend, "".join, _MILLIS, _DIGITS3
    for m in lines:
        t = m.time
        if t is None or not 0.0 <= t < _YEAR_10000:  # a line without its time (or a bogus one) is stamped now
            t = now
        whole = int(t)
        day = seconds.get(whole)
        if day is None:
            day = seconds[whole] = _db_second(whole)
        us = int((t - whole) * 1e6)
        extend((job_id, join((day, millis[us // 1000], digits[us % 1000])), m.epoch or 0.0, m.step, m.split or "train",
                m.training_loss, m.validation_loss, m.learning_rate, m.grad_norm, m.tokens_per_sec,
                m.gpu_utilization, m.gpu_memory))
    return values

