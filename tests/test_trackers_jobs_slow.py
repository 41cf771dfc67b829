"""Issue 19 end to end, with real tiny jobs through the CLI: `train --report-to
tensorboard,mlflow` read back with each tracker's own reader, `jobs export --to mlflow`,
`jobs report` rendered in headless Chromium, an SSH/Slurm job's MLflow run copied into
the home's store, and `prune --yes` while a job runs and another waits (both complete)."""

from __future__ import annotations

import json
import subprocess
from datetime import timedelta

import pytest

from brightrun_cli.registry.tables import Host, MetricPoint
from brightrun_cli.registry.timeutil import utcnow
from brightrun_cli.services import jobs
from brightrun_cli.services.dataset_add import add_dataset
from brightrun_cli.services.trackers import copy_remote_mlflow
from brightrun_cli.trackers.records import read_records, write_records
from brightrun_cli.workspace import Workspace
from conftest import run_brightrun
from jobs_helpers import conversations, dataset_row, job_row
from tracker_readers import mlflow_artifacts, mlflow_run, tensorboard_scalars
from waiting import wait_for

pytestmark = pytest.mark.slow

FAST = ("--preset", "tiny", "--set", "batch_size=2", "--set", "num_epochs=1", "--set", "max_seq_length=64", "--set", "packing=false")


@pytest.fixture
def ws(brightrun_home, monkeypatch) -> Workspace:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    ws = Workspace.open()
    add_dataset(ws, str(conversations(brightrun_home / "chat.jsonl", 12)), name="chat", base_model="builtin:tiny")
    return ws


def _ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def _registry_curve(ws, job_id, split, column):
    with ws.registry.reading() as conn:
        rows = conn.execute(f"SELECT step, {column} FROM metrics_points WHERE job_id = ? AND split = ? AND {column} IS NOT NULL "
                            "ORDER BY step", (job_id, split)).fetchall()
    return [(step, pytest.approx(value, rel=1e-5)) for step, value in rows]


