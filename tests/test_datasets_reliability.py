"""`dataset add` under SIGKILL at many points and with 8 processes at once (real subprocesses)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, run_brightrun

pytestmark = pytest.mark.slow


def make_file(path: Path, conversations: int) -> Path:
    with path.open("w") as out:
        for i in range(conversations):
            turns = [{"role": "user", "content": f"question {i} " * 20}, {"role": "assistant", "content": f"answer {i} " * 40}]
            out.write(json.dumps({"conversation_id": f"c{i}", "turns": turns}) + "\n")
    return path


def start_add(path: Path, name: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    return subprocess.Popen(
        [sys.executable, "-m", "brightrun_cli", "dataset", "add", str(path), "--name", name, "--json"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def status_of(home: Path, name: str) -> str | None:
    db = home / "registry.db"
    if not db.exists():
        return None
    conn = sqlite3.connect(db, timeout=30)
    try:
        row = conn.execute("SELECT status FROM datasets WHERE name = ?", (name,)).fetchone()
    except sqlite3.OperationalError:  # the schema is not there yet
        return None
    finally:
        conn.close()
    return row[0] if row else None


def wait_until(condition, timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.005)
    return False


def check_invariants(home: Path) -> list[dict]:
    conn = sqlite3.connect(home / "registry.db", timeout=30)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()
    listed = run_brightrun("dataset", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    for row in rows:
        assert row["status"] in ("ready", "error"), "a later command repairs rows left by a killed add"
        files = home / "storage" / "datasets" / row["id"]
        if row["status"] == "ready":
            assert {p.name for p in files.iterdir()} == {"data.jsonl", "train.jsonl", "validation.jsonl"}
        else:
            assert "interrupted" in row["error_message"]
            assert not files.exists(), "an interrupted add keeps no files"
            assert not list((home / "storage" / ".tmp").glob(f"datasets+{row['id']}+*")), "nor temporary blobs"
    return rows


def test_sigkill_at_many_points_never_leaves_a_stuck_row_or_a_row_without_files(tmp_path, brightrun_home):
    path = make_file(tmp_path / "d.jsonl", 5000)  # ~3 MB: long enough to be killed mid-way
    started = time.monotonic()
    full = start_add(path, "reference")
    assert full.wait(timeout=300) == 0, full.stderr.read()
    duration = time.monotonic() - started

    # Kill when the row first appears, when validation starts, when the first blob lands, and at spread-out times.
    triggers = [
        ("uploading", lambda name: status_of(brightrun_home, name) is not None),
        ("validating", lambda name: status_of(brightrun_home, name) == "validating"),
        ("storing", lambda name: any((brightrun_home / "storage").glob(".tmp/*"))),
    ]
    triggers += [(f"t={f:.2f}", None) for f in (0.2, 0.4, 0.6, 0.75, 0.9)]
    interrupted = 0
    for index, (label, condition) in enumerate(triggers):
        name = f"killed-{index}"
        proc = start_add(path, name)
        if condition is None:
            time.sleep(duration * float(label[2:]))
        else:
            wait_until(lambda: condition(name) or proc.poll() is not None)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        rows = {r["name"]: r for r in check_invariants(brightrun_home)}
        interrupted += rows.get(name, {}).get("status") == "error"
    assert interrupted >= 3, "most kills should land mid-way"
    # An interrupted dataset can be removed and added again under its name.
    victim = next(r for r in check_invariants(brightrun_home) if r["status"] == "error")
    assert run_brightrun("dataset", "rm", victim["name"], "--yes").returncode == 0
    again = run_brightrun("dataset", "add", str(path), "--name", victim["name"], "--json", timeout=300)
    assert again.returncode == 0 and json.loads(again.stdout)["status"] == "ready"
    assert list((brightrun_home / "cache").glob("dataset-*")) == [], "repair removes the local files of killed adds"
    notes = sqlite3.connect(brightrun_home / "registry.db").execute("SELECT COUNT(*) FROM notifications WHERE type = 'dataset_error'").fetchone()[0]
    assert notes == interrupted, "each repaired row tells the user once"


def test_eight_adds_at_once_all_succeed(tmp_path, brightrun_home):
    path = make_file(tmp_path / "d.jsonl", 400)
    assert run_brightrun("dataset", "list").returncode == 0  # create the registry first, like any real user
    procs = [start_add(path, f"parallel-{i}") for i in range(8)]
    outcomes = [(p.wait(timeout=300), p.stdout.read(), p.stderr.read()) for p in procs]
    for code, _, stderr in outcomes:
        assert code == 0, stderr
        assert "locked" not in stderr
    rows = check_invariants(brightrun_home)
    assert sorted(r["name"] for r in rows) == sorted(f"parallel-{i}" for i in range(8))
    assert {r["status"] for r in rows} == {"ready"}
    assert len({r["content_sha256"] for r in rows}) == 1


def test_adds_of_one_name_at_once_exactly_one_wins(tmp_path, brightrun_home):
    path = make_file(tmp_path / "d.jsonl", 20)
    procs = [start_add(path, "same") for _ in range(4)]
    outcomes = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    assert sorted(code for code, _ in outcomes) == [0] + [2] * 3, outcomes
    assert all("already exists" in err for code, err in outcomes if code)
    assert [r["name"] for r in check_invariants(brightrun_home)] == ["same"]
