"""Waiting in slow tests: for a condition, for a runner's job to end or to write metrics.
Every wait has a deadline and says what it waited for when it runs out."""

from __future__ import annotations

import time
from pathlib import Path


def wait_for(what: str, predicate, timeout: float = 240.0, every: float = 0.3):
    """The first truthy value of `predicate()`, asked every `every` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def follow(runner, handle: str, timeout: float = 300, every: float = 0.5) -> int:
    """Sync a runner's job until it ends; its exit code."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runner.sync(handle)
        code = runner.poll(handle)
        if code is not None:
            return code
        time.sleep(every)
    raise AssertionError(f"the job {handle} did not end within {timeout} s")


def wait_lines(runner, handle: str, path: Path, n: int, timeout: float = 300, every: float = 0.5) -> None:
    """Sync a runner's job until `path` (synced home) has `n` lines; the job must keep running."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runner.sync(handle)
        if path.exists() and len(path.read_bytes().splitlines()) >= n:
            return
        assert runner.poll(handle) is None, "the job ended before it was interrupted"
        time.sleep(every)
    raise AssertionError(f"fewer than {n} lines in {path.name} after {timeout} s")
