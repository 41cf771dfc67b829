"""Planning and submitting a training run (`brightrun train`): validate the request
completely (dataset, hosts, base model, config, accelerate config, budget), work out
where it runs once (estimates.Placement), estimate it, then queue it.

The job it creates is managed by services/jobs.py from then on.
"""

from __future__ import annotations

import importlib.util
import math
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from brightrun_cli.builtin import absolute_base_model, names_a_path, resolve_base_model
from brightrun_cli.errors import UsageError
from brightrun_cli.presets.files import parse_override, read_config_file
from brightrun_cli.registry import hosts as host_rows
from brightrun_cli.registry import jobs as job_rows
from brightrun_cli.registry.ids import new_id
from brightrun_cli.registry.rows import DatasetRow, HostRow, JobRow
from brightrun_cli.runners import get_runner
from brightrun_cli.runners.accelerate import LAUNCH_KEYS
from brightrun_cli.runners.base import LaunchRequest
from brightrun_cli.runners.slurm_batch import SlurmSettings
from brightrun_cli.services import queue
from brightrun_cli.services.base_model import check_directory, check_hub_model
from brightrun_cli.services.run_checks import check_quantization_host, check_tool_call_template
from brightrun_cli.services.datasets import get_dataset, require_stored_files
from brightrun_cli.services.estimates import Estimate, estimate_run, placement_for
from brightrun_cli.services.evals import check_held_out, check_measurable, held_out_samples
from brightrun_cli.services.gpus import get_gpu
from brightrun_cli.services.hosts import refresh_local_host
from brightrun_cli.services.jobs import get_job, place_accelerate_config
from brightrun_cli.services.notifications import notify
from brightrun_cli.services.presets import ResolvedConfig, resolve_config
from brightrun_cli.services.trackers import tracker_spec
from brightrun_cli.supervisor import launch
from brightrun_cli.trainer.spec import (
    SpecError,
    check_quantization_engine,
    load_accelerate_config,
)
from brightrun_cli.workspace import Workspace

SEED = 42


@dataclass
class TrainRequest:
    dataset: str
    preset: str | None = None
    overrides: tuple[str, ...] = ()
    config_file: Path | None = None
    base_model: str | None = None
    host: str | None = None
    hosts: tuple[str, ...] = ()
    gpus: int | None = None
    nodes: int | None = None  # a Slurm host's nodes for this job (gpus is then per node)
    max_cost: float | None = None
    accelerate_config: Path | None = None  # passed to `accelerate launch --config_file` (FSDP, DeepSpeed)
    force: bool = False  # queue even when the pre-flight says it cannot run (files missing, does not fit)
    report_to: str | None = None  # --report-to: comma-separated trackers, "none", or None for config.toml's report_to
    requirements: tuple = ()  # --require (evals.Requirement): the job's answer eval will be judged, so it needs a held-out split


@dataclass
class TrainPlan:
    """Everything `train` decided before creating anything (what --dry-run prints)."""

    job_id: str
    dataset: DatasetRow
    placement: Any  # estimates.Placement: hosts, GPU type and count, worked out once
    resolved: ResolvedConfig
    estimate: Estimate
    spec: dict[str, Any]
    argv: list[str]
    max_cost: float | None
    gpu_config: dict[str, Any]  # the job's gpu_config: type, count per host, hourly rate (placement.gpu_config)
    accelerate_config: Any = None  # trainer.spec.AccelerateConfig of the user's file
    batch_script: str | None = None  # what a Slurm host's sbatch runs (runners/slurm_batch.py)

    @property
    def hosts(self) -> list[HostRow]:
        return list(self.placement.hosts)

    def to_json(self) -> dict[str, Any]:
        accelerate = None
        if self.accelerate_config is not None:
            accelerate = {"source": str(self.accelerate_config.path), "file": self.spec["accelerate_config"],
                          "distributed_type": self.accelerate_config.distributed_type}
        return {
            "job_id": self.job_id,
            "dataset_id": self.dataset.id,
            "preset_id": self.resolved.preset_id,
            "hosts": [h.name for h in self.hosts],
            "gpu_config": self.gpu_config,
            "max_cost": self.max_cost,
            "estimate": self.estimate.to_json(),
            "spec": self.spec,
            "accelerate_config": accelerate,
            "argv": self.argv,
            "batch_script": self.batch_script,
        }


@dataclass
class Submitted:
    """What `train` did: its plan, and the job (None for a dry run)."""

    plan: TrainPlan
    job: JobRow | None


