"""Jobs benchmarks (issue 5).

1. Metric ingestion: points/s that the supervisor's path (MetricsTail -> point_values ->
   Core INSERT OR IGNORE in batches, one transaction per read, WAL checkpoints in a
   background thread) puts into the registry while another process polls it like `watch`
   does; also all runs back to back until the last checkpoint is done. Baseline in the same run: the
   same points through the ORM (session.add per row). Goal >= 100,000 points/s.
2. Submit -> first metric point: `brightrun train --detach` on builtin:tiny (CPU) until
   the first row is in metrics_points. Baselines in the same run, each until its first
   metrics.jsonl line with no brightrun around it: the bare trainer command brightrun
   launches for one process (`python -m brightrun_cli.trainer`), and the same trainer
   under `accelerate launch` (what brightrun launched before). Goal <= 8 s.
   With `--report-to tensorboard,mlflow`, each repeat also submits the same job with
   that flag (the two in alternating order, so a shared machine's changing load falls on
   both alike): the trackers process starts beside the trainer's setup, and must not
   delay the first point.

    PYTHONPATH=src .venv/bin/python bench/bench_jobs.py [--points 200000] [--ingest-repeats 7] [--repeats 3] [--skip-submit]
    PYTHONPATH=src .venv/bin/python bench/bench_jobs.py --skip-ingest --report-to tensorboard,mlflow --repeats 4
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "tests"))


def _reader(db: str, stop, counts) -> None:
    """Poll like watch: the newest points above the last seen id, every 50 ms."""
    conn = sqlite3.connect(db, timeout=30)
    last, polls = 0, 0
    while not stop.is_set():
        rows = conn.execute("SELECT id, step, training_loss FROM metrics_points WHERE id > ? ORDER BY id", (last,)).fetchall()
        if rows:
            last = rows[-1][0]
        polls += 1
        time.sleep(0.05)
    counts.put((polls, last))
    conn.close()


def _lines(n: int, job_id: str) -> list[str]:
    return [json.dumps({"time": 1764100000.0 + i * 0.01, "split": "train", "epoch": i / n, "step": i, "total_steps": n,
                        "training_loss": 2.0 - i / n, "validation_loss": None, "learning_rate": 2e-4, "grad_norm": 0.8,
                        "tokens_per_sec": 5000.0, "tokens_seen": i * 512, "gpu_utilization": None, "gpu_memory": None})
            for i in range(1, n + 1)]


def bench_ingest(points: int, repeats: int) -> tuple[float, float]:
    """Median of `repeats` catch-up ingestions of `points` lines (each into a fresh job, the
    reader polling throughout): one 2-second sample swings by 20% on a shared host."""
    from brightrun_cli.registry.points import insert_many as insert_points
    from brightrun_cli.supervisor.ingest import MetricsTail, point_values
    from brightrun_cli.workspace import Workspace
    from brightrun_cli.registry.tables import MetricPoint
    from jobs_helpers import dataset_row, job_row

    with tempfile.TemporaryDirectory() as home:
        ws = Workspace.open(home)
        data = dataset_row(ws)
        jobs = [job_row(ws, data) for _ in range(repeats)]
        orm_job = job_row(ws, data)
        files = []
        for i, job in enumerate(jobs):
            files.append(Path(home) / f"metrics-{i}.jsonl")
            files[-1].write_text("\n".join(_lines(points, job.id)) + "\n")

        stop, counts = multiprocessing.Event(), multiprocessing.Queue()
        reader = multiprocessing.Process(target=_reader, args=(str(ws.registry.path), stop, counts))
        reader.start()
        time.sleep(0.3)
        walls, cpus = [], []
        # As the supervisor ingests: WAL checkpoints in a thread of their own (each run's
        # overlaps the next run), commits without foreign-key lookups.
        all_start = time.perf_counter()
        with ws.registry.checkpoints_in_background() as checkpointer:
            for job, path in zip(jobs, files):
                start, cpu_start = time.perf_counter(), time.process_time()
                tail = MetricsTail(path)
                values = point_values(job.id, tail.read())
                with ws.registry.write(foreign_keys=False) as session:  # as Supervisor._ingest writes them
                    insert_points(session.connection(), values)
                walls.append(time.perf_counter() - start)
                cpus.append(time.process_time() - cpu_start)
        sustained = points * repeats / (time.perf_counter() - all_start)  # the last checkpoint drained too
        stop.set()
        polls, last = counts.get(timeout=30)
        reader.join()

        orm_n = min(points, 20_000)  # the baseline is slow; a sample gives its rate
        orm_lines = [json.loads(line) for line in _lines(orm_n, orm_job.id)]
        start = time.perf_counter()
        with ws.registry.write() as session:
            for m in orm_lines:
                session.add(MetricPoint(job_id=orm_job.id, timestamp=datetime.fromtimestamp(m["time"], timezone.utc), epoch=m["epoch"],
                                        step=m["step"], split=m["split"], training_loss=m["training_loss"], learning_rate=m["learning_rate"],
                                        gradient_norm=m["grad_norm"], throughput=m["tokens_per_sec"]))
        orm_s = time.perf_counter() - start
        conn = ws.registry.connect()
        for job in jobs:
            stored = conn.execute("SELECT COUNT(*) FROM metrics_points WHERE job_id = ?", (job.id,)).fetchone()[0]
            assert stored == points, (stored, points)
        conn.close()
        print("  runs in order (points/s wall):", ", ".join(f"{points / w:,.0f}" for w in walls))
        rates = sorted(points / w for w in walls)
        rate, cpu_rate = statistics.median(rates), statistics.median(points / c for c in cpus)
        print(f"ingest: {points} points x {repeats}: median {rate:,.0f} points/s wall (runs {rates[0]:,.0f}-{rates[-1]:,.0f}; "
              f"reader polled {polls}x meanwhile); median {cpu_rate:,.0f} points per CPU-second (what a free core gives)")
        print(f"  all {repeats} back to back, until the last WAL checkpoint was done: {sustained:,.0f} points/s "
              f"({checkpointer.checkpoints} checkpoints in the background)")
        print(f"baseline ORM add-per-row: {orm_n / orm_s:,.0f} points/s -> ratio {rate / (orm_n / orm_s):.1f}x")
        return rate, orm_n / orm_s


def _first_line(path: Path, timeout: float) -> float | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.stat().st_size > 0:
            return time.monotonic()
        time.sleep(0.02)
    return None


def _submit_to_first_point(env: dict, home: str, extra: tuple[str, ...]) -> tuple[str, float]:
    """`train --detach` of the tiny job (plus `extra` flags) until its first metrics_points row; cancels it."""
    start = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "brightrun_cli", "train", "--dataset", "d", "--preset", "tiny", *extra, "--detach", "--json"],
                         env=env, check=True, capture_output=True, text=True)
    job_id = json.loads(out.stdout)["id"]
    db = sqlite3.connect(Path(home) / "registry.db", timeout=30)
    first = None
    while time.monotonic() - start < 120:
        if db.execute("SELECT 1 FROM metrics_points WHERE job_id = ? LIMIT 1", (job_id,)).fetchone():
            first = time.monotonic() - start
            break
        time.sleep(0.02)
    db.close()
    subprocess.run([sys.executable, "-m", "brightrun_cli", "jobs", "cancel", job_id], env=env, capture_output=True)
    return job_id, first if first is not None else float("inf")


def bench_submit(repeats: int, report_to: str | None = None) -> None:
    from jobs_helpers import conversations

    import compileall

    # Bytecode compiled and cacheable, as in any pip install (some sandboxes set
    # PYTHONDONTWRITEBYTECODE, which would make every process recompile brightrun).
    compileall.compile_dir(str(REPO / "src" / "brightrun_cli"), quiet=1)
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    first_points, bare, launched, tracked = [], [], [], []
    for repeat in range(repeats):
        with tempfile.TemporaryDirectory() as home:
            env["BRIGHTRUN_HOME"] = home
            data = conversations(Path(home) / "chat.jsonl", 200)
            subprocess.run([sys.executable, "-m", "brightrun_cli", "dataset", "add", str(data), "--name", "d", "--base-model", "builtin:tiny"],
                           env=env, check=True, capture_output=True)
            if report_to and repeat % 2 == 0:  # alternate which of the two goes first
                tracked.append(_submit_to_first_point(env, home, ("--report-to", report_to))[1])
            job_id, first = _submit_to_first_point(env, home, ())
            first_points.append(first)
            if report_to and repeat % 2 == 1:
                tracked.append(_submit_to_first_point(env, home, ("--report-to", report_to))[1])
            # Baseline: the same launch argv straight from here, into a copy of the run dir.
            run_dir = Path(home) / "runs" / job_id
            bare_dir = Path(home) / "bare"
            bare_dir.mkdir()
            for name in ("train.jsonl", "validation.jsonl"):
                (bare_dir / name).write_bytes((run_dir / name).read_bytes())
            spec = json.loads((run_dir / "spec.json").read_text())
            (bare_dir / "spec.json").write_text(json.dumps(dict(spec, resume=False)))
            from brightrun_cli.runners.accelerate import accelerate_argv, trainer_command

            for argv, times in ((trainer_command(bare_dir / "spec.json")[0], bare), (accelerate_argv(bare_dir / "spec.json"), launched)):
                (bare_dir / "metrics.jsonl").unlink(missing_ok=True)
                start = time.monotonic()
                proc = subprocess.Popen(argv, cwd=bare_dir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                        start_new_session=True)
                seen = _first_line(bare_dir / "metrics.jsonl", 120)
                os.killpg(proc.pid, 9)
                proc.wait()
                times.append(seen - start if seen else float("inf"))
    med, base, accel = statistics.median(first_points), statistics.median(bare), statistics.median(launched)
    print(f"submit -> first metric point: median {med:.2f} s over {repeats} (runs: {', '.join(f'{x:.2f}' for x in first_points)}); goal <= 8 s")
    print(f"baseline bare trainer (python -m brightrun_cli.trainer) -> first metrics line: median {base:.2f} s "
          f"-> brightrun overhead {med - base:+.2f} s, ratio {med / base:.2f}x")
    print(f"baseline the same trainer under accelerate launch: median {accel:.2f} s -> submit is {accel / med:.2f}x faster than a bare accelerate launch")
    if tracked:
        with_trackers = statistics.median(tracked)
        print(f"with --report-to {report_to}: median {with_trackers:.2f} s (runs: {', '.join(f'{x:.2f}' for x in tracked)}) "
              f"-> {with_trackers - med:+.2f} s vs without")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--points", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=3, help="submissions timed (median)")
    parser.add_argument("--ingest-repeats", type=int, default=7, help="catch-up ingestions timed (median)")
    parser.add_argument("--skip-submit", action="store_true")
    parser.add_argument("--skip-ingest", action="store_true")
    parser.add_argument("--report-to", help="also submit with `--report-to VALUE` (alternating with the plain submit)")
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} CPUs, python {sys.version.split()[0]}, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if not args.skip_ingest:
        bench_ingest(args.points, args.ingest_repeats)
    if not args.skip_submit:
        bench_submit(args.repeats, args.report_to)
    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
