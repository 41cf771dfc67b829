"""Notifications: one row per event (SPEC 9), with priority and the command to run next."""

from __future__ import annotations

from typing import Any

from sqlmodel import Session

from brightrun_cli.registry.tables import Notification

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
    return row
