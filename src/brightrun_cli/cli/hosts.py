"""`brightrun hosts add|list|check|rm`: machines jobs run on (`local`, SSH hosts, Slurm clusters)."""

from __future__ import annotations

from typing import Annotated, Optional

from brightrun_cli.cli import common

hosts_app = common.Group(help="Compute hosts: this machine ('local'), GPU machines reachable over SSH, and Slurm clusters.", no_args_is_help=True)

HostArg = Annotated[str, common.Arg(help="Host name (or id prefix).", show_default=False)]
SLURM = "Slurm (with --slurm)"


def _login(h) -> str:
    """How brightrun reaches the host: user@address[:port] over SSH, 'local', or '-'."""
    if h.kind == "slurm" and not h.ssh_host:
        return "local"
    if h.kind not in ("ssh", "slurm"):
        return "-"
    user = f"{h.ssh_user}@" if h.ssh_user else ""
    address = f"[{h.ssh_host}]" if ":" in (h.ssh_host or "") else h.ssh_host
    return f"{user}{address}" + (f":{h.ssh_port}" if h.ssh_port else "")


@hosts_app.command("add")
def add_command(
    ctx: common.Context,
    name: Annotated[str, common.Arg(help="Name to refer to the host by (letters, digits, . _ -).", show_default=False)],
    ssh: Annotated[Optional[str], common.Opt("--ssh", help="user@host[:port] of a GPU machine (an ~/.ssh/config alias works as host).", show_default=False)] = None,
    slurm: Annotated[Optional[str], common.Opt("--slurm", help="A Slurm cluster's login node: [user@]host[:port] over SSH, or 'local' when brightrun runs on it.", show_default=False)] = None,
    identity: Annotated[Optional[str], common.Opt("--identity", help="Private key file for ssh -i (only its path is stored).", show_default=False)] = None,
    gpus: Annotated[Optional[int], common.Opt("--gpus", help="GPUs on an SSH host: the queue's slots. [default: 1]", show_default=False)] = None,
    gpu_type: Annotated[Optional[str], common.Opt("--gpu-type", help="GPU type from 'brightrun gpus' (for estimates and costs). [default: cpu]", show_default=False)] = None,
    python: Annotated[Optional[str], common.Opt("--python", help="Python on the host, or on a cluster's compute nodes (absolute, ~/path or a command name). [default: python3]", show_default=False)] = None,
    workdir: Annotated[Optional[str], common.Opt("--workdir", help="Directory on the host for code and runs; on a cluster, on the filesystem its nodes share. [default: ~/brightrun]", show_default=False)] = None,
    partition: Annotated[Optional[str], common.Opt("--partition", help="Slurm partition. [default: the cluster's default]", rich_help_panel=SLURM, show_default=False)] = None,
    account: Annotated[Optional[str], common.Opt("--account", help="Slurm account to charge.", rich_help_panel=SLURM, show_default=False)] = None,
    qos: Annotated[Optional[str], common.Opt("--qos", help="Slurm quality of service.", rich_help_panel=SLURM, show_default=False)] = None,
    time_limit: Annotated[Optional[str], common.Opt("--time", help="Time limit of each job (minutes, HH:MM:SS or D-HH:MM:SS); the trainer checkpoints some minutes before it. [default: the partition's]", rich_help_panel=SLURM, show_default=False)] = None,
    gpus_per_node: Annotated[Optional[int], common.Opt("--gpus-per-node", help="GPUs of one node (a job asks for them with --gpus-per-node; 'train --gpus' asks for fewer).", rich_help_panel=SLURM, show_default=False)] = None,
    gres: Annotated[Optional[str], common.Opt("--gres", help="Ask for GPUs with Slurm's --gres instead, e.g. gpu:a100:4.", rich_help_panel=SLURM, show_default=False)] = None,
    nodes_max: Annotated[Optional[int], common.Opt("--nodes-max", help="The most nodes one job may use ('train --nodes'). [default: 1]", rich_help_panel=SLURM, show_default=False)] = None,
    sbatch_args: Annotated[Optional[list[str]], common.Opt("--sbatch-arg", help="A further sbatch option, as one --name=value word (repeatable), e.g. --sbatch-arg=--cpus-per-task=8.", rich_help_panel=SLURM, show_default=False)] = None,
    accept_new_host_key: Annotated[
        bool, common.Opt("--accept-new-host-key", help="Trust the host's key on first contact (StrictHostKeyChecking=accept-new). A changed key is still refused.")
    ] = False,
    no_check: Annotated[bool, common.Opt("--no-check", help="Store the host without logging in to it first.")] = False,
    json_output: common.JsonOpt = False,
) -> None:
    """Add an SSH host or a Slurm cluster (logs in once to prove it works; nothing is stored if that fails).

    Examples:
      brightrun hosts add gpu1 --ssh alice@gpu1.example:22 --gpus 8 --gpu-type H100
      brightrun hosts add box --ssh bob@10.0.0.7 --identity ~/.ssh/id_ed25519 --python /opt/venv/bin/python
      brightrun hosts add hpc --slurm alice@login.hpc.example --partition gpu --account proj1 --time 12:00:00 --gpus-per-node 4 --gpu-type A100-80GB --nodes-max 4 --workdir /scratch/alice/brightrun --python /scratch/alice/venv/bin/python
      brightrun hosts add here --slurm local --partition debug --sbatch-arg=--cpus-per-task=8
    """
    from brightrun_cli.errors import UsageError

    ws = common.workspace(ctx)
    slurm_options = {"--partition": partition, "--account": account, "--qos": qos, "--time": time_limit,
                     "--gpus-per-node": gpus_per_node, "--gres": gres, "--nodes-max": nodes_max, "--sbatch-arg": sbatch_args}
    if (ssh is None) == (slurm is None):
        raise UsageError("pass one of --ssh (a machine) and --slurm (a cluster's login node)",
                         "e.g. brightrun hosts add gpu1 --ssh alice@gpu1.example, or brightrun hosts add hpc --slurm local")
    if ssh is not None:
        given = [flag for flag, value in slurm_options.items() if value]
        if given:
            raise UsageError(f"{given[0]} is for a Slurm host", "pass --slurm LOGIN instead of --ssh, or drop it")
        from brightrun_cli.services.hosts import add_host

        host = add_host(
            ws, name, ssh, identity=identity, gpus=gpus, gpu_type=gpu_type, python=python,
            workdir=workdir, accept_new_host_key=accept_new_host_key, connect=not no_check,
        )
        if json_output:
            common.print_json(host)  # as 'hosts list --json' shows it
            return
        common.console().print(f"added host {host.name} ({_login(host)}); run 'brightrun hosts check {host.name}' to see what is installed there",
                               markup=False)
        return
    if gpus is not None:
        raise UsageError("--gpus is for an SSH host", "give a Slurm host's GPUs with --gpus-per-node N (or --gres)")
    from brightrun_cli.services.hosts import add_slurm_host
    from brightrun_cli.services.slurm_hosts import new_slurm_host

    row = new_slurm_host(
        ws, name, slurm, partition=partition, account=account, qos=qos, time_limit=time_limit, gpus_per_node=gpus_per_node,
        gres=gres, gpu_type=gpu_type, nodes_max=nodes_max, workdir=workdir, python=python, sbatch_args=sbatch_args,
        identity=identity, accept_new_host_key=accept_new_host_key,
    )
    host = add_slurm_host(ws, row, connect=not no_check)
    if json_output:
        common.print_json(host)
        return
    common.console().print(f"added Slurm host {host.name} (login node {_login(host)}); run 'brightrun hosts check {host.name}' "
                           "to try Slurm, the partition and a compute node", markup=False)


