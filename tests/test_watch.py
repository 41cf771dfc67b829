"""`brightrun watch`: what a person sees in each state, the streams scripts read, exit codes."""

from __future__ import annotations

import io
import json
import re
import subprocess
import threading
from datetime import datetime, timedelta, timezone

import pytest
from rich.console import Console

from brightrun_cli.cli.watch import EXIT_JOB_CANCELLED, EXIT_JOB_FAILED, EXIT_JOB_NOT_FOUND, follow_job
from brightrun_cli.cli.watch_view import render_board, render_job
from brightrun_cli.registry.timeutil import utcnow
from brightrun_cli.services.watch import JobFollower, JobsBoard, LogTail
from brightrun_cli.workspace import Workspace
from conftest import run_brightrun
from watch_sim import popen_brightrun
from watch_sim import add_point, advance, log, make_job, running_job, update_job

ANSI = re.compile(r"\x1b\[")


@pytest.fixture
def ws() -> Workspace:
    return Workspace.open()


def screen(renderable, width: int = 80, height: int = 40) -> str:
    console = Console(file=io.StringIO(), width=width, height=height, color_system=None, legacy_windows=False)
    console.print(renderable)
    return console.file.getvalue()


def state_of(ws: Workspace, job_id: str):
    follower = JobFollower(ws, job_id)
    follower.poll()
    follower.close()
    return follower.state


def fits(text: str, width: int) -> bool:
    return all(len(line) <= width for line in text.splitlines())


def finished(ws, status: str, **fields) -> str:
    job_id = running_job(ws)
    update_job(ws, job_id, status=status, current_stage=status, completed_at=utcnow(), **fields)
    return job_id


# -- render functions, one per job state, at a fixed width -------------------------------


def test_queued_job_shows_waiting_time_and_what_it_will_run(ws):
    now = utcnow()  # one clock reading for the row and the render: a slow machine never reads 1m16s
    job_id = make_job(ws, queued_at=now - timedelta(seconds=75))
    out = screen(render_job(state_of(ws, job_id), now))
    assert "◌ queued" in out and "waiting 1m15s" in out
    assert job_id in out and "support-v1" in out and "preset balanced" in out and "builtin:tiny" in out
    assert "workstation · 1× cpu" in out
    assert "waiting for the first metric point" in out
    assert "ETA" not in out
    assert fits(out, 80)


def test_initializing_job_shows_stage_and_log_tail(ws):
    job_id = make_job(ws)
    now = utcnow()
    update_job(ws, job_id, status="initializing", current_stage="loading model", started_at=now - timedelta(seconds=5))
    log(ws, job_id, "loading base model builtin:tiny")
    out = screen(render_job(state_of(ws, job_id), now))
    assert "◐ initializing" in out and "(loading model)" in out and "elapsed 5s" in out
    assert "loading base model builtin:tiny" in out
    assert fits(out, 80)


def test_running_job_shows_progress_losses_rates_cost_and_curve(ws):
    job_id = running_job(ws, steps=40, done=10)
    now = state_of(ws, job_id).job.started_at + timedelta(minutes=2)  # the clock two minutes after start, exactly
    update_job(ws, job_id, estimated_completion_at=now + timedelta(minutes=6))
    out = screen(render_job(state_of(ws, job_id), now))
    assert "● running" in out and "elapsed 2m00s" in out
    assert "epoch 1/2" in out and "step 10/40" in out and "25%" in out and "ETA 6m00s" in out
    # Train loss with its change since the previous step; validation loss of the base model.
    assert re.search(r"train loss\s+2\.2758 ▼0\.0684", out)
    assert re.search(r"val loss\s+3\.2000", out)
    assert "1.51e-04" in out and "5,120" in out
    assert "cost so far $0.30 of estimated $1.20 (25%) · budget $5.00" in out
    assert re.search(r"[\u2801-\u28ff]", out), "the braille loss curve is drawn"
    assert "step 40" in out and "validation" in out
    assert fits(out, 80)


def test_dashboard_uses_the_width_it_has(ws):
    state = state_of(ws, running_job(ws))
    narrow, wide = screen(render_job(state, utcnow()), 80), screen(render_job(state, utcnow()), 160)
    assert fits(narrow, 80) and max(map(len, wide.splitlines())) == 160
    # Wide: summary and curve side by side, so the dashboard is shorter.
    assert len(wide.splitlines()) < len(narrow.splitlines())


