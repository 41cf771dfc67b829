"""Experiment trackers vs none: does sending every metric point to trackers slow the trainer?

    PYTHONPATH=src .venv/bin/python bench/bench_trackers.py                      # CPU, ~4 min on 2 cores
    PYTHONPATH=src .venv/bin/python bench/bench_trackers.py --rounds 5 --trackers tensorboard,mlflow,wandb

Each round trains builtin:tiny twice as the supervisor runs it (`python -m
brightrun_cli.trainer spec.json`, a process of its own), once without trackers and once
with `report_to` (every step logged), in alternating order so that a shared machine's
changing load falls on both alike. Per run, from metrics.jsonl's flushed line times:
start-up (launch -> first metric point), the median optimizer step (the time between
consecutive train points with no validation between them), and the end (result.json
written -> process exit: the time the trainer gives its trackers to finish, adapter
artifact included). W&B runs offline, its files under the bench's temporary directory.

On a shared machine the step times swing with other people's load; the CPU the trackers
process uses does not: it is sampled (psutil, every 0.1 s) and split into before the
first optimizer step (imports and opening the trackers, overlapping the trainer's setup)
and, per second, over the second half of training (steady state: what competes with
the steps once the trackers are open).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples" / "support_conversations.jsonl"


def write_run(run_dir: Path, report_to: list[str], epochs: int) -> Path:
    lines = EXAMPLES.read_text().splitlines()
    run_dir.mkdir(parents=True)
    (run_dir / "train.jsonl").write_text("\n".join(lines[:48]) + "\n")
    (run_dir / "validation.jsonl").write_text("\n".join(lines[-16:]) + "\n")
    spec = {
        "version": 1, "job_id": run_dir.name, "base_model": "builtin:tiny", "train_file": "train.jsonl",
        "validation_file": "validation.jsonl", "seed": 3, "logging_steps": 1, "report_to": report_to,
        "hyperparameters": {"learning_rate": 3e-3, "batch_size": 8, "num_epochs": epochs, "lora_rank": 8,
                            "lora_alpha": 16, "lora_dropout": 0.0, "warmup_steps": 1, "max_seq_length": 512},
    }
    (run_dir / "spec.json").write_text(json.dumps(spec))
    return run_dir / "spec.json"


def run_once(run_dir: Path, report_to: list[str], epochs: int) -> dict:
    spec = write_run(run_dir, report_to, epochs)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")])),
           "HF_HUB_OFFLINE": "1", "WANDB_DATA_DIR": str(run_dir / "wandb-data"), "WANDB_CACHE_DIR": str(run_dir / "wandb-cache"),
           "WANDB_CONFIG_DIR": str(run_dir / "wandb-config")}
    launched = time.time()
    trainer = subprocess.Popen([sys.executable, "-m", "brightrun_cli.trainer", str(spec)], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    samples = tracker_cpu_samples(trainer)
    if trainer.wait() != 0:
        raise SystemExit(f"the trainer failed: see {run_dir / 'trainer.log'}")
    exited = time.time()
    points = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [b["time"] - a["time"] for a, b in zip(points, points[1:]) if a["split"] == b["split"] == "train"]
    train_times = [p["time"] for p in points if p["split"] == "train"]
    trackers = json.loads((run_dir / "trackers.json").read_text())["trackers"] if report_to else {}
    middle = train_times[len(train_times) // 2]

    def cpu_at(moment: float) -> float:
        return max((cpu for t, cpu in samples if t <= moment), default=0.0)

    return {
        "startup_s": points[0]["time"] - launched,
        "step_s": statistics.median(steps),
        "steps": len(train_times),
        "end_s": exited - (run_dir / "result.json").stat().st_mtime,
        "wall_s": exited - launched,
        "cpu_before_s": cpu_at(train_times[0]),
        "cpu_per_train_s": (cpu_at(train_times[-1]) - cpu_at(middle)) / (train_times[-1] - middle),
        "trackers": {name: (r["status"], r["points"]) for name, r in trackers.items()},
    }


def tracker_cpu_samples(trainer: subprocess.Popen) -> list[tuple[float, float]]:
    """(time, user+system CPU seconds so far) of the trainer's trackers process, until the trainer exits."""
    import psutil

    samples, child = [], None
    parent = psutil.Process(trainer.pid)
    while trainer.poll() is None:
        try:
            child = child or next((c for c in parent.children() if "brightrun_cli.trainer.trackers" in c.cmdline()), None)
            if child is not None:
                cpu = child.cpu_times()
                samples.append((time.time(), cpu.user + cpu.system))
        except psutil.Error:
            pass
        time.sleep(0.1)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=5, help="6 steps each")
    parser.add_argument("--trackers", default="tensorboard,mlflow")
    args = parser.parse_args()
    report_to = args.trackers.split(",")
    results: dict[str, list[dict]] = {"none": [], args.trackers: []}
    with tempfile.TemporaryDirectory(prefix="bench-trackers-") as tmp:
        for i in range(args.rounds):
            order = [("none", []), (args.trackers, report_to)]
            for label, names in order if i % 2 == 0 else order[::-1]:
                result = run_once(Path(tmp) / f"{label.replace(',', '+')}-{i}", names, args.epochs)
                results[label].append(result)
                cpu = (f"  trackers CPU {result['cpu_before_s']:.2f} s before step 1, "
                       f"{result['cpu_per_train_s']:.2%} of a core in steady state" if names else "")
                print(f"round {i + 1} {label:<24} start-up {result['startup_s']:5.2f} s  step {result['step_s']:.3f} s  "
                      f"end {result['end_s']:5.2f} s  wall {result['wall_s']:6.2f} s{cpu}", flush=True)
    print(f"\nmedians over {args.rounds} rounds ({results['none'][0]['steps']} steps per run, load {os.getloadavg()[0]:.1f}):")
    for label, runs in results.items():
        med = {key: statistics.median(r[key] for r in runs) for key in ("startup_s", "step_s", "end_s", "wall_s")}
        print(f"  {label:<24} start-up {med['startup_s']:5.2f} s  step {med['step_s']:.3f} s  end {med['end_s']:5.2f} s  "
              f"wall {med['wall_s']:6.2f} s")
    runs = results[args.trackers]
    print(f"  trackers process CPU: {statistics.median(r['cpu_before_s'] for r in runs):.2f} s before the first step, "
          f"{statistics.median(r['cpu_per_train_s'] for r in runs):.2%} of one core in steady state; "
          f"every run's trackers: {[r['trackers'] for r in runs]}")


if __name__ == "__main__":
    main()
