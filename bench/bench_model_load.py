"""A command that loads a model (`brightrun models try MODEL PROMPT`: tokenizer, base,
adapter, one greedy answer) in two source trees: did a change make loading slower or bigger?

    git archive BASE | tar -x -C /tmp/base       # the tree to compare against
    PYTHONPATH=src .venv/bin/python bench/bench_model_load.py /tmp/base . [--runs 7]

The model is the newest in `--home` (default: the README demo's registry, `.demo-home`,
which `bash scripts/demo.sh` leaves: builtin:tiny with its trained adapter). Each run is a
fresh process; the two trees alternate order run by run, so a shared machine's changing
load falls on both alike. Prints, per tree, the median wall time, CPU time (user + system)
and peak RSS of the process, and the ratio after / base of each median.
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROMPT = "Where is my order 80239?"


def run_once(tree: Path, env: dict[str, str], model: str) -> tuple[float, float, float]:
    """(wall s, cpu s, peak MiB) of one `models try` process run from `tree`."""
    start = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "brightrun_cli", "models", "try", model, PROMPT],
                            env={**env, "PYTHONPATH": str(tree / "src")}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        sys.exit(f"models try failed in {tree} ({proc.returncode}): {proc.stderr.read().decode()[-2000:]}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("base", help="source tree to compare against (its src/ is put on PYTHONPATH)")
    parser.add_argument("after", help="source tree with the change")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--home", default=str(REPO / ".demo-home"), help="registry home holding a model (default: the demo's)")
    args = parser.parse_args()
    trees = {"base": Path(args.base).resolve(), "after": Path(args.after).resolve()}
    env = {**os.environ, "BRIGHTRUN_HOME": args.home, "HF_HUB_OFFLINE": "1", "NO_COLOR": "1"}
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # bytecode cached, as in any install
    listed = subprocess.run([sys.executable, "-m", "brightrun_cli", "models", "list", "--json"], env={**env, "PYTHONPATH": str(trees["after"] / "src")},
                            capture_output=True, text=True, check=True)
    models = json.loads(listed.stdout)
    if not models:
        sys.exit(f"no model in {args.home}: run 'bash scripts/demo.sh' first, or pass --home")
    model = models[0]["id"]
    for tree in trees.values():
        compileall.compile_dir(str(tree / "src" / "brightrun_cli"), quiet=1)
    figures: dict[str, list[tuple[float, float, float]]] = {name: [] for name in trees}
    for name in trees:  # one warm-up each: page cache, bytecode
        run_once(trees[name], env, model)
    for run in range(args.runs):
        for name in (list(trees) if run % 2 == 0 else list(trees)[::-1]):
            figures[name].append(run_once(trees[name], env, model))
    print(f"models try {model}: load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs; "
          f"{args.runs} runs each, alternating")
    medians = {name: [statistics.median(f[i] for f in runs) for i in range(3)] for name, runs in figures.items()}
    for name, (wall, cpu, peak) in medians.items():
        print(f"{name:<6} wall median {wall:.3f} s   cpu median {cpu:.3f} s   peak RSS median {peak:.0f} MiB")
    ratios = [a / b for a, b in zip(medians["after"], medians["base"])]
    print(f"after / base: wall {ratios[0]:.2f}x   cpu {ratios[1]:.2f}x   peak RSS {ratios[2]:.2f}x")


if __name__ == "__main__":
    main()
