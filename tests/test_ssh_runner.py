"""The SSH runner against a real sshd on loopback with the real trainer (builtin:tiny, CPU).

The "remote" host is this machine, so the tests can also look at the remote side
directly: its run dir, and its processes (by the marker in their environment).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

from brightrun_cli.registry.ids import new_id
from brightrun_cli.runners.base import LaunchRequest, RunnerLost, RunnerUnreachable
from brightrun_cli.runners.ssh import REMOTE_ENV_MARKER, SSHRunner, _Handle
from brightrun_cli.services.hosts import add_host
from brightrun_cli.workspace import Workspace
from sshd import make_run_dir, requires_sshd, sshd  # noqa: F401  (fixture)
from waiting import follow, wait_lines

pytestmark = [pytest.mark.slow, requires_sshd]


def _request(run_dir: Path, job_id: str, **kw) -> LaunchRequest:
    return LaunchRequest(job_id=job_id, run_dir=run_dir, spec_path=run_dir / "spec.json", **kw)


@pytest.fixture
def start():
    """runner.start(), and at teardown no process of those runs is left on this machine
    (the "remote" host), whatever the test did: failing tests must not leak trainers."""
    markers: list[str] = []

    def _start(runner: SSHRunner, request: LaunchRequest) -> str:
        handle = runner.start(request)
        markers.append(_Handle.parse(handle).marker)
        return handle

    yield _start
    for marker in markers:
        for pid in _marked_pids(marker):
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass


def _host(ws, server, name: str, workdir: Path):
    return add_host(ws, name, server.target, python=sys.executable, workdir=str(workdir))


def _marked_pids(marker: str) -> list[int]:
    """Processes on this machine (= the remote host) that belong to the remote run."""
    needle = f"{REMOTE_ENV_MARKER}={marker}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if needle in (entry / "environ").read_bytes().split(b"\0"):
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids


def _steps(path: Path) -> list[tuple[int, str]]:
    return [(m["step"], m["split"]) for m in map(json.loads, path.read_text().splitlines())]


def test_connection_loss_then_reattach_loses_and_duplicates_nothing(sshd, tmp_path, start):  # noqa: F811
    ws = Workspace.open()
    host = _host(ws, sshd, "box", tmp_path / "remote")
    job_id = new_id()
    run_dir = make_run_dir(ws, job_id, epochs=1, n_train=24, batch_size=2)
    runner = SSHRunner(ws, [host], backoff_max_s=1.0)
    handle = start(runner, _request(run_dir, job_id))
    metrics = run_dir / "metrics.jsonl"
    wait_lines(runner, handle, metrics, 3)

    sshd.stop()  # the listener and every connection (the ControlMaster's too) die
    with pytest.raises(RunnerUnreachable) as down:
        runner.sync(handle)
    assert not isinstance(down.value, RunnerLost)
    impatient = SSHRunner(ws, [host], reconnect_limit_s=1.0, backoff_max_s=0.2)
    deadline = time.monotonic() + 60
    with pytest.raises(RunnerLost):
        while time.monotonic() < deadline:
            try:
                impatient.poll(handle)
            except RunnerLost:
                raise
            except RunnerUnreachable:
                time.sleep(0.2)
    seen_while_down = metrics.read_bytes()
    pgid = _Handle.parse(handle).pgids[0][1]
    os.killpg(pgid, 0)  # the remote trainer kept running without its SSH connection

    sshd.start()
    reattached = SSHRunner(ws, [host])  # what a resumed supervisor builds from the job row
    assert follow(reattached, handle) == 0
    reattached.collect(handle)
    local = metrics.read_bytes()
    remote = (tmp_path / "remote" / "runs" / job_id / "metrics.jsonl").read_bytes()
    assert local == remote and local.startswith(seen_while_down)
    steps = _steps(metrics)
    assert len(steps) == len(set(steps))
    train_steps = [s for s, split in steps if split == "train"]
    assert train_steps == list(range(train_steps[0], train_steps[0] + len(train_steps)))


def test_cancel_leaves_no_remote_process(sshd, tmp_path, start):  # noqa: F811
    ws = Workspace.open()
    host = _host(ws, sshd, "box", tmp_path / "remote")
    job_id = new_id()
    run_dir = make_run_dir(ws, job_id, epochs=20)
    runner = SSHRunner(ws, [host])
    handle = start(runner, _request(run_dir, job_id))
    wait_lines(runner, handle, run_dir / "metrics.jsonl", 2)
    marker = _Handle.parse(handle).marker
    assert _marked_pids(marker), "the remote trainer processes carry the run's marker"
    runner.stop(handle, grace_s=30)
    assert _marked_pids(marker) == []
    with pytest.raises(ProcessLookupError):
        os.killpg(_Handle.parse(handle).pgids[0][1], 0)
    assert runner.poll(handle) not in (None, 0)


def test_two_nodes_run_one_gloo_job(sshd, tmp_path, start):  # noqa: F811
    ws = Workspace.open()
    nodes = [_host(ws, sshd, "node0", tmp_path / "remote0"), _host(ws, sshd, "node1", tmp_path / "remote1")]
    job_id = new_id()
    # Every rank gets the same number of validation chunks (16 held out, chunks of 4 x 2).
    run_dir = make_run_dir(ws, job_id, epochs=1, n_train=16, n_val=16, batch_size=2)
    runner = SSHRunner(ws, nodes)
    handle = start(runner, _request(run_dir, job_id))
    assert [name for name, _ in _Handle.parse(handle).pgids] == ["node0", "node1"]
    assert follow(runner, handle) == 0
    runner.collect(handle)
    assert json.loads((run_dir / "result.json").read_text())["status"] == "completed"
    assert (run_dir / "final" / "adapter_model.safetensors").exists()
    # Both machines ran one rank each of the same 2-process (gloo) job.
    r0, r1 = (tmp_path / f"remote{i}" / "runs" / job_id for i in (0, 1))
    assert (r0 / "exit_code").read_text().strip() == "0" and (r1 / "exit_code").read_text().strip() == "0"
    assert "2 process(es), device cpu" in (r0 / "trainer.log").read_text()
    assert "[rank 1]" in (r1 / "launcher.log").read_text()
