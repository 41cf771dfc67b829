"""Start-up time of every command that reads, on a registry with 10,000 datasets, jobs,
models, cost records and notifications: what a user with a year of history waits for.

Run:  PYTHONPATH=src .venv/bin/python bench/bench_startup.py [--runs 11] [--rows 10000] [--base TREE]

Prints, for each command, the median wall and CPU time over --runs interleaved rounds, the goal
(<= 0.15 s for a read command, <= 0.1 s for `--help`), and the ratio to two baselines
measured in the same run: a bare interpreter (`python -c pass`, the floor no Python CLI
beats) and `python -c "import sqlmodel"` (what any command paid before its reads moved to
plain sqlite3). Also whether the command imported SQLAlchemy/SQLModel or an ML library
(from sys.modules at its exit: tests/test_layout.py asserts the same).

With --base TREE, an earlier source tree runs every command too, in the same interleaved
rounds, on a registry of its own filled the same way by that tree's code (its schema may
differ), and each line gains the earlier figure and the ratio:

    git archive da843f7 | tar -x -C "$(mkdir -p /tmp/base && echo /tmp/base)"
    PYTHONPATH=src .venv/bin/python bench/bench_startup.py --base /tmp/base
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
HEAVY = ("sqlalchemy", "sqlmodel", "pydantic", "torch", "transformers", "peft", "accelerate", "datasets", "fsspec")
TABLES = ("datasets", "training_jobs", "model_artifacts", "cost_records", "notifications")


def env_for(home: Path, tree: Path = REPO) -> dict[str, str]:
    """The child environment. Bytecode is compiled first and may be cached, as in any pip
    install: with PYTHONDONTWRITEBYTECODE set (some sandboxes do) every run would
    recompile brightrun's sources, ~70 ms that no installed user pays."""
    env = {**os.environ, "BRIGHTRUN_HOME": str(home), "PYTHONPATH": str(tree / "src"), "NO_COLOR": "1", "COLUMNS": "120"}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def compile_sources(tree: Path = REPO) -> None:
    import compileall

    compileall.compile_dir(str(tree / "src" / "brightrun_cli"), quiet=1)


# What the `brightrun` executable pip writes runs (a console-script wrapper), with this
# checkout on PYTHONPATH: `python -m brightrun_cli` would add runpy's imports (~7 ms).
CONSOLE_SCRIPT = ("import re, sys\nfrom brightrun_cli.cli.entry import main\n"
                  "sys.argv[0] = re.sub(r'(-script\\.pyw|\\.exe)?$', '', sys.argv[0])\nsys.exit(main())")


def brightrun(*args: str) -> list[str]:
    return [sys.executable, "-c", CONSOLE_SCRIPT, *args]


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall time and CPU time (user + sys) of one run of the child. On a shared machine the
    CPU time shows the work itself, the wall time also the wait for a core."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime


def medians(runs_of: list[tuple[list[str], dict[str, str]]], runs: int) -> list[tuple[float, float]]:
    """Median wall and CPU time of each (argv, env) over `runs` rounds. Each round runs every
    one once, in a fresh random order: a slow spell of a shared machine lands on all of them
    alike instead of on whichever command was being timed then."""
    import random

    times: list[list[tuple[float, float]]] = [[] for _ in runs_of]
    for _ in range(runs):
        for i in random.sample(range(len(runs_of)), len(runs_of)):
            times[i].append(timed(*runs_of[i]))
    return [(statistics.median(w for w, _ in t), statistics.median(c for _, c in t)) for t in times]


def imported(argv: list[str], env: dict[str, str]) -> set[str]:
    """Top-level packages in sys.modules when `brightrun ARGV` exits."""
    program = ("import json, sys\nsys.argv = ['brightrun', *sys.argv[1:]]\nfrom brightrun_cli.cli.entry import main\n"
               "try:\n    main()\nfinally:\n    sys.stderr.write('\\nMODULES ' + json.dumps(sorted(sys.modules)))\n")
    done = subprocess.run([sys.executable, "-c", program, *argv[3:]], env=env, capture_output=True, text=True)
    return {m.split(".")[0] for m in json.loads(done.stderr.rsplit("MODULES ", 1)[1])}


