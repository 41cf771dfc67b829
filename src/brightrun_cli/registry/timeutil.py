"""Times are stored as naive UTC in SQLite and handed out timezone-aware."""

from __future__ import annotations

from datetime import datetime, timezone


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def isoformat(value: datetime | None) -> str | None:
    """ISO-8601 with a `Z`, the form every `--json` output uses."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def parse_db_time(value: str | None) -> datetime | None:
    """Parse a time as stored in SQLite (`YYYY-MM-DD HH:MM:SS[.ffffff]`, UTC) for raw-sqlite3 readers."""
    if value is None:
        return None
    return datetime.fromisoformat(value).replace(tzinfo=timezone.utc)


def db_time(value: datetime) -> str:
    """An aware datetime in the stored form (naive UTC, microseconds), for comparisons in SQL."""
    return value.astimezone(timezone.utc).replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds")
