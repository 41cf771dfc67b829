"""Notifications: rows with priority and next command, list/read, and the config.toml hook."""

from __future__ import annotations

import json
import sys
import time

import pytest

from brightrun_cli.services.notifications import list_notifications, mark_read, notify
from brightrun_cli.workspace import Workspace


def _hook(home, script: str, timeout: float = 10.0) -> None:
    hook = [sys.executable, "-c", script]
    (home / "config.toml").write_text(f"notification_hook = {json.dumps(hook)}\nnotification_hook_timeout = {timeout}\n")


def _wait_for(path, text: str = "", seconds: float = 15.0) -> str:
    """The hook runs detached: wait for it to have written `text` into `path`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if path.exists() and text in (content := path.read_text()) and content.endswith("\n"):
            return content
        time.sleep(0.05)
    raise AssertionError(f"{path} never held {text!r}")


def test_hook_gets_each_event_as_json_after_commit(brightrun_home):
    out = brightrun_home / "events.ndjson"
    _hook(brightrun_home, f"import sys; open({str(out)!r}, 'a').write(sys.stdin.read() + '\\n')")
    ws = Workspace.open()
    with ws.registry.write() as session:
        notify(session, "job_failed", "Training failed", "boom", priority="high", action_command="brightrun jobs logs x", job_id="j1")
        notify(session, "job_queued", "Training queued", "queued", priority="low")
        assert not out.exists()  # nothing announced before the commit
    _wait_for(out, "job_queued")
    events = [json.loads(line) for line in out.read_text().splitlines()]
    assert [e["type"] for e in events] == ["job_failed", "job_queued"]
    assert events[0]["priority"] == "high" and events[0]["action_command"] == "brightrun jobs logs x"
    assert events[0]["job_id"] == "j1" and events[0]["created_at"].endswith("Z") and "metadata" in events[0]


def test_rolled_back_change_announces_nothing(brightrun_home):
    out = brightrun_home / "events.ndjson"
    _hook(brightrun_home, f"import sys; open({str(out)!r}, 'a').write(sys.stdin.read())")
    ws = Workspace.open()
    with pytest.raises(RuntimeError):
        with ws.registry.write() as session:
            notify(session, "job_failed", "t", "m")
            raise RuntimeError("the change fails")
    time.sleep(1.0)  # a runner, had one been started, would have written by now
    assert not out.exists()
    assert list_notifications(ws)[0] == []


def test_failing_and_hanging_hooks_are_logged_and_never_raise(brightrun_home):
    _hook(brightrun_home, "import sys; sys.stderr.write('hook broke\\n'); sys.exit(3)")
    ws = Workspace.open()
    with ws.registry.write() as session:
        notify(session, "job_completed", "done", "m")
    log = _wait_for(brightrun_home / "hook.log", "exited 3 on job_completed")
    assert "hook broke" in log
    _hook(brightrun_home, "import time; time.sleep(30)", timeout=0.5)
    with Workspace.open().registry.write() as session:
        notify(session, "job_completed", "done", "m")
    _wait_for(brightrun_home / "hook.log", "timed out after 0.5s")
    assert list_notifications(ws)[1] == 2  # both rows committed regardless


def test_a_slow_hook_never_delays_the_command_and_its_failure_is_said_once(cli, brightrun_home):
    _hook(brightrun_home, "import time; time.sleep(10)", timeout=1)
    ws = Workspace.open()
    started = time.monotonic()
    with ws.registry.write() as session:
        notify(session, "dataset_ready", "Dataset ready", "m", dataset_id="d1")
    assert time.monotonic() - started < 0.5  # the hook runs on, detached
    assert "warning" not in cli("notifications").stderr  # still running: nothing to say yet
    _wait_for(brightrun_home / "hook.log", "timed out after 1s on dataset_ready")
    warned = cli("notifications")
    assert warned.exit_code == 0
    lines = [line for line in warned.stderr.splitlines() if "hook" in line]
    assert len(lines) == 1 and lines[0].startswith("warning: a notification hook failed since the last command")
    assert "timed out after 1s on dataset_ready" in lines[0] and str(brightrun_home / "hook.log") in lines[0]
    assert "hook" not in cli("notifications").stderr  # said once


def test_many_hook_failures_are_one_warning_line(cli, brightrun_home):
    _hook(brightrun_home, "import sys; sys.exit(4)")
    ws = Workspace.open()
    for n in range(3):
        with ws.registry.write() as session:
            notify(session, "job_completed", f"done {n}", "m")
    deadline = time.monotonic() + 15
    while (brightrun_home / "hook.log").exists() is False or (brightrun_home / "hook.log").read_text().count("exited 4") < 3:
        assert time.monotonic() < deadline, "the hook never ran three times"
        time.sleep(0.05)
    stderr = cli("notifications").stderr
    assert stderr.count("warning:") == 1 and "failed 3 times since the last command" in stderr


def test_list_newest_first_unread_and_read(cli, brightrun_home):
    ws = Workspace.open()
    for i in range(3):
        with ws.registry.write() as session:
            notify(session, "job_queued", f"t{i}", f"message {i}", action_command=f"brightrun watch j{i}")
    result = cli("notifications", "--json")
    data = json.loads(result.stdout)  # an array, like every other list
    assert result.exit_code == 0 and [n["read"] for n in data] == [False] * 3
    assert [n["message"] for n in data] == ["message 2", "message 1", "message 0"]
    assert data[0]["created_at"].endswith("Z") and data[0]["action_command"] == "brightrun watch j2"
    newest = data[0]["id"]
    assert cli("notifications", "read", newest).exit_code == 0
    data = json.loads(cli("notifications", "--unread", "--json").stdout)
    assert len(data) == 2 and newest not in [n["id"] for n in data]
    assert len(json.loads(cli("notifications", "--limit", "1", "--json").stdout)) == 1
    human = cli("notifications").stdout
    assert "brightrun watch j2" in human and "2 unread" in human
    assert cli("notifications", "read", "--all").stdout.strip() == "marked 2 notifications read"
    assert mark_read(ws, all=True) == 0


def test_read_needs_exactly_one_target(cli):
    result = cli("notifications", "read")
    assert result.exit_code == 2 and "give one notification id or --all" in result.stderr
    result = cli("notifications", "read", "zzzzzzzz")
    assert result.exit_code == 2 and "no notification matches" in result.stderr
