"""Trackers and the run report as a user meets them: `train --report-to` and config.toml
into the job's spec, `jobs show` with each tracker's fate, `jobs export --to tensorboard`,
and `jobs report` built from the registry and the run dir (fast: no training)."""

from __future__ import annotations

import importlib.util
import json
from datetime import timedelta
from html.parser import HTMLParser

import pytest

from brightrun_cli.registry.tables import CostRecord, Host, MetricPoint, ModelArtifact, Notification
from brightrun_cli.registry.timeutil import utcnow
from brightrun_cli.trackers.records import write_records
from brightrun_cli.workspace import Workspace

from jobs_helpers import dataset_row, job_row
from tracker_readers import tensorboard_scalars

TINY = ("--dataset", "ok", "--preset", "tiny", "--base-model", "builtin:tiny")


@pytest.fixture
def ws(brightrun_home) -> Workspace:
    ws = Workspace.open()
    dataset_row(ws, "ok")
    return ws


def planned_spec(cli, *args: str) -> dict:
    result = cli("train", *TINY, *args, "--dry-run", "--json")
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)["spec"]


def refused(cli, *args: str) -> str:
    result = cli("train", *TINY, *args, "--dry-run")
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1, (result.stdout, result.stderr)
    return result.stderr.strip()


# ---------------------------------------------------------------- spec building


def test_report_to_names_the_trackers_and_the_homes_mlflow_store(ws, cli):
    spec = planned_spec(cli, "--report-to", "tensorboard,mlflow")
    assert spec["report_to"] == ["tensorboard", "mlflow"]
    assert spec["trackers"] == {"mlflow": {"tracking_uri": f"sqlite:///{ws.home.resolve()}/mlflow/mlflow.db"}}
    assert "report_to" not in planned_spec(cli) and "trackers" not in planned_spec(cli)


def test_config_report_to_is_the_default_and_its_settings_reach_the_spec(ws, cli):
    (ws.home / "config.toml").write_text(
        'report_to = ["mlflow", "wandb"]\n'
        '[trackers.mlflow]\ntracking_uri = "http://mlflow.internal:5000"\nexperiment = "support-bot"\n'
        '[trackers.wandb]\nproject = "bots"\nmode = "online"\n'
        '[trackers.tensorboard]\n')
    spec = planned_spec(cli)
    assert spec["report_to"] == ["mlflow", "wandb"]
    assert spec["trackers"] == {"mlflow": {"tracking_uri": "http://mlflow.internal:5000", "experiment": "support-bot"},
                                "wandb": {"project": "bots", "mode": "online"}}
    assert planned_spec(cli, "--report-to", "tensorboard")["report_to"] == ["tensorboard"]
    assert "report_to" not in planned_spec(cli, "--report-to", "none")


def test_a_remote_job_gets_a_tracking_server_but_never_a_store_on_this_machine(ws, cli):
    with ws.registry.write() as tx:
        tx.add(Host(name="gpu-box", kind="ssh", ssh_host="10.0.0.9", gpus=1, gpu_type="cpu"))
    remote = ("--host", "gpu-box", "--report-to", "mlflow")
    spec = planned_spec(cli, *remote)
    assert spec["report_to"] == ["mlflow"] and "trackers" not in spec  # the trainer's store lands in the remote run dir
    (ws.home / "config.toml").write_text('[trackers.mlflow]\ntracking_uri = "https://mlflow.example.com"\n')
    assert planned_spec(cli, *remote)["trackers"] == {"mlflow": {"tracking_uri": "https://mlflow.example.com"}}


def test_bad_tracker_input_is_one_usage_error(ws, cli, monkeypatch):
    assert refused(cli, "--report-to", "tensorboard,comet") == (
        "error: --report-to: unknown tracker(s) comet (known: tensorboard, mlflow, wandb); "
        "pass a comma-separated list of tensorboard, mlflow, wandb, or none")
    assert "names a tracker twice" in refused(cli, "--report-to", "mlflow,mlflow")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    assert refused(cli, "--report-to", "wandb") == (
        "error: --report-to wandb: wandb is not installed; pip install 'brightrun-cli[trackers]', or leave that tracker out")