def train(ws: Workspace, req: TrainRequest, *, dry_run: bool = False) -> Submitted:
    """`brightrun train`: plan the run (validating everything), then, unless a dry run, submit it.

    A standby supervisor starts first and imports while the request is checked, so the
    job's first metric point comes ~0.5 s sooner (supervisor.launch.standing_by); it
    exits by itself when no job is handed to it (bad input, dry run, a job that queues)."""
    with launch.standing_by(ws.home, wanted=not dry_run) as standby:
        plan = plan_training(ws, req)
        return Submitted(plan, None if dry_run else submit(ws, plan, standby=standby))


def plan_training(ws: Workspace, req: TrainRequest) -> TrainPlan:
    """Validate a `train` request completely and resolve it; writes nothing. Bad input: UsageError."""
    if req.max_cost is not None and req.max_cost <= 0:
        raise UsageError(f"--max-cost must be positive (got {req.max_cost:g})", "pass a budget in USD, e.g. --max-cost 25")
    if req.gpus is not None and req.gpus < 1:
        raise UsageError(f"--gpus must be at least 1 (got {req.gpus})", "pass --gpus 1 or more")
    dataset = get_dataset(ws, req.dataset)
    if dataset.status != "ready" or not dataset.training_ready:
        why = f": {dataset.error_message}" if dataset.error_message else ""
        raise UsageError(f"dataset '{dataset.name}' is {dataset.status}, not ready for training{why}",
                         f"run 'brightrun dataset show {dataset.id}' and fix or re-add it")
    require_stored_files(ws, dataset)
    if req.requirements:
        check_held_out(dataset, "for --require to judge the job's answers on")
        check_measurable(req.requirements, lambda: held_out_samples(ws, dataset), dataset)  # else a run paid for nothing
    hosts = _resolve_hosts(ws, req.hosts or (req.host or ws.config.default_host,))
    host = hosts[0]
    nodes = _check_nodes(req.nodes, host)
    _check_gpu_type_matches(ws, req, host)
    resolved = resolve_config(
        ws, preset=req.preset, overrides=tuple(req.overrides), config_file=req.config_file,
        base_model=req.base_model, gpu_type=host.gpu_type, gpus=req.gpus, dataset_base_model=dataset.base_model,
    )
    config = resolved.config
    # --gpus, else gpus given with --set or --config, else all of the host's: a preset's gpus
    # (tiny's 1) only prices estimates made without a host.
    chosen = req.gpus if req.gpus is not None else _explicit_gpus(req)
    asked = f"--gpus {chosen}" if req.gpus is not None else f"gpus = {chosen} (--set or --config)"
    config.gpus = chosen or host.gpus
    for h in hosts:
        if config.gpus > h.gpus:
            raise UsageError(f"{asked} is more than host '{h.name}' has ({h.gpus})",
                             f"pass --gpus {h.gpus} or less, or another --host")
    config.base_model = _check_base_model(ws, config.base_model, hosts)
    check_tool_call_template(dataset, config.base_model, config.hyperparameters().get("chat_template"))
    check_quantization_host(config.quantization, hosts)
    if not req.force:
        _preflight_files(config.base_model, hosts)
    placement = placement_for(ws, config, hosts, nodes)
    job_id = new_id()
    request = LaunchRequest.for_job(ws.home, job_id, gpus=placement.gpus_per_host, gpu_type=placement.gpu.name)
    request.nodes = nodes
    accelerate = None
    if req.accelerate_config is not None:
        accelerate = check_accelerate_config(req.accelerate_config, hosts, request.num_processes, config.hyperparameters(), nodes=nodes)
    model_config = None
    if host.ssh_host and config.base_model.startswith("/"):
        from brightrun_cli.runners.ssh import remote_model_config

        model_config = remote_model_config(ws, host, config.base_model)  # what that host will train
    estimate = estimate_run(ws, dataset, resolved, placement, model_config=model_config,
                            fsdp=accelerate is not None and accelerate.distributed_type == "FSDP")
    if not req.force and not estimate.fits_in_memory:
        raise UsageError(f"the run does not fit in memory: {estimate.memory_advice}",
                         "change one of those, or pass --force to queue it anyway")
    cost = float(estimate.to_json()["estimated_cost"])
    if req.max_cost is not None and cost > req.max_cost:
        raise UsageError(
            f"the estimated cost ${cost:,.2f} is over --max-cost ${req.max_cost:,.2f}",
            "raise --max-cost, or pick a cheaper preset, fewer epochs or GPUs (see 'brightrun estimate')",
        )
    spec = _spec(job_id, config, accelerate)
    if not dataset.total_validation_pairs:  # --val-split 0 (estimate and train warn): no held-out loss, no answer eval
        spec["validation_file"] = None
    spec.update(tracker_spec(ws, req.report_to, hosts))
    if accelerate is not None:
        request.accelerate_config, request.distributed_type = spec["accelerate_config"], accelerate.distributed_type
    runner = get_runner(ws, hosts)
    argv = runner.launch_argv(request)
    return TrainPlan(job_id=job_id, dataset=dataset, placement=placement, resolved=resolved, estimate=estimate, spec=spec,
                     argv=argv, max_cost=req.max_cost, gpu_config=placement.gpu_config, accelerate_config=accelerate,
                     batch_script=runner.batch_script(request))


