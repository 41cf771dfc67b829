"""Every statement on `metrics_points`: the supervisor's bulk ingestion and the reads of
watch, plots, artifacts and calibration."""

from __future__ import annotations

import functools
import sqlite3
from typing import TYPE_CHECKING

from brightrun_cli.registry import read
from brightrun_cli.registry.rows import PointRow

if TYPE_CHECKING:
    from sqlalchemy import Connection

# The ingestion's row layout: supervisor.ingest.point_values builds flat lists in this order.
POINT_COLUMNS = ("job_id", "timestamp", "epoch", "step", "split", "training_loss", "validation_loss", "learning_rate",
                 "gradient_norm", "throughput", "gpu_utilization", "gpu_memory")
MULTI_ROWS = 1000  # rows per INSERT statement: 12,000 variables; SQLite 3.32+ allows 32,766


# ---------------------------------------------------------------------------- reads


def of_job(conn: sqlite3.Connection, job_id: str) -> list[PointRow]:
    """All of a job's points by step, train before validation at a step."""
    return read.fetch_all(conn, PointRow, "job_id = ?", (job_id,), order="step, split")


def since(conn: sqlite3.Connection, job_id: str, last_id: int) -> list[PointRow]:
    """The job's points with an id above `last_id`, in insertion order. `+job_id` keeps
    SQLite off the (job_id, step, split) index, so the scan walks the rowid range above
    the last seen id (only new rows), not all of this job's points: watch polls this."""
    return read.fetch_all(conn, PointRow, "id > ? AND +job_id = ?", (last_id, job_id), order="id")


def latest_train(conn: sqlite3.Connection, job_id: str) -> tuple[float | None, float | None]:
    """(training_loss, throughput) of the job's newest training point."""
    row = conn.execute("SELECT training_loss, throughput FROM metrics_points WHERE job_id = ? AND split = 'train' "
                       "ORDER BY step DESC LIMIT 1", (job_id,)).fetchone()
    return (row[0], row[1]) if row else (None, None)


def last_time(conn: sqlite3.Connection, job_id: str):
    """When the job's newest point was written (its last held-out loss, ending the training):
    what follows it until completion (the saved adapter, the answer eval) is the run's finish."""
    rows = read.fetch_all(conn, PointRow, "job_id = ?", (job_id,), order="step DESC, split DESC", limit=1)
    return rows[0].timestamp if rows else None


def first(conn: sqlite3.Connection, job_id: str) -> PointRow | None:
    """The job's first point: the base model's held-out loss at step 0 (or its first step).
    Its time ends the run's start-up, for the estimates' calibration."""
    rows = read.fetch_all(conn, PointRow, "job_id = ?", (job_id,), order="step, split", limit=1)
    return rows[0] if rows else None


def train_throughputs(conn: sqlite3.Connection, job_id: str, after_step: int = 1) -> list[float]:
    """Per-step tokens/s of the job's training points after `after_step` (the warm-up)."""
    return [r[0] for r in conn.execute(
        "SELECT throughput FROM metrics_points WHERE job_id = ? AND split = 'train' AND throughput IS NOT NULL AND step > ?",
        (job_id, after_step))]


# ---------------------------------------------------------------------------- writes


@functools.lru_cache(maxsize=1)
def _insert_row_sql() -> tuple[str, str]:
    """("INSERT OR IGNORE INTO metrics_points (...)", "(?, ..., ?)"), compiled once by SQLAlchemy Core."""
    from sqlalchemy import insert
    from sqlalchemy.dialects import sqlite

    from brightrun_cli.registry.tables import MetricPoint

    statement = insert(MetricPoint.__table__).prefix_with("OR IGNORE").values({c: None for c in POINT_COLUMNS})
    head, _, row = str(statement.compile(dialect=sqlite.dialect(paramstyle="qmark"))).partition(" VALUES ")
    return head, row


@functools.lru_cache(maxsize=64)
def _insert_sql(rows: int) -> str:
    head, row = _insert_row_sql()
    return f"{head} VALUES {', '.join([row] * rows)}"


def insert_many(connection: "Connection", values: list) -> int:
    """Bulk INSERT OR IGNORE (unique on job, step, split) of flat `values` (POINT_COLUMNS,
    row after row, already in stored form) on the write transaction's Core connection;
    returns the rows offered.

    Multi-row statements: one sqlite3_step per 1,000 rows instead of one per row (with its
    bind/reset and GIL round trip) is about 1.4x the rows per CPU-second of executemany."""
    width = len(POINT_COLUMNS)
    count = len(values) // width
    # MULTI_ROWS (12,000 variables) where SQLite allows that many (3.32 on), else under the old 999.
    per = MULTI_ROWS if sqlite3.sqlite_version_info >= (3, 32, 0) else 999 // width
    full = count - count % per
    if full:
        sql, size = _insert_sql(per), per * width
        connection.exec_driver_sql(sql, [tuple(values[i:i + size]) for i in range(0, full * width, size)])
    if count > full:
        connection.exec_driver_sql(_insert_sql(count - full), tuple(values[full * width:]))
    return count