@pytest.mark.parametrize("toml, message", [
    ('report_to = ["tensorboard", "neptune"]\n', "report_to: unknown tracker(s) neptune"),
    ('report_to = "mlflow"\n', "key 'report_to': Expected `array`, got `str`"),
    ('[trackers.mlflow]\nuri = "http://x"\n', "trackers.mlflow: unknown setting 'uri' (known: tracking_uri, experiment)"),
    ('[trackers.wandb]\nmode = "cloud"\n', "trackers.wandb.mode must be one of offline, online, got 'cloud'"),
    ('[trackers.comet]\nproject = "x"\n', "trackers: unknown tracker 'comet'"),
])
def test_config_tracker_keys_are_checked_by_every_command(ws, cli, toml, message):
    (ws.home / "config.toml").write_text(toml)
    result = cli("jobs", "list")
    assert result.exit_code == 2 and message in result.stderr and str(ws.home / "config.toml") in result.stderr


# ---------------------------------------------------------------- jobs show


def test_jobs_show_says_what_became_of_each_tracker(ws, cli, monkeypatch):
    monkeypatch.setenv("COLUMNS", "300")  # a long temporary path on one line
    job = job_row(ws, dataset_row(ws, "d2"), status="completed", completed_at=utcnow(),
                  spec={"report_to": ["tensorboard", "mlflow", "wandb"]})
    run_dir = ws.home / "runs" / job.id
    run_dir.mkdir(parents=True)
    write_records(run_dir, {
        "tensorboard": {"status": "done", "where": str(run_dir / "tensorboard"), "run_id": None, "points": 52, "artifact": None, "error": None},
        "mlflow": {"status": "failed", "where": "http://mlflow:5000", "run_id": None, "points": 0, "artifact": None,
                   "error": "opening it: MlflowException: unreachable"}})
    shown = json.loads(cli("jobs", "show", job.id, "--json").stdout)
    assert shown["id"] == job.id and shown["status"] == "completed"
    assert shown["trackers"]["tensorboard"]["points"] == 52 and shown["trackers"]["mlflow"]["status"] == "failed"
    assert shown["trackers"]["wandb"]["status"] == "not_started"  # named by the spec, no record: the job ended
    text = cli("jobs", "show", job.id).stdout
    assert f"  trackers\n    tensorboard   done  {run_dir / 'tensorboard'}, 52 points\n" in text
    assert "    mlflow        failed  http://mlflow:5000; error: opening it: MlflowException: unreachable\n" in text
    assert "    wandb         not_started\n" in text


# ---------------------------------------------------------------- export


def past_job(ws: Workspace, steps: int = 6):
    now = utcnow()
    job = job_row(ws, dataset_row(ws, "past"), status="completed", started_at=now - timedelta(minutes=5), completed_at=now,
                  hyperparameters={"learning_rate": 0.003, "num_epochs": 1, "target_modules": ["q_proj", "v_proj"]},
                  final_cost=0.42, estimated_total_cost=0.5, max_cost=2.0)
    with ws.registry.write() as tx:
        tx.add(MetricPoint(job_id=job.id, step=0, split="validation", epoch=0.0, validation_loss=3.0, timestamp=now - timedelta(minutes=5)))
        for step in range(1, steps + 1):
            tx.add(MetricPoint(job_id=job.id, step=step, split="train", epoch=step / steps, training_loss=3.0 - step * 0.3,
                               learning_rate=0.003, throughput=900.0 + step, gradient_norm=1.0, timestamp=now - timedelta(minutes=5 - step / 2)))
        tx.add(MetricPoint(job_id=job.id, step=steps, split="validation", epoch=1.0, validation_loss=1.4, timestamp=now))
    return job