def _check_nodes(nodes: int | None, host: HostRow) -> int:
    """`train --nodes`: only a Slurm host allocates nodes, at most its --nodes-max."""
    if nodes is None:
        return 1
    if host.kind != "slurm":
        raise UsageError(f"--nodes is for a Slurm host; '{host.name}' is {'this machine' if host.kind == 'local' else 'an SSH host'}",
                         "drop --nodes, or for several SSH machines pass --hosts a,b")
    most = SlurmSettings.from_host(host).nodes_max
    if not 1 <= nodes <= most:
        raise UsageError(f"--nodes {nodes}: a job on Slurm host '{host.name}' may use 1 to {most} node(s)",
                         f"pass --nodes {most} or fewer, or add the host again with a larger --nodes-max")
    return nodes


def _check_gpu_type_matches(ws: Workspace, req: TrainRequest, host: HostRow) -> None:
    """A job runs on its host's GPUs. A preset's gpu_type is only an estimate hint, but one
    the user asks for (--set or --config) that the host does not have is refused rather
    than silently replaced."""
    asked: list[tuple[str, str]] = []
    if req.config_file is not None and "gpu_type" in (data := read_config_file(req.config_file)):
        asked.append((f"--config {req.config_file}", str(data["gpu_type"])))
    asked += [(f"--set {text}", str(value)) for text in req.overrides for key, value in [parse_override(text)] if key == "gpu_type"]
    for where, value in asked:
        if get_gpu(ws, value).name != get_gpu(ws, host.gpu_type).name:
            raise UsageError(
                f"{where}: host '{host.name}' has {host.gpu_type}, and a job runs on its host's GPUs",
                f"drop gpu_type, or pass --host with {value} GPUs (see 'brightrun hosts list'; 'brightrun estimate --gpu {value}' prices it)",
            )


# Where brightrun's value for each accelerate launch key comes from (for the refusal's hint).
_LAUNCH_KEY_OWNERS = {
    "num_processes": "brightrun starts one process per GPU: --gpus, --hosts",
    "num_machines": "one machine per --hosts entry",
    "machine_rank": "brightrun numbers the hosts",
    "main_process_ip": "brightrun picks the rendezvous",
    "main_process_port": "brightrun picks the rendezvous",
    "mixed_precision": "the trainer's precision comes from the spec: --set precision=bf16",
}


