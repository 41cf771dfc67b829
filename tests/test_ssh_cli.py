"""`brightrun train --host` on an SSH host, end to end through real processes: the CLI,
the detached supervisor, ssh/rsync to a real sshd, the trainer there, the artifact here."""

from __future__ import annotations

import json
import sys

import pytest
from sqlmodel import select

from brightrun_cli.registry.tables import MetricPoint
from brightrun_cli.runners.ssh import code_version
from brightrun_cli import lifecycle
from brightrun_cli.services import jobs
from brightrun_cli.workspace import Workspace
from conftest import run_brightrun
from sshd import EXAMPLES, requires_sshd, sshd  # noqa: F401  (fixture)

pytestmark = [pytest.mark.slow, requires_sshd]

FAST = ("--preset", "tiny", "--set", "num_epochs=1", "--set", "batch_size=4", "--set", "max_seq_length=128")


def test_train_on_an_ssh_host_completes_with_metrics_and_a_local_artifact(sshd, tmp_path, brightrun_home):  # noqa: F811
    from brightrun_cli.services.dataset_add import add_dataset

    data = tmp_path / "support.jsonl"
    data.write_text("\n".join(EXAMPLES.read_text().splitlines()[:40]) + "\n")
    ws = Workspace.open()
    add_dataset(ws, str(data), name="support", base_model="builtin:tiny")
    added = run_brightrun("hosts", "add", "box", "--ssh", sshd.target, "--python", sys.executable,
                          "--workdir", str(tmp_path / "remote"))
    assert added.returncode == 0, added.stderr

    result = run_brightrun("train", "--dataset", "support", *FAST, "--host", "box", timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]

    job = jobs.list_jobs(ws)[0]
    assert job.status == "completed" and job.hosts == ["box"], job.error_message
    assert job.external_job_id.startswith("ssh:")
    with ws.registry.write() as s:
        points = [(p.step, p.split) for p in s.exec(select(MetricPoint).where(MetricPoint.job_id == job.id))]
    local_lines = (ws.home / job.run_dir / "metrics.jsonl").read_text().splitlines()
    remote_lines = (tmp_path / "remote" / "runs" / job.id / "metrics.jsonl").read_text().splitlines()
    assert local_lines == remote_lines
    assert sorted(points) == sorted((m["step"], m["split"]) for m in map(json.loads, remote_lines))
    train_steps = sorted(step for step, split in points if split == "train")
    assert train_steps == list(range(1, job.total_steps + 1))
    # The trainer that ran there is this checkout's package, copied whole: the remote copy's
    # content hash is the version it was shipped under.
    code_dirs = list((tmp_path / "remote" / "code").iterdir())
    assert len(code_dirs) == 1 and code_version(code_dirs[0] / "brightrun_cli") == code_dirs[0].name
    # The artifact was built here, from the adapter the trainer wrote there.
    assert job.artifact_id is not None
    models = json.loads(run_brightrun("models", "list", "--json").stdout)
    assert [m["job_id"] for m in models] == [job.id]


def test_resume_reattaches_to_a_remote_trainer_that_kept_running(sshd, tmp_path, brightrun_home):  # noqa: F811
    """A job failed while its remote trainer survived (what a long connection loss leaves):
    `jobs resume` follows that same trainer again instead of restarting it."""
    import os
    import signal
    import time

    from brightrun_cli.services.dataset_add import add_dataset

    data = tmp_path / "support.jsonl"
    data.write_text("\n".join(EXAMPLES.read_text().splitlines()[:60]) + "\n")
    ws = Workspace.open()
    add_dataset(ws, str(data), name="support", base_model="builtin:tiny")
    assert run_brightrun("hosts", "add", "box", "--ssh", sshd.target, "--python", sys.executable,
                         "--workdir", str(tmp_path / "remote")).returncode == 0
    submitted = run_brightrun("train", "--dataset", "support", *FAST, "--set", "num_epochs=2", "--host", "box",
                              "--detach", "--json")
    assert submitted.returncode == 0, submitted.stderr
    job_id = json.loads(submitted.stdout)["id"]

    deadline = time.monotonic() + 300
    while True:  # wait until the remote trainer is training
        job = jobs.get_job(ws, job_id)
        if job.status == "running" and job.current_step >= 2:
            break
        assert job.status in ("queued", "initializing", "running") and time.monotonic() < deadline, job.error_message
        time.sleep(0.5)
    handle = job.external_job_id
    os.kill(job.supervisor_pid, signal.SIGKILL)  # the local side goes away; the remote run does not
    with ws.registry.write() as session:
        assert lifecycle.transition(session, job_id, lifecycle.FAILED, marker=job.supervisor_marker,
                               error_message="lost contact with host box")

    assert run_brightrun("jobs", "resume", job_id).returncode == 0
    watched = run_brightrun("watch", job_id, timeout=600)
    assert watched.returncode == 0, watched.stdout[-2000:] + watched.stderr[-2000:]

    job = jobs.get_job(ws, job_id)
    assert job.status == "completed" and job.resume_count == 1
    assert job.external_job_id == handle  # the same remote trainer, not a restart
    assert "re-attaching" in (ws.home / job.run_dir / "supervisor.log").read_text()
    with ws.registry.write() as s:
        steps = [p.step for p in s.exec(select(MetricPoint).where(MetricPoint.job_id == job_id, MetricPoint.split == "train"))]
    assert sorted(steps) == list(range(1, job.total_steps + 1))  # nothing lost, nothing twice


def test_a_base_model_directory_on_the_ssh_host_is_sized_from_its_own_config(sshd, tmp_path, brightrun_home):  # noqa: F811
    """The weights usually live on the GPU box: the estimate reads config.json there (the
    model brightrun would train), and a directory without one is refused at submit."""
    from brightrun_cli.services.dataset_add import add_dataset

    data = tmp_path / "support.jsonl"
    data.write_text("\n".join(EXAMPLES.read_text().splitlines()[:40]) + "\n")
    add_dataset(Workspace.open(), str(data), name="support", base_model="builtin:tiny")
    assert run_brightrun("hosts", "add", "box", "--ssh", sshd.target, "--python", sys.executable,
                         "--workdir", str(tmp_path / "remote")).returncode == 0
    model = tmp_path / "remote-model"  # over loopback, "the host" is this machine
    model.mkdir()
    config = {"model_type": "llama", "hidden_size": 512, "intermediate_size": 1376, "num_hidden_layers": 6,
              "num_attention_heads": 8, "num_key_value_heads": 8, "vocab_size": 32000, "max_position_embeddings": 2048}
    (model / "config.json").write_text(json.dumps(config))
    args = ("train", "--dataset", "support", "--preset", "balanced", "--host", "box", "--dry-run", "--json")
    plan = run_brightrun(*args, "--base-model", str(model))
    assert plan.returncode == 0, plan.stderr
    details = json.loads(plan.stdout)["estimate"]["training_details"]
    assert 20e6 < details["model_parameters"] < 60e6  # 6 layers of 512 and a 32k vocabulary, not builtin:tiny's 0.9M
    missing = run_brightrun(*args, "--base-model", str(tmp_path / "nothing-here"))
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1
    assert f"'{tmp_path / 'nothing-here'}' on host 'box' has no config.json" in missing.stderr
