"""`brightrun train`'s own start-up (validate, plan, spec: `train --dry-run --json`) in two
source trees, and with `--report-to tensorboard,mlflow`: did a change slow `train`?

    git archive BASE | tar -x -C /tmp/base       # the tree to compare against
    PYTHONPATH=src .venv/bin/python bench/bench_train_startup.py /tmp/base . [--runs 9]

Each run is a fresh process on one home with a ready 200-conversation dataset (builtin:tiny);
the variants alternate order run by run, so a shared machine's changing load falls on all
alike. Prints the median wall time and the median CPU time (user + system of the process:
what load on other cores does not inflate) per variant, and the load average.
"""

from __future__ import annotations

import argparse
import compileall
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("base", help="source tree to compare against (its src/ is put on PYTHONPATH)")
    parser.add_argument("after", help="source tree with the change")
    parser.add_argument("--runs", type=int, default=9)
    args = parser.parse_args()
    from jobs_helpers import conversations

    trees = {"base": Path(args.base).resolve(), "after": Path(args.after).resolve()}
    home = tempfile.mkdtemp(prefix="bench-train-")
    env = {**os.environ, "BRIGHTRUN_HOME": home, "HF_HUB_OFFLINE": "1", "NO_COLOR": "1"}
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # bytecode cached, as in any install
    data = conversations(Path(home) / "chat.jsonl", 200)
    subprocess.run([sys.executable, "-m", "brightrun_cli", "dataset", "add", str(data), "--name", "d", "--base-model", "builtin:tiny"],
                   env={**env, "PYTHONPATH": str(trees["after"] / "src")}, check=True, capture_output=True)
    for tree in trees.values():
        compileall.compile_dir(str(tree / "src" / "brightrun_cli"), quiet=1)
    variants = [("base", ()), ("after", ()), ("after", ("--report-to", "tensorboard,mlflow"))]
    walls: dict = {v: [] for v in variants}
    cpus: dict = {v: [] for v in variants}
    for run in range(args.runs):
        for variant in variants if run % 2 == 0 else variants[::-1]:
            tree, extra = variant
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            start = time.monotonic()
            subprocess.run([sys.executable, "-m", "brightrun_cli", "train", "--dataset", "d", "--preset", "tiny", *extra, "--dry-run", "--json"],
                           env={**env, "PYTHONPATH": str(trees[tree] / "src")}, check=True, capture_output=True)
            walls[variant].append(time.monotonic() - start)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpus[variant].append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs; {args.runs} runs each, alternating")
    for variant in variants:
        label = f"{variant[0]} {' '.join(variant[1])}".strip()
        print(f"{label:<40} wall median {statistics.median(walls[variant]):.3f} s   cpu median {statistics.median(cpus[variant]):.3f} s")


if __name__ == "__main__":
    main()
