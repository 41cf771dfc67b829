"""Notifications: one row per event (SPEC 9), with priority and the command to run next.

`notify()` adds the row inside the caller's write transaction, so an event is recorded
exactly when the change it reports is. The optional hook from `config.toml`
(`notification_hook`) receives each event as one JSON object on stdin, *after* that
transaction commits (a rolled-back change announces nothing); a hook that fails or
times out is logged to `<home>/hook.log` and never breaks the operation that notified.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import event
from sqlmodel import Session, col, func, select, update

from brightrun_cli.registry.queries import resolve
from brightrun_cli.registry.tables import Notification
from brightrun_cli.registry.timeutil import isoformat, utcnow

if TYPE_CHECKING:
    from brightrun_cli.services.workspace import Workspace

EVENT_TYPES = (
    "dataset_ready",
    "dataset_error",
    "job_queued",
    "job_started",
    "job_completed",
    "job_failed",
    "job_cancelled",
    "artifact_ready",
    "budget_exceeded",
)
PRIORITIES = ("low", "medium", "high")
HOOK_LOG = "hook.log"
_PENDING = "brightrun_pending_notifications"


def notify(
    session: Session,
    type: str,
    title: str,
    message: str,
    *,
    priority: str = "medium",
    action_command: str | None = None,
    job_id: str | None = None,
    dataset_id: str | None = None,
    artifact_id: str | None = None,
    metadata: dict[str, Any] | None = None,
) -> Notification:
    """Add a notification row inside the caller's write transaction (so it commits with the change it reports)."""
    if type not in EVENT_TYPES:
        raise ValueError(f"unknown notification type {type!r}")
    if priority not in PRIORITIES:
        raise ValueError(f"unknown notification priority {priority!r}")
    row = Notification(
        type=type,
        title=title,
        message=message,
        priority=priority,
        action_command=action_command,
        job_id=job_id,
        dataset_id=dataset_id,
        artifact_id=artifact_id,
        metadata_=metadata,
    )
    session.add(row)
    _deliver_after_commit(session, row)
    return row


def event_json(row: Notification) -> dict[str, Any]:
    """The event as the hook (and `notifications --json`) sees it: the registry's field names."""
    data = row.model_dump()
    data["metadata"] = data.pop("metadata_")
    data["created_at"] = isoformat(row.created_at)
    return data


def _deliver_after_commit(session: Session, row: Notification) -> None:
    pending = session.info.get(_PENDING)
    if pending is None:
        pending = session.info[_PENDING] = []
        event.listen(session, "after_commit", _after_commit)
        event.listen(session, "after_rollback", _after_rollback)
    pending.append(row)


def _after_rollback(session: Session) -> None:
    session.info.get(_PENDING, []).clear()


def _after_commit(session: Session) -> None:
    rows = list(session.info.get(_PENDING, []))
    session.info.get(_PENDING, []).clear()
    if not rows:
        return
    # The registry is always <home>/registry.db, so the session knows its home and config.
    home = Path(session.get_bind().url.database).parent
    run_hook(home, [event_json(r) for r in rows])


def run_hook(home: Path, events: list[dict[str, Any]]) -> None:
    """Feed each event to the configured hook; never raises (a broken hook must not break a job)."""
    try:
        from brightrun_cli.config import load_config

        config = load_config(home)
    except Exception as exc:  # an unreadable config.toml is reported by the command itself
        _log_hook(home, f"hook skipped: cannot read config.toml ({exc})")
        return
    argv = config.notification_hook
    if not argv:
        return
    for item in events:
        payload = json.dumps(item, ensure_ascii=False)
        try:
            done = subprocess.run(
                argv, input=payload, text=True, capture_output=True,
                timeout=config.notification_hook_timeout, cwd=home,
            )
        except subprocess.TimeoutExpired:
            _log_hook(home, f"hook {shlex.join(argv)} timed out after {config.notification_hook_timeout:g}s on {item['type']} {item['id']}")
            continue
        except OSError as exc:
            _log_hook(home, f"hook {shlex.join(argv)} could not start: {exc.strerror or exc}")
            return
        if done.returncode != 0:
            tail = (done.stderr or "").strip().splitlines()[-1:] or [""]
            _log_hook(home, f"hook {shlex.join(argv)} exited {done.returncode} on {item['type']} {item['id']}: {tail[0][:300]}")


def _log_hook(home: Path, line: str) -> None:
    try:
        fd = os.open(home / HOOK_LOG, os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o600)
        with os.fdopen(fd, "a", encoding="utf-8") as fh:
            fh.write(f"{isoformat(utcnow())} {line}\n")
    except OSError:
        pass


def list_notifications(ws: "Workspace", *, unread: bool = False, limit: int = 20) -> tuple[list[Notification], int]:
    """Newest first, and the number of unread notifications overall."""
    if limit < 1:
        from brightrun_cli.errors import UsageError

        raise UsageError(f"--limit must be at least 1 (got {limit})", "pass --limit 1 or more")
    with ws.registry.session() as session:
        query = select(Notification).order_by(col(Notification.created_at).desc(), col(Notification.id).desc()).limit(limit)
        if unread:
            query = query.where(col(Notification.read).is_(False))
        rows = list(session.exec(query).all())
        unread_count = session.exec(select(func.count()).select_from(Notification).where(col(Notification.read).is_(False))).one()
    return rows, int(unread_count)


def mark_read(ws: "Workspace", ref: str | None = None, *, all: bool = False) -> int:
    """Mark one notification (id or unique prefix) or all of them read; returns how many changed."""
    with ws.registry.write() as session:
        if all:
            result = session.exec(update(Notification).where(col(Notification.read).is_(False)).values(read=True))
            return int(result.rowcount or 0)
        row = resolve(session, Notification, ref or "", "notification")
        changed = 0 if row.read else 1
        row.read = True
        session.add(row)
        return changed
