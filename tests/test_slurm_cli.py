"""Slurm hosts through the CLI (issue 17): `hosts add --slurm`, `train` on a cluster, and
what `jobs` and `watch` show of a job that Slurm queues, runs, cancels, requeues or
stops at its time limit.

The fast tests need no cluster. The slow ones run real `brightrun` processes against
the real one-machine cluster of tests/slurm_cluster.py (its nodes n1 and n2 share this
machine's filesystem, so the tests look at the remote run dir and ask Slurm directly)
and train builtin:tiny on the CPU.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
from sqlmodel import select

from brightrun_cli import lifecycle
from brightrun_cli.registry.tables import CostRecord, Host, MetricPoint
from brightrun_cli.registry.timeutil import utcnow
from brightrun_cli.services import jobs, queue
from brightrun_cli.supervisor import launch
from brightrun_cli.workspace import Workspace
from conftest import REPO, run_brightrun
from jobs_helpers import conversations, dataset_row, job_row
from slurm_cluster import requires_slurm, slurm, slurm_cluster  # noqa: F401  (fixtures)
from sshd import requires_sshd, start_sshd, write_brightrun_config
from waiting import wait_for

# Small and quick, with several optimizer steps per epoch (one conversation per step).
FAST = ("--preset", "tiny", "--set", "batch_size=1", "--set", "num_epochs=1", "--set", "max_seq_length=64", "--set", "packing=false")


# -- without a cluster ------------------------------------------------------------------------


@pytest.mark.parametrize(("args", "flag"), [
    (("--partition", "gpu;touch /tmp/x"), "--partition"),
    (("--partition", "-p"), "--partition"),
    (("--account", "$(id)"), "--account"),
    (("--qos", "a b"), "--qos"),
    (("--sbatch-arg", "--output=/etc/passwd"), "--sbatch-arg"),
    (("--sbatch-arg", "--wrap=rm -rf ~"), "--sbatch-arg"),
    (("--sbatch-arg=--comment=`id`",), "--sbatch-arg"),
    (("--sbatch-arg", "-A"), "--sbatch-arg"),
    (("--time", "1;reboot"), "--time"),
])
def test_hostile_slurm_settings_are_refused_with_exit_2_and_nothing_stored(cli, args, flag):
    result = cli("hosts", "add", "hpc", "--slurm", "local", *args)
    assert result.exit_code == 2, result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and flag in lines[0]
    assert [h["name"] for h in json.loads(cli("hosts", "list", "--json").stdout)] == ["local"]


def test_ssh_and_slurm_flags_do_not_mix(cli):
    for args, message in [(("--ssh", "a@b", "--slurm", "local"), "pass one of --ssh"), ((), "pass one of --ssh"),
                          (("--ssh", "a@b", "--partition", "gpu"), "--partition is for a Slurm host"),
                          (("--slurm", "local", "--gpus", "4"), "--gpus-per-node"),
                          (("--slurm", "login;id"), "invalid --slurm login node")]:
        result = cli("hosts", "add", "x", *args)
        assert result.exit_code == 2 and message in result.stderr, (args, result.stderr)


def test_a_slurm_host_is_stored_and_listed_with_its_kind_login_and_partition(cli):
    result = cli("hosts", "add", "hpc", "--slurm", "alice@login.example:2222", "--partition", "gpu", "--account", "proj1",
                 "--gpus-per-node", "4", "--gpu-type", "A100-80GB", "--nodes-max", "2", "--sbatch-arg", "--cpus-per-task=8",
                 "--no-check", "--json")
    assert result.exit_code == 0, result.stderr
    row = next(h for h in json.loads(cli("hosts", "list", "--json").stdout) if h["name"] == "hpc")
    assert json.loads(result.stdout) == row  # add --json prints the row as list shows it
    assert (row["kind"], row["ssh_user"], row["ssh_host"], row["ssh_port"], row["gpus"], row["gpu_type"]) == (
        "slurm", "alice", "login.example", 2222, 4, "A100-80GB")
    assert row["options"]["partition"] == "gpu" and row["options"]["sbatch_args"] == ["--cpus-per-task=8"]
    table = cli("hosts", "list").stdout
    line = next(line for line in table.splitlines() if line.split()[:1] == ["hpc"])
    assert line.split()[1:5] == ["slurm", "alice@login.example:2222", "gpu", "4/node"]


@pytest.fixture
def chat(brightrun_home) -> Workspace:
    from brightrun_cli.services.dataset_add import add_dataset

    ws = Workspace.open()
    add_dataset(ws, str(conversations(brightrun_home / "chat.jsonl", 12)), name="chat", base_model="builtin:tiny")
    return ws


def test_dry_run_shows_the_sbatch_command_and_the_batch_script_and_bills_every_node(cli, chat, tmp_path):
    assert cli("hosts", "add", "hpc", "--slurm", "local", "--partition", "debug", "--time", "30", "--nodes-max", "2",
               "--workdir", str(tmp_path / "shared")).exit_code == 0
    result = cli("train", "--dataset", "chat", *FAST, "--host", "hpc", "--nodes", "2", "--dry-run", "--json")
    assert result.exit_code == 0, result.stderr
    plan = json.loads(result.stdout)
    sbatch = plan["argv"][plan["argv"].index("sbatch"):]
    for word in ("--nodes=2", "--ntasks-per-node=1", "--partition=debug", "--time=30", "--requeue", "--signal=B:TERM@300"):
        assert word in sbatch
    assert sbatch[-1] == "sbatch.sh" and plan["batch_script"].startswith("#!/bin/sh")
    assert "--num_machines 2" in plan["batch_script"] and '--machine_rank "$SLURM_NODEID"' in plan["batch_script"]
    assert plan["gpu_config"]["nodes"] == 2 and plan["estimate"]["gpu_config"]["count"] == 2  # one process per node
    text = cli("train", "--dataset", "chat", *FAST, "--host", "hpc", "--dry-run").stdout
    assert "batch script" in text and "srun --ntasks-per-node=1" in text
    assert not (chat.home / "runs").exists() or not any((chat.home / "runs").iterdir())  # nothing created


@pytest.mark.parametrize(("host", "nodes", "message"), [
    ("hpc", "3", "may use 1 to 2 node(s)"), ("hpc", "0", "may use 1 to 2 node(s)"), ("local", "2", "--nodes is for a Slurm host"),
])
def test_nodes_beyond_the_host_are_refused(cli, chat, tmp_path, host, nodes, message):
    assert cli("hosts", "add", "hpc", "--slurm", "local", "--nodes-max", "2", "--workdir", str(tmp_path)).exit_code == 0
    result = cli("train", "--dataset", "chat", *FAST, "--host", host, "--nodes", nodes, "--dry-run")
    assert result.exit_code == 2 and message in result.stderr, result.stderr


@pytest.fixture
def spawned(monkeypatch):
    calls: list[str] = []
    monkeypatch.setattr(launch, "spawn_supervisor", lambda ws, job_id, marker: calls.append(job_id) or 0)
    return calls


def _slurm_host(ws, name="hpc", gpus=1):
    with ws.registry.write() as s:
        s.add(Host(name=name, kind="slurm", gpus=gpus, gpu_type="cpu", options={"login": "local"}))


def test_slurm_jobs_are_claimed_at_once_whatever_their_slots(spawned):
    ws = Workspace.open()
    data = dataset_row(ws)
    _slurm_host(ws)
    on_slurm = [job_row(ws, data, hosts=["hpc"]) for _ in range(3)]
    local = [job_row(ws, data) for _ in range(2)]
    started = queue.kick(ws)
    # Slurm queues its own: every job on it starts (and waits in Slurm); local keeps its one slot.
    assert set(started) == {j.id for j in on_slurm} | {local[0].id}
    assert jobs.get_job(ws, local[1].id).status == "queued"


def test_a_lost_supervisor_leaves_its_slurm_job_to_slurm(spawned, monkeypatch):
    ws = Workspace.open()
    _slurm_host(ws)
    job = job_row(ws, dataset_row(ws), hosts=["hpc"])
    queue.kick(ws)
    stopped = []
    monkeypatch.setattr(queue, "_stop_orphan", lambda ws, job: stopped.append(job.id))
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    with ws.registry.write() as s:
        lifecycle.update_attempt(s, job.id, jobs.get_job(ws, job.id).supervisor_marker, supervisor_pid=gone.pid,
                                 heartbeat_at=utcnow(), external_job_id=f"slurm:42:{job.id}")
    assert queue.reap_dead(ws) == [job.id]
    row = jobs.get_job(ws, job.id)
    assert row.status == "failed" and f"'brightrun jobs resume {job.id}' follows it again" in row.error_message
    assert stopped == []  # the Slurm job goes on; resume re-attaches to it


def test_a_job_waiting_in_slurm_shows_as_queued_in_slurm_with_the_reason(cli):
    from brightrun_cli.cli.watch_view import status_line
    from brightrun_cli.services.watch import job_view

    ws = Workspace.open()
    # Just claimed (a fresh heartbeat, no pid yet): the commands' housekeeping leaves it alone.
    job = job_row(ws, dataset_row(ws), hosts=["hpc"], status="initializing", supervisor_marker="m1", heartbeat_at=utcnow(),
                  current_stage=lifecycle.slurm_queued_stage("Resources"))
    listed = cli("jobs", "list").stdout
    assert "queued in Slurm" in next(line for line in listed.splitlines() if job.id[:8] in line)
    shown = cli("jobs", "show", job.id).stdout
    assert shown.splitlines()[0].endswith("queued in Slurm: Resources (status initializing)")
    row = jobs.get_job(ws, job.id)
    view = job_view(row, "d1", "hpc")
    assert view.shown_status == "queued in Slurm" and view.waiting
    assert status_line(view, utcnow()) == f"job {job.id} queued in Slurm: Resources (status initializing, on hpc)"
    assert lifecycle.slurm_queued_stage("BeginTime", 1) == "queued in Slurm: BeginTime (requeued 1x)"
    assert lifecycle.shown_status("running", "training") == "running"


def test_billing_counts_every_gpu_of_every_node_and_only_the_time_it_ran():
    ws = Workspace.open()
    job = job_row(ws, dataset_row(ws), hosts=["hpc"], gpu_config={"type": "A100-80GB", "count": 4, "nodes": 2, "hourly_rate": 8.0})
    end = utcnow()
    with ws.registry.write() as s:
        total = lifecycle.record_attempt_cost(s, jobs.get_job(ws, job.id), attempt_start=end - timedelta(hours=2), attempt_end=end,
                                              running_s=1800)
        record = s.exec(select(CostRecord).where(CostRecord.job_id == job.id)).one()
    assert total == pytest.approx(4.0)  # half an hour at the job's $8/h, not the two hours it spent (partly queued)
    assert record.details["gpus"] == 8 and record.details["gpu_hours"] == pytest.approx(4.0)


# -- on the real cluster ------------------------------------------------------------------------

@pytest.fixture
def cluster_home(slurm, chat, tmp_path):  # noqa: F811
    """The test home with the 'chat' dataset and the Slurm host 'cluster' (login: this
    machine; partition debug: nodes n1 and n2), its workdir below tmp_path/shared."""
    _add_host("cluster", "--slurm", "local", "--partition", "debug", "--workdir", str(tmp_path / "shared"))
    return chat


def _add_host(name: str, *args: str) -> None:
    result = run_brightrun("hosts", "add", name, *args, "--python", sys.executable)
    assert result.returncode == 0, result.stderr


def _job(ws, job_id):
    return jobs.get_job(ws, job_id)


def _submit(host: str, *extra: str, dataset: str = "chat") -> str:
    result = run_brightrun("train", "--dataset", dataset, *FAST, "--host", host, *extra, "--detach", "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["id"]


def _train_steps(ws, job_id) -> list[int]:
    with ws.registry.write() as s:
        return [p.step for p in s.exec(select(MetricPoint).where(MetricPoint.job_id == job_id, MetricPoint.split == "train")
                                       .order_by(MetricPoint.step))]


def _slurm_id(job) -> str:
    kind, slurm_job_id, job_id = job.external_job_id.split(":")
    assert (kind, job_id) == ("slurm", job.id)
    return slurm_job_id


def _ended(ws, job_id, timeout=300.0):
    return wait_for(f"job {job_id} to end", lambda: (j := _job(ws, job_id)).status in lifecycle.TERMINAL and j, timeout=timeout, every=1)


def _remote_checkpoints(tmp_path: Path, job_id: str) -> list[str]:
    return sorted(p.name for p in (tmp_path / "shared" / "runs" / job_id / "checkpoints").glob("step-*"))


def _assert_completed_with_metrics_and_model(ws, job_id: str) -> None:
    job = _job(ws, job_id)
    assert job.status == "completed", job.error_message
    assert _train_steps(ws, job_id) == list(range(1, job.total_steps + 1))  # every step, once
    # The supervisor registers the model after recording the end.
    artifact_id = wait_for("the adapter registered as a model", lambda: _job(ws, job_id).artifact_id, timeout=60)
    models = json.loads(run_brightrun("models", "list", "--json").stdout)
    assert artifact_id in [m["id"] for m in models]
    with ws.registry.write() as s:
        costs = {c.cost_type for c in s.exec(select(CostRecord).where(CostRecord.job_id == job_id))}
    assert costs == {"compute", "storage"}


@pytest.mark.slow
@requires_slurm
def test_train_on_a_slurm_host_to_completed_with_metrics_and_a_model(cluster_home, slurm, tmp_path):  # noqa: F811
    ws = cluster_home
    check = run_brightrun("hosts", "check", "cluster", "--json", timeout=300)
    assert check.returncode == 0, check.stdout + check.stderr
    facts = json.loads(check.stdout)
    assert facts["ok"] and facts["trainer_importable"] and facts["slurm"]["partition"] == "debug"
    text = run_brightrun("hosts", "check", "cluster", timeout=300).stdout
    assert "host cluster: ok" in text and "partition    debug (up, 2 node(s)" in text, text

    result = run_brightrun("train", "--dataset", "chat", *FAST, "--host", "cluster", timeout=400)
    assert result.returncode == 0, result.stdout + result.stderr
    job = jobs.list_jobs(ws)[0]
    _assert_completed_with_metrics_and_model(ws, job.id)
    assert slurm.job(_slurm_id(job))["JobState"] == "COMPLETED"
    assert job.started_at is not None and job.current_stage == "completed"
    logs = run_brightrun("jobs", "logs", job.id, "--log", "launcher")
    assert f"brightrun: Slurm job {_slurm_id(job)}, run 0" in logs.stdout
    assert "training" in run_brightrun("jobs", "logs", job.id).stdout.lower()  # trainer.log, synced from the workdir


@pytest.mark.slow
@requires_slurm
@requires_sshd
def test_train_through_an_ssh_login_node(slurm, chat, tmp_path, tmp_path_factory, brightrun_home):  # noqa: F811
    # The login node's sessions get the cluster's SLURM_CONF from sshd (a real one has /etc/slurm).
    server = start_sshd(tmp_path_factory.mktemp("sshd"), extra_config=(f"SetEnv SLURM_CONF={slurm.conf}",))
    write_brightrun_config(brightrun_home, server)
    try:
        _add_host("hpc", "--slurm", server.target, "--partition", "debug", "--workdir", str(tmp_path / "shared"))
        result = run_brightrun("train", "--dataset", "chat", *FAST, "--host", "hpc", timeout=400)
        assert result.returncode == 0, result.stdout + result.stderr
        job = jobs.list_jobs(chat)[0]
        _assert_completed_with_metrics_and_model(chat, job.id)
        assert slurm.job(_slurm_id(job))["JobState"] == "COMPLETED"
        log = (chat.home / job.run_dir / "supervisor.log").read_text()
        assert "launching: ssh " in log  # sbatch ran on the login node, over SSH
    finally:
        server.stop()


def _watch_until(job_id: str, predicate, timeout: float = 60) -> dict:
    """`brightrun watch JOB --json` until a status record satisfies `predicate` (then stop watching)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen([sys.executable, "-m", "brightrun_cli", "watch", job_id, "--json"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    timer = threading.Timer(timeout, proc.kill)
    timer.start()
    try:
        for line in proc.stdout:
            record = json.loads(line)
            if record["type"] == "status" and predicate(record):
                return record
        raise AssertionError(f"watch ended without the status wanted (exit {proc.wait()})")
    finally:
        timer.cancel()
        proc.kill()
        proc.wait()


@pytest.mark.slow
@requires_slurm
def test_a_second_job_waits_in_slurms_queue_with_its_reason_and_cancel_ends_both(cluster_home, slurm, tmp_path):  # noqa: F811
    ws = cluster_home
    _add_host("solo", "--slurm", "local", "--partition", "solo", "--workdir", str(tmp_path / "shared"))  # one node
    from brightrun_cli.services.dataset_add import add_dataset

    add_dataset(ws, str(conversations(tmp_path / "long.jsonl", 400)), name="long", base_model="builtin:tiny")
    busy = _submit("solo", "--set", "num_epochs=20", dataset="long")  # ~7,000 steps: trains until cancelled, however fast the machine
    wait_for("the first job training", lambda: _train_steps(ws, busy), every=1)
    waiting = _submit("solo")

    def pending_with_reason():
        shown = json.loads(run_brightrun("jobs", "show", waiting, "--json").stdout)
        return shown["current_stage"].startswith("queued in Slurm: ") and shown

    shown = wait_for("Slurm's reason on the second job", pending_with_reason, timeout=60, every=1)
    # Claimed by brightrun's queue at once (no slots for a Slurm host), waiting in Slurm's.
    assert shown["status"] == "initializing" and shown["started_at"] is None
    assert shown["current_stage"] in ("queued in Slurm: Resources", "queued in Slurm: Priority")
    job = _job(ws, waiting)
    assert slurm.job(_slurm_id(job))["JobState"] == "PENDING"
    record = _watch_until(waiting, lambda r: r["current_stage"].startswith("queued in Slurm: "))
    assert (record["status"], record["shown_status"]) == ("initializing", "queued in Slurm")
    listed = run_brightrun("jobs", "list").stdout
    assert "queued in Slurm" in next(line for line in listed.splitlines() if waiting[:8] in line)

    result = run_brightrun("jobs", "cancel", waiting, "--yes", "--json", timeout=180)
    assert result.returncode == 0, result.stderr
    job = _job(ws, waiting)
    assert job.status == "cancelled" and job.final_cost == 0.0  # never ran: nothing billed
    assert slurm.job(_slurm_id(job))["JobState"] == "CANCELLED"

    other = _submit("solo")  # cancelled in Slurm by someone else: that is its end here too
    wait_for("the third job in Slurm's queue", lambda: (j := _job(ws, other)).external_job_id and j.current_stage.startswith("queued in Slurm"))
    slurm.run("scancel", _slurm_id(_job(ws, other)))
    job = _ended(ws, other, timeout=60)
    assert job.status == "cancelled" and job.error_message.startswith("cancelled in Slurm (scancel), not by brightrun"), job.error_message

    result = run_brightrun("jobs", "cancel", busy, "--yes", "--json", timeout=180)
    assert result.returncode == 0, result.stderr
    job = _job(ws, busy)
    assert (job.status, job.error_message) == ("cancelled", "cancelled by the user")
    assert slurm.job(_slurm_id(job))["JobState"] == "CANCELLED"
    assert _remote_checkpoints(tmp_path, busy), "the trainer saved a checkpoint on the stop"
    assert json.loads((ws.home / job.run_dir / "result.json").read_text())["status"] == "stopped"


@pytest.mark.slow
@requires_slurm
def test_a_requeued_job_resumes_from_its_checkpoint_every_step_once_billed_while_running(cluster_home, slurm, tmp_path):  # noqa: F811
    ws = cluster_home
    job_id = _submit("cluster", "--set", "num_epochs=12")  # ~120 steps: still training at the requeue
    wait_for("a few training steps", lambda: len(_train_steps(ws, job_id)) >= 3, every=0.5)
    slurm_id = _slurm_id(_job(ws, job_id))
    slurm.run("scontrol", "requeue", slurm_id)  # as a preemption or a node failure would
    job = wait_for("the job queued in Slurm again", lambda: (j := _job(ws, job_id)).current_stage.startswith("queued in Slurm: BeginTime") and j,
                timeout=60, every=0.5)
    assert job.status == "running" and job.current_stage == "queued in Slurm: BeginTime (requeued 1x)"
    time.sleep(3)  # queued time that must not be billed
    slurm.run("scontrol", "update", f"JobId={slurm_id}", "StartTime=now")  # instead of Slurm's ~2 minutes
    job = _ended(ws, job_id)
    _assert_completed_with_metrics_and_model(ws, job_id)
    assert "resumed from" in (ws.home / job.run_dir / "trainer.log").read_text()
    assert _slurm_id(job) == slurm_id and slurm.job(slurm_id)["Restarts"] == "1"
    with ws.registry.write() as s:
        compute = s.exec(select(CostRecord).where(CostRecord.job_id == job_id, CostRecord.cost_type == "compute")).one()
    span = (job.completed_at - job.started_at).total_seconds()
    assert compute.details["hours"] * 3600 < span - 3  # the time queued after the requeue is not billed


@pytest.mark.slow
@requires_slurm
def test_the_time_limit_warning_makes_the_trainer_checkpoint_and_the_job_fails_with_time_limit(cluster_home, slurm, tmp_path, brightrun_home):  # noqa: F811
    """--time=3: Slurm TERMs the batch shell 90 s before the limit (90 s after the start, or
    up to a minute earlier); the trainer saves a checkpoint and the job ends long before the limit."""
    from brightrun_cli.services.dataset_add import add_dataset

    ws = cluster_home
    add_dataset(ws, str(conversations(brightrun_home / "long.jsonl", 400)), name="long", base_model="builtin:tiny")
    _add_host("short", "--slurm", "local", "--partition", "debug", "--time", "3", "--workdir", str(tmp_path / "shared"))
    result = run_brightrun("train", "--dataset", "long", *FAST, "--set", "num_epochs=20", "--host", "short", "--detach", "--json")
    assert result.returncode == 0, result.stderr
    job_id = json.loads(result.stdout)["id"]
    job = _ended(ws, job_id, timeout=400)
    assert job.status == "failed" and job.error_message.startswith("time limit ("), job.error_message
    assert "the trainer saved a checkpoint" in job.error_message
    assert (job.completed_at - job.started_at).total_seconds() < 170, "ended by the warning, not killed at the limit"
    assert slurm.job(_slurm_id(job))["JobState"] == "FAILED"
    assert _remote_checkpoints(tmp_path, job_id)
    assert len(_train_steps(ws, job_id)) < job.total_steps


@pytest.mark.slow
@requires_slurm
def test_sigkill_the_supervisor_then_resume_reattaches_to_the_same_slurm_job(cluster_home, slurm, tmp_path):  # noqa: F811
    ws = cluster_home
    job_id = _submit("cluster", "--set", "num_epochs=20")  # ~200 steps: still training once the supervisor is gone
    wait_for("a few training steps", lambda: len(_train_steps(ws, job_id)) >= 2, every=0.5)
    job = _job(ws, job_id)
    slurm_id = _slurm_id(job)
    os.kill(job.supervisor_pid, signal.SIGKILL)
    run_brightrun("jobs", "list")  # any command notices
    job = wait_for("the job marked failed", lambda: (j := _job(ws, job_id)).status == "failed" and j, timeout=60)
    assert job.error_message.startswith("supervisor lost") and "jobs resume" in job.error_message
    assert slurm.job(slurm_id)["JobState"] == "RUNNING"  # left to Slurm, not stopped

    result = run_brightrun("jobs", "resume", job_id)
    assert result.returncode == 0, result.stderr
    job = _ended(ws, job_id)
    assert job.resume_count == 1 and _slurm_id(job) == slurm_id  # the same Slurm job, followed again
    _assert_completed_with_metrics_and_model(ws, job_id)
    assert slurm.job(slurm_id)["JobState"] == "COMPLETED" and slurm.job(slurm_id)["Restarts"] == "0"
    assert f"re-attaching to trainer slurm:{slurm_id}:{job_id}" in (ws.home / job.run_dir / "supervisor.log").read_text()
