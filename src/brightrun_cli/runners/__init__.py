"""Launching the trainer: local subprocess, over SSH, or as a Slurm job, behind one interface."""

from __future__ import annotations

from typing import TYPE_CHECKING

from brightrun_cli.errors import UsageError

if TYPE_CHECKING:
    from brightrun_cli.registry.rows import HostRow
    from brightrun_cli.runners.base import Runner
    from brightrun_cli.workspace import Workspace


def get_runner(ws: "Workspace", hosts: list["HostRow"]) -> "Runner":
    """The runner for a job's hosts: the local machine, one or more SSH hosts (multi-node), or a Slurm cluster."""
    if not hosts:
        raise UsageError("a job needs a host", "pass --host NAME")
    kinds = {h.kind for h in hosts}
    if kinds == {"local"}:
        if len(hosts) > 1:
            raise UsageError("the local host can run a job only on its own", "pass --host local, or only SSH hosts in --hosts")
        from brightrun_cli.runners.local import LocalRunner

        return LocalRunner(ws)
    if kinds == {"slurm"}:
        if len(hosts) > 1:
            raise UsageError("a Slurm job runs on one slurm host", "pass one --host; ask Slurm for more nodes instead")
        from brightrun_cli.runners.slurm import SlurmRunner

        return SlurmRunner(ws, hosts[0])
    if kinds == {"ssh"}:
        from brightrun_cli.runners.ssh import SSHRunner

        return SSHRunner(ws, hosts)
    raise UsageError(f"cannot run one job on hosts of kinds {', '.join(sorted(kinds))}", "list only SSH hosts in --hosts")
