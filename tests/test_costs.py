"""`costs`: totals over cost_records written through the registry API, grouped and filtered."""

from __future__ import annotations

import json
from datetime import date, datetime, timezone

import pytest

from brightrun_cli.errors import UsageError
from brightrun_cli.registry.tables import CostRecord, Dataset, TrainingJob
from brightrun_cli.services.costs import cost_report
from brightrun_cli.workspace import Workspace


def _at(day: str) -> datetime:
    return datetime.fromisoformat(day).replace(hour=12, tzinfo=timezone.utc)


@pytest.fixture
def ws() -> Workspace:
    ws = Workspace.open()
    with ws.registry.write() as session:
        dataset = Dataset(name="d", status="ready", storage_path="datasets/d/data.jsonl", file_name="d.jsonl", file_size=1)
        session.add(dataset)
        session.flush()
        jobs = [TrainingJob(id=f"job{i}aaaaaaaaaaaaaaaaaaaaaa", dataset_id=dataset.id, preset_id="fast", base_model="m",
                            hyperparameters={}, gpu_config={"type": "H100", "count": 1}, total_epochs=1,
                            estimated_total_cost=1.0) for i in (1, 2)]
        session.add_all(jobs)
        session.flush()
        for job_id, kind, amount, gpu, day in [
            (jobs[0].id, "compute", 4.20, "H100", "2026-11-02"),
            (jobs[0].id, "storage", 0.10, None, "2026-11-02"),
            (jobs[1].id, "compute", 7.00, "A100-80GB", "2026-11-20"),
            (jobs[1].id, "compute", 1.00, "A100-80GB", "2026-10-30"),
            (None, "storage", 0.50, None, "2025-12-31"),
        ]:
            session.add(CostRecord(job_id=job_id, cost_type=kind, amount=amount, gpu_type=gpu,
                                   billing_period=day[:8] + "01", recorded_at=_at(day)))
    return ws


def test_totals_by_type_over_everything(ws):
    report = cost_report(ws)
    assert report.records == 5
    assert report.total == pytest.approx(12.80)
    assert [(g.key, round(g.amount, 2)) for g in report.groups] == [("compute", 12.20), ("storage", 0.60)]


def test_calendar_periods(ws):
    today = date(2026, 11, 25)  # a Wednesday
    month = cost_report(ws, period="month", today=today)
    assert (month.since, month.total) == (date(2026, 11, 1), pytest.approx(11.30))
    week = cost_report(ws, period="week", today=today)
    assert (week.since, week.records) == (date(2026, 11, 23), 0)
    year = cost_report(ws, period="year", today=today)
    assert year.total == pytest.approx(12.30)


def test_since_until_are_inclusive_days_and_groupings(ws):
    by_day = cost_report(ws, since="2026-10-30", until="2026-11-02", by="day")
    assert [(g.key, round(g.amount, 2)) for g in by_day.groups] == [("2026-10-30", 1.00), ("2026-11-02", 4.30)]
    by_job = cost_report(ws, by="job")
    assert [(g.key[:4], round(g.amount, 2), g.records) for g in by_job.groups] == [("job2", 8.0, 2), ("job1", 4.3, 2), ("(no ", 0.5, 1)]
    by_gpu = {g.key: round(g.amount, 2) for g in cost_report(ws, by="gpu").groups}
    assert by_gpu == {"A100-80GB": 8.0, "H100": 4.2, "(none)": 0.6}


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"by": "week"}, "--by 'week'"), ({"period": "day"}, "--period 'day'"),
    ({"since": "2026-02-30"}, "--since '2026-02-30' is not a date"),
    ({"since": "2026-11-05", "until": "2026-11-01"}, "is before the start"),
    ({"period": "month", "since": "2026-01-01"}, "--period and --since"),
])
def test_bad_filters_are_usage_errors(ws, kwargs, message):
    with pytest.raises(UsageError, match=message):
        cost_report(ws, **kwargs)


def test_costs_cli_bar_chart_and_json(ws, cli):
    human = cli("costs", "--by", "gpu")
    assert human.exit_code == 0
    lines = {line.split("│")[1].strip(): line for line in human.stdout.splitlines() if line.count("│") >= 4}
    assert lines["A100-80GB"].count("█") == 30 and 0 < lines["H100"].count("█") < 30
    assert "total $12.80" in human.stdout
    data = json.loads(cli("costs", "--since", "2026-11-01", "--json").stdout)
    assert data["total_cost"] == pytest.approx(11.30) and data["since"] == "2026-11-01"
    assert data["by_type"] == {"compute": 11.2, "storage": 0.1}
    assert cli("costs", "--by", "nope").exit_code == 2


def test_costs_with_no_records(cli):
    result = cli("costs", "--period", "month")
    assert result.exit_code == 0 and "No cost records" in result.stdout
    data = json.loads(cli("costs", "--json").stdout)  # a script reads the same keys on a fresh home
    assert data["total_cost"] == 0 and data["by_type"] == {"compute": 0, "storage": 0} and data["groups"] == []
