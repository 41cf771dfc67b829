"""Estimate accuracy: estimated vs actual duration of real CPU training runs.

Run (about 8 minutes on a contended 2-core CPU):

    PYTHONPATH=src .venv/bin/python bench/bench_estimate.py

Three runs of different sizes on the built-in base model (`builtin:tiny`, preset `tiny`)
through the trainer directly (`python -m brightrun_cli.trainer spec.json`), each timed
from process start to exit. For each run it prints the estimate (1) uncalibrated (the
catalog's assumed CPU FLOP rate), (2) calibrated by one earlier run (the smallest run,
recorded in the registry as a completed job with its metrics, as the supervisor would),
and (3) the reference's formula (fixed tokens/s + fixed overheads; it has no CPU entry,
so its lowest figure, V100-32GB's 1200 tokens/s, stands in). Goal: calibrated error
<= 20% on the runs the calibration did not see.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "support_conversations.jsonl"
# (name, conversations taken from the example file, --set overrides)
# Sized so the three runs take minutes on a contended 2-core CPU: ~1x, 4x and 6x the
# tokens of the first.
RUNS = [
    ("small", 60, ["num_epochs=1"]),
    ("medium", 120, ["num_epochs=2"]),
    ("large", 200, ["num_epochs=2", "lora_rank=16", "batch_size=4"]),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-model", default="builtin:tiny")
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="bench-estimate-"))
    os.environ["BRIGHTRUN_HOME"] = str(home)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from brightrun_cli.services.dataset_add import add_dataset
    from brightrun_cli.services.datasets import split_paths
    from brightrun_cli.services.estimates import estimate_run, reference_estimate
    from brightrun_cli.services.gpus import get_gpu
    from brightrun_cli.services.presets import resolve_config
    from brightrun_cli.workspace import Workspace

    ws = Workspace.open(home)
    lines = EXAMPLE.read_text(encoding="utf-8").splitlines()
    datasets = {}
    for size in sorted({r[1] for r in RUNS}):
        source = home / f"support-{size}.jsonl"
        source.write_text("\n".join(lines[:size]) + "\n", encoding="utf-8")
        datasets[size] = add_dataset(ws, str(source), name=f"support-{size}", base_model=args.base_model)
        assert datasets[size].status == "ready", datasets[size].error_message
    plans = [(name, datasets[size], resolve_config(ws, "tiny", overrides, base_model=args.base_model)) for name, size, overrides in RUNS]
    v100 = get_gpu(ws, "V100-32GB")
    uncalibrated = {name: estimate_run(ws, ds, rc) for name, ds, rc in plans}
    reference = {name: reference_estimate(ds, rc.config, v100, 1)["estimated_duration_hours"] * 3600 for name, ds, rc in plans}

    actual, calibrated = {}, {}
    for index, (name, dataset, resolved) in enumerate(plans):
        if index == 1:  # the first run is recorded; every later estimate is calibrated by it alone
            calibrated.update({n: estimate_run(ws, ds, rc) for n, ds, rc in plans[1:]})
        actual[name] = run_trainer(ws, home / "runs" / name, dataset, resolved, split_paths(ws, dataset))
        if index == 0:
            record_job(ws, dataset, resolved, home / "runs" / name, actual[name])
    assert all(est.calibration.runs == 1 for est in calibrated.values())

    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} (shared with other work while measuring)")
    print(f"{'run':7} {'steps':>5} {'tokens':>8} {'actual s':>9} | {'uncal s':>8} {'err':>6} | {'calib s':>8} {'err':>6} | {'ref s':>7} {'err':>7}")
    errors = {"uncalibrated": [], "calibrated": [], "reference": []}
    for name, _, _ in plans:
        est, real = uncalibrated[name], actual[name]["wall_s"]
        row = f"{name:7} {est.total_steps:5d} {est.plan.computed_tokens * est.config.num_epochs:8d} {real:9.1f} | "
        row += f"{est.duration_s:8.1f} {_err(est.duration_s, real):+6.0%} | "
        errors["uncalibrated"].append(abs(_err(est.duration_s, real)))
        if name in calibrated:
            cal = calibrated[name].duration_s
            row += f"{cal:8.1f} {_err(cal, real):+6.0%} | "
            errors["calibrated"].append(abs(_err(cal, real)))
        else:
            row += f"{'(calibration run)':>15} | "
        row += f"{reference[name]:7.0f} {_err(reference[name], real):+7.0%}"
        errors["reference"].append(abs(_err(reference[name], real)))
        print(row)
    mean = {k: sum(v) / len(v) for k, v in errors.items()}
    print(f"mean |error|: calibrated {mean['calibrated']:.1%} (goal <= 20%), uncalibrated {mean['uncalibrated']:.1%}, "
          f"reference formula {mean['reference']:.0%}")
    print(f"ratio: reference error / calibrated error = {mean['reference'] / max(mean['calibrated'], 1e-9):.0f}x; "
          f"uncalibrated / calibrated = {mean['uncalibrated'] / max(mean['calibrated'], 1e-9):.1f}x")
    steps_ok = all(uncalibrated[n].total_steps == actual[n]["steps"] for n, _, _ in plans)
    print(f"estimated total steps equal the trainer's: {steps_ok}")
    return 0 if mean["calibrated"] <= 0.20 and steps_ok else 1


def _err(estimate: float, actual: float) -> float:
    return (estimate - actual) / actual


def run_trainer(ws, run_dir: Path, dataset, resolved, splits) -> dict:
    """Write a spec as the supervisor would and time the trainer from launch to exit."""
    run_dir.mkdir(parents=True)
    for split, path in zip(("train.jsonl", "validation.jsonl"), splits):
        (run_dir / split).write_bytes(Path(path).read_bytes())
    spec = {"version": 1, "job_id": run_dir.name, "base_model": resolved.config.base_model,
            "train_file": "train.jsonl", "validation_file": "validation.jsonl", "output_dir": ".", "seed": 42,
            "hyperparameters": resolved.config.hyperparameters(), "logging_steps": 1, "save_steps": 0,
            "max_steps": None, "resume": False}
    (run_dir / "spec.json").write_text(json.dumps(spec))
    started = time.time()
    proc = subprocess.run([sys.executable, "-m", "brightrun_cli.trainer", str(run_dir / "spec.json")],
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    finished = time.time()
    if proc.returncode != 0:
        raise SystemExit(f"trainer failed ({proc.returncode}): {proc.stderr[-2000:]}")
    result = json.loads((run_dir / "result.json").read_text())
    return {"wall_s": finished - started, "started": started, "finished": finished, "steps": result["steps"],
            "tokens": result["tokens"]}


def record_job(ws, dataset, resolved, run_dir: Path, measured: dict) -> None:
    """The completed-job row and train metrics the supervisor would have ingested."""
    from brightrun_cli.registry.tables import MetricPoint, TrainingJob

    def when(t: float) -> datetime:
        return datetime.fromtimestamp(t, timezone.utc)

    config = resolved.config
    with ws.registry.write() as session:
        job = TrainingJob(dataset_id=dataset.id, preset_id=resolved.preset_id, base_model=config.base_model,
                          hyperparameters=config.hyperparameters(), gpu_config={"type": "cpu", "count": 1},
                          status="completed", total_epochs=config.num_epochs, estimated_total_cost=0.0,
                          tokens_processed=measured["tokens"], started_at=when(measured["started"]),
                          completed_at=when(measured["finished"]))
        session.add(job)
        session.flush()
        for line in (run_dir / "metrics.jsonl").read_text().splitlines():
            point = json.loads(line)
            if point["split"] == "train":
                session.add(MetricPoint(job_id=job.id, epoch=point["epoch"], step=point["step"], split="train",
                                        training_loss=point["training_loss"], throughput=point["tokens_per_sec"]))


if __name__ == "__main__":
    sys.exit(main())
