"""Start-up time of registry commands: `brightrun --help` and `dataset list --json` over 10,000 datasets.

Run:  PYTHONPATH=src .venv/bin/python bench/bench_startup.py [--runs 15] [--datasets 10000]

Prints the median wall time of each command, the goals (0.2 s and 0.3 s), the ratio to
the framework floor measured in the same run (a bare interpreter, and one that only
imports typer, its Rich help renderer and pydantic, which typer 0.29 needs to run any
command), and the
proof that torch/transformers/peft/accelerate/datasets are never imported (from
`python -X importtime`).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers", "peft", "accelerate", "datasets")


def env_for(home: Path) -> dict[str, str]:
    """The child environment. Bytecode is compiled first and may be cached, as in any pip
    install: with PYTHONDONTWRITEBYTECODE set (some sandboxes do) every run would
    recompile brightrun's sources, ~70 ms that no installed user pays."""
    env = {**os.environ, "BRIGHTRUN_HOME": str(home), "PYTHONPATH": str(REPO / "src"), "NO_COLOR": "1"}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def compile_sources() -> None:
    import compileall

    compileall.compile_dir(str(REPO / "src" / "brightrun_cli"), quiet=1)


def brightrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "brightrun_cli", *args]


def median_wall(argv: list[str], env: dict[str, str], runs: int) -> tuple[float, float]:
    """Median wall time and median CPU time (user + sys) of the child. On a shared machine the
    CPU time shows the work itself, the wall time also the wait for a core."""
    walls, cpus = [], []
    for _ in range(runs):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        walls.append(time.perf_counter() - start)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return statistics.median(walls), statistics.median(cpus)


def imported_modules(argv: list[str], env: dict[str, str]) -> set[str]:
    result = subprocess.run([argv[0], "-X", "importtime", *argv[1:]], env=env, capture_output=True, text=True, check=True)
    names = set()
    for line in result.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            names.add(line.rsplit("|", 1)[1].strip().split(".")[0])
    return names


def fill_registry(home: Path, count: int) -> None:
    """One real `dataset add`, then `count - 1` copies of its row (distinct ids, names, keys)."""
    env = env_for(home)
    sample = home.parent / "sample.jsonl"
    sample.write_text("".join(
        json.dumps({"conversation_id": f"c{i}", "turns": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]}) + "\n"
        for i in range(20)
    ))
    subprocess.run(brightrun("dataset", "add", str(sample), "--name", "seed"), env=env, check=True, capture_output=True)
    conn = sqlite3.connect(home / "registry.db")
    columns = [r[1] for r in conn.execute("PRAGMA table_info(datasets)")]
    seed = dict(zip(columns, conn.execute("SELECT * FROM datasets").fetchone()))
    rows = []
    for i in range(1, count):
        row = dict(seed, id=f"{seed['id'][:16]}{i:010d}", name=f"dataset-{i:05d}")
        row["storage_path"] = f"datasets/{row['id']}/data.jsonl"
        rows.append(tuple(row[c] for c in columns))
    conn.executemany(f"INSERT INTO datasets ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})", rows)
    conn.commit()
    conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--datasets", type=int, default=10_000)
    args = parser.parse_args()
    compile_sources()
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        fill_registry(home, args.datasets)
        env = env_for(home)
        listed = json.loads(subprocess.run(brightrun("dataset", "list", "--json"), env=env, capture_output=True, text=True, check=True).stdout)
        assert len(listed) == args.datasets, len(listed)

        floor, floor_cpu = median_wall([sys.executable, "-c", "pass"], env, args.runs)
        framework, framework_cpu = median_wall([sys.executable, "-c", "import typer, typer.rich_utils, pydantic"], env, args.runs)
        print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; times are medians of {args.runs} runs (wall / cpu)")
        print(f"baseline: bare interpreter                          {floor:.3f} s / {floor_cpu:.3f} s")
        print(f"baseline: import typer + rich help + pydantic        {framework:.3f} s / {framework_cpu:.3f} s")
        for label, argv, goal in (
            ("brightrun --help", brightrun("--help"), 0.2),
            (f"brightrun dataset list --json ({args.datasets} datasets)", brightrun("dataset", "list", "--json"), 0.3),
        ):
            wall, cpu = median_wall(argv, env, args.runs)
            heavy = sorted(set(HEAVY) & imported_modules(argv, env))
            verdict = "ok" if wall <= goal else "OVER"
            print(
                f"{label}: {wall:.3f} s / {cpu:.3f} s (goal <= {goal} s wall: {verdict}); "
                f"{wall / framework:.2f}x the framework floor; heavy modules imported: {heavy or 'none'}"
            )

if __name__ == "__main__":
    main()