@hosts_app.command("list")
def list_command(ctx: common.Context, json_output: common.JsonOpt = False) -> None:
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
    table = common.list_table("NAME", "KIND", "LOGIN", "PARTITION", "GPUS", "GPU TYPE", "PYTHON", "WORKDIR", "LAST CHECK",
                              wrap=("PYTHON", "WORKDIR", "LAST CHECK"))
    for h in rows:
        last = "-"
        if h.last_check is not None and h.last_checked_at is not None:
            problems = len(h.last_check.get("problems") or [])
            last = f"{'ok' if not problems else f'{problems} problem(s)'} {h.last_checked_at:%Y-%m-%d %H:%M}"
        partition = ((h.options or {}).get("partition") or "(default)") if h.kind == "slurm" else "-"
        gpus = f"{h.gpus}/node" if h.kind == "slurm" else str(h.gpus)
        table.add_row(h.name, h.kind, _login(h), partition, gpus, h.gpu_type, h.python or "-", h.workdir or "-", last)
    common.console().print(table)


@hosts_app.command("check")
def check_command(ctx: common.Context, host: HostArg, json_output: common.JsonOpt = False) -> None:
    """Connect and report python, packages, trainer, GPUs and free disk (a Slurm host: also Slurm, its partition, a compute node); one line per problem. Exit 1 if any.

    Examples:
      brightrun hosts check gpu1
      brightrun hosts check gpu1 --json
    """
    from brightrun_cli.services.host_check import check_host
    from brightrun_cli.services.hosts import OPTIONAL_PACKAGES

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
                what = "login node" if result.kind == "slurm" else "ssh       "
                out.print(f"  {what}   reachable" + (f", {result.latency_ms:.0f} ms per command" if result.latency_ms is not None else ""))
            slurm = result.slurm
            if slurm.get("version"):
                out.print(f"  slurm        {slurm['version']}", markup=False)
            if slurm.get("partition"):
                gres = ",".join(slurm.get("gres") or []) or "no GRES"
                state = f"{slurm.get('available')}, {slurm.get('nodes')} node(s), {gres}, time limit {slurm.get('time_limit')}" if slurm.get("available") else "not found"
                out.print(f"  partition    {slurm['partition']} ({state})", markup=False)
            out.print(f"  python       {result.python or '-'} {result.python_version or ''}".rstrip(), markup=False)
            for name, version in result.packages.items():
                absent = "not installed (optional: quantization)" if name in OPTIONAL_PACKAGES else "MISSING"
                out.print(f"  {name:<12} {version or absent}")
            out.print(f"  trainer      {'importable' if result.trainer_importable else 'NOT importable'}" + (f" (code {result.code_version})" if result.code_version else ""))
            gpus = ", ".join(g["name"] for g in result.gpus) if result.gpus else "none (CPU)"
            out.print(f"  gpus         {gpus}")
            if result.disk_free_gb is not None:
                out.print(f"  free disk    {result.disk_free_gb:.1f} GiB" + (f" in {result.workdir}" if result.workdir else ""), markup=False)
        err = common.err_console()
        for problem in result.problems:
            err.print(f"problem: {problem}", markup=False, soft_wrap=True)
    if not result.ok:
        raise SystemExit(1)


@hosts_app.command("rm")
def rm_command(ctx: common.Context, host: HostArg, json_output: common.JsonOpt = False) -> None:
    """Forget an SSH or Slurm host (refused for 'local' and while jobs are queued or running on it).

    Examples:
      brightrun hosts rm gpu1
      brightrun hosts rm gpu1 --json
    """
    from brightrun_cli.services.hosts import remove_host

    removed = remove_host(common.workspace(ctx), host)
    if json_output:
        common.print_json({"name": removed.name, "removed": True})
        return
    common.console().print(f"removed host {removed.name}", markup=False)


commands = common.Group()  # what this module adds to the root command
commands.add_group(hosts_app, name="hosts")