def check_accelerate_config(path: Path, hosts: list[HostRow], processes: int, hyperparameters: dict[str, Any], *, nodes: int = 1):
    """Read `train --accelerate-config FILE` with the trainer's own parser and refuse what would
    not run as written: launch values that differ from brightrun's (its explicit flags would
    override them), and FSDP/DeepSpeed where accelerate cannot shard. `processes` per machine;
    the machines are the hosts, or a Slurm job's `nodes`. Returns the AccelerateConfig."""
    hint = "fix the file (README: 'Using FSDP or DeepSpeed configs')"
    if not path.is_file():
        raise UsageError(f"--accelerate-config {path} is not a file", "pass an accelerate config file (YAML, or JSON ending in .json)")
    try:
        config = load_accelerate_config(path)
    except SpecError as exc:
        raise UsageError(str(exc), hint) from None
    precision = hyperparameters.get("precision", "auto")
    machines = len(hosts) * nodes
    ours = {"num_processes": processes * machines, "num_machines": machines, "machine_rank": 0,
            "main_process_ip": None, "main_process_port": None,
            "mixed_precision": {"auto": "no", "fp32": "no"}.get(precision, precision)}
    for key in LAUNCH_KEYS:
        given = config.settings.get(key)
        if given is not None and given != ours[key] and not (key == "mixed_precision" and given == "no"):
            raise UsageError(
                f"accelerate config {path}: {key} = {given} differs from this job's "
                f"{ours[key] if ours[key] is not None else 'own choice'} (brightrun's launch flags would override it)",
                f"remove {key} from the file ({_LAUNCH_KEY_OWNERS[key]})",
            )
    kind = config.distributed_type
    if kind == "NO" and processes * machines > 1:
        raise UsageError(f"accelerate config {path}: distributed_type NO runs one process, this job launches "
                         f"{processes * machines}", "use MULTI_GPU, FSDP or DEEPSPEED, or --gpus 1")
    try:
        check_quantization_engine(hyperparameters.get("quantization", "none"), config)
    except SpecError as exc:
        raise UsageError(str(exc), "QLoRA runs on one GPU or under DDP (no --accelerate-config)") from None
    if config.sharded:
        cpu = [h.name for h in hosts if h.gpu_type == "cpu"]
        if cpu:
            raise UsageError(f"accelerate config {path} asks for {kind}, but host '{cpu[0]}' has no GPU and accelerate "
                             "shards only on GPUs (on a CPU it silently runs DDP)", "run it on a GPU host, or leave out --accelerate-config")
        if kind == "DEEPSPEED" and hosts[0].kind == "local" and importlib.util.find_spec("deepspeed") is None:
            raise UsageError(f"accelerate config {path} asks for DeepSpeed, which is not installed here", "pip install deepspeed")
    return config


def _epochs_run(config: Any, details: dict[str, Any]) -> int:
    """The epochs the trainer starts: num_epochs, fewer when max_steps ends the run sooner
    (what `jobs show` and `watch` count an epoch out of)."""
    steps, per_epoch = details.get("total_steps"), details.get("steps_per_epoch")
    if config.max_steps is None or not steps or not per_epoch:
        return int(config.num_epochs)
    return min(int(config.num_epochs), math.ceil(steps / per_epoch))


def _spec(job_id: str, config: Any, accelerate: Any = None) -> dict[str, Any]:
    spec = {
        "version": 1,
        "job_id": job_id,
        "base_model": config.base_model,
        "train_file": "train.jsonl",
        "validation_file": "validation.jsonl",
        "output_dir": ".",
        "seed": SEED,
        "hyperparameters": config.hyperparameters(),
        "logging_steps": 1,  # every optimizer step: the curves and the ETA want them all
        "save_steps": config.save_steps,  # 0: the trainer checkpoints only on SIGTERM (cancel, budget, a reaped job)
        "max_steps": config.max_steps,  # None: every epoch
        "resume": False,
    }
    if accelerate is not None:  # the copy in the run dir; accelerate reads .json as JSON, anything else as YAML
        spec["accelerate_config"] = "accelerate_config" + (".json" if accelerate.path.suffix == ".json" else ".yaml")
    return spec


_HF_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")


def _check_base_model(ws: Workspace, name: str | None, hosts: list[HostRow]) -> str:
    """The base model as the job will name it: a local directory made absolute (the trainer
    runs in its run dir), checked to be a model; on SSH hosts a path must be absolute, and
    cannot be a `.gguf` converted into this machine's cache (`base_model.local_base_model`)."""
    if not name:
        raise UsageError("no base model given", "pass --base-model (a Hugging Face id, a local directory or builtin:tiny)")
    try:
        resolved = resolve_base_model(name)
    except (KeyError, ValueError) as exc:
        raise UsageError(f"unknown base model '{name}' ({exc})", "pass --base-model builtin:tiny, a Hugging Face id or a local directory") from exc
    local = all(h.kind == "local" for h in hosts)
    cache = ws.home / "cache" / "models"
    if not local and Path(resolved).is_relative_to(cache):
        raise UsageError(f"the .gguf base model was converted on this machine ({resolved}), which host '{hosts[0].name}' cannot read",
                         f"copy that directory to the host (e.g. rsync -a {shlex.quote(resolved)}/ HOST:/models/NAME/) "
                         "and pass --base-model /models/NAME")
    if not local and resolved.startswith(("/", ".", "~")):  # a directory on that host: read there (plan_training)
        if not resolved.startswith("/"):
            raise UsageError(f"base model path '{name}' is not absolute, and host '{hosts[0].name}' is reached over SSH",
                             "pass the model directory's absolute path on that host")
        return name
    if local and names_a_path(resolved):
        path = Path(absolute_base_model(resolved))
        if not (path / "config.json").is_file():
            raise UsageError(f"base model directory '{path}' has no config.json", "pass a directory saved with save_pretrained, a Hugging Face id or builtin:tiny")
        return name if name.startswith("builtin:") else str(path)
    if not _HF_ID.match(resolved):
        raise UsageError(f"base model '{name}' is neither a directory nor a Hugging Face id", "pass org/name, a local directory or builtin:tiny")
    return name


