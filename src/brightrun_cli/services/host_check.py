"""`brightrun hosts check`: what a host has, for every kind of host.

`local` is probed in this process, an SSH host over its connection, and a Slurm host
through its login node and one short job on a compute node (services/slurm_hosts.py).
The result is kept on the host row (`hosts.last_check`). A module of its own because
the Slurm check builds on services/hosts.py, which must not import it back.
"""

from __future__ import annotations

import sys
import time

from brightrun_cli.errors import OperationError
from brightrun_cli.registry import hosts as host_rows
from brightrun_cli.registry.rows import HostRow
from brightrun_cli.registry.timeutil import utcnow
from brightrun_cli.runners.probe import probe_local, probe_ssh
from brightrun_cli.runners.ssh import SSHConnection, SSHFailure, remote_python, remote_workdir, ship_code
from brightrun_cli.services.hosts import LOCAL, PROBED_PACKAGES, HostCheck, apply_probe, get_host, judge_probe, missing_required, sync_local
from brightrun_cli.services.slurm_hosts import check_slurm
from brightrun_cli.workspace import Workspace


def check_host(ws: Workspace, ref: str) -> HostCheck:
    """Connect and report what is there; the result is also kept on the host row."""
    host = get_host(ws, ref)
    result = HostCheck(name=host.name, kind=host.kind, workdir=host.workdir)
    if host.kind == LOCAL:
        _check_local(result)
        sync_local(ws, host, result.gpus, result.problems)
    elif host.kind == "slurm":
        check_slurm(ws, host, result)
    else:
        _check_ssh(ws, host, result)
    result.ok = not result.problems
    with ws.registry.write() as tx:
        host_rows.update(tx, host.id, last_check=result.to_json(), last_checked_at=utcnow())
    return result


def _check_local(result: HostCheck) -> None:
    result.reachable = True
    probe = probe_local(PROBED_PACKAGES)
    apply_probe(result, probe)
    missing = missing_required(result.packages)
    if missing:
        result.problems.append(f"missing Python packages: {', '.join(missing)}; install them with: {sys.executable} -m pip install {' '.join(missing)}")
    result.trainer_importable = not missing and probe.trainer == "ok"


def _check_ssh(ws: Workspace, host: HostRow, result: HostCheck) -> None:
    conn = SSHConnection(ws, host)
    python = remote_python(host)
    result.python = python
    try:
        conn.ensure_master()
        result.reachable = True
        probe = time.monotonic()
        conn.run(conn.ssh_argv(["true"]))
        result.latency_ms = round((time.monotonic() - probe) * 1000, 1)
    except SSHFailure as exc:
        result.reachable = exc.kind != "unreachable"  # it answered, but refused us (auth, host key)
        result.problems.append(f"{exc.message}; {exc.hint}")
        return
    code_dir = ""
    try:
        code_dir = ship_code(conn)
        result.code_version = code_dir.rsplit("/", 1)[1]
    except (SSHFailure, OperationError) as exc:
        result.problems.append(f"cannot ship the trainer code to '{host.name}': {exc.message}; install rsync there")
    try:
        found = probe_ssh(conn, python, remote_workdir(host), code_dir, PROBED_PACKAGES)
    except (SSHFailure, OperationError) as exc:
        result.problems.append(f"{exc.message}; {exc.hint}")
        return
    judge_probe(result, host, python, found)
