"""Every statement on `training_jobs`.

Reads take a sqlite3 connection and return `JobRow`s (registry/read.py). Writes take
the write transaction of `Registry.write()` (a SQLModel session) and import the tables
where they run: SQLModel is a heavy import that read commands never pay.

Status names are the lifecycle's (brightrun_cli/lifecycle.py): callers pass the sets
they mean, so this module holds the statements and the lifecycle holds the rules.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from brightrun_cli.registry import read
from brightrun_cli.registry.migrations import MEASURED_JOBS
from brightrun_cli.registry.rows import JobRow, iso
from brightrun_cli.registry.timeutil import utcnow

if TYPE_CHECKING:
    from brightrun_cli.registry.engine import Tx


def _marks(values: Sequence[Any]) -> str:
    return ",".join("?" * len(values))


# ---------------------------------------------------------------------------- reads


def get(conn: sqlite3.Connection, job_id: str) -> JobRow | None:
    return read.get(conn, JobRow, job_id)


def resolve(conn: sqlite3.Connection, ref: str) -> JobRow:
    return read.resolve(conn, JobRow, ref, "job")


def status_of(conn: sqlite3.Connection, job_id: str) -> str | None:
    row = conn.execute("SELECT status FROM training_jobs WHERE id = ?", (job_id,)).fetchone()
    return row[0] if row else None


def any_in(conn: sqlite3.Connection, statuses: Sequence[str]) -> bool:
    """Whether any job (soft-deleted ones included: they are never active) is in `statuses`."""
    return conn.execute(f"SELECT 1 FROM training_jobs WHERE status IN ({_marks(statuses)}) LIMIT 1", tuple(statuses)).fetchone() is not None


def in_status(conn: sqlite3.Connection, statuses: Sequence[str]) -> list[JobRow]:
    """Jobs in `statuses`, oldest queued first (the queue's FIFO order)."""
    return read.fetch_all(conn, JobRow, f"status IN ({_marks(statuses)})", tuple(statuses), order="queued_at, id")


def on_host(conn: sqlite3.Connection, host_id: str, statuses: Sequence[str]) -> list[JobRow]:
    return read.fetch_all(conn, JobRow, f"host_id = ? AND status IN ({_marks(statuses)})", (host_id, *statuses), order="queued_at, id")


_LIVE_ORDER = "queued_at DESC, id DESC"  # a resumed job queues again: it lists with the newly queued


def _live_where(statuses: Sequence[str]) -> tuple[str, tuple]:
    where = "deleted_at IS NULL"
    if statuses:
        where += f" AND status IN ({_marks(statuses)})"
    return where, tuple(statuses)


def list_live(conn: sqlite3.Connection, statuses: Sequence[str] = (), limit: int | None = None) -> list[JobRow]:
    """Live (not removed) jobs, newest first."""
    where, params = _live_where(statuses)
    return read.fetch_all(conn, JobRow, where, params, order=_LIVE_ORDER, limit=limit)


def list_live_json(conn: sqlite3.Connection, statuses: Sequence[str] = (), limit: int | None = None) -> bytes:
    """`list_live` as a JSON array text: each row's JSON as registry triggers keep it (migration 5)."""
    where, params = _live_where(statuses)
    sql = (f"SELECT j.json FROM training_jobs t JOIN job_list_json j ON j.id = t.id WHERE "
           f"{where.replace('deleted_at', 't.deleted_at').replace('status IN', 't.status IN')} "
           f"ORDER BY t.queued_at DESC, t.id DESC" + (f" LIMIT {int(limit)}" if limit is not None else ""))
    return read.joined_json(conn, sql, params)


def count_live(conn: sqlite3.Connection, statuses: Sequence[str] = ()) -> int:
    where, params = _live_where(statuses)
    return read.count(conn, JobRow.TABLE, where, params)


_WITH_NAMES = (f"SELECT {JobRow.columns_sql('j')}, d.name, h.name FROM training_jobs j "
               "LEFT JOIN datasets d ON d.id = j.dataset_id LEFT JOIN hosts h ON h.id = j.host_id")


def _with_names(values: tuple) -> tuple[JobRow, str | None, str | None]:
    return JobRow.decode(values[:-2]), values[-2], values[-1]


def with_names(conn: sqlite3.Connection, job_id: str) -> tuple[JobRow, str | None, str | None] | None:
    """The job with its dataset's and host's names (watch shows them)."""
    row = conn.execute(_WITH_NAMES + " WHERE j.id = ?", (job_id,)).fetchone()
    return None if row is None else _with_names(row)


def board(conn: sqlite3.Connection, active: Sequence[str], terminal: Sequence[str], recent: int) -> list[tuple[JobRow, str | None, str | None]]:
    """Live jobs in `active` statuses (oldest queued first), then the `recent` most recently ended."""
    rows = conn.execute(
        _WITH_NAMES + f""" WHERE j.deleted_at IS NULL AND (j.status IN ({_marks(active)}) OR j.id IN (
            SELECT id FROM training_jobs WHERE deleted_at IS NULL AND status IN ({_marks(terminal)})
            ORDER BY completed_at DESC, id DESC LIMIT ?))
        ORDER BY j.status IN ({_marks(terminal)}), j.queued_at, j.id""",
        (*active, *terminal, recent, *terminal),
    ).fetchall()
    return [_with_names(r) for r in rows]


def data_version(conn: sqlite3.Connection) -> int:
    """Changes whenever another connection commits: a poll that finds it unchanged reads nothing."""
    return conn.execute("PRAGMA data_version").fetchone()[0]


def measured_gpu_models(conn: sqlite3.Connection) -> list[tuple[str, str]]:
    """The distinct (GPU type, base model) pairs of completed jobs with a measured run."""
    return [(g, m) for g, m in conn.execute(  # the planner, without statistics, would read every row of `ended`
        f"SELECT DISTINCT json_extract(gpu_config, '$.type'), base_model FROM training_jobs INDEXED BY ix_training_jobs_measured "
        f"WHERE {MEASURED_JOBS}") if g is not None]


def measured_on(conn: sqlite3.Connection, gpu_type: str, base_models: Sequence[str], limit: int) -> list[JobRow]:
    """The `limit` most recent completed jobs with a measured run on `gpu_type` with one of
    `base_models`: the estimates' calibration candidates."""
    if not base_models:
        return []
    return read.fetch_all(
        conn, JobRow, f"{MEASURED_JOBS} AND json_extract(gpu_config, '$.type') = ? AND base_model IN ({_marks(base_models)})",
        (gpu_type, *base_models), order="completed_at DESC", limit=limit,
    )


def ended_between(conn: sqlite3.Connection, since, until) -> list[JobRow]:
    """Jobs that ended (completed_at) in [since, until): success rates and durations."""
    return read.fetch_all(conn, JobRow, "completed_at >= ? AND completed_at < ?",
                          (_db_time(since), _db_time(until)), order="completed_at")


def outcomes_since(conn: sqlite3.Connection, sinces: Sequence, statuses: Sequence[str]) -> list[list[tuple[str, int, float | None]]]:
    """For each start in `sinces`: (status, jobs, mean seconds from start to end) of the jobs in
    `statuses` that ended at or after it, removed ones included (they happened): `brightrun
    status`. One pass over the widest window (the index ix_training_jobs_ended covers it),
    each row counted in the narrowest window it falls in, the wider ones summed from those."""
    edges = sorted((_db_time(s) for s in sinces), reverse=True)  # newest start first
    bucket = "CASE " + " ".join(f"WHEN completed_at >= ? THEN {i}" for i in range(len(edges))) + " END"
    totals: list[dict[str, list[float]]] = [{} for _ in edges]  # per window: status -> [jobs, timed jobs, seconds]
    for status, i, n, timed, seconds in conn.execute(
        f"""SELECT status, {bucket}, count(*), count(d), total(d) FROM (
                SELECT status, completed_at, (julianday(completed_at) - julianday(started_at)) * 86400.0 AS d
                FROM training_jobs WHERE status IN ({_marks(statuses)}) AND completed_at >= ?) GROUP BY 1, 2""",
        (*edges, *statuses, edges[-1])):
        for window in totals[i:]:  # ended in window i: inside every wider one too
            acc = window.setdefault(status, [0, 0, 0.0])
            acc[0], acc[1], acc[2] = acc[0] + n, acc[1] + timed, acc[2] + seconds
    by_edge = {edge: [(status, int(n), seconds / timed if timed else None) for status, (n, timed, seconds) in window.items()]
               for edge, window in zip(edges, totals)}
    return [by_edge[_db_time(s)] for s in sinces]


def live_in(conn: sqlite3.Connection, statuses: Sequence[str]) -> list[JobRow]:
    """Live (not removed) jobs in `statuses`, oldest first."""
    return read.fetch_all(conn, JobRow, f"deleted_at IS NULL AND status IN ({_marks(statuses)})", tuple(statuses), order="queued_at, id")


def removed(conn: sqlite3.Connection) -> list[JobRow]:
    """Removed jobs (`jobs rm`), oldest removal first."""
    return read.fetch_all(conn, JobRow, "deleted_at IS NOT NULL", order="deleted_at, id")


def dataset_ids_of(conn: sqlite3.Connection, statuses: Sequence[str]) -> set[str]:
    """The datasets that live jobs in `statuses` train on (their supervisor places the split
    again on every attempt, and a retry copies the dataset reference)."""
    return {r[0] for r in conn.execute(
        f"SELECT DISTINCT dataset_id FROM training_jobs WHERE deleted_at IS NULL AND status IN ({_marks(statuses)})", tuple(statuses))}


def _db_time(value) -> str:
    """An aware datetime in the stored form (naive UTC, microseconds), for comparisons."""
    return iso(value)[:-1].replace("T", " ")


# ---------------------------------------------------------------------------- writes


def insert(tx: "Tx", **fields: Any) -> JobRow:
    from brightrun_cli.registry.tables import TrainingJob

    job = TrainingJob(**fields)
    tx.add(job)
    tx.flush()
    return JobRow.from_model(job)


def get_in(tx: "Tx", job_id: str) -> JobRow | None:
    """The job as the write transaction `tx` sees it."""
    from brightrun_cli.registry.tables import TrainingJob

    job = tx.get(TrainingJob, job_id)
    return None if job is None else JobRow.from_model(job)


def compare_and_set(tx: "Tx", job_id: str, *, statuses: Sequence[str], marker: str | None = None,
                    values: dict[str, Any]) -> bool:
    """UPDATE the job with `values` only while its status is one of `statuses` (and, with
    `marker`, while that supervisor attempt owns it); whether it applied."""
    from sqlmodel import col, update

    from brightrun_cli.registry.tables import TrainingJob

    query = update(TrainingJob).where(col(TrainingJob.id) == job_id, col(TrainingJob.status).in_(list(statuses)))
    if marker is not None:
        query = query.where(col(TrainingJob.supervisor_marker) == marker)
    return tx.exec(query.values(updated_at=utcnow(), **values)).rowcount == 1


def reopen(tx: "Tx", job_id: str, *, status: str, resume_count: int, values: dict[str, Any]) -> bool:
    """The resume CAS: applies only to the status and attempt the caller saw."""
    from sqlmodel import col, update

    from brightrun_cli.registry.tables import TrainingJob

    query = update(TrainingJob).where(col(TrainingJob.id) == job_id, col(TrainingJob.status) == status,
                                      col(TrainingJob.resume_count) == resume_count)
    return tx.exec(query.values(updated_at=utcnow(), **values)).rowcount == 1


def record_pid(tx: "Tx", job_id: str, marker: str, pid: int) -> None:
    """The supervisor's pid, once, for the attempt that `marker` claimed."""
    from sqlmodel import col, update

    from brightrun_cli.registry.tables import TrainingJob

    tx.exec(update(TrainingJob).where(col(TrainingJob.id) == job_id, col(TrainingJob.supervisor_marker) == marker,
                                      col(TrainingJob.supervisor_pid).is_(None)).values(supervisor_pid=pid))


def set_fields(tx: "Tx", job_id: str, **values: Any) -> None:
    """Unconditional update (costs after the status CAS of the same transaction, the model link)."""
    from sqlmodel import col, update

    from brightrun_cli.registry.tables import TrainingJob

    tx.exec(update(TrainingJob).where(col(TrainingJob.id) == job_id).values(updated_at=utcnow(), **values))


def soft_delete(tx: "Tx", job_id: str, *, statuses: Sequence[str]) -> bool:
    """Hide an ended job and drop its metric points; False when it is not in `statuses` (or gone)."""
    from sqlmodel import col, update

    from brightrun_cli.registry.tables import MetricPoint, TrainingJob

    now = utcnow()
    done = tx.exec(
        update(TrainingJob).where(col(TrainingJob.id) == job_id, col(TrainingJob.status).in_(list(statuses)),
                                  col(TrainingJob.deleted_at).is_(None)).values(deleted_at=now, updated_at=now)
    ).rowcount == 1
    if done:
        tx.exec(MetricPoint.__table__.delete().where(MetricPoint.__table__.c.job_id == job_id))
    return done


def detach_host(tx: "Tx", host_id: str, host_name: str) -> None:
    """A host is removed: its finished jobs keep the name (`hosts`), lose the id."""
    from sqlmodel import col, select

    from brightrun_cli.registry.tables import TrainingJob

    for job in tx.exec(select(TrainingJob).where(col(TrainingJob.host_id) == host_id)).all():
        job.host_id = None
        if not job.hosts:
            job.hosts = [host_name]
        tx.add(job)


def count_for_dataset(tx: "Tx", dataset_id: str) -> int:
    from sqlmodel import func, select

    from brightrun_cli.registry.tables import TrainingJob

    return int(tx.exec(select(func.count()).select_from(TrainingJob).where(TrainingJob.dataset_id == dataset_id)).one())