def _preflight_files(name: str, hosts: list[HostRow]) -> None:
    """Refuse a base model the trainer could not start from, before a job is queued: a
    local directory (or the cached snapshot of a hub id) without weights, tokenizer or a
    readable config; a hub id neither cached nor downloadable. Files are only looked at
    (safetensors headers parsed), never loaded: `train` has to stay quick. A directory on
    an SSH host is checked there by the trainer."""
    if not all(h.kind == "local" for h in hosts):
        return
    location = resolve_base_model(name)
    if not names_a_path(location):
        check_hub_model(location)
        return
    missing = check_directory(Path(absolute_base_model(location)))
    if missing:
        raise UsageError(f"base model '{name}' cannot be trained from: {'; '.join(missing)}",
                         "pass a complete model directory (save_pretrained writes weights, config and tokenizer), "
                         "or --force to queue it anyway")


def _explicit_gpus(req: TrainRequest) -> int | None:
    """gpus as the user set it for this run (--set wins over --config), or None."""
    given = [value for key, value in map(parse_override, req.overrides) if key == "gpus"]
    if given:
        return given[-1] if isinstance(given[-1], int) else None  # a bad value was refused by resolve_config
    if req.config_file is not None:
        value = read_config_file(Path(req.config_file)).get("gpus")
        return value if isinstance(value, int) else None
    return None


def _resolve_hosts(ws: Workspace, names: tuple[str, ...]) -> list[HostRow]:
    if len(set(names)) != len(names):
        raise UsageError(f"--hosts names a host twice ({','.join(names)})", "list each host once")
    with ws.registry.reading() as conn:
        hosts = [host_rows.by_name(conn, name) for name in names]
    unknown = [n for n, h in zip(names, hosts) if h is None]
    if unknown:
        raise UsageError(f"unknown host '{unknown[0]}'", "run 'brightrun hosts list', or add it with 'brightrun hosts add'")
    if len(hosts) > 1 and any(h.kind == "local" for h in hosts):
        raise UsageError("a multi-node job cannot include the local host", "list only SSH hosts in --hosts")
    if hosts[0].kind == "local":
        hosts[0] = refresh_local_host(ws, hosts[0])
    return hosts


def submit(ws: Workspace, plan: TrainPlan, standby: launch.Standby | None = None) -> JobRow:
    """Create the job (queued) with its notification in one transaction, then start the queue
    (with `standby`, a supervisor already started for it)."""
    config = plan.resolved.config
    est = plan.estimate.to_json()
    details = est.get("training_details") or {}
    if plan.accelerate_config is not None:
        place_accelerate_config(plan.accelerate_config.path, ws.runs_dir / plan.job_id, plan.spec["accelerate_config"])
    with ws.registry.write() as tx:
        job = job_rows.insert(
            tx,
            id=plan.job_id,
            dataset_id=plan.dataset.id,
            preset_id=plan.resolved.preset_id,
            base_model=config.base_model,
            hyperparameters=config.hyperparameters(),
            gpu_config=plan.gpu_config,
            host_id=plan.hosts[0].id,
            hosts=[h.name for h in plan.hosts],
            total_epochs=_epochs_run(config, details),
            total_steps=details.get("total_steps"),
            estimated_duration_hours=est.get("estimated_duration_hours"),
            estimated_total_cost=float(est["estimated_cost"]),
            max_cost=plan.max_cost,
            spec=plan.spec,
            run_dir=f"runs/{plan.job_id}",
        )
        notify(tx, "job_queued", "Training queued",
               f"Job {job.id[:10]} on '{plan.dataset.name}' ({job.preset_id}) is queued on {', '.join(job.host_names)}; estimate ${job.estimated_total_cost:,.2f}",
               priority="low", action_command=f"brightrun watch {job.id}", job_id=job.id, dataset_id=job.dataset_id)
    queue.kick(ws, standby=standby)
    return get_job(ws, job.id)
