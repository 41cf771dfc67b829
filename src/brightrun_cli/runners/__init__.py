"""Launching the trainer: local subprocess or over SSH, behind one interface."""

from __future__ import annotations

from typing import TYPE_CHECKING

from brightrun_cli.errors import UsageError

if TYPE_CHECKING:
    from brightrun_cli.registry.rows import HostRow
    from brightrun_cli.runners.base import Runner
    from brightrun_cli.workspace import Workspace


def get_runner(ws: "Workspace", hosts: list["HostRow"]) -> "Runner":
    """The runner for a job's hosts: the local machine, or one or more SSH hosts (multi-node)."""
    if not hosts:
        raise UsageError("a job needs a host", "pass --host NAME")
    kinds = {h.kind for h in hosts}
    if kinds == {"local"}:
        if len(hosts) > 1:
            raise UsageError("the local host can run a job only on its own", "pass --host local, or only SSH hosts in --hosts")
        from brightrun_cli.runners.local import LocalRunner

        return LocalRunner(ws)
    if kinds == {"ssh"}:
        from brightrun_cli.runners.ssh import SSHRunner

        return SSHRunner(ws, hosts)
    raise UsageError(f"cannot run one job on hosts of kinds {', '.join(sorted(kinds))}", "list only SSH hosts in --hosts")
