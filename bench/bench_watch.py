"""Watch benchmarks (issue 6).

1. Latency, metric point committed to the registry -> visible in `brightrun watch`'s
   live dashboard on a pty (100x34), p50/p95/max over the points of a job advancing
   about 4 points/s. Goal <= 1 s. (The supervisor adds its own ingest delay on top,
   POLL_S = 0.2 s; with --real, a real `train --detach` on builtin:tiny is measured
   end to end instead: the trainer's `time` on each metrics.jsonl line -> on screen.)
2. CPU of the watch process while following that job (after start-up), as % of one
   core. Goal <= 5 %.
3. Cost of one poll on a job that already has 5,000 points: watch's incremental read
   (data_version, then only rows above the last id) against the baseline of re-reading
   the job and all its points each time, both measured here.

    PYTHONPATH=src .venv/bin/python bench/bench_watch.py [--seconds 20] [--real]
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import pty
import re
import select
import statistics
import struct
import subprocess
import sys
import tempfile
import termios
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "tests"))


class ScreenReader:
    """Runs a command on a pty of a fixed size; records when each `step N/` first appears."""

    def __init__(self, argv: list[str], env: dict[str, str], cols: int = 100, rows: int = 34):
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        self.proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True)
        os.close(slave)
        self._master = master
        self.first_seen: dict[int, float] = {}
        self.text = ""
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        pattern = re.compile(r"step (\d+)/")
        tail = ""
        while True:
            ready, _, _ = select.select([self._master], [], [], 0.5)
            if not ready:
                if self.proc.poll() is not None:
                    return
                continue
            try:
                chunk = os.read(self._master, 65536).decode("utf-8", "replace")
            except OSError:
                return
            now = time.time()
            window = tail + chunk
            for match in pattern.finditer(window):
                self.first_seen.setdefault(int(match.group(1)), now)
            tail = window[-64:]
            self.text += chunk

    def wait_for(self, predicate, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise SystemExit(f"timed out; screen so far:\n{self.text[-2000:]}")
            time.sleep(0.05)


def percentiles(values: list[float]) -> tuple[float, float, float]:
    ordered = sorted(values)
    return statistics.median(ordered), ordered[max(0, int(len(ordered) * 0.95) - 1)], ordered[-1]


def cpu_seconds(pid: int) -> float:
    import psutil

    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def follow_simulated(seconds: float) -> tuple[list[float], float]:
    """Latencies (s) and watch CPU (% of a core) for a simulated job advancing ~4 points/s."""
    from brightrun_cli.workspace import Workspace
    from watch_sim import add_point, make_job, update_job
    from brightrun_cli.registry.timeutil import utcnow

    ws = Workspace.open()
    steps = int(seconds * 4) + 10
    job_id = make_job(ws, total_steps=steps)
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "TERM": "xterm-256color"}
    env.pop("COLUMNS", None)
    screen = ScreenReader([sys.executable, "-m", "brightrun_cli", "watch", job_id], env)
    screen.wait_for(lambda: "queued" in screen.text, timeout=60)
    update_job(ws, job_id, status="running", current_stage="training", started_at=utcnow())
    committed: dict[int, float] = {}
    cpu_start, wall_start = cpu_seconds(screen.proc.pid), time.monotonic()
    step = 0
    while time.monotonic() - wall_start < seconds:
        step += 1
        add_point(ws, job_id, step, steps)
        committed[step] = time.time()
        time.sleep(0.2 + (step % 5) * 0.02)  # 0.20-0.28 s apart, off the watch's 0.25 s beat
    time.sleep(1.5)
    cpu = (cpu_seconds(screen.proc.pid) - cpu_start) / (time.monotonic() - wall_start) * 100
    update_job(ws, job_id, status="completed", current_stage="completed", completed_at=utcnow())
    screen.proc.wait(timeout=60)
    return shown_after(committed, screen.first_seen), cpu


def shown_after(written: dict[int, float], seen: dict[int, float]) -> list[float]:
    """For each step, the time until the screen showed it or a later step (a dashboard
    shows the latest state: two points within one poll show only the second)."""
    latencies = []
    for step, at in written.items():
        later = [t for s, t in seen.items() if s >= step and t >= at]
        if not later:
            raise SystemExit(f"step {step} never appeared on screen")
        latencies.append(min(later) - at)
    return latencies


def follow_real(seconds: float) -> tuple[list[float], float]:
    """End to end on a real CPU job: trainer's metrics.jsonl `time` -> on the dashboard."""
    from brightrun_cli.workspace import Workspace

    ws = Workspace.open()
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "TERM": "xterm-256color"}
    env.pop("COLUMNS", None)
    run = lambda *a: subprocess.run([sys.executable, "-m", "brightrun_cli", *a], env=env, capture_output=True, text=True, check=True)  # noqa: E731
    from jobs_helpers import conversations

    data = conversations(ws.home / "chat.jsonl", 40)
    run("dataset", "add", str(data), "--name", "bench", "--base-model", "builtin:tiny")
    # One short epoch, one conversation per step: ~36 metric lines within a minute or two.
    fast = ("--preset", "tiny", "--set", "batch_size=1", "--set", "num_epochs=1", "--set", "max_seq_length=64", "--set", "packing=false")
    out = run("train", "--dataset", "bench", *fast, "--detach", "--json").stdout
    job_id = json.loads(out)["id"]
    screen = ScreenReader([sys.executable, "-m", "brightrun_cli", "watch", job_id], env)
    screen.wait_for(lambda: "running" in screen.text, timeout=300)
    cpu_start, wall_start = cpu_seconds(screen.proc.pid), time.monotonic()
    cpu, wall = 0.0, 0.0
    while screen.proc.poll() is None:  # sample until it exits: a dead process has no CPU times
        try:
            cpu, wall = cpu_seconds(screen.proc.pid) - cpu_start, time.monotonic() - wall_start
        except Exception:
            break
        time.sleep(0.5)
    metrics = ws.home / "runs" / job_id / "metrics.jsonl"
    written = {}
    for line in metrics.read_text().splitlines():
        record = json.loads(line)
        if record.get("split", "train") == "train":
            written.setdefault(record["step"], record["time"])
    return shown_after(written, screen.first_seen), cpu / wall * 100 if wall else float("nan")


