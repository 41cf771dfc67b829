"""Time, cost and memory estimates for a training run (SPEC 4).

Time = start-up + (training + validation FLOPs) / sustained FLOP rate. The FLOPs come
from the base model's shape (`services.flops`) and the dataset's token counts; the rate
is the GPU's peak x an assumed utilisation, until the registry holds completed jobs on
the same GPU type with a comparable model: then their measured throughput and start-up
replace both assumptions ("calibrated from N runs"). The reference's fixed-throughput
formula is kept beside it (`reference_estimate`) so the difference stays visible.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import msgspec

from brightrun_cli import lifecycle
from brightrun_cli.builtin import absolute_base_model, resolve_base_model
from brightrun_cli.errors import UsageError
from brightrun_cli.generation import gguf
from brightrun_cli.presets.schema import FIELDS, TrainingConfig, validate
from brightrun_cli.registry import datasets as dataset_rows
from brightrun_cli.registry import hosts as host_rows
from brightrun_cli.registry import jobs as job_rows
from brightrun_cli.registry import points as point_rows
from brightrun_cli.registry.rows import DatasetRow, HostRow, JobRow
from brightrun_cli.services.base_model import check_target_modules, hub_config
from brightrun_cli.services.flops import (
    GIB,
    ModelShape,
    MemoryNeed,
    eval_flops_per_token,
    memory_need,
    train_flops_per_token,
)
from brightrun_cli.services.gpus import Gpu, get_gpu, list_gpus, normalize_gpu_name
from brightrun_cli.services.hosts import LOCAL, refresh_local_host
from brightrun_cli.services.presets import ResolvedConfig, require_base_model, resolve_config
from brightrun_cli.services.run_checks import check_quantization_host, check_tool_call_template
from brightrun_cli.trainer.schedule import warmup_for
from brightrun_cli.workspace import Workspace

# Data-parallel efficiency per extra device (gradient all-reduce is small for LoRA).
MULTI_DEVICE_EFFICIENCY = 0.92
# Start-up before the first step: process and CUDA init, imports, tokenising the
# split; plus reading the weights at this rate.
STARTUP_FIXED_S = 20.0
WEIGHT_LOAD_BYTES_PER_S = 1e9
# Each micro-batch's forward and backward launch a few hundred kernels per decoder layer
# (LoRA adds several per adapted module), and the optimizer step one more pass: a floor
# under the step time that FLOPs alone miss, which is what a small model on a large GPU
# runs into (eager PyTorch, ~10 us a launch). On a CPU the utilisation curve covers it.
GPU_MICRO_STEP_S_PER_LAYER = 0.6e-3
GPU_OPTIMIZER_STEP_S = 2e-3
# The finish after the last held-out loss: the adapter saved, then the answer eval
# (base and tuned greedy answers to up to `DEFAULT_EVAL_LIMIT` held-out prompts, in
# batches of about EVAL_BATCH) decoding token by token: each decoding step costs a
# per-layer launch floor plus its FLOPs. Calibrated runs replace it with what they took.
FINISH_FIXED_S = 3.0
EVAL_BATCH = 16
DECODE_S_PER_LAYER = {"gpu": 0.25e-3, "cpu": 5e-3}
# Object storage list price (USD per GB-month) for adapters kept on a remote store;
# a local store costs nothing.
REMOTE_STORAGE_PRICE_GB_MONTH = 0.023
# The reference's fixed figures.
REFERENCE_OVERHEAD_S = (10 * 60, 5 * 60, 5 * 60)  # init, per epoch, final save
REFERENCE_STORAGE_COST = 0.50
CALIBRATION_JOBS = 20  # most recent comparable jobs considered
COMPARABLE_PARAMS_RATIO = 2.0
# Hidden size at which a CPU reaches 63% (1 - 1/e) of its large-model utilisation (`assumed_utilization`).
CPU_HIDDEN_SCALE = 290.0
# A step (or run) slower than its peers' 90th percentile by more than this was slowed by
# something else on the machine (see `undisturbed`).
SLOWED_BY = 2.0
# On a CPU the assumed rate is within 2x of what an idle machine measures (`assumed_utilization`);
# a run measured more than this many times slower was starved by other work on the machine
# all through (its steps all slow alike, so `undisturbed` cannot tell) and is left out.
CPU_PRIOR_TRUST = 4.0
# A warm-up longer than this share of the run is worth a warning: the run is spent
# mostly below its peak learning rate.
WARMUP_DOMINATES = 0.25


class TokenPlan(msgspec.Struct, frozen=True):
    """What one epoch feeds the model."""

    train_tokens: int  # real tokens of the training split, after truncation at max_seq_length
    sequences: int  # conversations per epoch (the trainer's unit of batching)
    sequence_length: int  # attention length per token: a conversation (packed) or the padded batch width
    computed_tokens: int  # tokens the model runs per epoch (padding included)
    validation_tokens: int


class Placement(msgspec.Struct, frozen=True):
    """Where a run goes, worked out once and passed down: the GPU type, how many per host
    (per node of a Slurm host), the hosts (none for a what-if estimate of a GPU type,
    `estimate --gpu`) and the nodes a Slurm job asks for."""

    gpu: Gpu
    gpus_per_host: int
    hosts: tuple[HostRow, ...] = ()
    nodes: int = 1

    @property
    def devices(self) -> int:
        return self.gpus_per_host * max(1, len(self.hosts)) * self.nodes

    @property
    def gpu_config(self) -> dict[str, Any]:
        """The job's `gpu_config` (registry field): type, count per host (per node), the nodes of
        a multi-node Slurm job, hourly rate of the whole job."""
        config = {"type": self.gpu.name, "count": self.gpus_per_host, "hourly_rate": round(self.gpu.price_per_hour * self.devices, 6)}
        if self.nodes > 1:
            config["nodes"] = self.nodes
        return config



def _median(values: list[float]) -> float:
    """statistics.median without importing statistics (random, fractions, decimal: ~7 ms of
    every estimate)."""
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2

def placement_for(ws: Workspace, config: TrainingConfig, hosts: list[HostRow] | None = None, nodes: int = 1) -> Placement:
    """On `hosts`: their GPU type, `config.gpus` (or all) of each, on `nodes` nodes (a Slurm
    host). Without: the config's gpu_type/gpus (`estimate --gpu/--gpus`), the rest from the
    default host."""
    if hosts:
        return Placement(get_gpu(ws, hosts[0].gpu_type), config.gpus or hosts[0].gpus, tuple(hosts), nodes)
    if config.gpu_type is not None and config.gpus is not None:
        return Placement(get_gpu(ws, config.gpu_type), config.gpus)
    host = refresh_local_host(ws) if ws.config.default_host == LOCAL else _host_named(ws, ws.config.default_host)
    return Placement(get_gpu(ws, config.gpu_type or (host.gpu_type if host else "cpu")), config.gpus or (host.gpus if host else 1))


def _host_named(ws: Workspace, name: str) -> HostRow | None:
    with ws.registry.reading() as conn:
        return host_rows.by_name(conn, name)


class Calibration(msgspec.Struct, frozen=True):
    runs: int  # the measured jobs it uses
    job_ids: list[str]
    device_flops_per_s: float | None  # measured, per device
    startup_s: float | None
    slowed: int = 0  # measured jobs left out: much slower than the others (a busy machine)
    finish_s: float | None = None  # measured: from the last held-out loss to completion

    @property
    def message(self) -> str:
        if self.runs:
            slowed = f"; {self.slowed} slowed run{'s' if self.slowed != 1 else ''} left out" if self.slowed else ""
            return f"calibrated from {self.runs} run{'s' if self.runs != 1 else ''}{slowed}"
        if self.slowed:
            return (f"not calibrated: the {self.slowed} comparable run{'s' if self.slowed != 1 else ''} on this machine ran over "
                    f"{CPU_PRIOR_TRUST:g}x slower than an idle machine does (other work was running); using the assumed utilisation")
        return "not calibrated: no completed job on this GPU type with a comparable model; using the assumed utilisation"

    def to_json(self) -> dict[str, Any]:
        return {"calibrated": self.runs > 0, "runs": self.runs, "job_ids": self.job_ids, "message": self.message,
                "device_flops_per_s": self.device_flops_per_s, "startup_s": self.startup_s, "finish_s": self.finish_s, "slowed_runs_left_out": self.slowed}


class EstimateWarning(msgspec.Struct, frozen=True):
    """Something about a run worth knowing before it starts. `code` is stable for scripts
    (does_not_fit, no_validation, warmup_dominates, sequences_truncated, dora_dropout, token_counts_not_this_models:
    see `token_count_warning`); `details` its figures."""

    code: str
    message: str
    details: dict[str, Any] = msgspec.field(default_factory=dict)

    def __str__(self) -> str:
        return self.message

    def to_json(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, **self.details}


class Estimate(msgspec.Struct):
    dataset: DatasetRow
    resolved: ResolvedConfig
    placement: Placement
    plan: TokenPlan
    shape: ModelShape
    steps_per_epoch: int
    total_steps: int
    train_flops: float
    eval_flops: float
    flops_per_s: float
    startup_s: float
    duration_s: float
    train_s: float  # the training steps: their FLOPs at the rate, or the per-step launch floor when higher
    finish_s: float  # after the last held-out loss: saving the adapter, the answer eval
    hourly_rate: float
    compute_cost: float
    storage_cost: float
    memory: MemoryNeed
    memory_capacity: float
    advice: MemoryAdvice | None  # when it does not fit: what would
    calibration: Calibration
    reference: dict[str, Any] | None
    warnings: list[EstimateWarning] = msgspec.field(default_factory=list)

    @property
    def memory_advice(self) -> str | None:
        return None if self.advice is None else self.advice.text

    @property
    def config(self) -> TrainingConfig:
        return self.resolved.config

    @property
    def gpu(self) -> Gpu:
        return self.placement.gpu

    @property
    def devices(self) -> int:
        return self.placement.devices

    @property
    def warmup_steps(self) -> int:
        """The warm-up the trainer will do (warmup_steps cut to max_warmup_fraction of the run)."""
        return warmup_for(self.config.warmup_steps, self.config.max_warmup_fraction, self.total_steps)

    @property
    def estimated_duration_hours(self) -> float:
        return self.duration_s / 3600

    @property
    def estimated_cost(self) -> float:
        return self.compute_cost + self.storage_cost

    @property
    def fits_in_memory(self) -> bool:
        return self.memory.total <= self.memory_capacity

    @property
    def tokens_per_sec(self) -> float:
        return self.flops_per_s / train_flops_per_token(self.shape, self.config, self.plan.sequence_length)

    def to_json(self) -> dict[str, Any]:
        cfg = self.config
        return {
            "estimated_cost": round(self.estimated_cost, 2),
            "cost_breakdown": {"compute": round(self.compute_cost, 2), "storage": round(self.storage_cost, 2)},
            "estimated_duration_hours": round(self.estimated_duration_hours, 4),
            "hourly_rate": round(self.hourly_rate, 2),
            "training_details": {
                "total_steps": self.total_steps,
                "steps_per_epoch": self.steps_per_epoch,
                "warmup_steps": self.warmup_steps,
                "estimated_throughput_tokens_per_sec": round(self.tokens_per_sec, 1),
                "dataset_name": self.dataset.name,
                "dataset_id": self.dataset.id,
                "num_epochs": cfg.num_epochs,
                "sequences_per_epoch": self.plan.sequences,
                "sequence_length": self.plan.sequence_length,
                "train_tokens_per_epoch": self.plan.train_tokens,
                "tokens_processed": round(self.plan.computed_tokens * self.total_steps / self.steps_per_epoch),  # max_steps may cut an epoch
                "validation_tokens": self.plan.validation_tokens,
                "model_parameters": self.shape.total_params,
                "lora_parameters": self.shape.lora_params(cfg.target_modules, cfg.lora_rank, dora=cfg.use_dora),
                "train_flops": self.train_flops,
                "eval_flops": self.eval_flops,
                "sustained_flops_per_sec": self.flops_per_s,
                "startup_seconds": round(self.startup_s, 1),
                "training_seconds": round(self.train_s, 1),
                "finish_seconds": round(self.finish_s, 1),
                "estimated_duration_seconds": round(self.duration_s, 1),
            },
            "preset_id": self.resolved.preset_id,
            "base_model": cfg.base_model,
            "gpu_config": {"type": self.gpu.name, "count": self.devices},
            "hyperparameters": cfg.hyperparameters(),
            "fits_in_memory": self.fits_in_memory,
            "memory": {**self.memory.to_json(), "capacity_gb": round(self.memory_capacity / GIB, 2), "advice": self.memory_advice,
                       "options": [] if self.advice is None else self.advice.to_json()["options"]},
            "calibration": self.calibration.to_json(),
            "reference_estimate": self.reference,
            "warnings": [w.to_json() for w in self.warnings],
        }


def estimate(
    ws: Workspace,
    dataset_ref: str,
    *,
    preset: str | None = None,
    overrides: tuple[str, ...] = (),
    config_file: Path | None = None,
    base_model: str | None = None,
    gpu_type: str | None = None,
    gpus: int | None = None,
) -> Estimate:
    """`brightrun estimate`: resolve the dataset, the config and where it would run, then `estimate_run`."""
    with ws.registry.reading() as conn:
        dataset = dataset_rows.resolve(conn, dataset_ref)
    resolved = resolve_config(ws, preset, overrides, config_file, base_model=base_model, gpu_type=gpu_type, gpus=gpus,
                              dataset_base_model=dataset.base_model)
    est = estimate_run(ws, dataset, resolved, placement_for(ws, resolved.config))
    est.warnings += train_would_refuse(ws, est, hardware_given=gpu_type is not None)
    return est


def train_would_refuse(ws: Workspace, est: Estimate, *, hardware_given: bool) -> list[EstimateWarning]:
    """What `train` on the default host would refuse that an estimate may still price (an
    estimate also prices hardware one does not have): more GPUs than the host has, a
    quantised base on a CPU, tool calls a base model's template drops. Warnings, so the
    figures still come, with the reason `train` would give."""
    cfg, out = est.config, []
    host = refresh_local_host(ws) if ws.config.default_host == LOCAL else _host_named(ws, ws.config.default_host)
    if host is not None and not hardware_given and est.placement.gpus_per_host > host.gpus:
        out.append(EstimateWarning(
            "more_gpus_than_host", f"host '{host.name}' has {host.gpus} {'GPU' if host.gpu_type != 'cpu' else 'CPU slot'}"
            f"{'s' if host.gpus != 1 else ''}: 'train' there would refuse {est.placement.gpus_per_host}; pass --gpu TYPE to price "
            "hardware you do not have here", {"host": host.name, "host_gpus": host.gpus, "gpus": est.placement.gpus_per_host}))
    checks = [lambda: check_tool_call_template(est.dataset, cfg.base_model or "", cfg.chat_template)]
    if cfg.quantization != "none":
        if normalize_gpu_name(est.gpu.name) == "cpu":
            out.append(EstimateWarning(
                "quantization_needs_cuda", f"quantization={cfg.quantization} needs a CUDA GPU (bitsandbytes): 'train' on a CPU "
                "would refuse it; pass --gpu TYPE to price a GPU, or drop the quantization", {"quantization": cfg.quantization}))
        elif host is not None and not hardware_given:
            checks.append(lambda: check_quantization_host(cfg.quantization, [host]))
    for check in checks:
        try:
            check()
        except UsageError as exc:
            out.append(EstimateWarning("train_would_refuse", f"'train' would refuse this run: {exc.message}; {exc.hint}"
                                       if exc.hint else f"'train' would refuse this run: {exc.message}", {}))
    return out


def estimate_run(ws: Workspace, dataset: DatasetRow, resolved: ResolvedConfig, placement: Placement, *,
                 model_config: dict | None = None, fsdp: bool = False) -> Estimate:
    """Estimate a run of `resolved` on `dataset` at `placement`. `model_config`: the base
    model's config.json when it was read elsewhere (from the SSH host the model lives on).
    `fsdp`: the run shards the model over its devices (an FSDP accelerate config), which
    changes its memory, not its FLOPs. Raises UsageError for a dataset that is not ready or
    a base model whose config cannot be read."""
    config = resolved.config
    if dataset.status != "ready":
        raise UsageError(
            f"dataset '{dataset.name}' is not ready (status: {dataset.status})",
            f"fix it and re-add it, or run 'brightrun dataset validate {dataset.id}'",
        )
    shape = read_model_shape(require_base_model(config), model_config)
    if model_config is None:  # the model is here to look at (on an SSH host, the trainer checks it there)
        check_target_modules(config.base_model, config.target_modules)
    gpu, devices = placement.gpu, placement.devices
    plan = token_plan(dataset, config)
    steps_per_epoch = trainer_steps_per_epoch(plan.sequences, config, devices)
    total_steps = run_steps(steps_per_epoch, config)
    epochs = total_steps / steps_per_epoch  # fewer than num_epochs under max_steps
    train_flops = epochs * plan.computed_tokens * train_flops_per_token(shape, config, plan.sequence_length)
    # Validation runs before training (the base model's loss), after every epoch and after the last step.
    eval_flops = (math.ceil(epochs - 1e-9) + 1) * plan.validation_tokens * eval_flops_per_token(shape, config, plan.sequence_length)
    weight_bytes = _weight_bytes(config, gpu.name)
    calibration = calibrate(ws, gpu, shape, config.base_model)
    scale = devices * (MULTI_DEVICE_EFFICIENCY ** (devices - 1))
    if calibration.device_flops_per_s:
        flops_per_s = calibration.device_flops_per_s * scale
        startup_s = calibration.startup_s if calibration.startup_s is not None else _assumed_startup(shape, weight_bytes)
    else:
        flops_per_s = gpu.bf16_tflops * 1e12 * assumed_utilization(gpu, shape) * scale
        startup_s = _assumed_startup(shape, weight_bytes)
    train_s = max(train_flops / flops_per_s, step_floor_s(shape, config, gpu.name, total_steps))
    finish_s = calibration.finish_s if calibration.finish_s is not None else assumed_finish_s(
        shape, dataset, gpu.name, flops_per_s / scale)
    duration_s = startup_s + train_s + eval_flops / flops_per_s + finish_s
    hourly_rate = gpu.price_per_hour * devices
    shards = devices if fsdp and devices > 1 else 1
    need = memory_need(shape, config, plan.sequence_length, weight_bytes=weight_bytes, on_gpu=gpu.name != "cpu", shards=shards)
    capacity = gpu.memory_gb * GIB
    est = Estimate(
        dataset=dataset, resolved=resolved, placement=placement, plan=plan, shape=shape,
        steps_per_epoch=steps_per_epoch, total_steps=total_steps,
        train_flops=train_flops, eval_flops=eval_flops, flops_per_s=flops_per_s, startup_s=startup_s,
        duration_s=duration_s, train_s=train_s, finish_s=finish_s, hourly_rate=hourly_rate, compute_cost=hourly_rate * duration_s / 3600,
        storage_cost=_storage_cost(ws, shape, config), memory=need, memory_capacity=capacity,
        advice=None, calibration=calibration,
        reference=reference_estimate(dataset, config, gpu, devices),
    )
    if not est.fits_in_memory:
        est.advice = memory_advice(ws, dataset, shape, config, plan, gpu, shards)
        est.warnings.append(EstimateWarning("does_not_fit", f"does not fit in memory: {est.advice.text}", est.advice.to_json()))
    counted = token_count_warning(dataset, config.base_model, config.hyperparameters().get("chat_template") or "model")
    if counted is not None:
        est.warnings.append(counted)
    truncated = truncation_warning(dataset, config.max_seq_length)
    if truncated is not None:
        est.warnings.append(truncated)
    if not dataset.total_validation_pairs:
        est.warnings.append(EstimateWarning(
            "no_validation",
            f"dataset '{dataset.name}' holds out no conversation for validation: the run's quality (held-out loss) cannot be "
            "measured; add it again with --val-split above 0 (and at least 2 conversations)",
        ))
    dora = dora_dropout_warning(shape, config, plan, weight_bytes=weight_bytes, on_gpu=gpu.name != "cpu", shards=shards)
    if dora is not None:
        est.warnings.append(dora)
    if est.warmup_steps > WARMUP_DOMINATES * est.total_steps:
        est.warnings.append(EstimateWarning(
            "warmup_dominates",
            f"warm-up takes {est.warmup_steps} of the {est.total_steps} steps: the learning rate is below its peak for "
            f"{est.warmup_steps / est.total_steps:.0%} of the run; lower --set warmup_steps or max_warmup_fraction",
            {"warmup_steps": est.warmup_steps, "total_steps": est.total_steps, "share": round(est.warmup_steps / est.total_steps, 3)},
        ))
    return est


def dora_dropout_warning(shape: ModelShape, config: TrainingConfig, plan: TokenPlan, *, weight_bytes: int, on_gpu: bool,
                         shards: int) -> EstimateWarning | None:
    """A warning for DoRA with lora_dropout > 0: peft then runs every adapted weight a
    second time on the dropped input (it cannot reuse the base layer's output), which
    costs compute and, in bf16, a copy of those weights (`flops.dora_flops_per_token`),
    where lora_dropout=0 costs neither."""
    if not config.use_dora or config.lora_dropout == 0:
        return None
    without = config.replace(lora_dropout=0.0)
    seq = plan.sequence_length
    compute = train_flops_per_token(shape, config, seq) / train_flops_per_token(shape, without, seq) - 1
    memory = (memory_need(shape, config, seq, weight_bytes=weight_bytes, on_gpu=on_gpu, shards=shards).total
              - memory_need(shape, without, seq, weight_bytes=weight_bytes, on_gpu=on_gpu, shards=shards).total)
    return EstimateWarning(
        "dora_dropout",
        f"DoRA with lora_dropout={config.lora_dropout:g} runs each adapted weight twice (peft applies the dropout to the base "
        f"output too, so it cannot reuse it): {compute:+.0%} compute and {memory / GIB:+.2f} GiB a device; "
        "--set lora_dropout=0 avoids both",
        {"extra_compute": round(compute, 3), "extra_memory_gb": round(memory / GIB, 2)},
    )


def truncation_warning(dataset: DatasetRow, limit: int) -> EstimateWarning | None:
    """A warning when conversations are longer than max_seq_length: the trainer cuts each at
    the limit, so what lies beyond it (later answers; all of them when a long system prompt
    or tool list comes first) is never learned. The share is read from the stored length
    distribution, as token_plan reads it."""
    dist = (dataset.stats or {}).get("tokens_per_conversation") or {}
    if not dist.get("max") or float(dist["max"]) <= limit:
        return None
    samples = _quantiles(dist, [(i + 0.5) / 200 for i in range(200)])
    share = max(sum(v > limit for v in samples) / len(samples), 0.005)
    longest = int(dist["max"])
    suggestion = 1 << (longest - 1).bit_length()
    return EstimateWarning(
        "sequences_truncated",
        f"{'all' if share >= 0.995 else 'under 1%' if share < 0.01 else 'about ' + format(share, '.0%')} of the conversations of dataset '{dataset.name}' are longer "
        f"than max_seq_length {limit} (median {int(float(dist.get('p50', 0))):,} tokens, longest {longest:,}): the trainer cuts "
        f"each at {limit} tokens and never learns what comes after; raise it, e.g. --set max_seq_length={suggestion}",
        {"max_seq_length": limit, "share": round(share, 3), "longest": longest, "suggested_max_seq_length": suggestion},
    )


def token_count_warning(dataset: DatasetRow, base_model: str, chat_template: str = "model") -> EstimateWarning | None:
    """A warning when the dataset's token counts, which the duration, cost and memory
    follow, were not made as this run writes the conversations: approximated (no base
    model when it was added: characters / 4, off several-fold for a byte-level or
    non-English tokenizer), counted with another model's tokenizer, or with another chat
    template than the run's `chat_template` (a base model's own may drop the tool calls or
    reasoning brightrun's ChatML writes). Names the command that recounts them."""
    same_model = dataset.tokens_counted and dataset.base_model == absolute_base_model(base_model)
    counted_template = dataset.counted_chat_template
    if same_model and counted_template == chat_template:
        return None
    import shlex

    template = ["--chat-template", chat_template] if chat_template != "model" or counted_template != "model" else []
    command = shlex.join(["brightrun", "dataset", "validate", dataset.name, "--base-model", base_model, *template])
    if same_model:
        counted = "brightrun's ChatML" if counted_template == "chatml" else "the base model's own chat template"
        written = "brightrun's ChatML (chat_template=chatml)" if chat_template == "chatml" else "the base model's own template"
        message = (f"dataset '{dataset.name}' has its token counts written with {counted}, and this run writes its "
                   f"conversations with {written}: the sequence lengths, duration, cost and memory follow the counts; "
                   f"count them as this run writes them: {command}")
    else:
        how = (f"counted with another model's tokenizer ({gguf.describe(dataset.base_model, short=True)})" if dataset.tokens_counted
               else "approximated (from characters and message counts: it was added without a base model)")
        message = (f"dataset '{dataset.name}' has its token counts {how}, not with {gguf.describe(base_model, short=True)}'s: the sequence lengths, "
                   f"duration, cost and memory follow them; count them with this model's tokenizer: {command}")
    return EstimateWarning(
        "token_counts_not_this_models", message,
        {"token_count_method": dataset.token_count_method, "counted_with": dataset.base_model,
         "counted_chat_template": counted_template, "command": command},
    )


def read_model_shape(base_model: str, config: dict | None = None) -> ModelShape:
    """The architecture from the base model's config.json: builtin:<name>, a local
    directory, or a Hugging Face id (from the local cache, or downloaded when online);
    or from `config`, that file's content read elsewhere."""
    if config is not None:
        return _shape_of(base_model, config)
    try:
        location = resolve_base_model(base_model)
    except ValueError as exc:
        raise UsageError(str(exc), "pick one of those names") from exc
    path = Path(location).expanduser()
    how = "pass a local model directory with --base-model, or download the model first"
    if path.is_dir():
        config_path: Path | str | None = path / "config.json"
    elif "/" in location and not location.startswith((".", "/", "~")):
        config_path = hub_config(location)
    else:
        raise UsageError(f"cannot read the config of base model '{base_model}': no such directory here",
                         "pass a local model directory, or for one on an SSH host estimate with "
                         "'brightrun train ... --host HOST --dry-run' (it reads the config there)")
    try:
        data = json.loads(Path(config_path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read the config of base model '{base_model}' ({config_path}): {exc}", how) from exc
    return _shape_of(base_model, data)


def _shape_of(base_model: str, data: Any) -> ModelShape:
    try:
        return ModelShape.from_config(data)
    except (KeyError, TypeError, ValueError, AttributeError, ZeroDivisionError) as exc:
        raise UsageError(f"base model '{base_model}': config.json lacks the architecture key {exc}", "use a decoder-only transformer with a standard config") from exc


def token_plan(dataset: DatasetRow, config: TrainingConfig) -> TokenPlan:
    """Per-epoch token counts as the trainer batches them (trainer/data.py): each
    conversation is one example truncated at max_seq_length. Packed, a micro-batch is its
    conversations end to end in one row with attention kept inside each (varlen), so no
    padding and attention over a conversation's length. Unpacked, rows are padded to
    the batch's longest: the length at quantile b/(b+1) of the length distribution.
    """
    stats = dataset.stats or {}
    dist = stats.get("tokens_per_conversation") or {}
    limit = config.max_seq_length
    # Examples the trainer learns from: a conversation each, or more where its template writes
    # reasoning only into the last turn (dataset_tokens.count_views); train_tokens counts them all.
    conversations = max(1, int(stats.get("train_examples") or stats.get("train_conversations")
                               or round((dataset.total_conversations or 1) * (1 - dataset.val_split))))
    raw_train = int(stats.get("train_tokens") or (dataset.total_tokens or 0) * (1 - dataset.val_split))
    raw_validation = int(stats.get("validation_tokens") or (dataset.total_tokens or 0) * dataset.val_split)
    raw_mean = max(1.0, raw_train / conversations)
    kept = _truncated_mean(dist, limit) / float(dist["mean"]) if dist.get("mean") else min(1.0, limit / raw_mean)
    train_tokens = int(raw_train * kept)
    mean_len = max(1.0, train_tokens / conversations)
    if config.packing:
        length, computed = mean_len, train_tokens
    else:
        longest = _quantile(dist, config.batch_size / (config.batch_size + 1)) if dist else 1.5 * raw_mean
        length = min(limit, max(mean_len, longest))
        computed = int(conversations * length)
    return TokenPlan(train_tokens=train_tokens, sequences=conversations, sequence_length=max(1, round(length)),
                     computed_tokens=max(1, computed), validation_tokens=int(raw_validation * kept))


def run_steps(steps_per_epoch: int, config: TrainingConfig) -> int:
    """The optimizer steps a run takes, as the trainer counts them: every epoch, or max_steps when fewer."""
    total = steps_per_epoch * config.num_epochs
    return min(total, config.max_steps) if config.max_steps is not None else total


def trainer_steps_per_epoch(conversations: int, config: TrainingConfig, devices: int) -> int:
    """The trainer's own count (trainer.loop.epoch_plan): micro-batches of batch_size, grouped
    by accumulation x devices; a last group with fewer micro-batches than devices is dropped."""
    micro = math.ceil(conversations / config.batch_size)
    full, rest = divmod(micro, config.gradient_accumulation_steps * devices)
    return max(1, full + (1 if rest >= devices else 0))


_QUANTILES = (("min", 0.0), ("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("max", 1.0))


def _quantile(dist: dict[str, float], q: float) -> float:
    """Length at quantile q, linear between the stored points (min, p50, p90, p99, max)."""
    return _quantiles(dist, [q])[0]


def _quantiles(dist: dict[str, float], qs: list[float]) -> list[float]:
    """_quantile at each of `qs` (ascending), the stored points read once."""
    points = [(at, float(dist[key])) for key, at in _QUANTILES if key in dist]
    if not points:
        return [float(dist.get("mean", 1.0))] * len(qs)
    out, segments, k = [], list(zip(points, points[1:])), 0
    for q in qs:
        while k < len(segments) and q > segments[k][1][0]:
            k += 1
        if k == len(segments):
            out.append(points[-1][1])
        else:
            (q0, v0), (q1, v1) = segments[k]
            out.append(v0 + (v1 - v0) * (q - q0) / (q1 - q0 or 1))
    return out


def _truncated_mean(dist: dict[str, float], limit: int) -> float:
    """Mean of min(length, limit) over the distribution: its lengths at 200 quantiles,
    rescaled so the untruncated mean matches the stored one."""
    samples = _quantiles(dist, [(i + 0.5) / 200 for i in range(200)])
    scale = float(dist["mean"]) / (sum(samples) / len(samples) or 1.0)
    return sum(min(v * scale, limit) for v in samples) / len(samples)


def assumed_utilization(gpu: Gpu, shape: ModelShape) -> float:
    """The share of the device's peak a LoRA run is assumed to reach before calibration.

    GPUs: the catalog's figure. CPUs: the catalog's figure is what large models reach;
    small ones reach less, as their matrices are too small to keep the vector units busy
    between the per-operation overheads. Measured on a 2-core AVX2 host (fp32, steps
    undisturbed by other load, `bench` of the real trainer): builtin:tiny (hidden 128)
    23% of peak, SmolLM2-135M (hidden 576) 58%; 0.65 x (1 - exp(-hidden / 290)) gives
    23% and 56%."""
    if normalize_gpu_name(gpu.name) != "cpu":
        return gpu.utilization
    return gpu.utilization * (1 - math.exp(-shape.hidden / CPU_HIDDEN_SCALE))


def _weight_bytes(config: TrainingConfig, gpu_name: str) -> int:
    if config.precision == "fp32" or (config.precision == "auto" and normalize_gpu_name(gpu_name) == "cpu"):
        return 4
    return 2


def _assumed_startup(shape: ModelShape, weight_bytes: int) -> float:
    return STARTUP_FIXED_S + shape.total_params * weight_bytes / WEIGHT_LOAD_BYTES_PER_S


def step_floor_s(shape: ModelShape, config: TrainingConfig, gpu_name: str, total_steps: int) -> float:
    """The least time `total_steps` optimizer steps take on a GPU whatever their FLOPs: kernel
    launches per layer per micro-batch, and the optimizer step (0 on a CPU)."""
    if normalize_gpu_name(gpu_name) == "cpu":
        return 0.0
    micro = config.gradient_accumulation_steps * (2 if config.gradient_checkpointing else 1)
    return total_steps * (micro * shape.layers * GPU_MICRO_STEP_S_PER_LAYER + GPU_OPTIMIZER_STEP_S)


def assumed_finish_s(shape: ModelShape, dataset: DatasetRow, gpu_name: str, device_flops_per_s: float) -> float:
    """Saving the adapter and the answer eval, before any run on this GPU type measured it:
    base and tuned answers to the held-out prompts (at most the eval's limit), decoded in
    batches for as many steps as the longest answers (about twice the mean turn), each
    step a per-layer floor plus its FLOPs."""
    from brightrun_cli.trainer.spec import DEFAULT_EVAL_LIMIT

    stats = dataset.stats or {}
    held_out = int(stats.get("validation_conversations") or dataset.total_validation_pairs or 0)
    samples = min(DEFAULT_EVAL_LIMIT, held_out)
    if samples == 0:
        return FINISH_FIXED_S
    answer_tokens = min(512, max(16, 2 * int(dataset.avg_tokens_per_turn or 64)))
    rows = min(samples, EVAL_BATCH)
    floor = DECODE_S_PER_LAYER["cpu" if normalize_gpu_name(gpu_name) == "cpu" else "gpu"] * shape.layers
    step_s = floor + 2 * shape.matmul_params_per_token * rows / device_flops_per_s
    batches = -(-samples // rows)
    return FINISH_FIXED_S + 2 * batches * answer_tokens * step_s


def _storage_cost(ws: Workspace, shape: ModelShape, config: TrainingConfig) -> float:
    """One month of the adapter (fp32 safetensors) on the blob store."""
    url = ws.config.storage_url or ""
    if "://" not in url or url.startswith("file://"):
        return 0.0
    adapter_gb = shape.lora_params(config.target_modules, config.lora_rank, dora=config.use_dora) * 4 / 1e9
    return adapter_gb * REMOTE_STORAGE_PRICE_GB_MONTH


# FSDP device counts the advice tries: up to 8 per host, more over several hosts.
FSDP_DEVICES = (2, 4, 8, 16, 32, 64)
GPUS_PER_HOST = 8
# A shorter max_seq_length is advice only while it keeps at least this share of the tokens.
MIN_KEPT_TOKENS = 0.5


class MemoryOption(msgspec.Struct, frozen=True):
    """One change that alone makes a run fit, and what a device then holds."""

    kind: str  # micro_batch, gradient_checkpointing, max_seq_length, fsdp, larger_gpu, gpu, quantization
    change: str  # what to do, as the user types or picks it
    needs: float  # bytes per device with the change
    settings: dict[str, Any] = msgspec.field(default_factory=dict)  # its --set values
    gpu: str | None = None  # the GPU type it runs on (None: this one)
    devices: int | None = None  # how many (None: as asked)
    kept_tokens: float | None = None  # a shorter max_seq_length: the share of training tokens it keeps

    @property
    def text(self) -> str:
        return f"{self.change} (needs {self.needs / GIB:.1f} GB)"

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "change": self.change, "needs_gb": round(self.needs / GIB, 2), "settings": self.settings,
                "gpu": self.gpu, "devices": self.devices, "kept_tokens": None if self.kept_tokens is None else round(self.kept_tokens, 3)}


class MemoryAdvice(msgspec.Struct, frozen=True):
    """Why a run does not fit (`needs` bytes per device against `capacity`) and what would."""

    needs: float
    capacity: float
    gpu: str
    options: list[MemoryOption]

    @property
    def text(self) -> str:
        head = f"needs {self.needs / GIB:.1f} GB per device, {self.gpu} has {self.capacity / GIB:g} GB"
        if not self.options:
            return f"{head}; nothing in the catalog holds it, even with FSDP over {FSDP_DEVICES[-1]} GPUs and gradient checkpointing"
        return f"{head}; it fits with " + "; or ".join(o.text for o in self.options)

    def to_json(self) -> dict[str, Any]:
        return {"needs_gb": round(self.needs / GIB, 2), "capacity_gb": round(self.capacity / GIB, 2),
                "options": [o.to_json() for o in self.options]}


def memory_advice(ws: Workspace, dataset: DatasetRow, shape: ModelShape, config: TrainingConfig, plan: TokenPlan,
                  gpu: Gpu, shards: int = 1) -> MemoryAdvice:
    """Why the run does not fit, and each change that alone would make it fit, with what a
    device then holds: a smaller micro-batch (same effective batch through accumulation),
    for DoRA lora_dropout=0, gradient checkpointing, a shorter max_seq_length (with the share of tokens it keeps),
    FSDP over more GPUs of this type, a GPU with more memory; on a CPU, the cheapest GPU
    that holds it; last a 4-bit base (QLoRA)."""
    capacity = gpu.memory_gb * GIB

    def need(cfg: TrainingConfig, device: Gpu = gpu, devices: int = shards) -> float:
        seq = plan.sequence_length if (cfg.max_seq_length, cfg.batch_size) == (config.max_seq_length, config.batch_size) \
            else token_plan(dataset, cfg).sequence_length
        return memory_need(shape, cfg, seq, weight_bytes=_weight_bytes(cfg, device.name), on_gpu=device.name != "cpu",
                           shards=devices).total

    def fits(cfg: TrainingConfig, device: Gpu = gpu, devices: int = shards) -> bool:
        return need(cfg, device, devices) <= device.memory_gb * GIB

    checkpointed = config.replace(gradient_checkpointing=True)
    variants = [(config, "")] + ([] if config.gradient_checkpointing else [(checkpointed, " with --set gradient_checkpointing=true")])
    options: list[MemoryOption] = []
    for batch in range(config.batch_size - 1, 0, -1):
        smaller = config.replace(batch_size=batch)
        if fits(smaller):
            accumulate = math.ceil(config.batch_size / batch) * config.gradient_accumulation_steps
            options.append(MemoryOption("micro_batch", f"--set batch_size={batch} --set gradient_accumulation_steps={accumulate}",
                                        need(smaller), {"batch_size": batch, "gradient_accumulation_steps": accumulate}))
            break
    if config.use_dora and config.lora_dropout > 0 and fits(undropped := config.replace(lora_dropout=0.0)):
        options.append(MemoryOption("lora_dropout", "--set lora_dropout=0 (DoRA then reuses each base output instead of a weight copy)",
                                    need(undropped), {"lora_dropout": 0.0}))
    if not config.gradient_checkpointing:
        if fits(checkpointed):
            options.append(MemoryOption("gradient_checkpointing", "--set gradient_checkpointing=true", need(checkpointed),
                                        {"gradient_checkpointing": True}))
        elif config.batch_size > 1 and fits(one := checkpointed.replace(batch_size=1)):
            accumulate = config.batch_size * config.gradient_accumulation_steps
            options.append(MemoryOption(
                "gradient_checkpointing",
                f"--set gradient_checkpointing=true --set batch_size=1 --set gradient_accumulation_steps={accumulate}", need(one),
                {"gradient_checkpointing": True, "batch_size": 1, "gradient_accumulation_steps": accumulate}))
    length = config.max_seq_length // 2
    while length >= 32:
        shorter = config.replace(max_seq_length=length)
        if fits(shorter):
            kept = token_plan(dataset, shorter).train_tokens / max(1, plan.train_tokens)
            if kept >= MIN_KEPT_TOKENS:
                options.append(MemoryOption("max_seq_length", f"--set max_seq_length={length} (keeps {kept:.0%} of the training tokens)",
                                            need(shorter), {"max_seq_length": length}, kept_tokens=kept))
            break
        length //= 2
    if not config.gradient_checkpointing and fits(checkpointed):
        variants = variants[:1]  # checkpointing alone does it here: more or other GPUs are for the config as is
    by_change = {how: cfg for cfg, how in variants}
    gpus = [g for g in list_gpus(ws) if g.name != "cpu"]
    if gpu.name != "cpu":
        fsdp = [(n, how) for cfg, how in variants for n in FSDP_DEVICES if n > shards and fits(cfg, gpu, n)]
        if fsdp:
            n, how = min(fsdp, key=lambda option: option[0])
            options.append(_fsdp_option(gpu, n, how, need(by_change[how], gpu, n)))
        bigger = [(g, how) for cfg, how in variants for g in gpus if g.memory_gb * GIB > capacity and fits(cfg, g, 1)]
        options += [MemoryOption("larger_gpu", f"a GPU with more memory: {g.name} ({g.memory_gb:g} GB){how}",
                                 need(by_change[how], g, 1), _settings(how), gpu=g.name, devices=1)
                    for g, how in _cheapest(bigger)]
    else:
        single = [(g, how) for cfg, how in variants for g in gpus if fits(cfg, g, 1)]
        options += [MemoryOption("gpu", f"a GPU: {g.name} ({g.memory_gb:g} GB){how} (see 'brightrun estimate --gpu {g.name}')",
                                 need(by_change[how], g, 1), _settings(how), gpu=g.name, devices=1)
                    for g, how in _cheapest(single)]
        if not single:
            sharded = [(g, n, how) for cfg, how in variants for g in gpus for n in FSDP_DEVICES if fits(cfg, g, n)]
            if sharded:
                g, n, how = min(sharded, key=lambda option: option[0].price_per_hour * option[1])
                options.append(_fsdp_option(g, n, how, need(by_change[how], g, n)))
    if config.quantization == "none" and shards == 1 and gpus:
        # bitsandbytes runs on CUDA only, and not under FSDP: on a CPU host, the cheapest GPU.
        device = gpu if gpu.name != "cpu" else min(gpus, key=lambda g: g.price_per_hour)
        tries = [("", config)] + ([] if config.gradient_checkpointing else [(" with --set gradient_checkpointing=true", checkpointed)])
        for how, cfg in tries:
            quantized = cfg.replace(quantization="4bit")
            if (gpu.name != "cpu" or not options) and fits(quantized, device, 1):
                where = "" if device is gpu else f" on a {device.name} ({device.memory_gb:g} GB)"
                options.append(MemoryOption("quantization", f"--set quantization=4bit{how}{where} (QLoRA: a 4-bit base, bitsandbytes on CUDA)",
                                            need(quantized, device, 1), {"quantization": "4bit", **_settings(how)},
                                            gpu=device.name, devices=1))
                break
    return MemoryAdvice(need(config), capacity, gpu.name, options)


def _settings(how: str) -> dict[str, Any]:
    return {"gradient_checkpointing": True} if "gradient_checkpointing" in how else {}


def _cheapest(candidates: list[tuple[Gpu, str]]) -> list[tuple[Gpu, str]]:
    """Of (GPU, change) candidates: the cheapest GPU for the config as is, and the cheapest
    with its change when that one is cheaper still."""
    as_is = [c for c in candidates if not c[1]]
    best = [min(as_is, key=lambda c: c[0].price_per_hour)] if as_is else []
    changed = [c for c in candidates if c[1] and (not best or c[0].price_per_hour < best[0][0].price_per_hour)]
    return best + ([min(changed, key=lambda c: c[0].price_per_hour)] if changed else [])


def _fsdp_option(gpu: Gpu, devices: int, how: str, needs: float) -> MemoryOption:
    hosts = "" if devices <= GPUS_PER_HOST else f", {devices // GPUS_PER_HOST} hosts in --hosts"
    return MemoryOption("fsdp", f"FSDP over {devices} x {gpu.name}{how} (--gpus {min(devices, GPUS_PER_HOST)}{hosts} and an FSDP --accelerate-config)",
                        needs, _settings(how), gpu=gpu.name, devices=devices)


def reference_estimate(dataset: DatasetRow, config: TrainingConfig, gpu: Gpu, devices: int) -> dict[str, Any] | None:
    """The reference's formula (fixed tokens/s per GPU type, fixed overheads), for the
    GPU types it priced; None for the others."""
    if gpu.reference_tokens_per_sec is None:
        return None
    pairs = dataset.total_training_pairs or 1000
    tokens = dataset.total_tokens or pairs * 200
    throughput = gpu.reference_tokens_per_sec * devices
    steps_per_epoch = math.ceil(pairs / config.batch_size)
    total_steps = steps_per_epoch * config.num_epochs
    seconds = total_steps * (tokens / pairs) * config.batch_size / throughput
    init, per_epoch, final = REFERENCE_OVERHEAD_S
    hours = (seconds + init + per_epoch * config.num_epochs + final) / 3600
    rate = gpu.price_per_hour * devices
    compute = rate * hours
    return {
        "description": ("the reference platform's formula, for comparison: a fixed tokens/s per GPU type plus fixed "
                        "overheads (10 min start, 5 min per epoch, 5 min final save) and $0.50 storage; the estimate "
                        "above models FLOPs on this base model and calibrates from your own completed runs"),
        "estimated_cost": round(compute + REFERENCE_STORAGE_COST, 2),
        "cost_breakdown": {"compute": round(compute, 2), "storage": REFERENCE_STORAGE_COST},
        "estimated_duration_hours": round(hours, 2),
        "hourly_rate": round(rate, 2),
        "training_details": {"total_steps": total_steps, "steps_per_epoch": steps_per_epoch,
                             "estimated_throughput_tokens_per_sec": throughput},
    }


def undisturbed(values: list[float]) -> list[float]:
    """The rates of `values` that nothing else slowed: those within SLOWED_BY of their 90th
    percentile. Other work on the machine only ever slows a step (or a whole run) down, by
    10-20x at times on a shared 2-core host, so slowed values are left out rather than
    averaged in; an undisturbed run keeps nearly all of its steps."""
    if not values:
        return []
    ordered = sorted(values)
    top = ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]
    return [v for v in values if v >= top / SLOWED_BY]


class Measured(msgspec.Struct, frozen=True):
    """One completed job as calibration sees it."""

    job_id: str
    device_flops_per_s: float  # steady-state training rate per device
    startup_s: float | None  # from its start to its first metric point (None: not measurable, e.g. resumed)
    finish_s: float | None = None  # from its last metric point to its completion


def calibrate(ws: Workspace, gpu: Gpu, shape: ModelShape, base_model: str | None) -> Calibration:
    """Measured per-device FLOP rate and start-up from completed jobs on `gpu`.

    Same base model first; failing that, models within 2x the parameter count. Each
    job's rate is its steady-state step throughput (`_measure`); across jobs the median
    of those that were not slowed (`undisturbed`: one run made while the machine was
    busy does not set the next estimates), and the median of their start-ups. On a CPU a
    run far below the assumed rate (CPU_PRIOR_TRUST) is left out even when it is the only
    one: starved all through, it has no quiet steps to keep.
    """
    wanted = normalize_gpu_name(gpu.name)
    with ws.registry.reading() as conn:
        pairs = [(g, m) for g, m in job_rows.measured_gpu_models(conn) if normalize_gpu_name(str(g)) == wanted]
        candidates = []
        for gpu_type in sorted({g for g, _ in pairs}):
            models = sorted({m for g, m in pairs if g == gpu_type})
            same = [m for m in models if m == base_model]
            candidates += job_rows.measured_on(conn, gpu_type, same or [m for m in models if _comparable(m, shape)], CALIBRATION_JOBS)
        candidates = sorted(candidates, key=lambda j: j.completed_at, reverse=True)[:CALIBRATION_JOBS]
        measured = [m for m in (_measure(conn, j) for j in candidates) if m is not None]
    found = len(measured)
    if wanted == "cpu":
        floor = gpu.bf16_tflops * 1e12 * assumed_utilization(gpu, shape) / CPU_PRIOR_TRUST
        measured = [m for m in measured if m.device_flops_per_s >= floor]
    if not measured:
        return Calibration(runs=0, job_ids=[], device_flops_per_s=None, startup_s=None, slowed=found)
    steady = undisturbed([m.device_flops_per_s for m in measured])
    kept = [m for m in measured if m.device_flops_per_s >= min(steady)]
    startups = [m.startup_s for m in kept if m.startup_s is not None]
    finishes = [m.finish_s for m in kept if m.finish_s is not None]
    return Calibration(
        runs=len(kept),
        job_ids=[m.job_id for m in kept],
        device_flops_per_s=_median(steady),
        startup_s=_median(startups) if startups else None,
        slowed=found - len(kept),
        finish_s=_median(finishes) if finishes else None,
    )


def _comparable(base_model: str, shape: ModelShape) -> bool:
    try:
        other = read_model_shape(base_model)
    except UsageError:
        return False
    ratio = other.total_params / shape.total_params
    return 1 / COMPARABLE_PARAMS_RATIO <= ratio <= COMPARABLE_PARAMS_RATIO


def _measure(conn: Any, job: JobRow) -> Measured | None:
    """One completed job's steady-state rate and start-up, or None when unusable.

    Rate: the median tokens/s of its undisturbed steps (the trainer times each step
    without the held-out evaluations), in this model's FLOPs. Start-up: from the job's
    start to its first metric point (the base model's held-out loss), less that
    evaluation's FLOPs at this rate. A job without step throughputs is charged its whole
    wall time less the assumed start-up."""
    try:
        config = validate({k: v for k, v in job.hyperparameters.items() if k in FIELDS})
        shape = read_model_shape(job.base_model)
        dataset = dataset_rows.get(conn, job.dataset_id)
    except (UsageError, ValueError, msgspec.ValidationError):
        return None
    if dataset is None:
        return None
    plan = token_plan(dataset, config)
    wall = (job.completed_at - job.started_at).total_seconds()
    devices = lifecycle.devices(job)
    fpt = train_flops_per_token(shape, config, plan.sequence_length)
    base_eval_flops = plan.validation_tokens * eval_flops_per_token(shape, config, plan.sequence_length)
    # FLOPs as this model plans them (padding included); the trainer's tokens/s counts
    # its own tokens, so its rate is scaled by planned/counted to stay in one unit.
    steps_per_epoch = trainer_steps_per_epoch(plan.sequences, config, devices)
    max_steps = (job.spec or {}).get("max_steps")  # a run cut short by max_steps planned fewer tokens
    planned_tokens = plan.computed_tokens * run_steps(steps_per_epoch, config.replace(max_steps=max_steps)) / steps_per_epoch
    rates = undisturbed(point_rows.train_throughputs(conn, job.id))
    ended_training = point_rows.last_time(conn, job.id)
    finish = ((job.completed_at - ended_training).total_seconds()
              if ended_training is not None and job.started_at <= ended_training <= job.completed_at else None)
    startup: float | None
    if rates:
        flops_per_s = _median(rates) * fpt * planned_tokens / job.tokens_processed
        first = point_rows.first(conn, job.id)
        startup = None
        if first is not None and first.timestamp >= job.started_at:
            startup = (first.timestamp - job.started_at).total_seconds()
            if first.step == 0 and first.split == "validation":
                startup = max(0.0, startup - base_eval_flops / flops_per_s)
    else:
        startup = _assumed_startup(shape, _weight_bytes(config, str(job.gpu_config.get("type", ""))))
        if wall <= startup + (finish or 0.0):
            return None
        flops_per_s = (planned_tokens * fpt + (config.num_epochs + 1) * base_eval_flops) / (wall - startup - (finish or 0.0))
    scale = devices * (MULTI_DEVICE_EFFICIENCY ** (devices - 1))
    return Measured(job.id, flops_per_s / scale, startup, finish)
