"""Jobs with the real trainer on builtin:tiny (CPU): the reliability tests of issue 5.

Each test trains for a few seconds; the machine may be shared, so every wait polls
with a generous deadline instead of sleeping a fixed time."""

from __future__ import annotations

import json
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import psutil
import pytest
from sqlmodel import select

from brightrun_cli.registry.tables import CostRecord, MetricPoint, Notification, TrainingJob
from brightrun_cli import lifecycle
from brightrun_cli.services import jobs, training
from brightrun_cli.workspace import Workspace
from conftest import run_brightrun
from jobs_helpers import conversations
from waiting import wait_for

pytestmark = pytest.mark.slow

# Small and quick, but several optimizer steps per epoch so a run can be interrupted mid-way.
FAST = ("--preset", "tiny", "--set", "batch_size=1", "--set", "num_epochs=1", "--set", "max_seq_length=64", "--set", "packing=false")


@pytest.fixture
def ws(brightrun_home) -> Workspace:
    from brightrun_cli.services.dataset_add import add_dataset

    ws = Workspace.open()
    add_dataset(ws, str(conversations(brightrun_home / "chat.jsonl", 12)), name="chat", base_model="builtin:tiny")
    return ws


def _job(ws, job_id) -> TrainingJob:
    return jobs.get_job(ws, job_id)


