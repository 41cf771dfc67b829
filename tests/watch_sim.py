"""A job whose registry rows advance like a real run's, for watch tests and bench_watch.

Writes through the registry API what a supervisor writes (status transitions, one
metric point per step, a validation point per epoch, log lines in the run directory),
so `watch` can be exercised without training. Real training is covered by the tmux
test with `train --detach` where the jobs service exists.

Run as a script to advance a job from another process:
  python tests/watch_sim.py JOB_ID --steps 40 --interval 0.1 --end completed
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

from sqlmodel import select

from brightrun_cli.registry.tables import Dataset, Host, MetricPoint, TrainingJob
from brightrun_cli.registry.timeutil import utcnow
from brightrun_cli.workspace import Workspace

REPO = Path(__file__).resolve().parents[1]


SIM_HOST = "workstation"


def make_job(ws: Workspace, *, dataset: str = "support-v1", **fields) -> str:
    """Insert a dataset and a queued job; return the job id.

    The job sits on a host with no free slots, so the queue (kicked by every brightrun
    command) never claims it for a real supervisor; this module moves it instead, keeping
    its heartbeat fresh as a supervisor would, so it is not reaped as dead either."""
    with ws.registry.write() as s:
        ds = s.exec(select(Dataset).where(Dataset.name == dataset)).first()
        if ds is None:
            ds = Dataset(name=dataset, storage_path=f"datasets/{dataset}/data.jsonl", file_name="data.jsonl", file_size=1, status="ready")
            s.add(ds)
            s.flush()
        host = s.exec(select(Host).where(Host.name == SIM_HOST)).first()
        if host is None:
            host = Host(name=SIM_HOST, kind="ssh", ssh_host="127.0.0.1", gpus=0, gpu_type="cpu")
            s.add(host)
            s.flush()
        values = dict(
            dataset_id=ds.id, preset_id="balanced", base_model="builtin:tiny", hyperparameters={"learning_rate": 2e-4},
            gpu_config={"type": "cpu", "count": 1}, host_id=host.id, total_epochs=2, total_steps=40,
            estimated_total_cost=1.2, max_cost=5.0,
        )
        job = TrainingJob(**{**values, **fields})
        s.add(job)
        s.flush()
        job.run_dir = f"runs/{job.id}"
        return job.id


def update_job(ws: Workspace, job_id: str, **fields) -> None:
    with ws.registry.write() as s:
        job = s.get(TrainingJob, job_id)
        for key, value in fields.items():
            setattr(job, key, value)
        job.updated_at = job.heartbeat_at = utcnow()


def train_loss(step: int) -> float:
    return 2.5 * math.exp(-step / 25) + 0.6


def add_point(ws: Workspace, job_id: str, step: int, total: int, *, split: str = "train", **fields) -> None:
    """One metric point, as the supervisor ingests it, plus the job's progress fields."""
    epochs = 2
    epoch = step / total * epochs
    values = dict(job_id=job_id, step=step, split=split, epoch=epoch)
    if split == "train":
        values.update(training_loss=train_loss(step), learning_rate=2e-4 * (1 - step / (total + 1)), gradient_norm=0.8, throughput=5120.0)
    else:
        values.update(validation_loss=train_loss(step) + 0.1)
    values.update(fields)
    with ws.registry.write() as s:
        s.add(MetricPoint(**values))
        job = s.get(TrainingJob, job_id)
        job.current_step = max(job.current_step, step)
        job.current_epoch = math.ceil(epoch)  # the epoch under way, from 1 (as the supervisor records it)
        job.progress = step / total * 100
        job.current_cost = 1.2 * step / total
        job.updated_at = job.heartbeat_at = utcnow()


def log(ws: Workspace, job_id: str, line: str) -> None:
    run_dir = ws.home / "runs" / job_id
    run_dir.mkdir(parents=True, exist_ok=True)
    with (run_dir / "trainer.log").open("a") as handle:
        handle.write(line + "\n")


def advance(ws: Workspace, job_id: str, *, steps: int = 40, interval: float = 0.1, end: str = "completed") -> None:
    """queued -> initializing -> running (a point per step) -> `end`."""
    time.sleep(interval)
    update_job(ws, job_id, status="initializing", current_stage="initializing")
    log(ws, job_id, "loading base model builtin:tiny")
    time.sleep(interval)
    update_job(ws, job_id, status="running", current_stage="training", started_at=utcnow(), total_steps=steps)
    add_point(ws, job_id, 0, steps, split="validation")
    for step in range(1, steps + 1):
        time.sleep(interval)
        add_point(ws, job_id, step, steps)
        log(ws, job_id, f"step {step}/{steps} loss {train_loss(step):.4f}")
        if step == steps // 2:
            add_point(ws, job_id, step, steps, split="validation")
        if end != "completed" and step == steps // 2:
            break
    time.sleep(interval)
    done = utcnow()
    if end == "completed":
        add_point(ws, job_id, steps, steps, split="validation")
        update_job(ws, job_id, status="completed", current_stage="completed", completed_at=done, progress=100.0, final_cost=1.2)
    elif end == "failed":
        log(ws, job_id, "RuntimeError: CUDA out of memory")
        update_job(ws, job_id, status="failed", current_stage="failed", completed_at=done, error_message="trainer exited with code 1: CUDA out of memory")
    else:
        update_job(ws, job_id, status="cancelled", current_stage="cancelled", completed_at=done, final_cost=0.6)


def running_job(ws: Workspace, steps: int = 40, done: int = 10) -> str:
    """A job part-way through: running, `done` train points and a base validation point."""
    job_id = make_job(ws)
    update_job(ws, job_id, status="running", current_stage="training", started_at=utcnow() - timedelta(minutes=2), total_steps=steps)
    add_point(ws, job_id, 0, steps, split="validation")
    for step in range(1, done + 1):
        add_point(ws, job_id, step, steps)
    return job_id


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("job_id")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--interval", type=float, default=0.1)
    parser.add_argument("--end", choices=("completed", "failed", "cancelled"), default="completed")
    args = parser.parse_args()
    advance(Workspace.open(), args.job_id, steps=args.steps, interval=args.interval, end=args.end)


def popen_brightrun(*args: str, env: dict[str, str] | None = None, **kwargs) -> subprocess.Popen:
    """`python -m brightrun_cli ARGS` started in the background, text pipes for stdout/stderr."""
    full_env = {**os.environ, **(env or {})}
    full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"), full_env.get("PYTHONPATH")]))
    return subprocess.Popen(
        [sys.executable, "-m", "brightrun_cli", *args], env=full_env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs,
    )