def test_export_to_tensorboard_writes_every_point_and_refuses_to_write_it_twice(ws, cli, tmp_path):
    job = past_job(ws)
    out = tmp_path / "tb"
    result = cli("jobs", "export", job.id, "--to", "tensorboard", "--out", str(out))
    assert result.exit_code == 0, result.stderr
    assert f"exported 8 points of job {job.id} to tensorboard: {out}" in result.stdout and f"tensorboard --logdir {out}" in result.stdout
    scalars = tensorboard_scalars(out)
    assert [s for s, _ in scalars["train/loss"]] == [1, 2, 3, 4, 5, 6]
    assert scalars["validation/loss"] == [(0, 3.0), (6, pytest.approx(1.4))]
    again = cli("jobs", "export", job.id, "--to", "tensorboard", "--out", str(out))
    assert again.exit_code == 2 and "already holds TensorBoard event files" in again.stderr
    default = json.loads(cli("jobs", "export", job.id, "--to", "tensorboard", "--json").stdout)
    assert default == {"tracker": "tensorboard", "where": str((ws.home / "tensorboard" / job.id).resolve()), "run_id": None,
                       "points": 8, "artifact": None}
    bad = cli("jobs", "export", job.id, "--to", "comet")
    assert bad.exit_code == 2 and "--to comet: cannot export there; use one of mlflow, tensorboard" in bad.stderr


def test_export_of_a_job_that_never_ran_is_refused_before_writing_an_empty_run(ws, cli, tmp_path, monkeypatch):
    from brightrun_cli.services import queue

    monkeypatch.setattr(queue, "kick", lambda ws, **_: [])  # the queued job stays queued
    monkeypatch.setattr(queue, "kick_if_needed", lambda home: None)
    queued = job_row(ws, dataset_row(ws))
    never = job_row(ws, dataset_row(ws, name="d2"), status="cancelled")
    for job, says in ((queued, "has not started: it has no metrics to export yet"), (never, "cancelled before it started")):
        result = cli("jobs", "export", job.id, "--to", "tensorboard", "--out", str(tmp_path / job.id))
        assert result.exit_code == 2 and says in result.stderr and result.stderr.count("\n") == 1, result.stderr
        assert not (tmp_path / job.id).exists()


# ---------------------------------------------------------------- report


class Text(HTMLParser):
    def __init__(self, page: str):
        super().__init__()
        self.parts: list[str] = []
        self.polylines: list[str] = []
        self.feed(page)

    def handle_starttag(self, tag, attrs):
        if tag == "polyline":
            self.polylines.append(dict(attrs)["data-series"])

    def handle_data(self, data):
        self.parts.append(data)


EVAL_LINE = {"conversation_id": "c1", "turn": 1, "reference": "It ships Monday.",
             "prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "When does <b>it</b> ship?"}],
             "base": {"answer": "No idea.", "scores": {"exact_match": 0.0}}, "tuned": {"answer": "It ships Monday.", "scores": {"exact_match": 1.0}}}


def test_jobs_report_gathers_the_registry_and_run_dir_into_one_page(ws, cli, tmp_path):
    job = past_job(ws)
    now = utcnow()
    with ws.registry.write() as tx:
        tx.add(ModelArtifact(job_id=job.id, dataset_id=job.dataset_id, name="past-model", storage_path="models/m1",
                             quality_metrics={"overall_score": 4, "base_validation_loss": 3.0, "final_validation_loss": 1.4,
                                              "validation_loss_improvement": 0.533, "score_reason": "53% lower"}))
        tx.add(CostRecord(job_id=job.id, cost_type="compute", amount=0.4, billing_period="x"))
        tx.add(CostRecord(job_id=job.id, cost_type="storage", amount=0.02, billing_period="x"))
        tx.add(Notification(type="artifact_ready", title="Model ready", message="past-model v1.0.0 is stored", job_id=job.id,
                            created_at=now + timedelta(seconds=2)))
    final = ws.home / "runs" / job.id / "final"
    final.mkdir(parents=True)
    (final / "eval.jsonl").write_text(json.dumps(EVAL_LINE) + "\nnot json\n")
    (final / "eval_summary.json").write_text(json.dumps({"status": "completed", "tuned": {"exact_match": 1.0}, "base": {"exact_match": 0.0}}))
    write_records(final.parent, {"tensorboard": {"status": "done", "where": "/runs/x/tensorboard", "error": None}})

    out = tmp_path / "reports" / "past.html"
    assert cli("jobs", "report", job.id[:8], "--out", str(out)).exit_code == 2  # a missing directory is refused, as by `jobs plot`
    out.parent.mkdir()
    result = cli("jobs", "report", job.id[:8], "--out", str(out))
    assert result.exit_code == 0 and result.stdout.strip() == f"wrote {out}"
    page = out.read_text()
    parsed = Text(page)
    text = " ".join(parsed.parts)
    assert f"Job {job.id}" in text and "completed" in text and "dataset past" in text
    assert {"train", "validation", "learning rate", "tokens/s"} <= set(parsed.polylines)
    assert "4/5" in text and "53% lower" in text
    assert "(1 earlier turns) When does <b>it</b> ship?" in text and "It ships Monday." in text and "✓" in text
    assert "tuned.exact_match" in text
    assert "$0.42" in text and "$0.50" in text and "$2.00" in text and "compute" in text and "storage" in text
    assert "artifact_ready" in text and "past-model v1.0.0 is stored" in text
    assert "/runs/x/tensorboard" in text and "When does <b>it</b>" not in page  # escaped, shown as text
    assert list(out.parent.iterdir()) == [out]  # written through a temporary file, nothing left beside it
    directory = cli("jobs", "report", job.id, "--out", str(tmp_path))
    assert directory.exit_code == 2 and "is a directory" in directory.stderr


