"""Experiment trackers: spec keys, one vocabulary for live and exported runs, a failing
tracker never failing the run, and export of a past run read back with TensorBoard's own
reader (fast tests; real training and MLflow/W&B stores are in test_trackers_slow.py)."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from pathlib import Path

import pytest

from brightrun_cli.errors import OperationError, UsageError
from brightrun_cli.trackers import check_report_to, check_settings
from brightrun_cli.trackers.export import export_run
from brightrun_cli.trackers.points import final_values, point_from_metrics_line, point_from_registry_row
from brightrun_cli.trackers.records import read_records, write_records
from brightrun_cli.trainer.files import setup_logging
from brightrun_cli.trainer.main import main as trainer_main
from brightrun_cli.trainer.spec import load_spec
from brightrun_cli.trainer.trackers import Follower, TrackerProcess, read_new_lines

from test_trainer import result, write_run_dir
from tracker_readers import tensorboard_plugin_tags, tensorboard_scalars, tensorboard_texts


# ---------------------------------------------------------------- spec keys

def test_spec_reads_report_to_and_per_tracker_settings(tmp_path):
    spec = load_spec(write_run_dir(tmp_path, report_to=["tensorboard", "mlflow"], trackers={
        "mlflow": {"tracking_uri": "sqlite:///x/mlflow.db", "experiment": "support"},
        "wandb": {"mode": "offline", "project": "p"}}))
    assert spec.report_to == ["tensorboard", "mlflow"]
    assert spec.trackers["mlflow"] == {"tracking_uri": "sqlite:///x/mlflow.db", "experiment": "support"}
    assert load_spec(write_run_dir(tmp_path / "plain")).report_to == []


@pytest.mark.parametrize("overrides, message", [
    ({"report_to": ["tensorbord"]}, "unknown tracker(s) tensorbord"),
    ({"report_to": "mlflow"}, "report_to must be a list"),
    ({"report_to": ["mlflow", "mlflow"]}, "names a tracker twice"),
    ({"trackers": {"mlflow": {"tracking_url": "x"}}}, "trackers.mlflow: unknown setting 'tracking_url'"),
    ({"trackers": {"wandb": {"mode": "cloud"}}}, "trackers.wandb.mode must be one of offline, online"),
    ({"trackers": {"mlflow": {"experiment": ""}}}, "trackers.mlflow.experiment must be a non-empty string"),
    ({"trackers": {"neptune": {}}}, "unknown tracker 'neptune'"),
])
def test_bad_tracker_keys_fail_the_spec_with_exit_2_before_training(tmp_path, overrides, message):
    assert trainer_main([str(write_run_dir(tmp_path, **overrides))]) == 2
    assert message in result(tmp_path)["error"]
    assert not (tmp_path / "metrics.jsonl").exists() and not (tmp_path / "trackers.json").exists()


def test_the_checks_the_cli_can_share_return_clean_values():
    assert check_report_to(["wandb", "tensorboard"]) == ["wandb", "tensorboard"]
    assert check_settings({"tensorboard": {}, "wandb": {"mode": "online", "entity": "team"}})["wandb"]["entity"] == "team"
    with pytest.raises(ValueError, match="known: none"):
        check_settings({"tensorboard": {"log_dir": "x"}})


# ---------------------------------------------------------------- one vocabulary

def test_a_metrics_line_and_its_registry_row_become_the_same_point():
    line = {"time": 1764100000.5, "split": "train", "epoch": 0.5, "step": 12, "total_steps": 48, "training_loss": 1.93,
            "validation_loss": None, "learning_rate": 2e-4, "grad_norm": 0.81, "tokens_per_sec": 5120.0,
            "gpu_utilization": None, "gpu_memory": 3.5}
    row = {"id": 7, "job_id": "j", "timestamp": "2025-11-25 19:46:40.500000", "epoch": 0.5, "step": 12, "split": "train",
           "training_loss": 1.93, "validation_loss": None, "learning_rate": 2e-4, "gradient_norm": 0.81,
           "throughput": 5120.0, "gpu_utilization": None, "gpu_memory": 3.5}
    live, past = point_from_metrics_line(line), point_from_registry_row(row)
    assert live == past
    assert live.values == {"train/loss": 1.93, "train/learning_rate": 2e-4, "train/grad_norm": 0.81,
                           "train/tokens_per_sec": 5120.0, "train/epoch": 0.5, "gpu/memory_gib": 3.5}
    validation = point_from_metrics_line({"split": "validation", "step": 0, "validation_loss": 4.9, "training_loss": None})
    assert validation.values == {"validation/loss": 4.9} and validation.split == "validation"
    assert point_from_metrics_line({"split": "train", "step": 3, "training_loss": None, "grad_norm": None}).values == {}
    assert point_from_metrics_line({"split": "train", "training_loss": 1.0}) is None


def test_final_values_flatten_quality_and_eval_and_drop_what_trackers_cannot_store():
    numbers, texts = final_values(quality={"overall_score": 4, "perplexity": None, "score_reason": "-44% vs base",
                                           "final_validation_loss": float("nan")},
                                  eval={"tuned": {"exact_match": 0.5, "rougeL": 0.61}, "samples": 20, "passed": True})
    assert numbers == {"quality/overall_score": 4.0, "eval/tuned/exact_match": 0.5, "eval/tuned/rougeL": 0.61,
                       "eval/samples": 20.0, "eval/passed": 1.0}
    assert texts == {"quality/score_reason": "-44% vs base"}


# ---------------------------------------------------------------- the trackers process

class _FlakySink:
    """Takes the first batch of points, raises on the second."""

    name, keeps_files, where, run_id = "mlflow", True, "sqlite:///nowhere", "r1"

    def __init__(self):
        self.batches = 0

    def log_points(self, points):
        self.batches += 1
        if self.batches == 2:
            raise ConnectionError("tracking server went away\nsecond line")

    def log_final(self, *args):
        raise AssertionError("a dropped tracker gets nothing more")


class _GoodSink(_FlakySink):
    name, keeps_files, where, run_id = "tensorboard", False, "/tb", None

    def __init__(self):
        super().__init__()
        self.final, self.status = None, None

    def log_points(self, points):
        self.batches += 1

    def log_final(self, step, numbers, texts):
        self.final = (step, numbers, texts)

    def close(self, status, end_time=None):
        self.status = status


def _metrics_line(run_dir: Path, **line) -> None:
    with open(run_dir / "metrics.jsonl", "a") as handle:
        handle.write(json.dumps(line) + "\n")


def test_a_tracker_that_raises_mid_run_is_dropped_with_one_warning_and_the_others_go_on(tmp_path, monkeypatch):
    spec = load_spec(write_run_dir(tmp_path, report_to=["tensorboard", "mlflow"]))
    sinks = {"tensorboard": _GoodSink(), "mlflow": _FlakySink()}
    monkeypatch.setattr("brightrun_cli.trackers.sinks.open_sink", lambda name, *args: sinks[name])
    log = setup_logging(tmp_path, 0, True, prefix="[trackers] ")
    follower = Follower(spec, 0, since=0.0, log=log)
    follower._open_all()
    assert {name: r["status"] for name, r in read_records(tmp_path).items()} == {"tensorboard": "running", "mlflow": "running"}
    _metrics_line(tmp_path, split="validation", step=0, validation_loss=4.9)
    follower._send_new_points()
    _metrics_line(tmp_path, split="train", step=1, training_loss=4.1)
    follower._send_new_points()
    _metrics_line(tmp_path, split="train", step=2, training_loss=3.9)
    follower._send_new_points()
    (tmp_path / "result.json").write_text(json.dumps({"status": "completed", "steps": 2, "base_validation_loss": 4.9,
                                                      "final_validation_loss": 3.5, "final_training_loss": 3.9}))
    follower._send_end(follower._result())
    for handler in log.handlers:
        handler.flush()
    records = read_records(tmp_path)
    assert records["mlflow"]["status"] == "failed" and records["mlflow"]["points"] == 1
    assert records["mlflow"]["error"] == "sending metrics: ConnectionError: tracking server went away"
    assert records["tensorboard"] == {"status": "done", "where": "/tb", "run_id": None, "points": 3, "artifact": None, "error": None}
    assert sinks["tensorboard"].batches == 3 and sinks["tensorboard"].status == "completed"
    step, numbers, texts = sinks["tensorboard"].final
    assert step == 2 and numbers == {"quality/base_validation_loss": 4.9, "quality/final_validation_loss": 3.5,
                                     "quality/final_training_loss": 3.9}
    assert texts == {"run/status": "completed"}
    warnings = [line for line in (tmp_path / "trainer.log").read_text().splitlines() if " WARNING " in line]
    assert len(warnings) == 1 and "tracker mlflow dropped while sending metrics" in warnings[0]


def test_a_tracker_whose_library_is_missing_is_recorded_as_failed_with_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb -> ImportError
    spec = load_spec(write_run_dir(tmp_path, report_to=["wandb"]))
    follower = Follower(spec, 0, since=0.0, log=logging.getLogger("test-trackers"))
    follower._open_all()
    record = read_records(tmp_path)["wandb"]
    assert record["status"] == "failed" and not follower.sinks
    assert record["error"].startswith("opening it: wandb is not installed on this host")
    assert "pip install 'brightrun-cli[trackers]'" in record["error"]


@pytest.mark.parametrize("program, status, error", [
    ("import time; time.sleep(60)", "incomplete", "still sending after 1 s when the trainer exited"),
    ("import sys; sys.exit(3)", "failed", "the trackers process exited with code 3 (see launcher.log)"),
])
def test_the_trainer_ends_a_trackers_process_that_hangs_or_died_and_says_so(tmp_path, monkeypatch, program, status, error):
    spec = load_spec(write_run_dir(tmp_path, report_to=["tensorboard", "mlflow"]))
    monkeypatch.setattr("brightrun_cli.trainer.trackers.DEFAULT_FINISH_TIMEOUT_S", 1.0)
    handle = TrackerProcess(spec, setup_logging(tmp_path, 0, True))
    handle._process = subprocess.Popen([sys.executable, "-c", program], stdin=subprocess.PIPE)
    write_records(tmp_path, {"tensorboard": {"status": "done", "error": None}, "mlflow": {"status": "running", "error": None}})
    started = time.monotonic()
    handle.finish("completed")
    assert time.monotonic() - started < 10 and handle._process.returncode is not None
    records = read_records(tmp_path)
    assert records["tensorboard"]["status"] == "done"
    assert records["mlflow"]["status"] == status and records["mlflow"]["error"].startswith(error)
    warnings = [line for line in (tmp_path / "trainer.log").read_text().splitlines() if " WARNING " in line]
    assert len(warnings) == 1 and "tracker mlflow" in warnings[0]


def test_an_earlier_attempts_result_is_not_taken_for_this_ones(tmp_path):
    spec = load_spec(write_run_dir(tmp_path, report_to=["tensorboard"]))
    (tmp_path / "result.json").write_text(json.dumps({"status": "stopped", "steps": 3}))
    follower = Follower(spec, 0, since=(tmp_path / "result.json").stat().st_mtime + 1, log=logging.getLogger("t"))
    assert follower._result() == {"status": "failed", "error": "the trainer ended without writing result.json (killed?)"}


def test_new_lines_are_read_whole_and_a_line_being_written_waits(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\nnot json\n{"step": 2}\n{"step": 3, "tr')
    lines, offset = read_new_lines(path, 0)
    assert lines == [{"step": 1}, {"step": 2}] and offset == len('{"step": 1}\nnot json\n{"step": 2}\n')
    with open(path, "a") as handle:
        handle.write('aining_loss": 1.5}\n')
    assert read_new_lines(path, offset) == ([{"step": 3, "training_loss": 1.5}], path.stat().st_size)
    assert read_new_lines(tmp_path / "missing.jsonl", 0) == ([], 0)


# ---------------------------------------------------------------- export of a past run

def past_run(points: int = 30) -> tuple[dict, list[dict]]:
    """A completed job as the registry holds it: 3 epochs of `points // 3` steps."""
    run = {"id": "01jexport", "base_model": "builtin:tiny", "status": "completed",
           "hyperparameters": {"learning_rate": 2e-4, "lora_rank": 16, "target_modules": ["q_proj", "v_proj"]},
           "gpu_config": {"type": "A100-80GB", "count": 2}, "queued_at": "2026-11-30T10:00:00Z",
           "started_at": "2026-11-30T10:00:05Z", "completed_at": "2026-11-30T10:20:00Z",
           "final_cost": 2.5, "estimated_total_cost": 2.0}
    rows = [{"step": 0, "split": "validation", "epoch": 0.0, "validation_loss": 4.0, "timestamp": "2026-11-30 10:00:06"}]
    per_epoch = points // 3
    for step in range(1, points + 1):
        rows.append({"step": step, "split": "train", "epoch": step / per_epoch, "training_loss": 4.0 - step * 0.1,
                     "learning_rate": 2e-4, "gradient_norm": 1.0, "throughput": 5000.0,
                     "timestamp": f"2026-11-30 10:{step // 60 + 1:02d}:{step % 60:02d}"})
        if step % per_epoch == 0:
            rows.append({"step": step, "split": "validation", "epoch": step / per_epoch, "validation_loss": 3.0 - step * 0.05,
                         "timestamp": f"2026-11-30 10:{step // 60 + 1:02d}:{step % 60:02d}.500000"})
    return run, rows[::-1]  # any order: export sorts


QUALITY = {"overall_score": 4, "convergence_quality": "good", "base_validation_loss": 4.0, "final_validation_loss": 1.5,
           "validation_loss_improvement": 0.625, "score_reason": "validation loss 62.5% lower"}


def test_export_to_tensorboard_reads_back_every_point_with_tensorboards_own_reader(tmp_path):
    run, rows = past_run()
    done = export_run("tensorboard", run, rows, quality=QUALITY, eval_summary={"tuned": {"exact_match": 0.4}},
                      adapter_dir=tmp_path, directory=tmp_path / "tb")
    assert done.tracker == "tensorboard" and done.where == str(tmp_path / "tb") and done.points == len(rows)
    assert done.artifact is None  # TensorBoard keeps no files
    scalars = tensorboard_scalars(tmp_path / "tb")
    assert [step for step, _ in scalars["train/loss"]] == list(range(1, 31))
    assert scalars["train/loss"][0][1] == pytest.approx(3.9) and scalars["train/tokens_per_sec"][-1][1] == 5000.0
    assert scalars["validation/loss"] == [(0, 4.0), (10, pytest.approx(2.5)), (20, pytest.approx(2.0)), (30, pytest.approx(1.5))]
    assert scalars["quality/overall_score"] == [(30, 4.0)] and scalars["eval/tuned/exact_match"] == [(30, pytest.approx(0.4))]
    assert scalars["cost/usd"] == [(30, 2.5)]
    assert tensorboard_plugin_tags(tmp_path / "tb", "hparams") == ["_hparams_/session_start_info"]
    texts = tensorboard_texts(tmp_path / "tb")
    assert texts["quality/score_reason"] == "validation loss 62.5% lower" and texts["run/status"] == "completed"


def test_export_refuses_what_it_cannot_do_with_one_clear_error(tmp_path, monkeypatch):
    run, rows = past_run()
    with pytest.raises(UsageError, match="cannot export to 'wandb'"):
        export_run("wandb", run, rows, directory=tmp_path)
    with pytest.raises(UsageError, match="unknown setting 'uri'"):
        export_run("mlflow", run, rows, settings={"uri": "x"}, directory=tmp_path)
    with pytest.raises(UsageError, match="needs a directory"):
        export_run("tensorboard", run, rows)
    monkeypatch.setitem(sys.modules, "mlflow", None)
    with pytest.raises(UsageError) as missing:
        export_run("mlflow", run, rows, directory=tmp_path)
    assert "mlflow-skinny is not installed" in missing.value.message and "brightrun-cli[trackers]" in missing.value.hint


def test_export_to_an_unusable_mlflow_uri_is_an_operation_error(tmp_path):
    run, rows = past_run()
    with pytest.raises(OperationError, match="export of job 01jexport to mlflow failed"):
        export_run("mlflow", run, rows, settings={"tracking_uri": "nosuchscheme://host/path"}, directory=tmp_path)
