"""Runs the notification hook away from the command that notified (standard library only).

    python hook_runner.py HOME TIMEOUT -- ARGV...    # events: a JSON array on stdin

`services.notifications.run_hook` starts this file as a process of its own, in a new
session (start_new_session: it outlives the command, and a Ctrl-C of that command's
terminal does not reach it), writes the committed events to its stdin and returns: a
slow hook never delays a command. The runner feeds each event to the hook as today (argv
as a list, never a shell, the environment it inherited, cwd HOME), one hook at a time in
the home (a lock), killing one that runs past TIMEOUT. A hook that fails, times out or
cannot start is logged to `<home>/hook.log` and appended to `<home>/hook.failed`; the
next brightrun command takes that file and says so in one `warning:` line on stderr
(`config.take_hook_failures`), however many failures it holds.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import time
from pathlib import Path

HOOK_LOG = "hook.log"
HOOK_FAILED = "hook.failed"
HOOK_LOCK = "hook.lock"


def _stamp() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def log_hook(home: Path, line: str, *, failed: bool = False) -> None:
    """One line in hook.log; a failure also in hook.failed (for the next command's warning)."""
    for name in (HOOK_LOG, HOOK_FAILED) if failed else (HOOK_LOG,):
        try:
            fd = os.open(home / name, os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o600)
            with os.fdopen(fd, "a", encoding="utf-8") as fh:
                fh.write(f"{_stamp()} {line}\n" if name == HOOK_LOG else f"{line}\n")
        except OSError:
            pass


def run(home: Path, timeout: float, argv: list[str], events: list[dict]) -> None:
    import subprocess  # here: services/notifications imports this module in every command

    with open(home / HOOK_LOCK, "a") as lock:
        try:
            import fcntl

            fcntl.flock(lock, fcntl.LOCK_EX)  # one hook at a time: events arrive in order
        except (ImportError, OSError):
            pass
        for item in events:
            what = f"{item.get('type')} {item.get('id')}"
            try:
                done = subprocess.run(argv, input=json.dumps(item, ensure_ascii=False), text=True,
                                      capture_output=True, timeout=timeout, cwd=home)
            except subprocess.TimeoutExpired:
                log_hook(home, f"hook {shlex.join(argv)} timed out after {timeout:g}s on {what}", failed=True)
                continue
            except OSError as exc:
                log_hook(home, f"hook {shlex.join(argv)} could not start: {exc.strerror or exc}", failed=True)
                return
            if done.returncode != 0:
                tail = (done.stderr or "").strip().splitlines()[-1:] or [""]
                log_hook(home, f"hook {shlex.join(argv)} exited {done.returncode} on {what}: {tail[0][:300]}".rstrip(": "),
                         failed=True)


def main(args: list[str]) -> int:
    home, timeout, argv = Path(args[0]), float(args[1]), args[3:]
    try:
        events = json.loads(sys.stdin.read() or "[]")
    except ValueError:
        return 2
    run(home, timeout, argv, events)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
