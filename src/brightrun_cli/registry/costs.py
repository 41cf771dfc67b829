"""Every statement on `cost_records`: one record per ended job attempt (compute) and per
stored model (storage), and the spend report's reads."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from brightrun_cli.registry import read
from brightrun_cli.registry.rows import CostRow, iso

if TYPE_CHECKING:
    from brightrun_cli.registry.engine import Tx


def _db_time(value: datetime) -> str:
    return iso(value)[:-1].replace("T", " ")


def _window(since: datetime | None, until: datetime | None) -> tuple[str, list[str]]:
    where, params = [], []
    if since is not None:
        where.append("recorded_at >= ?")
        params.append(_db_time(since))
    if until is not None:
        where.append("recorded_at < ?")
        params.append(_db_time(until))
    return " AND ".join(where), params


def between(conn: sqlite3.Connection, since: datetime | None, until: datetime | None) -> list[CostRow]:
    """Records with since <= recorded_at < until (either bound optional), oldest first."""
    where, params = _window(since, until)
    return read.fetch_all(conn, CostRow, where, params, order="recorded_at, id")


# What `costs --by` groups on, as a column expression (a day is the UTC date of the record).
GROUP_KEYS = {"type": "cost_type", "day": "substr(recorded_at, 1, 10)", "job": "coalesce(job_id, '(no job)')", "gpu": "coalesce(gpu_type, '(none)')"}


def summarize(conn: sqlite3.Connection, since: datetime | None, until: datetime | None, by: str) -> tuple[list[tuple[str, float, int]], dict[str, float]]:
    """(key, amount, records) per `by` group (GROUP_KEYS) and the amount per cost type, over the window."""
    where, params = _window(since, until)
    tail = f" WHERE {where}" if where else ""
    groups = [(k, float(a), int(n)) for k, a, n in conn.execute(
        f"SELECT {GROUP_KEYS[by]}, sum(amount), count(*) FROM cost_records{tail} GROUP BY 1", params)]
    by_type = {k: float(a) for k, a in conn.execute(f"SELECT cost_type, sum(amount) FROM cost_records{tail} GROUP BY 1", params)}
    return groups, by_type


def totals_between(conn: sqlite3.Connection, edges: Sequence[datetime]) -> list[float]:
    """The amount recorded in each window [edges[i], edges[i + 1]) (the last one open-ended),
    in one pass over the index ix_cost_records_recorded: `brightrun status`'s months."""
    times = [_db_time(e) for e in edges]
    windows = list(zip(times, [*times[1:], None]))
    sums = ", ".join("total(amount) FILTER (WHERE recorded_at >= ?" + (" AND recorded_at < ?)" if end else ")") for _, end in windows)
    params = [t for window in windows for t in window if t is not None]
    return [float(v) for v in conn.execute(f"SELECT {sums} FROM cost_records WHERE recorded_at >= ?", (*params, times[0])).fetchone()]


def job_by_type(conn: sqlite3.Connection, job_id: str) -> dict[str, float]:
    """The job's recorded cost per cost type (compute, storage, ...)."""
    return {kind: float(amount) for kind, amount in conn.execute(
        "SELECT cost_type, sum(amount) FROM cost_records WHERE job_id = ? GROUP BY cost_type ORDER BY cost_type", (job_id,))}


def attempts(conn: sqlite3.Connection, job_id: str) -> list[dict[str, Any]]:
    """Each attempt's compute record (lifecycle.record_attempt_cost): attempt (resume count),
    started_at, ended_at, hours and cost, in order."""
    rows = conn.execute(
        "SELECT json_extract(details, '$.attempt'), json_extract(details, '$.started_at'), json_extract(details, '$.ended_at'),"
        " json_extract(details, '$.hours'), amount FROM cost_records WHERE job_id = ? AND cost_type = 'compute'"
        " ORDER BY json_extract(details, '$.attempt'), recorded_at", (job_id,)).fetchall()
    def when(text: str | None) -> datetime | None:  # stored as isoformat: back to a time, printed as every other time is
        return datetime.fromisoformat(text) if text else None

    return [{"attempt": a, "started_at": when(s), "ended_at": when(e), "hours": h, "cost": c} for a, s, e, h, c in rows]


def add(tx: "Tx", **fields: Any) -> None:
    from brightrun_cli.registry.tables import CostRecord

    tx.add(CostRecord(**fields))
    tx.flush()


def total_in(tx: "Tx", job_id: str, cost_type: str | None = None) -> float:
    """The job's recorded cost (of one type, or all), as the write transaction sees it."""
    from sqlmodel import col, select

    from brightrun_cli.registry.tables import CostRecord

    query = select(CostRecord.amount).where(col(CostRecord.job_id) == job_id)
    if cost_type is not None:
        query = query.where(col(CostRecord.cost_type) == cost_type)
    return float(sum(tx.exec(query).all()))


def job_total(conn: sqlite3.Connection, job_id: str, cost_type: str | None = None) -> float:
    """The same sum read outside a transaction."""
    sql = "SELECT coalesce(sum(amount), 0) FROM cost_records WHERE job_id = ?"
    params: tuple = (job_id,)
    if cost_type is not None:
        sql += " AND cost_type = ?"
        params += (cost_type,)
    return float(conn.execute(sql, params).fetchone()[0])
