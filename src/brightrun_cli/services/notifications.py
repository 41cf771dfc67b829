"""Notifications: one row per event (SPEC 9), with priority and the command to run next.

`notify()` adds the row inside the caller's write transaction, so an event is recorded
exactly when the change it reports is. The optional hook from `config.toml`
(`notification_hook`) receives each event as one JSON object on stdin, *after* that
transaction commits (a rolled-back change announces nothing); it runs detached
(services/hook_runner.py), so it never delays the operation that notified, and one that
fails or times out is logged to `<home>/hook.log` and said by the next command's
`warning:` line.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Any

from brightrun_cli.config import load_config
from brightrun_cli.errors import UsageError
from brightrun_cli.registry import notifications as notification_rows
from brightrun_cli.registry.engine import defer_until_commit
from brightrun_cli.registry.rows import NotificationRow
from brightrun_cli.services.hook_runner import HOOK_LOG, log_hook  # noqa: F401  (HOOK_LOG: where failures go)

if TYPE_CHECKING:
    from brightrun_cli.registry.engine import Tx
    from brightrun_cli.workspace import Workspace

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
_PENDING = "brightrun_pending_notifications"
_RUNNERS: list[Any] = []  # hook runners started by this process (subprocess.Popen)


def notify(
    tx: "Tx",
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
) -> None:
    """Add a notification row inside the caller's write transaction (so it commits with the change it reports)."""
    if type not in EVENT_TYPES:
        raise ValueError(f"unknown notification type {type!r}")
    if priority not in PRIORITIES:
        raise ValueError(f"unknown notification priority {priority!r}")
    row = notification_rows.insert(
        tx, type=type, title=title, message=message, priority=priority, action_command=action_command,
        job_id=job_id, dataset_id=dataset_id, artifact_id=artifact_id, metadata=metadata,
    )
    defer_until_commit(tx, _PENDING, _deliver).append(row)


def _deliver(home: Path, rows: list[Any]) -> None:
    run_hook(home, [NotificationRow.from_model(r).to_json() for r in rows])


def run_hook(home: Path, events: list[dict[str, Any]]) -> None:
    """Hand the events to the configured hook without waiting for it: a runner process of
    its own (hook_runner.py, a new session, so it outlives this command) feeds them to the
    hook. Never raises (a broken hook must not break a job); its failures are logged by the
    runner and said by the next command (config.warnings)."""
    try:
        config = load_config(home)
    except Exception as exc:  # an unreadable config.toml is reported by the command itself
        log_hook(home, f"hook skipped: cannot read config.toml ({exc})")
        return
    argv = config.notification_hook
    if not argv or not events:
        return
    import subprocess  # here, not at the top: ~6 ms of every command's start, used only where a hook is set
    import sys

    runner = [sys.executable, "-I", str(Path(__file__).with_name("hook_runner.py")),
              str(home), repr(config.notification_hook_timeout), "--", *argv]
    try:
        process = subprocess.Popen(runner, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                   cwd=home, start_new_session=True)
    except OSError as exc:
        log_hook(home, f"hook {shlex.join(argv)} could not start: {exc.strerror or exc}", failed=True)
        return
    try:
        process.stdin.write(json.dumps(events, ensure_ascii=False).encode())
        process.stdin.close()
    except OSError as exc:
        log_hook(home, f"hook {shlex.join(argv)} could not be given its events: {exc.strerror or exc}", failed=True)
    # Not waited for, on purpose; kept so that a long-lived process (a supervisor) reaps
    # the runners that have ended, here, on its next notification.
    _RUNNERS[:] = [p for p in _RUNNERS if p.poll() is None] + [process]


def list_notifications(ws: "Workspace", *, unread: bool = False, limit: int = 20) -> tuple[list[NotificationRow], int]:
    """Newest first, and the number of unread notifications overall."""
    _check_limit(limit)
    with ws.registry.reading() as conn:
        return notification_rows.latest(conn, unread=unread, limit=limit), notification_rows.unread_count(conn)


def list_notifications_json(ws: "Workspace", *, unread: bool = False, limit: int | None = None) -> bytes:
    """`list_notifications` as a JSON array rendered by SQLite (UTF-8): all of them unless `limit`."""
    if limit is not None:
        _check_limit(limit)
    with ws.registry.reading() as conn:
        return notification_rows.latest_json(conn, unread=unread, limit=limit)


def _check_limit(limit: int) -> None:
    if limit < 1:
        raise UsageError(f"--limit must be at least 1 (got {limit})", "pass --limit 1 or more")


def mark_read(ws: "Workspace", ref: str | None = None, *, all: bool = False) -> int:
    """Mark one notification (id or unique prefix) or all of them read; returns how many changed."""
    target = None
    if not all:
        with ws.registry.reading() as conn:
            target = notification_rows.resolve(conn, ref or "").id
    with ws.registry.write() as tx:
        return notification_rows.mark_read(tx, target)
