"""Slurm hosts: a cluster reached through its login node (this machine, or over SSH).

`new_slurm_host` validates everything `hosts add NAME --slurm LOGIN` takes and builds
the (unsaved) `hosts` row; `check_slurm` fills a `HostCheck` for `hosts check`. The
login node, the compute nodes' Python and the shared workdir live in the row's
ssh_*/python/workdir columns exactly as for an SSH host (so the SSH transport and
`hosts list` read them unchanged); the Slurm settings go in `options`
(runners.slurm_batch.SlurmSettings).
"""

from __future__ import annotations

import time

from brightrun_cli.errors import OperationError, UsageError
from brightrun_cli.registry.rows import HostRow
from brightrun_cli.runners.probe import CHECK_SCRIPT, parse_check_output
from brightrun_cli.runners.slurm import SlurmRunner
from brightrun_cli.runners.slurm_batch import SlurmSettings, gres_gpus
from brightrun_cli.runners.ssh import SSHFailure, remote_python, remote_workdir, ship_code
from brightrun_cli.services.gpus import get_gpu
from brightrun_cli.services.hosts import (
    PROBED_PACKAGES,
    HostCheck,
    identity_path,
    judge_probe,
    normalize_python,
    normalize_workdir,
    parse_ssh_target,
    unsaved_host,
    validate_name,
)
from brightrun_cli.workspace import Workspace

LOCAL_LOGIN = "local"
# CHECK_SCRIPT on a compute node ($1 python, $2 workdir, $3 code dir, $4 packages), first
# telling whether the code shipped from the login node is there (a shared filesystem).
COMPUTE_CHECK = r"""
if [ -f "$3/.complete" ]; then echo "shared 1"; else echo "shared 0"; fi
""" + CHECK_SCRIPT


def new_slurm_host(
    ws: Workspace,
    name: str,
    login: str,
    *,
    partition: str | None = None,
    account: str | None = None,
    qos: str | None = None,
    time_limit: str | None = None,
    gpus_per_node: int | None = None,
    gres: str | None = None,
    gpu_type: str | None = None,
    nodes_max: int | None = None,
    workdir: str | None = None,
    python: str | None = None,
    sbatch_args: list[str] | None = None,
    identity: str | None = None,
    accept_new_host_key: bool = False,
) -> HostRow:
    """The `hosts` row for `hosts add NAME --slurm LOGIN ...`, every field checked (a bad
    one raises UsageError naming its flag). Nothing is stored (services.hosts.add_slurm_host does)."""
    validate_name(name)
    settings = SlurmSettings.validated(partition=partition, account=account, qos=qos, time=time_limit,
                                       gpus_per_node=gpus_per_node, gres=gres, nodes_max=nodes_max,
                                       sbatch_args=sbatch_args)
    user = address = port = None
    if login != LOCAL_LOGIN:
        try:
            user, address, port = parse_ssh_target(login)
        except UsageError as exc:
            raise UsageError(f"invalid --slurm login node {login!r}: {exc.message}",
                             "give 'local' (brightrun runs on the login node) or [user@]login-node[:port]") from None
    gpus = settings.gpus_per_node or gres_gpus(settings.gres)
    if gpu_type is not None and gpu_type.lower() != "cpu":
        gpu_type = get_gpu(ws, gpu_type).name
        if not gpus:
            raise UsageError(f"--gpu-type {gpu_type} needs the GPUs of one node", "pass --gpus-per-node N or --gres gpu:TYPE:N")
    elif gpus:
        raise UsageError("a Slurm host with GPUs needs their type (estimates and costs use it)",
                         "pass --gpu-type, e.g. --gpu-type A100-80GB ('brightrun gpus' lists them)")
    options = {"login": login, **settings.to_options()}
    if accept_new_host_key:
        options["accept_new_host_key"] = True
    return unsaved_host(dict(name=name, kind="slurm", ssh_user=user, ssh_host=address, ssh_port=port,
                identity_file=identity_path(identity) if address else None, gpus=gpus or 1,
                gpu_type=gpu_type or "cpu", python=normalize_python(python), workdir=normalize_workdir(workdir),
                options=options))


def check_slurm(ws: Workspace, host: HostRow, result: HostCheck) -> None:
    """`hosts check` of a slurm host: the login node answers, Slurm answers, the partition
    exists (its GPUs per node), the workdir is writable, and on a compute node (a short
    srun) the code shipped to the workdir is there and Python and the libraries import."""
    runner = SlurmRunner(ws, host)
    python = remote_python(host)
    result.python = python
    try:
        started = time.monotonic()
        facts = runner.cluster_facts()
        result.latency_ms = round((time.monotonic() - started) * 1000, 1)
    except SSHFailure as exc:
        result.reachable = exc.kind != "unreachable"
        result.problems.append(f"{exc.message}; {exc.hint}")
        return
    result.reachable = True
    if facts.version is None or facts.error:
        result.problems.append(f"Slurm does not answer on '{host.name}': {facts.error}; "
                               "check that the login node has the Slurm client and reaches the controller (sinfo)")
        return
    partition = runner.settings.partition or next((n for n, p in facts.partitions.items() if p["default"]), None)
    found = facts.partitions.get(partition or "")
    result.slurm = {"version": facts.version, "partition": partition, **(found or {})}
    if found is None:
        names = ", ".join(sorted(facts.partitions)) or "none"
        result.problems.append(f"partition '{partition or '(default)'}' does not exist on '{host.name}' (partitions: {names}); "
                               "re-add the host with --partition NAME")
    elif found["available"] != "up":
        result.problems.append(f"partition '{partition}' is {found['available']}; jobs there wait until an admin brings it up")
    if not facts.workdir_writable:
        result.problems.append(f"workdir '{remote_workdir(host)}' is not writable on '{host.name}'; re-add the host with --workdir on the shared filesystem")
        return
    try:
        code_dir = ship_code(runner.login)
        result.code_version = code_dir.rsplit("/", 1)[1]
    except (SSHFailure, OperationError) as exc:
        result.problems.append(f"cannot ship the trainer code to '{host.name}': {exc.message}")
        return
    proc = runner.run_on_compute_node(COMPUTE_CHECK, python, remote_workdir(host), code_dir, " ".join(PROBED_PACKAGES))
    text = proc.stdout.decode(errors="replace")
    if proc.returncode != 0 and "json " not in text:
        first = next((line.strip() for line in proc.stderr.decode(errors="replace").splitlines() if line.strip()), f"exit status {proc.returncode}")
        result.problems.append(f"could not run a check on a compute node of '{host.name}': {first}")
        return
    if "shared 0" in text.splitlines():
        result.problems.append(f"the compute nodes do not see '{code_dir}': the workdir must be on a filesystem they share with the login node")
    judge_probe(result, host, python, parse_check_output(text))