def poll_costs(points: int = 5000, polls: int = 200) -> tuple[float, float, float]:
    """Seconds per poll: incremental with nothing new, incremental with one new point, full re-read."""
    from brightrun_cli.services.watch import JobFollower
    from brightrun_cli.workspace import Workspace
    from watch_sim import add_point, running_job

    ws = Workspace.open()
    job_id = running_job(ws, steps=points + polls + 1, done=0)
    conn = ws.registry.connect()
    rows = [(job_id, f"2026-01-01 00:00:{i % 60:02d}", i / points, i, "train", 2.0, None, 1e-4, 0.8, 5000.0, None, None) for i in range(1, points + 1)]
    conn.execute("BEGIN IMMEDIATE")
    conn.executemany(
        "INSERT INTO metrics_points (job_id, timestamp, epoch, step, split, training_loss, validation_loss, learning_rate,"
        " gradient_norm, throughput, gpu_utilization, gpu_memory) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", rows)
    conn.execute("COMMIT")
    follower = JobFollower(ws, job_id)
    follower.poll()

    start = time.perf_counter()
    for _ in range(polls):
        follower.poll()
    idle = (time.perf_counter() - start) / polls

    spent = 0.0
    for i in range(polls):
        add_point(ws, job_id, points + 1 + i, points + polls + 1)
        start = time.perf_counter()
        follower.poll()
        spent += time.perf_counter() - start
    one_new = spent / polls

    # Baseline: what watch would cost re-reading everything each look (same rows, same parsing).
    from brightrun_cli.services import watch as service

    start = time.perf_counter()
    for _ in range(polls // 10):
        conn.execute(service._JOB_SELECT + " WHERE j.id = ?", (job_id,)).fetchone()
        [service._point(r) for r in conn.execute(service._NEW_POINTS, (0, job_id)).fetchall()]
    full = (time.perf_counter() - start) / (polls // 10)
    follower.close()
    conn.close()
    return idle, one_new, full


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="how long the simulated job advances")
    parser.add_argument("--real", action="store_true", help="also measure end to end on a real builtin:tiny CPU job")
    args = parser.parse_args()
    os.environ["BRIGHTRUN_HOME"] = tempfile.mkdtemp(prefix="bench-watch-")

    latencies, cpu = follow_simulated(args.seconds)
    p50, p95, worst = percentiles(latencies)
    print(f"registry -> dashboard latency over {len(latencies)} points: p50 {p50 * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms, max {worst * 1000:.0f} ms"
          f" (goal 1000 ms: max is {worst:.2f}x of it)")
    print(f"watch CPU while following (~4 points/s, live dashboard): {cpu:.1f}% of one core (goal 5%: {cpu / 5:.2f}x of it)")

    idle, one_new, full = poll_costs()
    print(f"poll cost on a 5,000-point job: nothing new {idle * 1e6:.0f} us, one new point {one_new * 1e6:.0f} us;"
          f" baseline full re-read {full * 1e6:.0f} us ({full / one_new:.0f}x the incremental poll)")

    if args.real:
        os.environ["BRIGHTRUN_HOME"] = tempfile.mkdtemp(prefix="bench-watch-real-")
        latencies, cpu = follow_real(args.seconds)
        p50, p95, worst = percentiles(latencies)
        print(f"end to end (trainer writes metrics.jsonl -> dashboard) on builtin:tiny, {len(latencies)} points:"
              f" p50 {p50 * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms, max {worst * 1000:.0f} ms (goal 1000 ms); watch CPU {cpu:.1f}% of one core")


if __name__ == "__main__":
    main()
