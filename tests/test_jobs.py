"""Jobs without training: the lifecycle's compare-and-set, the FIFO queue, dead-job detection,
metric ingestion, and the job commands' refusals. (Real training: tests/test_jobs_slow.py.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlmodel import select

from brightrun_cli import lifecycle
from brightrun_cli.registry.points import insert_many as insert_points
from brightrun_cli.registry.tables import CostRecord, Host, MetricPoint, Notification, TrainingJob
from brightrun_cli.registry.timeutil import utcnow
from brightrun_cli.services import jobs, queue
from brightrun_cli.supervisor import launch
from brightrun_cli.supervisor.ingest import MetricsTail, metric_lines, point_values
from brightrun_cli.workspace import Workspace
from jobs_helpers import dataset_row, job_row


@pytest.fixture
def ws() -> Workspace:
    return Workspace.open()


@pytest.fixture
def spawned(monkeypatch):
    """Record supervisor spawns instead of starting processes."""
    calls: list[str] = []
    monkeypatch.setattr(launch, "spawn_supervisor", lambda ws, job_id, marker: calls.append(job_id) or 0)
    return calls


def _get(ws, job_id):
    return jobs.get_job(ws, job_id)


def test_transitions_only_move_forward_and_terminal_is_final(ws):
    job = job_row(ws, dataset_row(ws))
    with ws.registry.write() as s:
        assert not lifecycle.transition(s, job.id, lifecycle.RUNNING)  # queued cannot skip initializing
        assert lifecycle.transition(s, job.id, lifecycle.INITIALIZING, supervisor_marker="m1")
        assert not lifecycle.transition(s, job.id, lifecycle.INITIALIZING)
        assert not lifecycle.transition(s, job.id, lifecycle.RUNNING, marker="other")  # another attempt's writer
        assert lifecycle.transition(s, job.id, lifecycle.RUNNING, marker="m1")
        assert not lifecycle.transition(s, job.id, lifecycle.CANCELLED, only_from=(lifecycle.QUEUED,))  # a started job is its supervisor's to end
        assert lifecycle.transition(s, job.id, lifecycle.COMPLETED, marker="m1")
        for to in (lifecycle.FAILED, lifecycle.CANCELLED, lifecycle.COMPLETED, lifecycle.RUNNING):
            assert not lifecycle.transition(s, job.id, to)
        assert not lifecycle.update_attempt(s, job.id, "m1", current_step=5)
    row = _get(ws, job.id)
    assert row.status == "completed" and row.completed_at is not None and row.current_step == 0
    with pytest.raises(ValueError):
        with ws.registry.write() as s:
            lifecycle.transition(s, job.id, lifecycle.QUEUED)


def test_queue_is_fifo_per_host_and_respects_slots(ws, spawned):
    data = dataset_row(ws)
    with ws.registry.write() as s:
        s.add(Host(name="gpu2", kind="ssh", ssh_host="example.invalid", gpus=2, gpu_type="A100-80GB"))
    first, second, third = (job_row(ws, data) for _ in range(3))
    wide = job_row(ws, data, hosts=["gpu2"], gpu_config={"type": "A100-80GB", "count": 2, "hourly_rate": 1})
    narrow = job_row(ws, data, hosts=["gpu2"], gpu_config={"type": "A100-80GB", "count": 1, "hourly_rate": 1})
    assert queue.kick(ws) == [first.id, wide.id]  # one slot on local, both of gpu2's for the wide job
    assert spawned == [first.id, wide.id]
    assert _get(ws, second.id).status == "queued" and _get(ws, narrow.id).status == "queued"
    assert queue.kick(ws) == []
    with ws.registry.write() as s:  # the first job ends: its slot goes to the oldest waiting job
        lifecycle.transition(s, first.id, lifecycle.FAILED)
    assert queue.kick(ws) == [second.id]
    assert _get(ws, third.id).status == "queued"


def test_head_of_queue_blocks_later_jobs_on_its_host(ws, spawned):
    data = dataset_row(ws)
    with ws.registry.write() as s:
        s.add(Host(name="gpu2", kind="ssh", ssh_host="example.invalid", gpus=2, gpu_type="A100-80GB"))
    one = job_row(ws, data, hosts=["gpu2"], gpu_config={"type": "A100-80GB", "count": 1, "hourly_rate": 1})
    job_row(ws, data, hosts=["gpu2"], gpu_config={"type": "A100-80GB", "count": 2, "hourly_rate": 1})
    three = job_row(ws, data, hosts=["gpu2"], gpu_config={"type": "A100-80GB", "count": 1, "hourly_rate": 1})
    assert queue.kick(ws) == [one.id]  # `two` does not fit, and `three` may not overtake it
    assert _get(ws, three.id).status == "queued"


def test_dead_supervisor_is_failed_with_reason_cost_and_notification(ws, spawned):
    job = job_row(ws, dataset_row(ws))
    queue.kick(ws)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    started = utcnow() - timedelta(hours=1)
    with ws.registry.write() as s:
        lifecycle.update_attempt(s, job.id, _get(ws, job.id).supervisor_marker, supervisor_pid=gone.pid, started_at=started, heartbeat_at=utcnow())
    assert queue.reap_dead(ws) == [job.id]
    row = _get(ws, job.id)
    assert row.status == "failed" and row.error_message.startswith("supervisor lost")
    assert row.final_cost == pytest.approx(3.6, rel=0.01)  # one hour at $3.60 until the last heartbeat
    with ws.registry.write() as s:
        assert [c.cost_type for c in s.exec(select(CostRecord).where(CostRecord.job_id == job.id))] == ["compute"]
        note = s.exec(select(Notification).where(Notification.type == "job_failed")).one()
    # Its supervisor died before it launched a trainer: nothing to resume from, so retry.
    assert note.priority == "high" and note.action_command == f"brightrun jobs retry {job.id}"
    assert queue.reap_dead(ws) == []


def test_liveness_needs_the_marker_on_the_command_line(ws, spawned):
    job = job_row(ws, dataset_row(ws))
    queue.kick(ws)
    marker = _get(ws, job.id).supervisor_marker
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", marker])
    try:
        with ws.registry.write() as s:
            lifecycle.update_attempt(s, job.id, marker, supervisor_pid=alive.pid)
        assert queue.reap_dead(ws) == []
        with ws.registry.write() as s:  # the same pid without our marker: a reused pid, so the job is dead
            lifecycle.update_attempt(s, job.id, marker, supervisor_pid=os.getpid())
        assert queue.reap_dead(ws) == [job.id]
    finally:
        alive.kill()
        alive.wait()


def test_claim_without_pid_is_dead_only_after_the_grace(ws, spawned):
    job = job_row(ws, dataset_row(ws))
    queue.kick(ws)
    assert queue.reap_dead(ws) == []
    with ws.registry.write() as s:
        lifecycle.update_attempt(s, job.id, _get(ws, job.id).supervisor_marker,
                            heartbeat_at=utcnow() - timedelta(seconds=launch.CLAIM_GRACE_S + 5))
    assert queue.reap_dead(ws) == [job.id]
    assert _get(ws, job.id).error_message == "supervisor lost (it never started)"


def test_metrics_tail_reads_only_complete_lines(tmp_path):
    path = tmp_path / "metrics.jsonl"
    tail = MetricsTail(path)
    assert tail.read() == []
    path.write_text('{"step": 1, "split": "train", "epoch": 0.1}\n{"step": 2, "spl')
    assert [m.step for m in tail.read()] == [1]
    with path.open("a") as fh:
        fh.write('it": "train", "epoch": 0.2}\nnot json\n{"step": 3}\n{"step": "4"}\n[5]\n{"step": 6, "loss": NaN}\n')
    assert [m.step for m in tail.read()] == [2, 3]
    assert tail.bad_lines == 4


def test_ingestion_is_idempotent_on_job_step_split(ws):
    job = job_row(ws, dataset_row(ws))
    lines = [{"time": 1764100000.0 + i, "split": "train", "epoch": i / 10, "step": i, "training_loss": 2.0 - i / 10,
              "grad_norm": 0.5, "tokens_per_sec": 100.0} for i in range(1, 11)]
    lines.append({"time": 1764100011.0, "split": "validation", "epoch": 1.0, "step": 10, "validation_loss": 1.5})
    for _ in range(2):  # a resumed trainer re-writes lines that were already ingested
        with ws.registry.write() as s:
            insert_points(s.connection(), point_values(job.id, metric_lines(lines)))
    with ws.registry.write() as s:
        points = s.exec(select(MetricPoint).where(MetricPoint.job_id == job.id).order_by(MetricPoint.step, MetricPoint.split)).all()
    assert [(p.step, p.split) for p in points] == [(i, "train") for i in range(1, 10)] + [(10, "train"), (10, "validation")]
    assert points[0].gradient_norm == 0.5 and points[0].throughput == 100.0 and points[-1].validation_loss == 1.5
    assert points[0].timestamp.tzinfo is not None


def test_bulk_ingestion_spans_full_and_partial_statements_and_skips_resent_points(ws):
    from brightrun_cli.registry.points import MULTI_ROWS

    job = job_row(ws, dataset_row(ws))
    n = 2 * MULTI_ROWS + 57  # two full multi-row statements and a partial one
    lines = metric_lines([{"time": 1764100000.5 + i, "split": "train", "epoch": i / n, "step": i, "training_loss": 1.0 / i,
                           "gpu_memory": None} for i in range(1, n + 1)])
    with ws.registry.write() as s:
        assert insert_points(s.connection(), point_values(job.id, lines[:MULTI_ROWS + 3])) == MULTI_ROWS + 3
    with ws.registry.write() as s:  # a re-read from an earlier offset overlaps what is stored
        insert_points(s.connection(), point_values(job.id, lines))
    conn = ws.registry.connect()
    rows = conn.execute("SELECT step, training_loss, timestamp FROM metrics_points WHERE job_id = ? ORDER BY id", (job.id,)).fetchall()
    nulls = conn.execute("SELECT DISTINCT typeof(validation_loss), typeof(gpu_memory) FROM metrics_points WHERE job_id = ?",
                         (job.id,)).fetchall()
    conn.close()
    assert [tuple(r) for r in nulls] == [("null", "null")]  # None binds as NULL (through the registry's adapter)
    assert [r[0] for r in rows] == list(range(1, n + 1))
    assert all(abs(loss - 1.0 / step) < 1e-12 for step, loss, _ in rows)
    assert rows[0][2] == "2025-11-25 19:46:41.500000" and rows[-1][2].endswith(".500000")


@settings(max_examples=300, deadline=None)
@given(st.floats(min_value=0, max_value=4e9, allow_nan=False) | st.integers(0, 4_000_000_000).map(lambda s: s + 0.9999999))
def test_point_timestamps_are_stored_as_the_registry_writes_datetimes(t):
    from brightrun_cli.supervisor.ingest import _db_second

    stored = point_values("j", metric_lines([{"step": 1, "time": t}]))[1]
    whole = int(t)
    assert stored == f"{_db_second(whole)}.{int((t - whole) * 1e6):06d}"  # microseconds truncated, never rounded up a second
    assert abs(datetime.fromisoformat(stored).replace(tzinfo=timezone.utc).timestamp() - t) < 2e-6 * max(1.0, t / 1e9)


def test_a_point_without_a_usable_time_is_stamped_when_ingested():
    before = utcnow().replace(microsecond=0, tzinfo=None)
    values = point_values("j", metric_lines([{"step": 1}, {"step": 2, "time": -5.0}, {"step": 3, "time": 1e20}]))
    stamps = [datetime.fromisoformat(values[i * 12 + 1]) for i in range(3)]
    assert all(before <= s <= utcnow().replace(tzinfo=None) for s in stamps)


def test_cancel_queued_job_and_refusals(cli, ws, monkeypatch):
    monkeypatch.setattr(queue, "kick", lambda ws, **_: [])
    monkeypatch.setattr(queue, "kick_if_needed", lambda home: None)
    job = job_row(ws, dataset_row(ws))
    other = job_row(ws, dataset_row(ws, name="other"))
    result = cli("jobs", "cancel", other.id)
    assert result.exit_code == 0 and result.stdout.splitlines() == [
        f"job {other.id} cancelled before it started; nothing billed", f"run it again with: brightrun jobs retry {other.id}"]
    result = cli("jobs", "cancel", job.id, "--json")
    assert result.exit_code == 0 and json.loads(result.stdout)["status"] == "cancelled"
    assert json.loads(result.stdout)["already_cancelled"] is False
    assert json.loads(cli("jobs", "cancel", job.id, "--json").stdout)["already_cancelled"] is True
    result = cli("jobs", "cancel", job.id)  # a second cancel (a script retrying) succeeds and says so
    assert result.exit_code == 0 and result.stdout.splitlines() == [
        f"job {job.id} was already cancelled", f"run it again with: brightrun jobs retry {job.id}"]
    result = cli("jobs", "resume", job.id)  # never started: no checkpoint
    assert result.exit_code == 2 and "no checkpoint" in result.stderr and "jobs retry" in result.stderr
    retried = json.loads(cli("jobs", "retry", job.id, "--json").stdout)
    assert retried["id"] != job.id and retried["retry_count"] == 1 and retried["status"] == "queued"
    assert retried["spec"] is None or retried["spec"]["job_id"] == retried["id"]
    result = cli("jobs", "rm", retried["id"], "--yes")
    assert result.exit_code == 2 and "cancel it first" in result.stderr


def test_resume_reopens_same_job_as_a_new_attempt(ws, spawned):
    job = job_row(ws, dataset_row(ws), spec={"job_id": "x"})
    queue.kick(ws)
    old_marker = _get(ws, job.id).supervisor_marker
    with ws.registry.write() as s:
        lifecycle.transition(s, job.id, lifecycle.FAILED, error_message="supervisor lost")
    (ws.home / job.run_dir / "checkpoints" / "step-7").mkdir(parents=True)
    row = jobs.resume_job(ws, job.id, max_cost=5.0)
    assert row.id == job.id and row.resume_count == 1 and row.max_cost == 5.0
    assert row.status == "initializing" and row.error_message is None and row.supervisor_marker != old_marker
    with ws.registry.write() as s:  # the old attempt's writers are locked out
        assert not lifecycle.update_attempt(s, job.id, old_marker, current_step=99)
    with pytest.raises(jobs.ConflictError):
        jobs.resume_job(ws, job.id)


def test_rm_hides_job_drops_points_and_run_dir_keeps_costs(cli, ws):
    job = job_row(ws, dataset_row(ws))
    run_dir = ws.home / job.run_dir
    run_dir.mkdir(parents=True)
    with ws.registry.write() as s:
        lifecycle.transition(s, job.id, lifecycle.CANCELLED)
        insert_points(s.connection(), point_values(job.id, metric_lines([{"step": 1, "epoch": 0.1}])))
        lifecycle.record_attempt_cost(s, _get(ws, job.id), attempt_start=utcnow() - timedelta(minutes=1), attempt_end=utcnow())
    result = cli("jobs", "rm", job.id)  # stdin is not a terminal: needs --yes
    assert result.exit_code == 2 and "--yes" in result.stderr
    assert cli("jobs", "rm", job.id, "--yes").exit_code == 0
    assert not run_dir.exists()
    assert json.loads(cli("jobs", "list", "--json").stdout) == []
    with ws.registry.write() as s:
        assert s.exec(select(MetricPoint).where(MetricPoint.job_id == job.id)).all() == []
        assert len(s.exec(select(CostRecord).where(CostRecord.job_id == job.id)).all()) == 1
    assert cli("jobs", "show", job.id).exit_code == 2


def test_list_filters_and_show(cli, ws, spawned):
    data = dataset_row(ws)
    a, b = job_row(ws, data), job_row(ws, data)
    queue.kick(ws)
    rows = json.loads(cli("jobs", "list", "--status", "queued", "--json").stdout)
    assert [r["id"] for r in rows] == [b.id]
    assert {r["id"] for r in json.loads(cli("jobs", "list", "--status", "active", "--json").stdout)} == {a.id, b.id}
    result = cli("jobs", "list", "--status", "bogus")
    assert result.exit_code == 2 and "unknown job status 'bogus'" in result.stderr
    shown = json.loads(cli("jobs", "show", a.id[:12], "--json").stdout)
    assert shown["status"] == "initializing" and shown["gpu_config"]["count"] == 1
    assert "brightrun watch" in cli("jobs", "show", a.id).stdout


def test_train_refuses_bad_input_without_creating_a_job(cli, ws, tmp_path):
    dataset_row(ws, "broken", status="error")
    cases = [
        (["--dataset", "nope"], "no dataset matches 'nope'"),
        (["--dataset", "broken"], "dataset 'broken' is error"),
        (["--dataset", "broken", "--host", "a", "--hosts", "b"], "--host and --hosts"),
        (["--dataset", "broken", "--max-cost", "-1"], "--max-cost must be positive"),
        # The job runs on the host's GPUs: an explicit gpu_type the host lacks is refused, not replaced.
        (["--dataset", "ok", "--preset", "tiny", "--set", "gpu_type=A100-80GB"], "--set gpu_type=A100-80GB: host 'local' has cpu"),
        (["--dataset", "ok", "--preset", "tiny", "--config", str(tmp_path / "gpu.toml")], "gpu.toml: host 'local' has cpu"),
    ]
    dataset_row(ws, "ok")
    (tmp_path / "gpu.toml").write_text('gpu_type = "H100"\n')
    for args, message in cases:
        result = cli("train", *args, "--detach")
        assert result.exit_code == 2, (args, result.stdout, result.stderr)
        assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    with ws.registry.write() as s:
        assert s.exec(select(TrainingJob)).all() == []
    # Each refused `train` started a standby supervisor (no job was active): every one has gone.
    assert _standbys_gone(ws, timeout=60) and list(ws.runs_dir.glob("*")) == []


def _standbys(ws) -> list:
    import psutil

    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if "--standby" in cmdline and str(ws.home) in cmdline and proc.status() != psutil.STATUS_ZOMBIE:
            found.append(proc)
    return found


def _standby_pids(ws, timeout: float = 10.0) -> list[int]:
    """The standbys' pids once one shows its command line: a process just past Popen may still
    be inside exec, its argv not yet set (an empty /proc/PID/cmdline)."""
    import time

    deadline = time.monotonic() + timeout
    while not (found := _standbys(ws)) and time.monotonic() < deadline:
        time.sleep(0.02)
    return [p.pid for p in found]


def _standbys_gone(ws, timeout: float) -> bool:
    import time

    deadline = time.monotonic() + timeout
    while _standbys(ws):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def test_standby_supervisor_starts_only_when_a_job_would_start_and_exits_unused(ws):
    assert launch.start_standby(ws.home) is None  # no registry yet: nothing could be submitted
    ws.registry.connect().close()
    standby = launch.start_standby(ws.home)
    assert standby is not None and _standby_pids(ws) == [standby.proc.pid]
    assert launch.supervisor_alive(standby.proc.pid, standby.marker)  # liveness checks recognise it
    standby.release()
    assert standby.proc.wait(timeout=60) == 0
    assert list(ws.runs_dir.glob("*")) == []
    job_row(ws, dataset_row(ws))  # a queued job: the next one would wait, so no standby
    assert launch.start_standby(ws.home) is None


def test_of_commands_submitting_at_once_only_one_starts_a_standby(ws):
    ws.registry.connect().close()
    with launch.standing_by(ws.home) as first:
        with launch.standing_by(ws.home) as second:  # another `train` at the same moment
            assert first is not None and second is None
            assert _standby_pids(ws) == [first.proc.pid]
    assert first.proc.wait(timeout=60) == 0
    with launch.standing_by(ws.home) as again:  # the turn is free once the first command is done
        assert again is not None
    assert again.proc.wait(timeout=60) == 0


def test_kick_hands_the_claimed_job_to_the_standby(ws, spawned):
    ws.registry.connect().close()
    standby = launch.start_standby(ws.home)
    job = job_row(ws, dataset_row(ws))  # its dataset has no files: the supervisor fails it in _prepare
    try:
        assert queue.kick(ws, standby=standby) == [job.id]
        assert spawned == []  # no second supervisor
        row = _get(ws, job.id)
        assert row.supervisor_marker == standby.marker and row.supervisor_pid == standby.proc.pid
        assert standby.proc.wait(timeout=60) == 1  # the job it supervised failed
    finally:
        standby.proc.kill()
    row = _get(ws, job.id)
    assert row.status == "failed" and row.supervisor_pid == standby.proc.pid
    log = (ws.runs_dir / job.id / "supervisor.log").read_text()
    assert f"supervising job {job.id}" in log and f"marker {standby.marker}" in log and "job failed" in log


def test_a_dead_standby_is_replaced_by_a_spawned_supervisor(ws, spawned):
    ws.registry.connect().close()
    standby = launch.start_standby(ws.home)
    standby.proc.kill()
    standby.proc.wait()
    job = job_row(ws, dataset_row(ws))
    assert queue.kick(ws, standby=standby) == [job.id]
    assert spawned == [job.id]


def test_jobs_retry_hands_the_new_job_to_a_standby_supervisor(cli, ws, spawned):
    failed = job_row(ws, dataset_row(ws), status="failed", spec={"job_id": "x"})
    result = cli("jobs", "retry", failed.id, "--json")
    assert result.exit_code == 0, result.stderr
    new = json.loads(result.stdout)
    assert spawned == []  # the command's standby took it
    assert _standbys_gone(ws, timeout=60)  # it supervised the job (which fails: the dataset has no files) and ended
    row = _get(ws, new["id"])
    assert row.supervisor_marker == new["supervisor_marker"] and row.supervisor_pid
    assert row.status == "failed" and "missing from storage" in row.error_message
    assert f"supervising job {row.id}" in (ws.runs_dir / row.id / "supervisor.log").read_text()


def test_logs_prints_and_follow_ends_with_the_job(cli, ws, spawned):
    job = job_row(ws, dataset_row(ws))
    result = cli("jobs", "logs", job.id)
    assert result.exit_code == 2 and "no trainer log yet" in result.stderr
    run_dir = ws.home / job.run_dir
    run_dir.mkdir(parents=True)
    (run_dir / "trainer.log").write_text("step 1\nstep 2\n")
    (run_dir / "supervisor.log").write_text("launching: python -m accelerate.commands.launch\n")
    assert cli("jobs", "logs", job.id).stdout == "step 1\nstep 2\n"
    assert "accelerate.commands.launch" in cli("jobs", "logs", job.id, "--log", "supervisor").stdout
    with ws.registry.write() as s:
        lifecycle.transition(s, job.id, lifecycle.CANCELLED)
    result = cli("jobs", "logs", job.id, "-f")  # an ended job: prints everything and returns
    assert result.exit_code == 0 and result.stdout == "step 1\nstep 2\n"
    assert cli("jobs", "logs", job.id, "--log", "bogus").exit_code == 2


def test_a_listed_job_reads_as_its_show_json_and_follows_every_change(cli, ws):
    """`jobs list --json` comes from the JSON rows registry triggers keep (migration 5); `show
    --json` from the typed row: they agree in every field, also after updates and removal."""
    job = job_row(ws, dataset_row(ws), current_metrics={"training_loss": 0.5}, spec={"seed": 42})
    with ws.registry.write() as s:
        lifecycle.transition(s, job.id, lifecycle.CANCELLED, error_message="cancelled while queued")
    listed = json.loads(cli("jobs", "list", "--json").stdout)
    shown = json.loads(cli("jobs", "show", job.id, "--json").stdout)
    assert shown.pop("trackers") == {}  # what show adds beside the row: no report_to, no records
    assert shown.pop("attempts") == []  # and no attempt ran: none billed
    assert listed == [shown] and shown["status"] == "cancelled" and shown["spec"] == {"seed": 42}
    assert cli("jobs", "rm", job.id, "--yes").exit_code == 0
    assert json.loads(cli("jobs", "list", "--json").stdout) == []


@pytest.mark.parametrize("trainer_status, expected", [("completed", "completed"), (None, "cancelled")])
def test_a_budget_stop_after_the_adapter_was_saved_keeps_the_training(ws, monkeypatch, trainer_status, expected):
    """Over --max-cost during the answer eval (the adapter saved, result.json says completed):
    the job completes with its model; over budget while training, it is cancelled as before."""
    from brightrun_cli.supervisor import run as supervisor_run

    job = job_row(ws, dataset_row(ws), max_cost=0.01)
    with ws.registry.write() as s:
        assert lifecycle.transition(s, job.id, lifecycle.INITIALIZING, supervisor_marker="m1")
        assert lifecycle.transition(s, job.id, lifecycle.RUNNING, marker="m1", started_at=utcnow())
    run_dir = ws.home / job.run_dir
    run_dir.mkdir(parents=True)
    if trainer_status:
        (run_dir / "result.json").write_text(json.dumps({"status": trainer_status, "exit_code": 0}))
    made = []
    monkeypatch.setattr(supervisor_run.Supervisor, "_artifact", lambda self: made.append(self.job_id))
    sup = supervisor_run.Supervisor(ws, job.id, "m1")
    sup.job = _get(ws, job.id)
    sup.stop_reason = "budget"
    sup._end(MetricsTail(run_dir / "metrics.jsonl"), None)  # the trainer was stopped: no exit code of its own
    row = _get(ws, job.id)
    assert row.status == expected
    assert made == ([job.id] if expected == "completed" else [])
    with ws.registry.write() as s:
        kinds = {n.type for n in s.exec(select(Notification).where(Notification.job_id == job.id))}
    assert kinds == ({"job_completed"} if expected == "completed" else {"budget_exceeded"})


def test_cancel_of_a_started_job_suggests_resume_only_with_a_checkpoint(cli, ws, monkeypatch):
    job = job_row(ws, dataset_row(ws))
    with ws.registry.write() as s:
        assert lifecycle.transition(s, job.id, lifecycle.INITIALIZING, supervisor_marker="m1")
        assert lifecycle.transition(s, job.id, lifecycle.RUNNING, marker="m1", started_at=utcnow())
        assert lifecycle.transition(s, job.id, lifecycle.CANCELLED, marker="m1", error_message="cancelled by the user")
    monkeypatch.setattr(jobs, "cancel_job", lambda ws, ref: _get(ws, job.id))  # as the supervisor leaves it
    result = cli("jobs", "cancel", job.id, "--yes")
    assert result.exit_code == 0 and f"run it again with: brightrun jobs retry {job.id}" in result.stdout
    assert "jobs resume" not in result.stdout
    (ws.home / job.run_dir / "checkpoints" / "step-3").mkdir(parents=True)
    result = cli("jobs", "cancel", job.id, "--yes")
    assert f"continue it with: brightrun jobs resume {job.id}" in result.stdout


def test_a_job_whose_host_was_removed_is_still_shown_and_not_retried_into_a_doomed_job(cli, ws):
    job = job_row(ws, dataset_row(ws), hosts=["gone-box"], status="failed", error_message="boom")
    shown = cli("jobs", "show", job.id)
    assert shown.exit_code == 0, shown.stderr
    assert f"brightrun jobs retry {job.id}" in shown.stdout or "retry" in shown.stdout
    retried = cli("jobs", "retry", job.id)
    assert retried.exit_code != 0 and "host 'gone-box'" in retried.stderr and "no longer exists" in retried.stderr
    assert [j["id"] for j in json.loads(cli("jobs", "list", "--json").stdout)] == [job.id]  # nothing queued


def test_a_supervisor_caught_inside_exec_is_alive_not_lost(monkeypatch):
    """Between Popen's return and the kernel setting the new argv, /proc/PID/cmdline is empty:
    a liveness check landing there must wait for the argv, not call the job lost."""
    import subprocess
    import sys

    import psutil

    marker = launch.new_marker()
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", marker])
    real_cmdline = psutil.Process.cmdline
    calls = []

    def mid_exec_then_real(self):
        calls.append(self.pid)
        return [] if len(calls) < 3 else real_cmdline(self)

    monkeypatch.setattr(psutil.Process, "cmdline", mid_exec_then_real)
    try:
        assert launch.supervisor_alive(proc.pid, marker) and len(calls) == 3
        assert not launch.supervisor_alive(proc.pid, launch.new_marker())  # someone else's marker still fails
    finally:
        proc.kill()
        proc.wait()
    assert not launch.supervisor_alive(proc.pid, marker)


def test_a_job_its_budget_stopped_is_not_run_again_on_the_same_budget(cli, ws, spawned):
    """A budget stop spent the budget: resume would be stopped at once (billing an attempt),
    a retry from scratch would stop where the first did. Both ask for a new one, and say how."""
    job = job_row(ws, dataset_row(ws), status="cancelled", error_message="stopped: running cost went over --max-cost $40.00",
                  max_cost=40.0, current_cost=41.42, estimated_total_cost=30.5, started_at=utcnow())
    (ws.home / job.run_dir / "checkpoints" / "step-3").mkdir(parents=True)
    shown = cli("jobs", "show", job.id)
    assert f"brightrun jobs resume {job.id} --max-cost 72" in shown.stdout  # spent so far + the whole estimate
    resumed = cli("jobs", "resume", job.id)
    assert resumed.exit_code == 2 and "a resumed run would be stopped at once" in resumed.stderr
    assert "--max-cost 72" in resumed.stderr and resumed.stderr.count("\n") == 1
    retried = cli("jobs", "retry", job.id)
    assert retried.exit_code == 2 and "stopped by its budget" in retried.stderr and f"jobs retry {job.id} --max-cost 72" in retried.stderr
    assert cli("jobs", "retry", job.id, "--max-cost", "20").exit_code == 2  # under the estimate, as train refuses it
    assert cli("jobs", "retry", job.id, "--max-cost", "-1").exit_code == 2
    assert [j["id"] for j in json.loads(cli("jobs", "list", "--json").stdout)] == [job.id]  # nothing queued, nothing billed
    retry = json.loads(cli("jobs", "retry", job.id, "--max-cost", "80", "--json").stdout)
    assert retry["max_cost"] == 80.0 and retry["retry_count"] == 1
    resumed = json.loads(cli("jobs", "resume", job.id, "--max-cost", "90", "--json").stdout)
    assert resumed["max_cost"] == 90.0 and resumed["resume_count"] == 1
