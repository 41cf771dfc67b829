"""The Slurm runner on a real one-machine Slurm cluster (tests/slurm_cluster.py) with the
real trainer (builtin:tiny on the CPU).

The cluster's shared filesystem is this machine's, so the tests also look at the remote
run dir directly (checkpoints, result.json) and ask Slurm themselves (scontrol). The
runners ask Slurm every second (state_interval_s=1) instead of every 10 s.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

from brightrun_cli.errors import OperationError
from brightrun_cli.registry.ids import new_id
from brightrun_cli.runners.base import LaunchRequest, RunnerLost, RunnerUnreachable
from brightrun_cli.runners.slurm import SlurmRunner
from brightrun_cli.services.slurm_hosts import check_slurm, new_slurm_host
from brightrun_cli.workspace import Workspace
from slurm_cluster import requires_slurm, slurm, slurm_cluster  # noqa: F401  (fixtures)
from sshd import make_run_dir, requires_sshd, start_sshd, write_brightrun_config
from waiting import follow, wait_lines

pytestmark = [pytest.mark.slow, requires_slurm]


def _host(ws, tmp_path: Path, login: str = "local", name: str = "cluster", **settings):
    settings.setdefault("partition", "debug")
    return new_slurm_host(ws, name, login, python=sys.executable, workdir=str(tmp_path / "shared"), **settings)


def _request(run_dir: Path, job_id: str, **kw) -> LaunchRequest:
    return LaunchRequest(job_id=job_id, run_dir=run_dir, spec_path=run_dir / "spec.json", **kw)


def _slurm_id(handle: str) -> str:
    return handle.split(":")[1]


def _train_steps(path: Path) -> list[int]:
    return [m["step"] for m in map(json.loads, path.read_text().splitlines()) if m["split"] == "train"]


def _checkpoints(remote_run: Path) -> list[str]:
    return sorted(p.name for p in (remote_run / "checkpoints").glob("step-*"))


def test_a_job_runs_to_completed_and_its_outputs_come_home(slurm, tmp_path):  # noqa: F811
    ws = Workspace.open()
    host = _host(ws, tmp_path)
    job_id = new_id()
    run_dir = make_run_dir(ws, job_id, epochs=1, n_train=16, batch_size=4)
    handle = SlurmRunner(ws, host, state_interval_s=1).start(_request(run_dir, job_id))
    assert handle == f"slurm:{_slurm_id(handle)}:{job_id}"
    follower = SlurmRunner(ws, host, state_interval_s=1)  # what a re-attached supervisor builds from the handle
    assert follow(follower, handle) == 0
    follower.collect(handle)

    state = follower.state(handle)
    assert (state.state, state.status, state.exit_code, state.restarts) == ("COMPLETED", "completed", 0, 0)
    assert len(state.nodes) == 1 and slurm.job(_slurm_id(handle))["JobState"] == "COMPLETED"
    assert json.loads((run_dir / "result.json").read_text())["status"] == "completed"
    assert (run_dir / "final" / "adapter_model.safetensors").exists()
    assert _train_steps(run_dir / "metrics.jsonl") == [1, 2, 3, 4]
    remote = tmp_path / "shared" / "runs" / job_id
    assert (run_dir / "metrics.jsonl").read_bytes() == (remote / "metrics.jsonl").read_bytes()
    assert (run_dir / "sbatch.sh").read_text() == (remote / "sbatch.sh").read_text()
    assert json.loads((remote / "spec.json").read_text())["resume"] is True
    assert f"brightrun: Slurm job {_slurm_id(handle)}, run 0" in (run_dir / "launcher.log").read_text()


def test_a_second_job_waits_in_slurms_queue_with_its_reason(slurm, tmp_path):  # noqa: F811
    ws = Workspace.open()
    host = _host(ws, tmp_path, partition="solo")  # one node: the first job fills it
    runner = SlurmRunner(ws, host, state_interval_s=1)
    first, second = new_id(), new_id()
    busy = runner.start(_request(make_run_dir(ws, first, epochs=50), first))
    deadline = time.monotonic() + 120
    while runner.state(busy).status != "running":
        assert time.monotonic() < deadline, "the first job never started"
        time.sleep(0.5)
    waiting = runner.start(_request(make_run_dir(ws, second, epochs=1), second))
    deadline = time.monotonic() + 60
    while (state := runner.state(waiting)).reason is None:  # Slurm sets a reason at its next scheduling pass
        assert time.monotonic() < deadline, "no pending reason after 60 s"
        time.sleep(0.5)
    assert (state.state, state.status, state.nodes, state.poll_code) == ("PENDING", "queued", [], None)
    assert state.reason in ("Resources", "Priority") and slurm.job(_slurm_id(waiting))["Reason"] == state.reason

    runner.stop(waiting)  # queued: simply cancelled
    assert slurm.job(_slurm_id(waiting))["JobState"] == "CANCELLED"
    assert runner.state(waiting).status == "cancelled"
    assert runner.state(busy).status == "running"


def test_stop_cancels_in_slurm_and_keeps_a_checkpoint(slurm, tmp_path):  # noqa: F811
    ws = Workspace.open()
    host = _host(ws, tmp_path)
    job_id = new_id()
    run_dir = make_run_dir(ws, job_id, epochs=1000, n_train=24, batch_size=2)  # trains until stopped
    runner = SlurmRunner(ws, host, state_interval_s=1)
    handle = runner.start(_request(run_dir, job_id))
    wait_lines(runner, handle, run_dir / "metrics.jsonl", 3)
    started = time.monotonic()
    runner.stop(handle, grace_s=30)
    assert time.monotonic() - started < 30, "the trainer saved its checkpoint and the job ended within the grace"

    assert slurm.job(_slurm_id(handle))["JobState"] == "CANCELLED"
    state = runner.state(handle)
    assert (state.status, state.reason, state.poll_code) == ("cancelled", "cancelled", 75)
    remote = tmp_path / "shared" / "runs" / job_id
    assert _checkpoints(remote), "the stop saved a checkpoint"
    runner.collect(handle)
    assert json.loads((run_dir / "result.json").read_text())["status"] == "stopped"


def test_a_requeued_job_resumes_from_its_checkpoint_every_step_once(slurm, tmp_path):  # noqa: F811
    ws = Workspace.open()
    host = _host(ws, tmp_path)
    job_id = new_id()
    run_dir = make_run_dir(ws, job_id, epochs=4, n_train=24, batch_size=2)  # 48 steps: still training at the requeue, however fast the machine
    runner = SlurmRunner(ws, host, state_interval_s=1)
    handle = runner.start(_request(run_dir, job_id))
    slurm_id = _slurm_id(handle)
    wait_lines(runner, handle, run_dir / "metrics.jsonl", 4)

    slurm.run("scontrol", "requeue", slurm_id)  # as preemption or a node failure would
    job = slurm.wait_state(slurm_id, ("PENDING",))
    assert (job["Restarts"], job["Reason"]) == ("1", "BeginTime")
    time.sleep(1.1)
    state = runner.state(handle)
    assert (state.status, state.reason, state.restarts, state.poll_code) == ("queued", "BeginTime", 1, None)
    remote = tmp_path / "shared" / "runs" / job_id
    assert _checkpoints(remote), "the requeue's TERM made the trainer save a checkpoint"

    slurm.run("scontrol", "update", f"JobId={slurm_id}", "StartTime=now")  # instead of Slurm's ~2 minutes
    assert follow(runner, handle) == 0
    runner.collect(handle)
    assert _train_steps(run_dir / "metrics.jsonl") == list(range(1, 49))
    assert "resumed from" in (run_dir / "trainer.log").read_text()
    assert f"brightrun: Slurm job {slurm_id}, run 1" in (run_dir / "launcher.log").read_text()
    assert runner.state(handle).status == "completed"


def test_the_time_limit_warning_makes_the_trainer_checkpoint_and_fails_with_time_limit(slurm, tmp_path):  # noqa: F811
    """--time=3: Slurm TERMs the batch shell 90 s before the limit, i.e. 90 s in or up to a
    minute earlier (the trainer has been training for a while by then: it loads in ~10-15 s
    here); the trainer saves a checkpoint and the job ends long before the limit."""
    ws = Workspace.open()
    host = _host(ws, tmp_path, time_limit="3")
    job_id = new_id()
    run_dir = make_run_dir(ws, job_id, epochs=1000, n_train=24, batch_size=2)  # 12,000 steps: never done before the warning
    runner = SlurmRunner(ws, host, state_interval_s=1)
    handle = runner.start(_request(run_dir, job_id))
    started = time.monotonic()
    assert follow(runner, handle, timeout=240) == 75
    assert time.monotonic() - started < 150, "ended by the warning, not killed at the limit"

    state = runner.state(handle)
    assert (state.state, state.status, state.reason) == ("FAILED", "failed", "time limit")
    remote = tmp_path / "shared" / "runs" / job_id
    assert _checkpoints(remote)
    runner.collect(handle)
    assert json.loads((run_dir / "result.json").read_text())["status"] == "stopped"


def test_two_nodes_run_one_gloo_job(slurm, tmp_path):  # noqa: F811
    ws = Workspace.open()
    host = _host(ws, tmp_path, nodes_max=2)
    job_id = new_id()
    # Every rank gets the same number of validation chunks (16 held out, chunks of 4 x 2).
    run_dir = make_run_dir(ws, job_id, epochs=1, n_train=16, n_val=16, batch_size=2)
    runner = SlurmRunner(ws, host, state_interval_s=1)
    handle = runner.start(_request(run_dir, job_id, nodes=2))
    assert follow(runner, handle) == 0
    runner.collect(handle)
    assert runner.state(handle).nodes == ["n1", "n2"]
    assert json.loads((run_dir / "result.json").read_text())["status"] == "completed"
    assert (run_dir / "final" / "adapter_model.safetensors").exists()
    # One rank on each node of the same 2-process (gloo) job.
    assert "2 process(es), device cpu" in (run_dir / "trainer.log").read_text()
    assert "[rank 1]" in (run_dir / "launcher.log").read_text()


def test_a_controller_restart_is_an_outage_not_an_end(slurm, tmp_path):  # noqa: F811
    ws = Workspace.open()
    host = _host(ws, tmp_path)
    job_id = new_id()
    run_dir = make_run_dir(ws, job_id, epochs=1000, n_train=24, batch_size=2)  # trains until stopped, however fast the machine
    runner = SlurmRunner(ws, host, state_interval_s=1, backoff_max_s=1)
    handle = runner.start(_request(run_dir, job_id))
    wait_lines(runner, handle, run_dir / "metrics.jsonl", 2)
    slurm.stop_controller()
    try:
        time.sleep(1.1)
        with pytest.raises(RunnerUnreachable) as down:
            runner.poll(handle)
        assert not isinstance(down.value, RunnerLost)
    finally:
        slurm.start_controller()
    deadline = time.monotonic() + 60
    while True:  # back once the controller answers: the job kept running meanwhile
        try:
            assert runner.poll(handle) is None
            break
        except RunnerUnreachable:
            assert time.monotonic() < deadline, "the runner did not reconnect"
            time.sleep(1)
    assert runner.state(handle).status == "running"
    runner.stop(handle, grace_s=30)
    assert runner.state(handle).status == "cancelled"


def test_sbatch_refusing_the_job_says_why(slurm, tmp_path):  # noqa: F811
    ws = Workspace.open()
    host = _host(ws, tmp_path, partition="nosuchpartition")
    job_id = new_id()
    with pytest.raises(OperationError, match="invalid partition"):
        SlurmRunner(ws, host).start(_request(make_run_dir(ws, job_id), job_id))


@requires_sshd
def test_through_an_ssh_login_node(slurm, tmp_path, tmp_path_factory, brightrun_home):  # noqa: F811
    # The login node's sessions get the cluster's SLURM_CONF from sshd (a real one has /etc/slurm).
    server = start_sshd(tmp_path_factory.mktemp("sshd"), extra_config=(f"SetEnv SLURM_CONF={slurm.conf}",))
    write_brightrun_config(brightrun_home, server)
    try:
        ws = Workspace.open()
        host = _host(ws, tmp_path, server.target, name="hpc")
        assert host.ssh_host == "127.0.0.1"
        from brightrun_cli.services.hosts import HostCheck

        check = HostCheck(name=host.name, kind=host.kind)
        check_slurm(ws, host, check)
        assert check.problems == [] and check.reachable and check.trainer_importable and check.code_version

        job_id = new_id()
        run_dir = make_run_dir(ws, job_id, epochs=1, n_train=16, batch_size=4)
        runner = SlurmRunner(ws, host, state_interval_s=1)
        handle = runner.start(_request(run_dir, job_id))
        assert runner.launch_argv(_request(run_dir, job_id))[0] == "ssh"
        assert follow(runner, handle) == 0
        runner.collect(handle)
        assert runner.state(handle).status == "completed"
        assert _train_steps(run_dir / "metrics.jsonl") == [1, 2, 3, 4]
        assert (run_dir / "final" / "adapter_model.safetensors").exists()

        missing = _host(ws, tmp_path, server.target, name="hpc2", partition="gpu")
        check = HostCheck(name=missing.name, kind=missing.kind)
        check_slurm(ws, missing, check)
        assert any("partition 'gpu' does not exist" in p for p in check.problems)
    finally:
        server.stop()
