"""Every statement on `notifications`."""

from __future__ import annotations

import sqlite3
from datetime import datetime
from typing import TYPE_CHECKING, Any

from brightrun_cli.registry import read
from brightrun_cli.registry.rows import NotificationRow
from brightrun_cli.registry.timeutil import db_time

if TYPE_CHECKING:
    from brightrun_cli.registry.engine import Tx

_ORDER = "created_at DESC, id DESC"


def latest(conn: sqlite3.Connection, *, unread: bool = False, limit: int = 20) -> list[NotificationRow]:
    return read.fetch_all(conn, NotificationRow, "read = 0" if unread else "", order=_ORDER, limit=limit)


def latest_json(conn: sqlite3.Connection, *, unread: bool = False, limit: int | None = None) -> bytes:
    return read.json_array(conn, NotificationRow, "read = 0" if unread else "", order=_ORDER, limit=limit)


def unread_count(conn: sqlite3.Connection) -> int:
    return read.count(conn, NotificationRow.TABLE, "read = 0")


def resolve(conn: sqlite3.Connection, ref: str) -> NotificationRow:
    return read.resolve(conn, NotificationRow, ref, "notification")


def read_before(conn: sqlite3.Connection, cutoff: datetime) -> list[NotificationRow]:
    """Read notifications created before `cutoff`, oldest first."""
    return read.fetch_all(conn, NotificationRow, "read = 1 AND created_at < ?", (db_time(cutoff),), order="created_at, id")


def of_job(conn: sqlite3.Connection, job_id: str) -> list[NotificationRow]:
    """The job's notifications, oldest first (a run report's timeline)."""
    return read.fetch_all(conn, NotificationRow, "job_id = ?", (job_id,), order="created_at, id")


def insert(tx: "Tx", **fields: Any) -> Any:
    """Add a row in the write transaction; returns the SQLModel object (the hook sends it after commit)."""
    from brightrun_cli.registry.tables import Notification

    if "metadata" in fields:
        fields["metadata_"] = fields.pop("metadata")
    row = Notification(**fields)
    tx.add(row)
    return row


def mark_read(tx: "Tx", notification_id: str | None = None) -> int:
    """Mark one notification (or, with None, every unread one) read; how many changed."""
    from sqlmodel import col, update

    from brightrun_cli.registry.tables import Notification

    query = update(Notification).where(col(Notification.read).is_(False))
    if notification_id is not None:
        query = query.where(col(Notification.id) == notification_id)
    return int(tx.exec(query.values(read=True)).rowcount or 0)


def delete(tx: "Tx", ids: list[str]) -> int:
    from sqlmodel import col, delete

    from brightrun_cli.registry.tables import Notification

    if not ids:
        return 0
    return int(tx.exec(delete(Notification).where(col(Notification.id).in_(ids))).rowcount or 0)