def test_a_job_reports_to_tensorboard_and_mlflow_and_exports_and_reports_afterwards(ws, tmp_path):
    _ok(run_brightrun("train", "--dataset", "chat", *FAST, "--report-to", "tensorboard,mlflow", timeout=400))
    job = jobs.list_jobs(ws)[0]
    assert job.status == "completed" and job.spec["report_to"] == ["tensorboard", "mlflow"]
    store = f"sqlite:///{ws.home.resolve()}/mlflow/mlflow.db"
    train_loss = _registry_curve(ws, job.id, "train", "training_loss")
    validation_loss = _registry_curve(ws, job.id, "validation", "validation_loss")
    assert len(train_loss) == job.total_steps and validation_loss[0][0] == 0

    shown = json.loads(_ok(run_brightrun("jobs", "show", job.id, "--json")))
    records = shown["trackers"]
    assert {name: (r["status"], r["error"]) for name, r in records.items()} == {"tensorboard": ("done", None), "mlflow": ("done", None)}
    assert records["mlflow"]["where"] == store and records["tensorboard"]["where"] == str(ws.home / job.run_dir / "tensorboard")

    # TensorBoard's own accumulator reads every step from the run dir's event files.
    scalars = tensorboard_scalars(ws.home / job.run_dir / "tensorboard")
    assert scalars["train/loss"] == train_loss and scalars["validation/loss"] == validation_loss

    # MLflow's own client reads the run from the home's store: params, every point, the adapter.
    run, history = mlflow_run(store, records["mlflow"]["run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["brightrun.job_id"] == job.id
    assert run.data.params["base_model"] == "builtin:tiny" and run.data.params["batch_size"] == "2"
    assert history["train/loss"] == train_loss and history["validation/loss"] == validation_loss
    assert "adapter_model.safetensors" in mlflow_artifacts(store, records["mlflow"]["run_id"], "adapter")

    # The same job exported afterwards: a second run, in a store of its own, with the model's quality.
    exported = json.loads(_ok(run_brightrun("jobs", "export", job.id, "--to", "mlflow", "--out", str(tmp_path / "share"), "--json")))
    assert exported["where"] == f"sqlite:///{tmp_path / 'share' / 'mlflow.db'}" and exported["points"] == len(train_loss) + len(validation_loss)
    run, history = mlflow_run(exported["where"], exported["run_id"])
    assert run.data.tags["brightrun.source"] == "export" and history["train/loss"] == train_loss
    assert "quality/overall_score" in history and "adapter_model.safetensors" in mlflow_artifacts(exported["where"], exported["run_id"], "adapter")

    # The report, drawn by a real browser.
    report = tmp_path / "report.html"
    _ok(run_brightrun("jobs", "report", job.id, "--out", str(report)))
    _renders_in_chromium(report, job.id, tmp_path)


def _renders_in_chromium(report, job_id, tmp_path):
    from PIL import Image

    from brightrun_cli.report.html import TRAIN_COLOR
    from test_report import CHROMIUM, _pixels_near, render_in_chromium

    if CHROMIUM is None:
        pytest.skip("chromium is not installed")
    dom, png = render_in_chromium(report, tmp_path)
    text = " ".join(dom.text)
    assert f"Job {job_id}" in text and "dataset chat" in text and "lower than the base model" in text
    assert "tensorboard" in text and "mlflow" in text and "job_completed" in text
    lines = dom.polylines()
    assert lines[("loss", "train")] > 3 and lines[("loss", "validation")] == 2
    train = _pixels_near(Image.open(png).convert("RGB"), TRAIN_COLOR)
    assert len(train) > 300 and max(x for x, _ in train) - min(x for x, _ in train) > 300


def test_a_remote_jobs_mlflow_run_is_copied_into_the_homes_store(ws, tmp_path):
    """The supervisor's last step for an SSH or Slurm job: the trainer there logged into a
    store in its run dir; the run lands in this machine's store, trackers.json says where."""
    with ws.registry.write() as tx:
        tx.add(Host(name="gpu-box", kind="ssh", ssh_host="10.0.0.9", gpus=1, gpu_type="cpu"))
    now = utcnow()
    job = job_row(ws, dataset_row(ws, "remote-data"), status="completed", hosts=["gpu-box"], started_at=now - timedelta(minutes=1),
                  completed_at=now, spec={"report_to": ["mlflow"]}, hyperparameters={"learning_rate": 0.001})
    with ws.registry.write() as tx:
        for step in (1, 2, 3):
            tx.add(MetricPoint(job_id=job.id, step=step, split="train", epoch=step / 3, training_loss=2.0 / step, timestamp=now))
    run_dir = ws.home / "runs" / job.id
    run_dir.mkdir(parents=True)
    remote = {"status": "done", "where": "sqlite:////home/u/brightrun/runs/x/mlflow/mlflow.db", "run_id": "abc", "points": 3,
              "artifact": None, "error": None}
    write_records(run_dir, {"mlflow": remote})
    copy_remote_mlflow(ws, job.id)
    record = read_records(run_dir)["mlflow"]
    assert record["status"] == "done" and record["remote"] == remote and record["error"] is None
    assert record["where"] == f"sqlite:///{ws.home.resolve()}/mlflow/mlflow.db" and record["points"] == 3
    run, history = mlflow_run(record["where"], record["run_id"])
    assert run.data.tags["brightrun.job_id"] == job.id and run.data.tags["brightrun.source"] == "remote"
    assert history["train/loss"] == [(1, 2.0), (2, 1.0), (3, pytest.approx(2 / 3))]
    # Resumed, the job ends again (collect brings the host's record back): one run in the store, the new one.
    write_records(run_dir, {"mlflow": remote})
    copy_remote_mlflow(ws, job.id)
    again = read_records(run_dir)["mlflow"]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=again["where"])
    live = client.search_runs([run.info.experiment_id], filter_string=f"tags.`brightrun.job_id` = '{job.id}'")
    assert [r.info.run_id for r in live] == [again["run_id"]] and again["run_id"] != record["run_id"]
    assert client.get_run(record["run_id"]).info.lifecycle_stage == "deleted"
    # A local job, or one whose spec named a tracking server, is left as the trainer wrote it.
    local = job_row(ws, dataset_row(ws, "local-data"), status="completed", spec={"report_to": ["mlflow"],
                    "trackers": {"mlflow": {"tracking_uri": "http://mlflow:5000"}}})
    (ws.home / "runs" / local.id).mkdir(parents=True)
    write_records(ws.home / "runs" / local.id, {"mlflow": remote})
    copy_remote_mlflow(ws, local.id)
    assert read_records(ws.home / "runs" / local.id)["mlflow"] == remote


def test_prune_while_a_job_runs_and_another_waits_leaves_both_to_complete(ws):
    # Long enough to still be running when prune runs, and a second job queued behind it
    # (the local host has one slot) that reads the dataset's stored split when it starts.
    slow = ("--preset", "tiny", "--set", "batch_size=1", "--set", "num_epochs=6", "--set", "max_seq_length=64", "--set", "packing=false")
    first = json.loads(_ok(run_brightrun("train", "--dataset", "chat", *slow, "--detach", "--json")))["id"]
    second = json.loads(_ok(run_brightrun("train", "--dataset", "chat", *FAST, "--detach", "--json")))["id"]
    wait_for("the first job to train", lambda: jobs.get_job(ws, first).status == "running" and jobs.get_job(ws, first).current_step > 0)
    assert jobs.get_job(ws, second).status == "queued"
    dataset_id = jobs.get_job(ws, first).dataset_id
    removed = run_brightrun("dataset", "rm", "chat", "--yes")
    assert removed.returncode == 0, removed.stderr  # kept as removed: jobs use it
    # Something prune may take meanwhile: a completed job's checkpoint.
    done = job_row(ws, dataset_row(ws, "other"), status="completed", completed_at=utcnow())
    checkpoint = ws.home / "runs" / done.id / "checkpoints" / "step-1" / "adapter_model.safetensors"
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(b"x" * 1000)
    run_files = sorted(p.relative_to(ws.home) for p in (ws.home / "runs" / first).rglob("*") if p.is_file())

    dry = json.loads(_ok(run_brightrun("prune", "--json")))
    real = json.loads(_ok(run_brightrun("prune", "--yes", "--json")))
    assert {**real, "dry_run": True} == dry
    assert (jobs.get_job(ws, first).status, jobs.get_job(ws, second).status) == ("running", "queued")  # prune ran meanwhile
    assert [(i["kind"], i["target"]) for i in real["items"]] == [("checkpoints", f"runs/{done.id}/checkpoints")]
    assert not checkpoint.exists() and ws.storage.exists(f"datasets/{dataset_id}/train.jsonl")
    assert all((ws.home / p).exists() for p in run_files)  # nothing of the running job's run dir went

    for job_id in (first, second):
        wait_for(f"job {job_id} to end", lambda: jobs.get_job(ws, job_id).status in ("completed", "failed", "cancelled"), timeout=600)
        assert jobs.get_job(ws, job_id).status == "completed", jobs.get_job(ws, job_id).error_message
    # Once no job may need it (both completed), the removed dataset's files are prune's.
    after = json.loads(_ok(run_brightrun("prune", "--json")))
    assert ("datasets", f"datasets/{dataset_id}") in [(i["kind"], i["target"]) for i in after["items"]]


def test_a_run_that_fails_in_setup_still_tells_its_trackers(tmp_path):
    """The trackers process starts after setup; a run that never got there starts it at its
    end, so the tracker still records the failed run and why."""
    from brightrun_cli.trainer.main import main as trainer_main
    from test_trainer import write_run_dir
    from tracker_readers import tensorboard_texts

    spec = write_run_dir(tmp_path, base_model=str(tmp_path / "no-such-model"), report_to=["tensorboard"])
    assert trainer_main([str(spec)]) == 2
    record = read_records(tmp_path)["tensorboard"]
    assert (record["status"], record["points"], record["error"]) == ("done", 0, None)
    texts = tensorboard_texts(tmp_path / "tensorboard")
    assert texts["run/status"] == "failed" and "no-such-model" in texts["run/error"]
