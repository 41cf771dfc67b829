"""The spend report over `cost_records` (SPEC 9): totals grouped by type, day, job or GPU."""

from __future__ import annotations

from datetime import date, datetime, time, timedelta, timezone
from typing import Any

import msgspec

from brightrun_cli.errors import UsageError
from brightrun_cli.registry import costs as cost_records
from brightrun_cli.registry.timeutil import utcnow
from brightrun_cli.workspace import Workspace

PERIODS = ("week", "month", "year")
GROUPINGS = ("type", "day", "job", "gpu")


class CostGroup(msgspec.Struct, frozen=True):
    key: str
    amount: float
    records: int


COST_TYPES = ("compute", "storage")  # what lifecycle.record_attempt_cost writes


class CostReport(msgspec.Struct, frozen=True):
    by: str
    since: date | None
    until: date | None  # inclusive
    total: float
    by_type: dict[str, float]
    groups: list[CostGroup]
    records: int

    def to_json(self) -> dict[str, Any]:
        return {
            "by": self.by, "since": self.since, "until": self.until,
            "total_cost": round(self.total, 6), "records": self.records,
            # every type brightrun records, 0 when none: `.by_type.compute` reads the same on a fresh home
            "by_type": {k: round(v, 6) for k, v in {**dict.fromkeys(COST_TYPES, 0.0), **self.by_type}.items()},
            "groups": [{"key": g.key, "amount": round(g.amount, 6), "records": g.records} for g in self.groups],
        }


def period_start(period: str, today: date) -> date:
    """First day of the current calendar week (Monday), month or year, in UTC."""
    if period == "week":
        return today - timedelta(days=today.weekday())
    if period == "month":
        return today.replace(day=1)
    return today.replace(month=1, day=1)


def parse_day(text: str, flag: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError as exc:
        raise UsageError(f"{flag} '{text}' is not a date", "write it as YYYY-MM-DD") from exc


def cost_report(
    ws: Workspace,
    *,
    period: str | None = None,
    since: str | None = None,
    until: str | None = None,
    by: str = "type",
    today: date | None = None,
) -> CostReport:
    """Spend between `since` and `until` (inclusive days, UTC), or over the current
    calendar `period`; all records when neither is given."""
    if by not in GROUPINGS:
        raise UsageError(f"--by '{by}' is not a grouping", f"use one of {', '.join(GROUPINGS)}")
    if period is not None and period not in PERIODS:
        raise UsageError(f"--period '{period}' is not a period", f"use one of {', '.join(PERIODS)}")
    if period is not None and since is not None:
        raise UsageError("--period and --since both give the start", "use one of them")
    today = today or utcnow().date()
    start = period_start(period, today) if period else (parse_day(since, "--since") if since else None)
    end = parse_day(until, "--until") if until else None
    if start and end and end < start:
        raise UsageError(f"--until {end} is before the start {start}", "swap the dates")
    with ws.registry.reading() as conn:
        groups, by_type = cost_records.summarize(
            conn,
            datetime.combine(start, time(), timezone.utc) if start else None,
            datetime.combine(end + timedelta(days=1), time(), timezone.utc) if end else None,
            by,
        )
    groups.sort(key=lambda g: g[0] if by == "day" else (-g[1], g[0]))
    return CostReport(
        by=by, since=start, until=end, total=sum(by_type.values()), by_type=by_type,
        groups=[CostGroup(key, amount, records) for key, amount, records in groups], records=sum(g[2] for g in groups),
    )