@pytest.mark.parametrize(("width", "height"), [(80, 24), (80, 30), (120, 24), (160, 50)])
def test_dashboard_fits_the_terminal_height(ws, width, height):
    job_id = finished(ws, "failed", error_message="trainer exited with code 1: CUDA out of memory")
    for i in range(20):
        log(ws, job_id, f"log line {i}")
    out = screen(render_job(state_of(ws, job_id), utcnow(), height=height), width=width, height=height)
    assert len(out.splitlines()) < height  # one row left for the cursor: nothing scrolls away
    assert "CUDA out of memory" in out and re.search(r"train loss\s+2\.2758", out)


def test_gpu_utilisation_and_memory_are_shown_when_known(ws):
    job_id = running_job(ws, done=2)
    add_point(ws, job_id, 3, 40, gpu_utilization=87.0, gpu_memory=31.25)
    out = screen(render_job(state_of(ws, job_id), utcnow()))
    assert "87% · 31.2 GiB" in out


def test_completed_job_shows_final_cost_full_bar_and_no_eta(ws):
    job_id = finished(ws, "completed", final_cost=1.1, current_step=40, progress=100.0)
    out = screen(render_job(state_of(ws, job_id), utcnow()))
    assert "✔ completed" in out and "100%" in out and "ETA" not in out
    assert "cost $1.10 of estimated $1.20" in out


def test_cost_line_shows_the_estimate_even_when_free_and_says_when_there_is_no_budget(ws):
    job_id = finished(ws, "completed", final_cost=0.0, current_step=40, progress=100.0)
    update_job(ws, job_id, estimated_total_cost=0.0, max_cost=None)
    out = screen(render_job(state_of(ws, job_id), utcnow()))
    assert "cost $0.00 of estimated $0.00 · no budget (train --max-cost)" in out


def test_failed_job_shows_the_error(ws):
    job_id = finished(ws, "failed", error_message="trainer exited with code 1: CUDA out of memory")
    out = screen(render_job(state_of(ws, job_id), utcnow()))
    assert "✘ failed" in out and "error" in out and "CUDA out of memory" in out


def test_cancelled_job_and_budget_exceeded(ws):
    job_id = finished(ws, "cancelled", final_cost=6.0)
    out = screen(render_job(state_of(ws, job_id), utcnow()))
    assert "■ cancelled" in out and "budget $5.00 exceeded" in out


def test_the_end_line_says_why_a_job_was_stopped_but_not_a_plain_cancel(ws):
    from brightrun_cli.cli.watch_view import status_line

    over = finished(ws, "cancelled", final_cost=6.0, error_message="stopped: running cost went over --max-cost $5.00")
    line = status_line(state_of(ws, over).job, utcnow())
    assert line.startswith(f"job {over} cancelled after") and line.endswith(": stopped: running cost went over --max-cost $5.00")
    plain = finished(ws, "cancelled", error_message="cancelled by the user")
    assert "by the user" not in status_line(state_of(ws, plain).job, utcnow())


def test_loss_curve_rescales_as_the_loss_falls(ws):
    job_id = running_job(ws, done=3)
    early = screen(render_job(state_of(ws, job_id), utcnow()))
    for step in range(4, 40):
        add_point(ws, job_id, step, 40)
    late = screen(render_job(state_of(ws, job_id), utcnow()))
    low = lambda text: min(float(v) for v in re.findall(r"^│ +(\d\.\d{3}) │", text, re.M))  # noqa: E731
    assert low(late) < low(early)


def test_board_lists_active_jobs_first_then_recent_finished(ws):
    done = finished(ws, "completed")
    queued = make_job(ws)
    running = running_job(ws)
    with JobsBoard(ws) as board:
        assert board.poll() and not board.poll()  # nothing new: nothing re-read
        ids = [row.job.id for row in board.rows]
        assert ids == [queued, running, done]
        out = screen(render_board(board.rows, utcnow(), selectable=True))
    assert fits(out, 80)
    assert "● running" in out and "◌ queued" in out and "✔ completed" in out and "2.2758" in out
    assert "press 1-9" in out


# -- incremental reads ----------------------------------------------------------------


