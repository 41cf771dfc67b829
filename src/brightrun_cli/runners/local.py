"""The local runner: the trainer (or `accelerate launch` of it) as a child process group on this machine.

The trainer writes straight into the run directory, so `sync`/`collect` have nothing
to do. The launcher gets its own session (and so its own process group, pgid = pid):
stopping TERMs the whole group (accelerate and every trainer process), waits out the
grace period, then KILLs what is left. A handle is `local:<pid>:<start time>`, so a
process that merely reuses the pid is never signalled.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import time
from typing import TYPE_CHECKING

from brightrun_cli.runners.base import LaunchRequest, Runner

if TYPE_CHECKING:
    from brightrun_cli.workspace import Workspace

LAUNCHER_LOG = "launcher.log"


class LocalRunner(Runner):
    def __init__(self, ws: "Workspace | None" = None):
        self.ws = ws
        self._procs: dict[str, subprocess.Popen] = {}
        self._commands: dict[tuple[str, int], tuple[list[str], dict[str, str]]] = {}

    def _command(self, request: LaunchRequest) -> tuple[list[str], dict[str, str]]:
        from brightrun_cli.runners.accelerate import trainer_command

        key = (request.job_id, request.num_processes)
        if key not in self._commands:  # one argv per request: what is logged is what runs
            # Several local processes rendezvous on a port; a fixed default would collide between jobs.
            port = _free_port() if request.num_processes > 1 else None
            config = str(request.run_dir / request.accelerate_config) if request.accelerate_config else None
            self._commands[key] = trainer_command(str(request.spec_path), num_processes=request.num_processes, main_process_port=port,
                                                  config_file=config, distributed_type=request.distributed_type)
        return self._commands[key]

    def launch_argv(self, request: LaunchRequest) -> list[str]:
        return list(self._command(request)[0])

    def start(self, request: LaunchRequest) -> str:
        argv, env = self._command(request)
        fd = os.open(request.run_dir / LAUNCHER_LOG, os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o600)
        try:
            os.write(fd, f"$ {shlex.join(argv)}\n".encode())
            proc = subprocess.Popen(argv, cwd=request.run_dir, stdin=subprocess.DEVNULL, stdout=fd, stderr=fd,
                                    env={**os.environ, **env, **request.env}, start_new_session=True, close_fds=True)
        finally:
            os.close(fd)
        handle = f"local:{proc.pid}:{_start_time(proc.pid) or 0:.2f}"
        self._procs[handle] = proc
        return handle

    def poll(self, handle: str) -> int | None:
        proc = self._procs.get(handle)
        if proc is not None:
            return proc.poll()
        # Not our child (another brightrun process asks): alive or not is all we can know.
        pid, started = _parse(handle)
        return None if _same_process(pid, started) else -1

    def stop(self, handle: str, grace_s: float = 30.0) -> None:
        pid, started = _parse(handle)
        proc = self._procs.get(handle)
        if proc is None and _start_time(pid) is not None and not _same_process(pid, started):
            return  # the leader is gone and its pid now belongs to someone else: not ours to signal
        if not _signal_group(pid, signal.SIGTERM):
            return
        deadline = time.monotonic() + max(0.0, grace_s)
        while time.monotonic() < deadline:
            if proc is not None:
                proc.poll()  # reap the leader, or the group never looks empty
            if not _group_exists(pid):
                return
            time.sleep(0.1)
        _signal_group(pid, signal.SIGKILL)
        for _ in range(50):
            if proc is not None:
                proc.poll()
            if not _group_exists(pid):
                return
            time.sleep(0.1)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _parse(handle: str) -> tuple[int, float]:
    kind, pid, started = handle.split(":")
    if kind != "local":
        raise ValueError(f"not a local runner handle: {handle!r}")
    return int(pid), float(started)


def _start_time(pid: int) -> float | None:
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def _same_process(pid: int, started: float) -> bool:
    current = _start_time(pid)
    return current is not None and abs(current - started) < 0.05


def _group_exists(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _signal_group(pgid: int, sig: int) -> bool:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    return True
