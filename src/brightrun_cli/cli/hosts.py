"""`brightrun hosts add|list|check|rm`: machines jobs run on (`local`, and SSH hosts)."""

from __future__ import annotations

from typing import Annotated

import typer

from brightrun_cli.cli import common

hosts_app = typer.Typer(help="Compute hosts: this machine ('local') and GPU machines reachable over SSH.", no_args_is_help=True)

HostArg = Annotated[str, typer.Argument(help="Host name (or id prefix).", show_default=False)]


def _ssh_target(h) -> str:
    if h.kind != "ssh":
        return "-"
    user = f"{h.ssh_user}@" if h.ssh_user else ""
    address = f"[{h.ssh_host}]" if ":" in (h.ssh_host or "") else h.ssh_host
    return f"{user}{address}" + (f":{h.ssh_port}" if h.ssh_port else "")


@hosts_app.command("add")
def add_command(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Name to refer to the host by (letters, digits, . _ -).", show_default=False)],
    ssh: Annotated[str, typer.Option("--ssh", help="user@host[:port] (an ~/.ssh/config alias works as host).", show_default=False)],
    identity: Annotated[str | None, typer.Option("--identity", help="Private key file for ssh -i (only its path is stored).")] = None,
    gpus: Annotated[int | None, typer.Option("--gpus", help="GPUs on the host: the queue's slots. [default: 1]")] = None,
    gpu_type: Annotated[str | None, typer.Option("--gpu-type", help="GPU type from 'brightrun gpus' (for estimates and costs). [default: cpu]")] = None,
    python: Annotated[str | None, typer.Option("--python", help="Python on the host (absolute, ~/path or a command name). [default: python3]")] = None,
    workdir: Annotated[str | None, typer.Option("--workdir", help="Directory on the host for code and runs. [default: ~/brightrun]")] = None,
    accept_new_host_key: Annotated[
        bool, typer.Option("--accept-new-host-key", help="Trust the host's key on first contact (StrictHostKeyChecking=accept-new). A changed key is still refused.")
    ] = False,
    no_check: Annotated[bool, typer.Option("--no-check", help="Store the host without logging in to it first.")] = False,
) -> None:
    """Add an SSH host (logs in once to prove it works; nothing is stored if that fails).

    Examples:
      brightrun hosts add gpu1 --ssh alice@gpu1.example:22 --gpus 8 --gpu-type H100
      brightrun hosts add box --ssh bob@10.0.0.7 --identity ~/.ssh/id_ed25519 --python /opt/venv/bin/python
    """
    from brightrun_cli.services.hosts import add_host

    host = add_host(
        common.workspace(ctx), name, ssh, identity=identity, gpus=gpus, gpu_type=gpu_type, python=python,
        workdir=workdir, accept_new_host_key=accept_new_host_key, connect=not no_check,
    )
    common.console().print(f"added host {host.name} ({_ssh_target(host)}); run 'brightrun hosts check {host.name}' to see what is installed there")


@hosts_app.command("list")
def list_command(ctx: typer.Context, json_output: common.JsonOpt = False) -> None:
    """List hosts ('local' is always there).

    Examples:
      brightrun hosts list
      brightrun hosts list --json
    """
    from brightrun_cli.services.hosts import list_hosts

    rows = list_hosts(common.workspace(ctx))
    if json_output:
        common.print_json(rows)
        return
    from rich.table import Table

    table = Table("NAME", "SSH", "GPUS", "GPU TYPE", "PYTHON", "WORKDIR", "LAST CHECK", box=None)
    for h in rows:
        last = "-"
        if h.last_check is not None and h.last_checked_at is not None:
            problems = len(h.last_check.get("problems") or [])
            last = f"{'ok' if not problems else f'{problems} problem(s)'} {h.last_checked_at:%Y-%m-%d %H:%M}"
        table.add_row(h.name, _ssh_target(h), str(h.gpus), h.gpu_type, h.python or "-", h.workdir or "-", last)
    common.console().print(table)


@hosts_app.command("check")
def check_command(ctx: typer.Context, host: HostArg, json_output: common.JsonOpt = False) -> None:
    """Connect and report python, packages, trainer, GPUs and free disk; one line per problem. Exit 1 if any.

    Examples:
      brightrun hosts check gpu1
      brightrun hosts check gpu1 --json
    """
    from brightrun_cli.services.hosts import OPTIONAL_PACKAGES, check_host

    result = check_host(common.workspace(ctx), host)
    if json_output:
        common.print_json(result.to_json())
    else:
        out = common.console()
        out.print(f"host {result.name}: {'ok' if result.ok else 'NOT READY'}")
        if result.kind == "local" or result.latency_ms is not None:  # logged in and looked around
            if result.kind == "local":
                out.print("  connection   this machine")
            else:
                out.print("  ssh          reachable" + (f", {result.latency_ms:.0f} ms per command" if result.latency_ms is not None else ""))
            out.print(f"  python       {result.python or '-'} {result.python_version or ''}".rstrip())
            for name, version in result.packages.items():
                absent = "not installed (optional: quantization)" if name in OPTIONAL_PACKAGES else "MISSING"
                out.print(f"  {name:<12} {version or absent}")
            out.print(f"  trainer      {'importable' if result.trainer_importable else 'NOT importable'}" + (f" (code {result.code_version})" if result.code_version else ""))
            gpus = ", ".join(g["name"] for g in result.gpus) if result.gpus else "none (CPU)"
            out.print(f"  gpus         {gpus}")
            if result.disk_free_gb is not None:
                out.print(f"  free disk    {result.disk_free_gb:.1f} GiB" + (f" in {result.workdir}" if result.workdir else ""))
        err = common.err_console()
        for problem in result.problems:
            err.print(f"problem: {problem}", markup=False, soft_wrap=True)
    if not result.ok:
        raise typer.Exit(1)


@hosts_app.command("rm")
def rm_command(ctx: typer.Context, host: HostArg) -> None:
    """Forget an SSH host (refused for 'local' and while jobs are queued or running on it).

    Examples:
      brightrun hosts rm gpu1
    """
    from brightrun_cli.services.hosts import remove_host

    removed = remove_host(common.workspace(ctx), host)
    common.console().print(f"removed host {removed.name}")


def register(app: typer.Typer) -> None:
    """Add this group's commands to the root app."""
    app.add_typer(hosts_app, name="hosts")