def test_follower_reads_only_new_points_and_log_lines(ws):
    job_id = running_job(ws, done=3)
    follower = JobFollower(ws, job_id)
    first = follower.poll()
    assert [p.step for p in first.new_points] == [0, 1, 2, 3]
    assert not follower.poll().any
    add_point(ws, job_id, 4, 40)
    log(ws, job_id, "step 4")
    change = follower.poll()
    assert [p.step for p in change.new_points] == [4] and change.new_log_lines == ["step 4"]
    assert [p.step for p in follower.state.points] == [0, 1, 2, 3, 4]
    follower.close()


def test_log_tail_keeps_partial_lines_until_complete_and_survives_truncation(tmp_path):
    path = tmp_path / "trainer.log"
    tail = LogTail(path)
    assert tail.read() == []
    path.write_bytes(b"one\ntw")
    assert tail.read() == ["one"]
    with path.open("ab") as handle:
        handle.write(b"o\n")
    assert tail.read() == ["two"]
    path.write_bytes(b"new\n")
    assert tail.read() == ["new"]


# -- streams and exit codes -------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "code"), [("completed", 0), ("failed", EXIT_JOB_FAILED), ("cancelled", EXIT_JOB_CANCELLED)]
)
def test_exit_code_says_how_the_job_ended(ws, cli, status, code):
    job_id = finished(ws, status, error_message="boom" if status == "failed" else None)
    result = cli("watch", job_id[:10])
    assert result.exit_code == code
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith(f"job {job_id} {status} after")


def test_unknown_job_exits_with_the_not_found_code(cli):
    result = cli("watch", "01zzzzzzzz")
    assert result.exit_code == EXIT_JOB_NOT_FOUND == 5
    assert result.stderr.startswith("error: no job matches '01zzzzzzzz'") and result.stdout == ""


def test_follow_job_returns_the_code_for_train_to_use(ws, capsys):
    job_id = finished(ws, "failed", error_message="trainer exited with code 1")
    assert follow_job(ws, job_id) == EXIT_JOB_FAILED
    assert "failed" in capsys.readouterr().out


def watch_while_advancing(ws, job_id: str, *args: str, env: dict | None = None, **advance_kw) -> subprocess.CompletedProcess:
    """Run `brightrun watch JOB ARGS` as a subprocess; start the job moving once watch has
    printed its first line, so it sees every transition however slow its start-up."""
    proc = popen_brightrun("watch", job_id, *args, env=env)
    first = proc.stdout.readline()
    sim = threading.Thread(target=advance, args=(ws, job_id), kwargs=advance_kw)
    sim.start()
    try:
        out, err = proc.communicate(timeout=120)
    finally:
        sim.join()
    return subprocess.CompletedProcess(proc.args, proc.returncode, first + out, err)


def test_piped_output_is_plain_lines_in_order_while_the_job_runs(ws):
    job_id = make_job(ws)
    result = watch_while_advancing(ws, job_id, env={"NO_COLOR": "", "TERM": "xterm-256color"}, steps=8, interval=0.05, end="failed")
    assert result.returncode == EXIT_JOB_FAILED, result.stderr
    assert not ANSI.search(result.stdout)
    lines = result.stdout.splitlines()
    assert lines[0] == f"job {job_id} queued (preset balanced, dataset support-v1)"
    steps = [int(m.group(1)) for m in map(re.compile(r"^step (\d+)/8 .*loss").match, lines) if m]
    assert steps == sorted(steps) and 4 in steps
    assert lines[-1].endswith("trainer exited with code 1: CUDA out of memory")


def test_json_stream_has_every_point_once_in_step_order(ws):
    job_id = make_job(ws)
    result = watch_while_advancing(ws, job_id, "--json", steps=30, interval=0.02)
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    points = [r for r in records if r["type"] == "metric"]
    keys = [(p["step"], p["split"]) for p in points]
    assert len(keys) == len(set(keys)) == 30 + 3  # 30 train + base, mid-run and final validation
    assert [p["step"] for p in points] == sorted(p["step"] for p in points)
    assert {p["job_id"] for p in points} == {job_id}
    assert set(points[-1]) >= {"training_loss", "validation_loss", "learning_rate", "gradient_norm", "throughput", "epoch", "timestamp"}
    statuses = [r["status"] for r in records if r["type"] == "status"]
    assert statuses[0] == "queued" and statuses[-1] == "completed" and records[-1]["type"] == "status"
    assert statuses == sorted(statuses, key=["queued", "initializing", "running", "completed"].index)
    # Status text goes to stderr so stdout stays pure NDJSON.
    assert f"job {job_id} completed" in result.stderr


