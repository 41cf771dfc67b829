"""SSH runner benchmark: per-command overhead (fresh connection vs multiplexed) and
metric latency from a trainer on an SSH host to a point in the local registry.

    PYTHONPATH=src .venv/bin/python bench/bench_ssh.py [--commands 30] [--no-latency]

Starts its own sshd on 127.0.0.1 (tests/sshd.py), so it measures the real ssh/rsync
path on loopback: network latency is ~0 here and on a LAN/WAN it adds per round trip.
Latency: the trainer (builtin:tiny, CPU) runs on the "remote" host; the loop below is
the supervisor's (sync every POLL_S, read new complete lines, INSERT OR IGNORE into
metrics_points), and each point's latency is (time its row is committed) minus the
trainer's own `time` stamp in the line. Same machine, so the clocks agree.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "src"))


def _time_commands(argv: list[str], n: int) -> list[float]:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, check=True, timeout=60)
        times.append(time.perf_counter() - t)
    return times


def command_overhead(ws, host, n: int) -> dict:
    from brightrun_cli.runners.ssh import SSHConnection

    conn = SSHConnection(ws, host)
    # The same options, but every command opens (and closes) its own connection.
    options = ["ControlPath=none" if o.startswith("ControlPath=") else o for o in conn.ssh_options()]
    fresh_argv = ["ssh", *options, "--", host.ssh_host, "true"]
    fresh = _time_commands(fresh_argv, n)
    conn.ensure_master()
    muxed = _time_commands(conn.ssh_argv(["true"]), n)
    return {"fresh_ms": statistics.median(fresh) * 1000, "mux_ms": statistics.median(muxed) * 1000}


def metric_latency(ws, host, root: Path, epochs: int) -> dict:
    import json

    from brightrun_cli.runners.base import LaunchRequest
    from brightrun_cli.runners.ssh import SSHRunner
    from brightrun_cli.registry.points import insert_many as insert_points
    from brightrun_cli.supervisor.ingest import MetricsTail, point_values
    from brightrun_cli.supervisor.run import POLL_S
    from sshd import make_run_dir, seed_job

    job_id = seed_job(ws)
    run_dir = make_run_dir(ws, job_id, epochs=epochs)
    runner = SSHRunner(ws, [host])
    handle = runner.start(LaunchRequest(job_id=job_id, run_dir=run_dir, spec_path=run_dir / "spec.json"))
    tail = MetricsTail(run_dir / "metrics.jsonl")
    latencies: list[float] = []
    code = None
    while code is None:
        runner.sync(handle)
        code = runner.poll(handle)
        lines = tail.read()
        if lines:
            with ws.registry.write() as session:
                insert_points(session.connection(), point_values(job_id, lines))
            now = time.time()
            latencies += [now - m.time for m in lines if m.time is not None]
        time.sleep(POLL_S)
    runner.collect(handle)
    result = json.loads((run_dir / "result.json").read_text())
    return {"points": len(latencies), "median_s": statistics.median(latencies), "p95_s": sorted(latencies)[int(0.95 * (len(latencies) - 1))],
            "max_s": max(latencies), "exit": code, "status": result["status"], "poll_s": POLL_S}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commands", type=int, default=30, help="ssh commands timed per mode")
    parser.add_argument("--epochs", type=int, default=2, help="epochs of the latency run")
    parser.add_argument("--no-latency", action="store_true", help="only the per-command overhead")
    args = parser.parse_args()

    from sshd import start_sshd, write_brightrun_config

    root = Path(tempfile.mkdtemp(prefix="bench-ssh-"))
    os.environ["BRIGHTRUN_HOME"] = str(root / "home")
    server = start_sshd(root / "sshd")
    try:
        from brightrun_cli.services.hosts import add_host
        from brightrun_cli.workspace import Workspace

        ws = Workspace.open()
        write_brightrun_config(ws.home, server)
        ws = Workspace.open()
        host = add_host(ws, "bench", server.target, python=sys.executable, workdir=str(root / "remote"))
        overhead = command_overhead(ws, host, args.commands)
        print(f"per-command ssh overhead (median of {args.commands}, loopback): fresh {overhead['fresh_ms']:.0f} ms, "
              f"multiplexed {overhead['mux_ms']:.0f} ms -> {overhead['fresh_ms'] / overhead['mux_ms']:.1f}x faster")
        if not args.no_latency:
            lat = metric_latency(ws, host, root, args.epochs)
            print(f"metric latency remote trainer -> local registry over {lat['points']} points (poll {lat['poll_s']} s): "
                  f"median {lat['median_s']:.2f} s, p95 {lat['p95_s']:.2f} s, max {lat['max_s']:.2f} s "
                  f"(goal <= 2 s: {'met' if lat['p95_s'] <= 2 else 'NOT met'}); run {lat['status']} (exit {lat['exit']})")
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