def fill_registry(home: Path, count: int, tree: Path = REPO) -> list[str]:
    """One of each row written through brightrun's own tables (tests/registry_fill.py), then
    `count - 1` copies of each in plain SQL (distinct ids, names and keys); returns the ids of
    a job, a dataset and a model. Another source tree's registry is filled by its own code,
    in a process of its own (its schema is its own)."""
    if tree != REPO:
        done = subprocess.run([sys.executable, __file__, "--fill", str(home), "--rows", str(count)],
                              env=env_for(home, tree) | {"BENCH_TESTS": str(tree / "tests")}, capture_output=True, text=True)
        if done.returncode:
            sys.exit(f"filling a registry with {tree}'s code failed:\n{done.stderr[-2000:]}")
        return json.loads(done.stdout)
    sys.path.insert(0, os.environ.get("BENCH_TESTS", str(REPO / "tests")))
    import registry_fill

    ids = registry_fill.populate(home, 1)
    conn = sqlite3.connect(home / "registry.db")
    for table in TABLES:
        columns = [r[1] for r in conn.execute(f"PRAGMA table_info({table})")]
        seed = dict(zip(columns, conn.execute(f"SELECT * FROM {table}").fetchone()))
        rows = []
        for i in range(1, count):
            row = dict(seed, id=f"{seed['id'][:16]}{i:010d}")
            for key in ("dataset_id", "job_id"):
                if row.get(key):
                    row[key] = f"{row[key][:16]}{i:010d}"
            if table == "datasets":
                row.update(name=f"dataset-{i:05d}", storage_path=f"datasets/{row['id']}/data.jsonl")
            rows.append(tuple(row[c] for c in columns))
        conn.executemany(f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})", rows)
    conn.commit()
    conn.close()
    return ids


COMMANDS = [
    (("--help",), 0.1),
    (("jobs", "list"), 0.15), (("jobs", "list", "--json"), 0.15), (("jobs", "show", "{job}"), 0.15),
    (("dataset", "list"), 0.15), (("dataset", "list", "--json"), 0.15), (("dataset", "show", "{dataset}"), 0.15),
    (("models", "list"), 0.15), (("models", "show", "{model}"), 0.15),
    (("costs",), 0.15), (("notifications",), 0.15), (("hosts", "list"), 0.15),
    (("presets", "list"), 0.15), (("presets", "show", "tiny"), 0.15), (("gpus",), 0.15),
    (("estimate", "--dataset", "{dataset}", "--preset", "tiny", "--base-model", "builtin:tiny"), 0.15),
    (("status",), 0.15), (("status", "--json"), 0.15),
]


def prepared(home: Path, rows: int, tree: Path) -> tuple[list[tuple[list[str], dict[str, str]]], dict[str, str]]:
    """Every command of COMMANDS as (argv, env) for `tree`, on a home of its own with `rows` rows."""
    compile_sources(tree)
    job, dataset, model = fill_registry(home, rows, tree)
    env = env_for(home, tree)
    listed = json.loads(subprocess.run(brightrun("jobs", "list", "--json"), env=env, capture_output=True, text=True, check=True).stdout)
    assert len(listed) == rows, len(listed)
    ids = {"job": job, "dataset": dataset, "model": model}
    return [(brightrun(*(w.format(**ids) for w in words)), env) for words, _ in COMMANDS], env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=11)
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--base", type=Path, help="an earlier source tree (with src/ and tests/) to time in the same rounds")
    parser.add_argument("--fill", type=Path, help=argparse.SUPPRESS)  # fill_registry for another tree, in its process
    args = parser.parse_args()
    if args.fill:
        print(json.dumps(fill_registry(args.fill, args.rows)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        runs_of, env = prepared(Path(tmp) / "home", args.rows, REPO)
        base_runs = prepared(Path(tmp) / "base-home", args.rows, args.base.resolve())[0] if args.base else []
        baselines = [([sys.executable, "-c", "pass"], env), ([sys.executable, "-c", "import sqlmodel"], env)]
        results = medians(baselines + runs_of + base_runs, args.runs)
        (floor, floor_cpu), (orm, orm_cpu) = results[:2]
        ours, theirs = results[2:2 + len(runs_of)], results[2 + len(runs_of):]
        print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; {args.rows:,} rows per table; "
              f"medians of {args.runs} interleaved runs (wall / cpu)" + (f"; base tree {args.base}" if args.base else ""))
        print(f"{'baseline: python -c pass':<46} {floor:.3f} s / {floor_cpu:.3f} s")
        label = 'baseline: python -c "import sqlmodel"'
        print(f"{label:<46} {orm:.3f} s / {orm_cpu:.3f} s")
        over = 0
        for i, ((words, goal), (wall, cpu)) in enumerate(zip(COMMANDS, ours)):
            argv = runs_of[i][0]
            heavy = sorted(set(HEAVY) & imported(argv, env))
            verdict = "ok" if wall <= goal else "OVER"
            over += verdict == "OVER"
            label = " ".join(w if len(w) < 26 else w[:8] + "..." for w in words)
            earlier = f"; base {theirs[i][0]:.3f} s ({theirs[i][0] / wall:.2f}x this)" if theirs else ""
            print(f"{label:<46} {wall:.3f} s / {cpu:.3f} s  goal <= {goal} s: {verdict:<4}  "
                  f"{wall / floor:4.1f}x pass, {wall / orm:4.2f}x import sqlmodel{earlier}; heavy imports: {', '.join(heavy) or 'none'}")
        print(f"{len(COMMANDS) - over} of {len(COMMANDS)} within their goal")

if __name__ == "__main__":
    main()