def test_a_queued_job_without_anything_yet_gets_a_report_and_pending_trackers(ws, cli, tmp_path, monkeypatch):
    from brightrun_cli.supervisor import launch

    monkeypatch.setattr(launch, "spawn_supervisor", lambda *args: 0)  # the command's queue housekeeping starts nothing
    job = job_row(ws, dataset_row(ws, "q"), status="queued", spec={"report_to": ["mlflow"]})
    result = cli("jobs", "report", job.id, "--out", str(tmp_path / "q.html"))
    assert result.exit_code == 0, result.stderr
    assert "No metric points were recorded." in (tmp_path / "q.html").read_text()
    assert json.loads(cli("jobs", "show", job.id, "--json").stdout)["trackers"]["mlflow"]["status"] == "pending"


def test_collecting_a_remote_run_brings_its_trackers_files_home(ws, tmp_path):
    """What an SSH or Slurm job's `collect` fetches (run through a Slurm login node that is
    this machine: the same script and rsync as over SSH)."""
    from brightrun_cli.registry.rows import HostRow
    from brightrun_cli.runners.slurm import LocalLogin
    from brightrun_cli.runners.ssh import fetch_outputs

    remote, local = tmp_path / "remote-run", tmp_path / "local-run"
    files = ["final/adapter_model.safetensors", "result.json", "trackers.json", "tensorboard/events.out.tfevents.1.host",
             "mlflow/mlflow.db", "mlflow/mlartifacts/r1/adapter/adapter_config.json", "wandb/offline-run-x/run-x.wandb"]
    for name in [*files, "checkpoints/step-2/optimizer.pt", "train.jsonl"]:
        (remote / name).parent.mkdir(parents=True, exist_ok=True)
        (remote / name).write_text(name)
    local.mkdir()
    host = HostRow(id="h", name="cluster", kind="slurm", ssh_user=None, ssh_host=None, ssh_port=None, identity_file=None, gpus=1,
                   gpu_type="cpu", python=None, workdir=None, options=None, last_check=None, last_checked_at=None,
                   created_at=utcnow(), updated_at=utcnow())
    fetch_outputs(LocalLogin(host), str(remote), local)
    assert sorted(str(p.relative_to(local)) for p in local.rglob("*") if p.is_file()) == sorted(files)


@pytest.mark.skipif(importlib.util.find_spec("mlflow") is None, reason="mlflow is not installed")
def test_export_to_mlflow_prints_no_library_log_lines(ws, tmp_path):
    from conftest import run_brightrun

    job = past_job(ws)
    out = tmp_path / "share"
    done = run_brightrun("jobs", "export", job.id, "--to", "mlflow", "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert f"exported 8 points of job {job.id} to mlflow" in done.stdout
    assert done.stderr == ""  # no "INFO mlflow.store.db.utils: Updating database tables"
