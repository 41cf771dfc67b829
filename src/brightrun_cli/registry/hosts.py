"""Every statement on `hosts` (`local` always exists: migration 1 creates it)."""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING, Any

from brightrun_cli.errors import NotFoundError
from brightrun_cli.registry import read
from brightrun_cli.registry.rows import HostRow, JobRow
from brightrun_cli.registry.timeutil import utcnow

if TYPE_CHECKING:
    from brightrun_cli.registry.engine import Tx


def all_hosts(conn: sqlite3.Connection) -> list[HostRow]:
    """Every host, `local` first, then by name."""
    return read.fetch_all(conn, HostRow, order="name != 'local', name")


def by_name(conn: sqlite3.Connection, name: str) -> HostRow | None:
    return read.fetch_one(conn, HostRow, "name = ?", (name,))


def get(conn: sqlite3.Connection, host_id: str) -> HostRow | None:
    return read.get(conn, HostRow, host_id)


def resolve(conn: sqlite3.Connection, ref: str) -> HostRow:
    return read.resolve(conn, HostRow, ref, "host", by_name=True)


def of_job(conn: sqlite3.Connection, job: JobRow) -> list[HostRow]:
    """The job's hosts in order (the first is the main node); NotFoundError if one was removed."""
    if job.hosts:
        rows = [by_name(conn, name) for name in job.hosts]
        missing = [n for n, r in zip(job.hosts, rows) if r is None]
        if missing:
            raise NotFoundError(f"host '{missing[0]}' of job {job.id} no longer exists", "add it again with 'brightrun hosts add'")
        return rows
    host = get(conn, job.host_id) if job.host_id else None
    if host is None:
        raise NotFoundError(f"job {job.id} has no host", "retry it with 'brightrun train --host ...'")
    return [host]


def slots(conn: sqlite3.Connection) -> dict[str, int]:
    """GPU slots per host name (the queue's capacity)."""
    return {name: gpus for name, gpus in conn.execute("SELECT name, gpus FROM hosts")}


def names_of_kind(conn: sqlite3.Connection, kind: str) -> set[str]:
    """The names of the hosts of one kind ('slurm': the clusters whose own scheduler queues)."""
    return {name for (name,) in conn.execute("SELECT name FROM hosts WHERE kind = ?", (kind,))}


def insert(tx: "Tx", **fields: Any) -> HostRow:
    from brightrun_cli.registry.tables import Host

    host = Host(**fields)
    tx.add(host)
    tx.flush()
    return HostRow.from_model(host)


def name_taken(tx: "Tx", name: str) -> bool:
    from sqlmodel import col, select

    from brightrun_cli.registry.tables import Host

    return tx.exec(select(Host.id).where(col(Host.name) == name)).first() is not None


def update(tx: "Tx", host_id: str, **values: Any) -> None:
    from brightrun_cli.registry.tables import Host

    row = tx.get(Host, host_id)
    if row is None:
        return
    for key, value in values.items():
        setattr(row, key, value)
    row.updated_at = utcnow()
    tx.add(row)


def delete(tx: "Tx", host_id: str) -> None:
    from brightrun_cli.registry.tables import Host

    row = tx.get(Host, host_id)
    if row is not None:
        tx.delete(row)


def get_in(tx: "Tx", ref: str) -> HostRow | None:
    """A host by id or name as the write transaction sees it."""
    from sqlmodel import col, or_, select

    from brightrun_cli.registry.tables import Host

    row = tx.exec(select(Host).where(or_(col(Host.id) == ref, col(Host.name) == ref))).first()
    return None if row is None else HostRow.from_model(row)
