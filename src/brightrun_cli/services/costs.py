"""The spend report over `cost_records` (SPEC 9): totals grouped by type, day, job or GPU."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from typing import Any

from brightrun_cli.errors import UsageError
from brightrun_cli.registry.tables import CostRecord
from brightrun_cli.registry.timeutil import utcnow
from brightrun_cli.services.workspace import Workspace

PERIODS = ("week", "month", "year")
GROUPINGS = ("type", "day", "job", "gpu")


@dataclass(frozen=True)
class CostGroup:
    key: str
    amount: float
    records: int


@dataclass(frozen=True)
class CostReport:
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
            "total": round(self.total, 4), "records": self.records,
            "by_type": {k: round(v, 4) for k, v in self.by_type.items()},
            "groups": [{"key": g.key, "amount": round(g.amount, 4), "records": g.records} for g in self.groups],
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
    from sqlmodel import col, select

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
    query = select(CostRecord)
    if start:
        query = query.where(col(CostRecord.recorded_at) >= datetime.combine(start, time(), timezone.utc))
    if end:
        query = query.where(col(CostRecord.recorded_at) < datetime.combine(end + timedelta(days=1), time(), timezone.utc))
    with ws.registry.session() as session:
        rows = session.exec(query.order_by(col(CostRecord.recorded_at))).all()
    amounts: dict[str, float] = defaultdict(float)
    counts: dict[str, int] = defaultdict(int)
    by_type: dict[str, float] = defaultdict(float)
    for row in rows:
        key = _group_key(row, by)
        amounts[key] += row.amount
        counts[key] += 1
        by_type[row.cost_type] += row.amount
    order = sorted(amounts) if by == "day" else sorted(amounts, key=lambda k: -amounts[k])
    return CostReport(
        by=by, since=start, until=end, total=sum(r.amount for r in rows), by_type=dict(by_type),
        groups=[CostGroup(k, amounts[k], counts[k]) for k in order], records=len(rows),
    )


def _group_key(row: CostRecord, by: str) -> str:
    if by == "type":
        return row.cost_type
    if by == "day":
        return row.recorded_at.astimezone(timezone.utc).date().isoformat()
    if by == "job":
        return row.job_id or "(no job)"
    return row.gpu_type or "(none)"
