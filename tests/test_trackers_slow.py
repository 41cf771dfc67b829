"""Experiment trackers for real: a tiny builtin:tiny run reporting to TensorBoard, MLflow
and W&B (offline), each read back with the tracker's own reader; broken trackers leaving
the training completed; a past run exported to a local MLflow store."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import pytest

from brightrun_cli.trackers.export import export_run
from brightrun_cli.trackers.sinks import MlflowSink, RunInfo
from brightrun_cli.trainer.main import main as trainer_main

from test_trackers import QUALITY, past_run
from test_trainer import result, write_run_dir
from tracker_readers import (mlflow_artifacts, mlflow_run, tensorboard_plugin_tags, tensorboard_scalars, wandb_history,
                             wandb_records)

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def wandb_files_in_tmp(tmp_path_factory, monkeypatch):
    """W&B keeps artifact staging copies and caches under the user's home: not in tests."""
    root = tmp_path_factory.mktemp("wandb-home")
    for variable in ("WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR"):
        monkeypatch.setenv(variable, str(root / variable.lower()))
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def metric_lines(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def curve(lines: list[dict], split: str, key: str) -> list[tuple[int, float]]:
    return [(line["step"], line[key]) for line in lines if line["split"] == split and line[key] is not None]


def test_a_tiny_run_reports_every_point_to_tensorboard_mlflow_and_wandb(tmp_path):
    spec = write_run_dir(tmp_path, num_epochs=2, report_to=["tensorboard", "mlflow", "wandb"],
                         trackers={"mlflow": {"experiment": "tiny-tests"}})
    assert trainer_main([str(spec)]) == 0
    res, lines = result(tmp_path), metric_lines(tmp_path)
    train_loss, validation_loss = curve(lines, "train", "training_loss"), curve(lines, "validation", "validation_loss")
    assert [s for s, _ in train_loss] == list(range(1, 13)) and [s for s, _ in validation_loss] == [0, 6, 12]
    records = json.loads((tmp_path / "trackers.json").read_text())["trackers"]
    assert {name: (r["status"], r["points"], r["error"]) for name, r in records.items()} == {
        name: ("done", len(lines), None) for name in ("tensorboard", "mlflow", "wandb")}

    # TensorBoard: event files in the run dir, every step, read by TensorBoard's own accumulator.
    scalars = tensorboard_scalars(tmp_path / "tensorboard")
    assert scalars["train/loss"] == [(s, pytest.approx(v)) for s, v in train_loss]
    assert scalars["validation/loss"] == [(s, pytest.approx(v)) for s, v in validation_loss]
    assert [s for s, _ in scalars["train/learning_rate"]] == list(range(1, 13))
    assert scalars["quality/final_validation_loss"] == [(12, pytest.approx(res["final_validation_loss"]))]
    assert tensorboard_plugin_tags(tmp_path / "tensorboard", "hparams") == ["_hparams_/session_start_info"]

    # MLflow: the default store in the run dir, read back by MLflow's own client.
    mlflow = records["mlflow"]
    assert mlflow["where"] == f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"
    run, history = mlflow_run(mlflow["where"], mlflow["run_id"])
    assert run.info.status == "FINISHED" and run.info.run_name == "test"
    assert run.data.tags["brightrun.job_id"] == "test" and run.data.tags["run/status"] == "completed"
    assert run.data.params["base_model"] == "builtin:tiny" and run.data.params["learning_rate"] == "0.003"
    assert run.data.params["target_modules"] == "q_proj,k_proj,v_proj,o_proj" and run.data.params["lora_rank"] == "8"
    assert history["train/loss"] == [(s, pytest.approx(v)) for s, v in train_loss]
    assert history["validation/loss"] == [(s, pytest.approx(v)) for s, v in validation_loss]
    assert history["quality/base_validation_loss"] == [(12, pytest.approx(res["base_validation_loss"]))]
    assert "adapter_model.safetensors" in mlflow_artifacts(mlflow["where"], mlflow["run_id"], "adapter")
    assert mlflow["artifact"].endswith("/adapter") and Path(mlflow["artifact"][len("file://"):], "adapter_config.json").is_file()

    # W&B offline: the run's transaction log parses (checksums and W&B's own protobufs).
    [log] = (tmp_path / "wandb").glob("offline-run-*-test/run-test.wandb")
    assert records["wandb"]["where"] == str(log.parent)
    wandb = wandb_records(log)
    kinds = [r.WhichOneof("record_type") for r in wandb]
    assert {"run", "history", "summary", "artifact", "exit"} <= set(kinds)
    history = wandb_history(wandb)
    assert history["train/loss"] == [(s, pytest.approx(v)) for s, v in train_loss]
    assert history["validation/loss"] == [(s, pytest.approx(v)) for s, v in validation_loss]
    [run_record] = [r.run for r in wandb if r.WhichOneof("record_type") == "run"]
    config = {item.key: json.loads(item.value_json) for item in run_record.config.update}
    assert config["learning_rate"] == 0.003 and config["base_model"] == "builtin:tiny"
    [artifact] = [r.artifact for r in wandb if r.WhichOneof("record_type") == "artifact"]
    assert artifact.name == "adapter-test" and artifact.type == "model"
    assert "adapter_model.safetensors" in {entry.path for entry in artifact.manifest.contents}
    [exit_record] = [r.exit for r in wandb if r.WhichOneof("record_type") == "exit"]
    assert exit_record.exit_code == 0
    summary = {}
    for r in wandb:
        if r.WhichOneof("record_type") == "summary":
            summary.update({item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in r.summary.update})
    assert summary["quality/final_validation_loss"] == pytest.approx(res["final_validation_loss"])


def test_broken_trackers_leave_the_training_completed_with_one_warning_each(tmp_path, monkeypatch):
    shim = tmp_path / "shim"
    (shim / "wandb").mkdir(parents=True)
    (shim / "wandb" / "__init__.py").write_text('raise ImportError("simulated: wandb is missing")\n')
    monkeypatch.setenv("PYTHONPATH", str(shim))  # the trackers process imports this wandb
    run_dir = tmp_path / "run"
    spec = write_run_dir(run_dir, max_steps=3, report_to=["tensorboard", "mlflow", "wandb"],
                         trackers={"mlflow": {"tracking_uri": "nosuchscheme://tracking"}})
    assert trainer_main([str(spec)]) == 0
    assert result(run_dir)["status"] == "completed" and (run_dir / "final" / "adapter_model.safetensors").is_file()
    records = json.loads((run_dir / "trackers.json").read_text())["trackers"]
    assert records["mlflow"]["status"] == "failed" and "nosuchscheme://tracking" in records["mlflow"]["error"]
    assert records["wandb"]["status"] == "failed"
    assert records["wandb"]["error"].startswith("opening it: wandb is not installed on this host (simulated: wandb is missing)")
    assert records["tensorboard"]["status"] == "done" and records["tensorboard"]["points"] == len(metric_lines(run_dir))
    warnings = [line for line in (run_dir / "trainer.log").read_text().splitlines() if " WARNING " in line]
    assert len(warnings) == 2
    assert "tracker mlflow dropped while opening it" in warnings[0] or "tracker mlflow dropped while opening it" in warnings[1]
    assert any("tracker wandb dropped while opening it" in w for w in warnings)
    assert [s for s, _ in tensorboard_scalars(run_dir / "tensorboard")["train/loss"]] == [1, 2, 3]


def test_a_past_run_exported_to_mlflow_reads_back_with_its_params_points_quality_and_adapter(tmp_path):
    run, rows = past_run()
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    (adapter / "adapter_model.safetensors").write_bytes(b"weights")
    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    done = export_run("mlflow", run, rows, quality=QUALITY, eval_summary={"tuned": {"rougeL": 0.7}}, adapter_dir=adapter,
                      settings={"tracking_uri": uri, "experiment": "exports"}, directory=tmp_path / "unused")
    assert done.where == uri and done.points == len(rows) and done.artifact.endswith("/adapter")
    exported, history = mlflow_run(uri, done.run_id)
    assert exported.info.status == "FINISHED" and exported.info.run_name == "01jexport"
    started, completed = (int(datetime.fromisoformat(run[key]).timestamp() * 1000) for key in ("started_at", "completed_at"))
    assert (exported.info.start_time, exported.info.end_time) == (started, completed)  # the job's own times
    assert exported.data.tags["brightrun.source"] == "export" and exported.data.tags["quality/convergence_quality"] == "good"
    assert exported.data.params["gpu_type"] == "A100-80GB" and exported.data.params["target_modules"] == "q_proj,v_proj"
    assert [s for s, _ in history["train/loss"]] == list(range(1, 31))
    assert history["validation/loss"] == [(0, 4.0), (10, pytest.approx(2.5)), (20, pytest.approx(2.0)), (30, pytest.approx(1.5))]
    assert history["quality/validation_loss_improvement"] == [(30, 0.625)] and history["eval/tuned/rougeL"] == [(30, 0.7)]
    assert history["cost/usd"] == [(30, 2.5)] and history["cost/estimated_usd"] == [(30, 2.0)]
    assert mlflow_artifacts(uri, done.run_id, "adapter") == ["adapter_config.json", "adapter_model.safetensors"]
    assert not (tmp_path / "unused").exists()  # a tracking URI was given: no store made in the fallback directory

    # A resumed job continues its run; one whose run is gone gets a new one.
    same = MlflowSink({"tracking_uri": uri, "experiment": "exports"}, tmp_path, RunInfo("01jexport", {}, resume_run_id=done.run_id))
    assert same.run_id == done.run_id and mlflow_run(uri, done.run_id)[0].info.status == "RUNNING"
    fresh = MlflowSink({"tracking_uri": uri, "experiment": "exports"}, tmp_path, RunInfo("01jexport", {}, resume_run_id="0" * 32))
    assert fresh.run_id != done.run_id
