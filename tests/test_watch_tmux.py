"""`brightrun watch` in a real terminal (tmux): what a person sees while a job runs.

tmux gives watch a real pty of a known size; `capture-pane` reads back the screen as a
person would see it. Needs the tmux binary (scripts/system-deps.sh installs it).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from brightrun_cli.workspace import Workspace
from watch_sim import REPO, make_job

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux not installed (scripts/system-deps.sh installs it)"),
]


class Pane:
    """A detached tmux session on its own server socket, running one command."""

    def __init__(self, command: list[str], workdir: Path, *, width: int = 100, height: int = 34, env: dict[str, str] | None = None):
        self.socket = f"brightrun-test-{uuid.uuid4().hex[:8]}"
        environment = {**os.environ, "PYTHONPATH": str(REPO / "src"), "TERM": "xterm-256color", **(env or {})}
        # A clean environment: the test's COLUMNS/LINES would override the pane's real size.
        keep = ("BRIGHTRUN_HOME", "PYTHONPATH", "NO_COLOR", "TERM", "HF_HUB_OFFLINE", "PATH", "HOME", "LANG", "LC_ALL")
        env_args = [f"{k}={v}" for k, v in environment.items() if k in keep]
        self._status = workdir / f"{self.socket}.status"
        # The shell records the exit status in a file (tmux's own pane_dead_status can lag);
        # `trap : INT` keeps it alive through Ctrl-C without making its child ignore SIGINT.
        script = 'trap : INT; "$@"; echo $? > "$STATUS_FILE.tmp"; mv "$STATUS_FILE.tmp" "$STATUS_FILE"; sleep 600'
        self._tmux(
            "new-session", "-d", "-s", "w", "-x", str(width), "-y", str(height),
            "env", "-i", *env_args, f"STATUS_FILE={self._status}", "sh", "-c", script, "sh", *command,
        )

    def _tmux(self, *args: str) -> str:
        return subprocess.run(["tmux", "-L", self.socket, *args], check=True, capture_output=True, text=True).stdout

    def screen(self) -> str:
        return self._tmux("capture-pane", "-p", "-t", "w")

    def exit_status(self) -> int | None:
        return int(self._status.read_text()) if self._status.exists() else None

    def keys(self, *keys: str) -> None:
        self._tmux("send-keys", "-t", "w", *keys)

    def wait_for(self, predicate, timeout: float = 90.0, what: str = "") -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.screen()
            if predicate(text):
                return text
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}; screen:\n{self.screen()}")

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True)


@pytest.fixture
def pane_factory(tmp_path):
    panes: list[Pane] = []

    def make(command: list[str], **kwargs) -> Pane:
        panes.append(Pane(command, tmp_path, **kwargs))
        return panes[-1]

    yield make
    for pane in panes:
        pane.close()


def brightrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "brightrun_cli", *args]


def start_sim(job_id: str, *, steps: int, interval: float, end: str = "completed") -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO / "tests")])}
    return subprocess.Popen([sys.executable, str(REPO / "tests" / "watch_sim.py"), job_id, "--steps", str(steps), "--interval", str(interval), "--end", end], env=env)


def steps_seen(text: str) -> set[int]:
    return {int(m) for m in re.findall(r"step (\d+)/30", text)}


def test_dashboard_shows_progress_moving_loss_and_final_status(pane_factory):
    ws = Workspace.open()
    job_id = make_job(ws)
    pane = pane_factory(brightrun("watch", job_id[:12]))
    pane.wait_for(lambda s: "◌ queued" in s, what="the queued job")
    sim = start_sim(job_id, steps=30, interval=0.3)
    try:
        seen: set[int] = set()
        first = pane.wait_for(lambda s: "● running" in s and steps_seen(s) - {0}, what="a running step")
        seen |= steps_seen(first)
        later = pane.wait_for(lambda s: steps_seen(s) and max(steps_seen(s)) > max(seen), what="the progress to move")
        assert re.search(r"train loss +\d\.\d{4}", later), later
        assert re.search(r"val loss +\d\.\d{4}", later) and re.search(r"[\u2801-\u28ff]", later)
        assert re.search(r"━", later) and "ETA" in later
        final = pane.wait_for(lambda s: pane.exit_status() is not None, what="watch to exit")
    finally:
        sim.wait(timeout=120)
    assert pane.exit_status() == 0
    assert "✔ completed" in final and "step 30/30" in final and "100%" in final
    assert all(len(line) <= 100 for line in final.splitlines())


def test_ctrl_c_leaves_watch_but_not_the_job(pane_factory):
    ws = Workspace.open()
    job_id = make_job(ws)
    pane = pane_factory(brightrun("watch", job_id), width=80, height=30)
    pane.wait_for(lambda s: "◌ queued" in s, what="the queued job")
    sim = start_sim(job_id, steps=30, interval=0.2)
    try:
        screen = pane.wait_for(lambda s: "● running" in s, what="the job to run")
        assert all(len(line) <= 80 for line in screen.splitlines())
        pane.keys("C-c")
        text = pane.wait_for(lambda s: pane.exit_status() is not None, timeout=20, what="watch to leave")
        assert pane.exit_status() == 130
        assert f"left watch; job {job_id} keeps running" in text.replace("\n", "")
    finally:
        assert sim.wait(timeout=120) == 0
    from brightrun_cli.services.jobs import get_job

    assert get_job(ws, job_id).status == "completed"


def test_all_jobs_view_follows_the_job_picked_by_number(pane_factory):
    ws = Workspace.open()
    job_id = make_job(ws, dataset="picked-one")
    pane = pane_factory(brightrun("watch"), width=80, height=30)
    pane.wait_for(lambda s: "picked-one" in s and "press 1-9" in s, what="the jobs table")
    sim = start_sim(job_id, steps=30, interval=0.1, end="failed")
    try:
        pane.keys("1")
        text = pane.wait_for(lambda s: pane.exit_status() is not None, what="the followed job to end")
    finally:
        sim.wait(timeout=120)
    assert pane.exit_status() == 3
    assert "✘ failed" in text and "CUDA out of memory" in text


@pytest.mark.parametrize(("no_color", "coloured"), [("1", False), ("", True)])
def test_no_color_is_respected(pane_factory, no_color, coloured):
    ws = Workspace.open()
    job_id = make_job(ws)
    pane = pane_factory(brightrun("watch", job_id), env={"NO_COLOR": no_color})
    pane.wait_for(lambda s: "◌ queued" in s, what="the dashboard")
    screen = pane._tmux("capture-pane", "-p", "-e", "-t", "w")
    assert bool(re.search(r"\x1b\[[0-9;]*(3[0-7]|38;[0-9;]+)m", screen)) == coloured
    pane.keys("C-c")


def test_watch_follows_a_real_cpu_training_job(pane_factory, brightrun_home):
    """`train --detach` on the built-in base, then watch: what a person sees of a real run."""
    from brightrun_cli.services.dataset_add import add_dataset
    from conftest import run_brightrun
    from jobs_helpers import conversations

    ws = Workspace.open()
    add_dataset(ws, str(conversations(brightrun_home / "chat.jsonl", 12)), name="chat", base_model="builtin:tiny")
    fast = ("--preset", "tiny", "--set", "batch_size=1", "--set", "num_epochs=1", "--set", "max_seq_length=64", "--set", "packing=false")
    submitted = run_brightrun("train", "--dataset", "chat", *fast, "--detach", "--json")
    assert submitted.returncode == 0, submitted.stderr
    job_id = json.loads(submitted.stdout)["id"]
    pane = pane_factory(brightrun("watch", job_id))
    seen: set[int] = set()

    def ended(screen: str) -> bool:
        seen.update(int(s) for s in re.findall(r"step (\d+)/\d+", screen))
        return pane.exit_status() is not None

    final = pane.wait_for(ended, timeout=400, what="the job to end")
    assert pane.exit_status() == 0, final
    assert len(seen) >= 2, f"progress never seen moving (steps {seen})"
    assert "✔ completed" in final and "100%" in final
    assert re.search(r"train loss +\d\.\d{4}", final) and re.search(r"val loss +\d\.\d{4}", final)
    assert re.search(r"[\u2801-\u28ff]", final), "loss curve drawn"