def test_board_stream_without_a_terminal_ends_when_no_job_is_active(ws):
    done = finished(ws, "completed")
    job_id = make_job(ws)
    sim = threading.Thread(target=advance, args=(ws, job_id), kwargs=dict(steps=4, interval=0.05, end="cancelled"))
    sim.start()
    result = run_brightrun("watch", "--json")
    sim.join()
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert {r["job_id"] for r in records} == {done, job_id}
    assert [r["status"] for r in records if r["job_id"] == job_id][-1] == "cancelled"


def test_watch_with_no_jobs_says_how_to_start_one(cli):
    result = cli("watch")
    assert result.exit_code == 0 and "brightrun train" in result.stderr


def test_elapsed_and_eta_come_from_the_row_and_the_clock(ws):
    job_id = running_job(ws, steps=40, done=10)
    job = state_of(ws, job_id).job
    now = job.started_at + timedelta(minutes=2)
    assert job.elapsed(now) == timedelta(minutes=2)
    assert job.eta(now) == timedelta(minutes=6)  # 10 of 40 steps in 2 minutes
    assert job.eta(datetime.now(timezone.utc)) is not None


# -- a tracker that failed: said once, the job goes on --------------------------------------

MLFLOW_DOWN = "opening it: MlflowException: unreachable"


def _tracker_failed(ws: Workspace, job_id: str) -> None:
    from brightrun_cli.trackers.records import empty_record, write_records

    run_dir = ws.home / "runs" / job_id
    run_dir.mkdir(parents=True, exist_ok=True)
    write_records(run_dir, {"tensorboard": empty_record("done"), "mlflow": empty_record("failed", MLFLOW_DOWN)})


def test_a_failed_tracker_is_one_line_once_while_following(ws):
    job_id = running_job(ws)
    with JobFollower(ws, job_id) as follower:
        assert follower.poll().new_tracker_problems == []
        _tracker_failed(ws, job_id)
        change = follower.poll()
        assert change.any and change.new_tracker_problems == [
            f"tracker mlflow failed: {MLFLOW_DOWN}; the job goes on without it (see 'brightrun jobs show {job_id}')"]
        _tracker_failed(ws, job_id)  # rewritten (a later flush): not said again
        assert follower.poll().new_tracker_problems == [] and follower.new_tracker_problems() == []
        state = follower.state
    out = screen(render_job(state, utcnow()), width=200)
    assert "warning: tracker mlflow failed: opening it: MlflowException" in out  # the dashboard too


@pytest.mark.parametrize("json_output", [False, True])
def test_watch_says_a_failed_tracker_once_on_stderr_and_in_no_record(ws, cli, json_output):
    job_id = finished(ws, "failed", error_message="boom")
    _tracker_failed(ws, job_id)
    result = cli("watch", job_id, *(["--json"] if json_output else []))
    assert result.exit_code == EXIT_JOB_FAILED  # the job's own outcome, not the tracker's
    warned = [line for line in result.stderr.splitlines() if "tracker" in line]
    assert warned == [f"warning: tracker mlflow failed: {MLFLOW_DOWN}; the job goes on without it (see 'brightrun jobs show {job_id}')"]
    assert "tracker" not in result.stdout and "tensorboard" not in result.stderr


def test_an_unreachable_tracking_server_is_said_in_a_few_words(ws):
    from brightrun_cli.services.watch import _short_reason

    error = ("opening it: MlflowException: API request to http://127.0.0.1:1/api/2.0/mlflow/experiments/get-by-name failed with "
             "exception HTTPConnectionPool(host='127.0.0.1', port=1): Max retries exceeded with url: /api/2.0/mlflow/x (Caused by")
    assert _short_reason(error) == "opening it: cannot connect to http://127.0.0.1:1"
    assert _short_reason("sending metrics: OSError: disk full\nmore") == "sending metrics: OSError: disk full"