def _submit(*extra: str) -> str:
    result = run_brightrun("train", "--dataset", "chat", *FAST, *extra, "--detach", "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["id"]


def _points(ws, job_id) -> list[tuple[int, str]]:
    with ws.registry.write() as s:
        return [(p.step, p.split) for p in s.exec(select(MetricPoint).where(MetricPoint.job_id == job_id).order_by(MetricPoint.step, MetricPoint.split))]


def _procs_of(job_id: str) -> list[psutil.Process]:
    """Live processes of the job: its supervisor and every launcher/trainer (their argv names the run dir)."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        if proc.info["status"] != psutil.STATUS_ZOMBIE and any(job_id in part for part in proc.info["cmdline"] or ()):
            found.append(proc)
    return found


def _types(ws, job_id) -> list[str]:
    with ws.registry.write() as s:
        return [n.type for n in s.exec(select(Notification).where(Notification.job_id == job_id).order_by(Notification.created_at))]


def _train_steps(points) -> list[int]:
    return [step for step, split in points if split == "train"]


def test_train_follows_to_completion_with_metrics_cost_and_notifications(ws):
    result = run_brightrun("train", "--dataset", "chat", *FAST, timeout=300)
    assert result.returncode == 0, result.stderr
    job = jobs.list_jobs(ws)[0]
    assert job.status == "completed" and job.progress == 100.0 and job.current_step == job.total_steps
    steps = _train_steps(_points(ws, job.id))
    assert steps == list(range(1, job.total_steps + 1))
    assert (0, "validation") in _points(ws, job.id)  # the base model's held-out loss
    with ws.registry.write() as s:
        costs = {c.cost_type for c in s.exec(select(CostRecord).where(CostRecord.job_id == job.id))}
    assert costs == {"compute", "storage"} and job.final_cost is not None
    assert _types(ws, job.id)[:3] == ["job_queued", "job_started", "job_completed"]
    assert job.artifact_id is not None  # the models step picked the adapter up
    # A followed run ends with the model it left: its id, name@version and score.
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith(f"model {job.artifact_id} (") and "score " in last and "held-out loss" in last
    log = (ws.home / job.run_dir / "supervisor.log").read_text()
    # One process: the trainer starts without the accelerate launcher (runners/accelerate.py).
    assert "launching: " in log and "-m brightrun_cli.trainer" in log and "accelerate.commands.launch" not in log
    assert job.supervisor_marker in log
    # The trainer's raw output is a log: no progress-bar redraws, no library deprecation notices.
    launcher = (ws.home / job.run_dir / "launcher.log").read_text()
    assert "it/s" not in launcher and "Warning" not in launcher and "completed (exit 0)" in launcher


def test_followed_train_json_is_one_ndjson_stream_each_line_typed(ws):
    """A script reading `train --json` line by line: the job, its metric points and status
    changes, then the model; every line one object with a "type"."""
    result = run_brightrun("train", "--dataset", "chat", *FAST, "--json", timeout=300)
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    kinds = [line["type"] for line in lines]
    assert kinds[0] == "job" and kinds[-1] == "model" and {"metric", "status"} <= set(kinds)
    job = lines[0]
    assert job["estimate"]["estimated_cost"] >= 0 and lines[-1]["job_id"] == job["id"]
    assert [line["status"] for line in lines if line["type"] == "status"][-1] == "completed"


def test_max_steps_stops_the_run_there_with_its_model(ws):
    result = run_brightrun("train", "--dataset", "chat", *FAST, "--set", "num_epochs=3", "--set", "max_steps=3", timeout=300)
    assert result.returncode == 0, result.stderr
    job = jobs.list_jobs(ws)[0]
    assert job.status == "completed" and job.total_steps == 3 and job.current_step == 3 and job.artifact_id is not None
    assert (job.current_epoch, job.total_epochs) == (1, 1)  # 3 steps of a ~10-step epoch: 1 of 1 epoch started, not 3
    assert _train_steps(_points(ws, job.id)) == [1, 2, 3]


def test_a_dataset_with_nothing_held_out_trains_without_held_out_loss(ws, brightrun_home):
    """--val-split 0: estimate and train warn, and the run goes ahead (it used to fail in the
    trainer on an empty validation.jsonl)."""
    from brightrun_cli.services.dataset_add import add_dataset

    add_dataset(ws, str(conversations(brightrun_home / "all.jsonl", 12)), name="all", base_model="builtin:tiny", val_split=0.0)
    result = run_brightrun("train", "--dataset", "all", *FAST, "--set", "max_steps=2", timeout=300)
    assert result.returncode == 0, result.stderr
    job = next(j for j in jobs.list_jobs(ws) if j.spec["validation_file"] is None)
    assert job.status == "completed" and job.artifact_id is not None
    assert _points(ws, job.id) == [(1, "train"), (2, "train")]  # no held-out loss to draw


def test_dry_run_prints_spec_and_argv_and_writes_nothing(ws):
    result = run_brightrun("train", "--dataset", "chat", *FAST, "--dry-run", "--json")
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert plan["spec"]["hyperparameters"]["batch_size"] == 1 and plan["spec"]["train_file"] == "train.jsonl"
    assert plan["argv"][1:3] == ["-m", "brightrun_cli.trainer"] and plan["argv"][-1].endswith(f"runs/{plan['job_id']}/spec.json")
    assert jobs.list_jobs(ws) == [] and not (ws.home / "runs" / plan["job_id"]).exists()


def test_bad_input_exits_2_with_one_line_and_no_job(ws):
    cases = [
        (["--set", "lora_rank=1000"], "lora_rank"),
        (["--host", "nowhere"], "unknown host 'nowhere'"),
        (["--max-cost", "0.000001", "--set", "num_epochs=20"], None),
        (["--base-model", "/no/such/model"], "/no/such/model"),
    ]
    (ws.home / "config.toml").write_text("[gpu_prices]\ncpu = 50.0\n")  # so the estimate costs something
    for args, message in cases:
        result = run_brightrun("train", "--dataset", "chat", *FAST, *args, "--detach")
        assert result.returncode == 2, (args, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
        assert message is None or message in lines[0]
    assert "over --max-cost" in run_brightrun("train", "--dataset", "chat", *FAST, "--max-cost", "0.000001").stderr
    assert jobs.list_jobs(ws) == []


def test_sigkill_supervisor_then_resume_completes_without_gaps_or_duplicates(ws):
    job_id = _submit("--set", "num_epochs=20")  # 200 steps: still training when the supervisor dies, even on an idle CPU
    wait_for("a few training steps", lambda: len(_train_steps(_points(ws, job_id))) >= 2)
    os.kill(_job(ws, job_id).supervisor_pid, signal.SIGKILL)
    killed_at = time.monotonic()
    run_brightrun("jobs", "list")  # any command notices
    job = wait_for("the job marked failed", lambda: (j := _job(ws, job_id)).status == "failed" and j)
    assert time.monotonic() - killed_at < 30
    assert job.error_message.startswith("supervisor lost")
    assert lifecycle.latest_checkpoint(ws.home / job.run_dir) is not None  # the orphaned trainer checkpointed on TERM
    result = run_brightrun("jobs", "resume", job_id)
    assert result.returncode == 0, result.stderr
    job = wait_for("the resumed job to end", lambda: (j := _job(ws, job_id)).status in lifecycle.TERMINAL and j, timeout=300)
    assert job.status == "completed", job.error_message
    assert job.resume_count == 1
    steps = _train_steps(_points(ws, job_id))
    assert steps == list(range(1, job.total_steps + 1))  # no gaps, no duplicates
    with ws.registry.write() as s:
        assert len(s.exec(select(CostRecord).where(CostRecord.job_id == job_id, CostRecord.cost_type == "compute")).all()) == 2
    # the time shown covers both attempts, as the cost does
    attempts = json.loads(run_brightrun("jobs", "show", job_id, "--json").stdout)["attempts"]
    assert [a["attempt"] for a in attempts] == [0, 1] and all(a["hours"] > 0 for a in attempts)
    assert all(a["started_at"].endswith("Z") and a["ended_at"] > a["started_at"] for a in attempts)  # times as everywhere else
    assert "over 2 attempts" in run_brightrun("jobs", "show", job_id).stdout
    end = run_brightrun("watch", job_id).stdout.strip().splitlines()
    assert any("(this attempt; " in line and "over 2 attempts)" in line for line in end), end


def test_supervisor_lost_after_the_trainer_completed_resume_collects_without_retraining(ws):
    job_id = _submit()
    wait_for("training to start", lambda: _job(ws, job_id).status == "running")
    supervisor = psutil.Process(_job(ws, job_id).supervisor_pid)
    supervisor.suspend()  # the trainer finishes while nobody records it
    run_dir = ws.home / _job(ws, job_id).run_dir
    wait_for("the trainer to complete", lambda: lifecycle.finished_uncollected(run_dir))
    supervisor.kill()
    run_brightrun("jobs", "list")  # any command notices
    job = wait_for("the job marked failed", lambda: (j := _job(ws, job_id)).status == "failed" and j)
    assert job.error_message.startswith("supervisor lost")
    result = run_brightrun("jobs", "resume", job_id)
    assert result.returncode == 0, result.stderr
    job = wait_for("the job to end", lambda: (j := _job(ws, job_id)).status in lifecycle.TERMINAL and j)
    assert job.status == "completed", job.error_message
    assert _train_steps(_points(ws, job_id)) == list(range(1, job.total_steps + 1))
    launches = [line for line in (run_dir / "launcher.log").read_text().splitlines() if line.startswith("$ ")]
    assert len(launches) == 1  # collected, not trained again
    assert job.progress == 100.0
    wait_for("the adapter registered as a model", lambda: _job(ws, job_id).artifact_id)


def test_sigkill_trainer_fails_the_job_with_the_log_tail(ws):
    job_id = _submit("--set", "num_epochs=20")  # long enough to still be training when the kill lands
    wait_for("training steps", lambda: _train_steps(_points(ws, job_id)))
    trainers = [p for p in _procs_of(job_id) if "brightrun_cli.trainer" in p.info["cmdline"] and "accelerate.commands.launch" not in p.info["cmdline"]]
    assert trainers
    trainers[0].send_signal(signal.SIGKILL)
    job = wait_for("the job to fail", lambda: (j := _job(ws, job_id)).status in lifecycle.TERMINAL and j, timeout=60)
    # The kill is the reason: not the unrelated last line the trainer happened to log.
    assert job.status == "failed" and job.error_message.startswith("the trainer was killed by signal 9 (SIGKILL")
    assert job.error_stack and len(job.error_stack.splitlines()) > 1
    assert "job_failed" in _types(ws, job_id)


@pytest.mark.parametrize("stage", ["initializing", "running"])
def test_cancel_stops_the_whole_tree_and_records_cost(ws, stage):
    job_id = _submit("--set", "num_epochs=20")
    if stage == "running":
        wait_for("training steps", lambda: _train_steps(_points(ws, job_id)))
    else:
        assert _job(ws, job_id).status == "initializing"
    wait_for("the supervisor pid", lambda: _job(ws, job_id).supervisor_pid, timeout=30)
    result = run_brightrun("jobs", "cancel", job_id, "--json")
    assert result.returncode == 0, result.stderr
    job = _job(ws, job_id)
    assert job.status == "cancelled" and json.loads(result.stdout)["status"] == "cancelled"
    wait_for("no process left", lambda: not _procs_of(job_id), timeout=20)
    with ws.registry.write() as s:
        assert s.exec(select(CostRecord).where(CostRecord.job_id == job_id, CostRecord.cost_type == "compute")).all()
    assert job.final_cost is not None and "job_cancelled" in _types(ws, job_id)
    if stage == "running":
        assert lifecycle.latest_checkpoint(ws.home / job.run_dir) is not None


def test_running_job_over_budget_is_stopped_with_budget_exceeded(ws):
    plan = training.plan_training(ws, training.TrainRequest(dataset="chat", preset="tiny", overrides=FAST[3::2] + ("num_epochs=20",)))
    plan.gpu_config["hourly_rate"] = 3600.0  # a dollar a second
    plan.max_cost = 2.0
    job = training.submit(ws, plan)
    job = wait_for("the budget stop", lambda: (j := _job(ws, job.id)).status in lifecycle.TERMINAL and j, timeout=120)
    assert job.status == "cancelled" and "max-cost" in job.error_message
    assert job.final_cost >= 2.0
    assert "budget_exceeded" in _types(ws, job.id)


@pytest.mark.timeout(1500)  # ten real runs back to back: ~15 s each on a quiet 2-core machine, far more on a busy one
def test_ten_concurrent_submissions_run_one_at_a_time_and_all_complete(ws):
    fast = ("--set", "max_seq_length=64", "--set", "num_epochs=1", "--set", "batch_size=16")
    with ThreadPoolExecutor(10) as pool:
        results = list(pool.map(lambda _: run_brightrun("train", "--dataset", "chat", "--preset", "tiny", *fast, "--detach", "--json"), range(10)))
    assert all(r.returncode == 0 for r in results), [r.stderr for r in results if r.returncode]
    ids = {json.loads(r.stdout)["id"] for r in results}
    assert len(ids) == 10

    # Nobody runs a command meanwhile: each finishing supervisor starts the next job.
    wait_for("all ten jobs", lambda: all(_job(ws, i).status in lifecycle.TERMINAL for i in ids), timeout=1400, every=1)
    done = [_job(ws, i) for i in ids]
    assert {j.status for j in done} == {"completed"}, [j.error_message for j in done]
    spans = sorted((j.started_at, j.completed_at) for j in done)
    assert all(prev_end <= start for (_, prev_end), (start, _) in zip(spans, spans[1:]))  # never two at once
