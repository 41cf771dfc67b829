"""setup -> fit: the LoRA training loop.

Data order is a pure function of (seed, epoch), so every process computes the same plan
of micro-batches and a resumed run knows where it is from the step number alone. Loss
is the mean over the step's assistant tokens across all micro-batches and processes
(not a mean of per-batch means), which makes packed, padded, accumulated and
distributed runs compute the same quantity.

Under an FSDP or DeepSpeed accelerate config (`Run.sharded`) no process holds the whole
model: every process takes part in evaluation forwards, in gathering the adapter's
state dict for saving, and in checkpoints (FSDP: torch.distributed.checkpoint of the
LoRA weights and optimizer state; DeepSpeed: the engine's own, via accelerate).
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import random
import shutil
import signal
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from . import attention, loss as fused_loss
from .data import FALLBACK_CHAT_TEMPLATE, IGNORE, Batch, Example, collate, ensure_chat_template, tokenize_file
from .files import MetricsWriter, library_versions, write_json_atomic
from .schedule import warmup_for
from .spec import SHARDED_TYPES, Spec, SpecError


class Stopped(Exception):
    """SIGTERM arrived; a checkpoint has been saved (exit 75)."""


@dataclass
class State:
    step: int = 0
    tokens_seen: int = 0
    base_validation_loss: float | None = None
    validation_loss: float | None = None
    training_loss: float | None = None
    epochs_validated: list[int] = field(default_factory=list)


@dataclass
class Run:
    spec: Spec
    accelerator: object
    log: object
    tokenizer: object
    model: object
    optimizer: object
    scheduler: object
    train: list[Example]
    validation: list[Example]
    steps_per_epoch: int
    total_steps: int
    metrics: MetricsWriter
    sharded: bool = False  # FSDP or DeepSpeed owns the parameters
    head: object = None  # the output layer when the loss fuses it with cross-entropy (trainer/loss.py)
    state: State = field(default_factory=State)
    stop_requested: bool = False


# ---------------------------------------------------------------- model loading


def whole_message(exc: BaseException) -> str:
    """A library exception's whole message on one line: transformers explains a missing
    tokenizer or model over several lines, and the first alone ("Couldn't instantiate the
    backend tokenizer from one of:") says nothing."""
    return " ".join(line.strip() for line in str(exc).splitlines() if line.strip()) or type(exc).__name__


def check_base_model(name: str) -> str:
    """Resolve builtin names and make sure the model exists and is a causal LM, before loading weights."""
    from brightrun_cli.builtin import resolve_base_model
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    try:
        path = resolve_base_model(name)
    except ValueError as exc:
        raise SpecError(str(exc)) from None
    try:
        config = AutoConfig.from_pretrained(path)
    except Exception as exc:  # OSError / ValueError / hub errors all mean "cannot find it"
        raise SpecError(
            f"cannot load base model {name!r}: not a model directory, a built-in name (builtin:tiny) "
            f"or a Hugging Face id reachable from this machine ({whole_message(exc)})"
        ) from None
    if config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise SpecError(f"base model {name!r} ({config.model_type}) is not a causal language model")
    return path


def _precision(spec: Spec) -> str:
    wanted = spec.hyperparameters.precision
    if wanted == "auto":
        if torch.cuda.is_available():
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "fp32"
    if wanted == "fp16" and not torch.cuda.is_available():
        raise SpecError("hyperparameters.precision = fp16 needs a CUDA GPU; use auto, bf16 or fp32")
    return wanted


def _attn_implementation(packing: bool) -> str:
    if packing and torch.cuda.is_available():
        import importlib.util

        if importlib.util.find_spec("flash_attn") is not None:
            return "flash_attention_2"
    return attention.register() if packing else "sdpa"


def check_quantization(spec: Spec) -> None:
    """QLoRA needs bitsandbytes on a CUDA GPU: said before anything loads. bitsandbytes has
    CPU kernels too, but there they dequantise at every matmul, slower than fp32 weights,
    and a CPU host is not short of the memory quantisation saves."""
    kind = spec.hyperparameters.quantization
    if kind == "none":
        return
    if not torch.cuda.is_available():
        raise SpecError(f"hyperparameters.quantization = {kind} needs a CUDA GPU (bitsandbytes), and this host has none; "
                        "run it on a GPU host, or set quantization=none")
    from brightrun_cli.generation.quantization import bitsandbytes_installed

    if not bitsandbytes_installed():
        raise SpecError(f"hyperparameters.quantization = {kind} needs bitsandbytes, which is not installed on this host: "
                        "run 'pip install bitsandbytes' there, or set quantization=none")


def load_base(spec: Spec, path: str, precision: str, log, device=None):
    """The base model as it trains: dtype, quantisation, attention kernel, Liger kernels, checkpointing."""
    from transformers import AutoModelForCausalLM

    hp = spec.hyperparameters
    # Frozen base weights may live in bf16 on a GPU; the trainable LoRA weights stay fp32.
    # FSDP flattens and all-gathers each unit's parameters in one dtype, so there the base
    # stays fp32 and FSDP's mixed-precision policy (from `precision`) casts for compute.
    sharded_fsdp = spec.accelerate_config is not None and spec.accelerate_config.distributed_type == "FSDP"
    bf16_base = precision == "bf16" and torch.cuda.is_available() and not sharded_fsdp
    dtype = torch.bfloat16 if bf16_base else torch.float32
    impl = _attn_implementation(hp.packing)
    extra = {}
    if hp.quantization != "none":
        from brightrun_cli.generation.quantization import bnb_config

        # The quantised linears compute in the run's precision; the rest of the base (embeddings,
        # head, norms) is held in it. Loaded straight onto this process's device: bitsandbytes
        # quantises while placing the weights, and accelerate keeps a quantised model where it is.
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
        extra = {"quantization_config": bnb_config(hp.quantization, dtype), "device_map": {"": device}}
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation=impl, **extra)
    max_positions = getattr(model.config, "max_position_embeddings", None)
    if max_positions and hp.max_seq_length > max_positions:
        raise SpecError(
            f"hyperparameters.max_seq_length = {hp.max_seq_length} exceeds the base model's context "
            f"({max_positions}); lower it"
        )
    _apply_liger(model, log)
    model.config.use_cache = False
    if hp.quantization != "none":
        _prepare_quantized(model, dtype, hp.gradient_checkpointing)
    elif hp.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    _check_targets(hp.target_modules, model)
    log.info("base model %s loaded: attention=%s, dtype=%s%s", spec.base_model, impl, dtype,
             f", quantization={hp.quantization} (bitsandbytes)" if hp.quantization != "none" else "")
    return model


def _prepare_quantized(model, dtype, checkpointing: bool) -> None:
    """peft's preparation of a k-bit base (frozen weights, checkpointing with input gradients).
    It also upcasts every non-quantised weight to fp32, which guards fp16 compute against
    overflow; with bf16 (fp32's exponent range) those weights go back to bf16, as axolotl and
    unsloth keep them: the fp32 copies would double the embeddings' and head's memory and
    turn the residual stream into fp32 activations for nothing."""
    from peft import prepare_model_for_kbit_training

    prepare_model_for_kbit_training(model, use_gradient_checkpointing=checkpointing,
                                    gradient_checkpointing_kwargs={"use_reentrant": False})
    if dtype == torch.bfloat16:
        for param in model.parameters():
            if param.dtype == torch.float32:
                param.data = param.data.to(dtype)


def _check_targets(targets: list[str] | str, model) -> None:
    """peft's rule for a list of names (a module is targeted when its name is one of them or
    ends in "." + one), checked before anything is written: with none matching, peft refuses."""
    if isinstance(targets, str):  # all-linear
        return
    names = [name for name, _ in model.named_modules()]
    if not any(name == t or name.endswith("." + t) for name in names for t in targets):
        linear = sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                         if isinstance(module, torch.nn.Linear)})
        raise SpecError(f"hyperparameters.target_modules: no module of the base model is named {', '.join(targets)} "
                        f"(its linear layers: {', '.join(linear)}; or use all-linear)")


def attach_lora(spec: Spec, model, log):
    """Wrap the base in a fresh LoRA adapter (peft): only its fp32 weights train."""
    from peft import LoraConfig, get_peft_model

    hp = spec.hyperparameters
    lora = LoraConfig(
        r=hp.lora_rank, lora_alpha=hp.lora_alpha, lora_dropout=hp.lora_dropout,
        target_modules=hp.target_modules, bias="none", task_type="CAUSAL_LM",
        use_dora=hp.use_dora, use_rslora=hp.use_rslora,
    )
    try:
        model = get_peft_model(model, lora)
    except ValueError as exc:
        raise SpecError(f"hyperparameters.target_modules: {whole_message(exc)}") from None
    for p in model.parameters():
        if p.requires_grad:
            p.data = p.data.float()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    variant = "".join([", DoRA" if hp.use_dora else "", ", rsLoRA" if hp.use_rslora else ""])
    log.info("model %s: %d parameters, %d trainable (LoRA r=%d%s)", spec.base_model, total, trainable, hp.lora_rank, variant)
    return model


def compile_layers(model, log) -> None:
    """torch.compile each decoder layer in place (regional compilation: one graph, compiled
    once, reused by every layer; the packed row's length varies per step, hence dynamic
    shapes rather than a recompile per length)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    decoder = base.get_decoder() if hasattr(base, "get_decoder") else None
    layers = getattr(decoder, "layers", None)
    if not isinstance(layers, torch.nn.ModuleList):
        log.info("compile_layers: no decoder layer list found on %s; running uncompiled", type(base).__name__)
        return
    for layer in layers:
        layer.compile(dynamic=True)
    log.info("compile_layers: %d decoder layers compiled with torch.compile", len(layers))


def _apply_liger(model, log) -> None:
    """Fused Triton kernels (RMSNorm, RoPE, SwiGLU) on CUDA when liger-kernel is installed."""
    if not torch.cuda.is_available():
        return
    try:
        from liger_kernel.transformers import _apply_liger_kernel_to_instance
    except ImportError:
        return
    _apply_liger_kernel_to_instance(model=model, cross_entropy=False, fused_linear_cross_entropy=False)
    log.info("liger kernels applied")


# ---------------------------------------------------------------- data plan

def epoch_plan(n_examples: int, batch_size: int, accumulation: int, world: int, seed: int, epoch: int) -> list[list[list[int]]]:
    """Steps of this epoch; each step is `world` groups (one per process) of micro-batches of indices.

    A final partial step keeps as many micro-batches as every process can get the same
    number of (a process without a micro-batch would stall the others).
    """
    order = torch.randperm(n_examples, generator=torch.Generator().manual_seed(seed * 1000 + epoch)).tolist()
    micro = [order[i : i + batch_size] for i in range(0, n_examples, batch_size)]
    per_step = accumulation * world
    steps = []
    for i in range(0, len(micro), per_step):
        group = micro[i : i + per_step]
        per_rank = len(group) // world
        if per_rank:
            steps.append([group[r * per_rank : (r + 1) * per_rank] for r in range(world)])
    return steps


def lr_lambda(warmup: int, total: int, kind: str):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if kind == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.5 * (1 + math.cos(math.pi * progress)) if kind == "cosine" else 1.0 - progress

    return factor


# ---------------------------------------------------------------- setup

def check_engine_installed(spec: Spec) -> None:
    """A DeepSpeed config needs the deepspeed package on the host that trains; say so before anything loads."""
    config = spec.accelerate_config
    if config is not None and config.distributed_type == "DEEPSPEED" and importlib.util.find_spec("deepspeed") is None:
        raise SpecError(f"accelerate config {config.path.name} asks for DeepSpeed, which is not installed on this host: "
                        "run 'pip install deepspeed' there, or use an FSDP config")


def check_distributed_type(spec: Spec, accelerator) -> None:
    """The processes must run the way the accelerate config asks: a silent DDP fallback is refused."""
    config = spec.accelerate_config
    got = accelerator.distributed_type.value
    if config is not None and config.sharded and got != config.distributed_type:
        raise SpecError(
            f"accelerate config {config.path.name} asks for {config.distributed_type}, but accelerate set up {got} here: "
            "accelerate shards only on GPUs (on a CPU-only host it falls back to DDP) and only under "
            "'accelerate launch --config_file'; run it on a GPU host or leave the config out"
        )


def _deepspeed_settings(accelerator, hp) -> None:
    """Fill DeepSpeed's `auto` values from the spec (no dataloader is prepared, so accelerate cannot).

    The loop marks gradient-accumulation boundaries itself (`sync_gradients`), so DeepSpeed
    accumulates over one "step" of its own; an explicit value that disagrees with the spec is refused.
    """
    config = accelerator.state.deepspeed_plugin.deepspeed_config
    wanted = {"train_micro_batch_size_per_gpu": hp.batch_size, "gradient_accumulation_steps": 1,
              "gradient_clipping": hp.max_grad_norm}
    for key, value in wanted.items():
        current = config.get(key, "auto")
        if current == "auto":
            config[key] = value
        elif float(current) != float(value):
            raise SpecError(f"the accelerate config's DeepSpeed settings set {key} = {current}, which brightrun sets "
                            f"itself ({value}, from the spec's batch_size, gradient_accumulation_steps and "
                            "max_grad_norm): remove it or set it to auto")


def setup(spec: Spec, log) -> Run:
    from accelerate import Accelerator

    hp = spec.hyperparameters
    precision = _precision(spec)
    check_engine_installed(spec)
    check_quantization(spec)
    # Without CUDA, accelerate only sets up gloo DDP across launched processes when told it is on CPU
    # (and told so, it never sets up FSDP or DeepSpeed).
    wants_sharding = spec.accelerate_config is not None and spec.accelerate_config.sharded
    cpu_ddp = not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1 and not wants_sharding
    # The loop steps the scheduler once per optimizer step (a prepared one, under DeepSpeed, would
    # otherwise step once per process).
    accelerator = Accelerator(cpu=cpu_ddp, mixed_precision={"fp32": "no"}.get(precision, precision),
                              step_scheduler_with_optimizer=False)
    check_distributed_type(spec, accelerator)
    if accelerator.device.type == "cpu":
        local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // local))
    log.info("%d process(es), device %s, precision %s, %s", accelerator.num_processes, accelerator.device, precision,
             accelerator.distributed_type.value)
    path = check_base_model(spec.base_model)

    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except Exception as exc:  # missing/corrupt tokenizer files raise assorted types
        raise SpecError(f"cannot load the tokenizer of {spec.base_model!r}: {whole_message(exc)}") from None
    if not tokenizer.is_fast:
        raise SpecError(f"base model {spec.base_model!r} has no fast tokenizer (needed for assistant-token masks)")
    if hp.chat_template == "chatml":
        tokenizer.chat_template = FALLBACK_CHAT_TEMPLATE  # saved with the adapter: evals and `models try` write as trained
    ensure_chat_template(tokenizer)
    counts: dict[str, int] = {}
    train, truncated = tokenize_file(tokenizer, spec.train_file, hp.max_seq_length, hp.assistant_only_loss, counts)
    validation = []
    if spec.validation_file is not None:
        validation, _ = tokenize_file(tokenizer, spec.validation_file, hp.max_seq_length, hp.assistant_only_loss)
    log.info("data: %d training conversations (%d truncated to %d tokens), %d held-out",
             len(train), truncated, hp.max_seq_length, len(validation))
    if counts.get("reasoning_copies"):
        log.info("data: the chat template writes reasoning only into a conversation's last turn, so %d earlier "
                 "turns with reasoning are each learned from a copy of the conversation that ends with them "
                 "(%d examples from %d conversations)", counts["reasoning_copies"], len(train), counts["conversations"])

    steps_per_epoch = len(epoch_plan(len(train), hp.batch_size, hp.gradient_accumulation_steps,
                                     accelerator.num_processes, spec.seed, 0))
    if steps_per_epoch == 0:
        raise SpecError(f"{len(train)} training conversations are too few for {accelerator.num_processes} processes")
    total_steps = steps_per_epoch * hp.num_epochs
    if spec.max_steps is not None:
        total_steps = min(total_steps, spec.max_steps)

    random.seed(spec.seed)
    torch.manual_seed(spec.seed)
    model = load_base(spec, path, precision, log, device=accelerator.device)
    # The fused loss reads the head's weight outside the forward: not where FSDP/DeepSpeed shard it.
    head = fused_loss.fusable_head(model) if hp.fused_cross_entropy and not wants_sharding else None
    metrics = MetricsWriter(spec.output_dir / "metrics.jsonl", accelerator.is_main_process)
    state = State()
    _evaluate_base_early(spec, accelerator, model, validation, tokenizer, state, metrics, total_steps, log, head)
    model = attach_lora(spec, model, log)
    head = head if fused_loss.frozen(head) else None
    if hp.compile_layers:
        compile_layers(model, log)
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    groups = [{"params": decay, "weight_decay": hp.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # No empty group (LoRA has no 1-D weights): DeepSpeed drops them, and the scheduler must see the same groups.
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=hp.learning_rate, betas=(0.9, 0.999), eps=1e-8)
    warmup = warmup_for(hp.warmup_steps, hp.max_warmup_fraction, total_steps)
    log.info("schedule: %d steps, the first %d warming up, then %s", total_steps, warmup, hp.lr_scheduler)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(warmup, total_steps, hp.lr_scheduler))
    if accelerator.distributed_type.value == "DEEPSPEED":
        # accelerate builds DeepSpeed's engine from the model, optimizer and scheduler prepared
        # together; a torch scheduler stays ours to step (only DeepSpeed's own are stepped by the engine).
        _deepspeed_settings(accelerator, hp)
        model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    else:
        model, optimizer = accelerator.prepare(model, optimizer)
    sharded = accelerator.distributed_type.value in SHARDED_TYPES
    if head is not None:
        log.info("loss: output layer fused with cross-entropy (%s)",
                 "Liger kernel" if accelerator.device.type == "cuda" and fused_loss._liger() is not None else "torch chunks")
    return Run(spec, accelerator, log, tokenizer, model, optimizer, scheduler, train, validation,
               steps_per_epoch, total_steps, metrics, sharded, head, state)


def _evaluate_base_early(spec: Spec, accelerator, model, validation, tokenizer, state: State, metrics,
                         total_steps: int, log, head=None) -> None:
    """The step-0 held-out loss, measured on the base model before the adapter is attached.

    A fresh LoRA adapter adds exactly zero (its B matrices start at zero), so this is the
    loss training starts from; measured here, the job's first metric point does not wait
    for peft's import and the wrapping. Not for a resumed run (its step 0 is long past)
    nor under FSDP/DeepSpeed (only the sharded model fits). Once it ran, `state` has the
    base loss, and `fit` does not measure it again."""
    if (not validation or accelerator.distributed_type.value in SHARDED_TYPES
            or (spec.resume and _checkpoints(spec.output_dir))):
        return
    if spec.hyperparameters.quantization == "none":  # a quantised base was loaded onto its device
        model.to(accelerator.device)
    loss = evaluate_model(accelerator, model, validation, spec.hyperparameters.batch_size, tokenizer.pad_token_id,
                          sharded=False, head=head)
    _record_validation(state, metrics, log, loss, 0.0, total_steps)


# ---------------------------------------------------------------- forward

def batch_loss_sum(acc, batch: Batch, model, head=None, offload: bool = False) -> tuple[torch.Tensor, int]:
    """Summed cross-entropy over the batch's target tokens (logits only where there is a target).

    head: the model's output layer, to fuse it with the loss (trainer/loss.py) instead of
    materialising the logits. offload: tensors saved for the backward pass go to CPU memory
    (pinned on CUDA) and come back when the backward needs them."""
    device = acc.device
    inputs = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in batch.model_inputs().items()}
    targets = batch.targets.to(device)
    keep = targets[targets != IGNORE]
    saved = (torch.autograd.graph.save_on_cpu(pin_memory=device.type == "cuda")
             if offload and torch.is_grad_enabled() else _nullcontext())
    with saved, acc.autocast():
        if head is None:
            logits = model(**inputs).logits
            loss = torch.nn.functional.cross_entropy(batch.target_logits(logits).float(), keep, reduction="sum")
        else:
            with fused_loss.head_inputs(head) as taken:
                model(**inputs)
            loss = fused_loss.linear_cross_entropy_sum(batch.target_logits(taken[0]), head.weight.detach(), keep)
    return loss, int(keep.numel())


def evaluate(run: Run) -> float | None:
    return evaluate_model(run.accelerator, run.model, run.validation, run.spec.hyperparameters.batch_size,
                          run.tokenizer.pad_token_id, run.sharded, run.head)


@torch.no_grad()
def evaluate_model(acc, model, validation: list[Example], batch_size: int, pad_id: int, sharded: bool,
                   head=None) -> float | None:
    """Mean held-out loss per target token over all processes (None without held-out data)."""
    if not validation:
        return None
    wrapped = model
    wrapped.eval()
    order = sorted(range(len(validation)), key=lambda i: len(validation[i].input_ids))
    size = batch_size * 4
    chunks = [order[i : i + size] for i in range(0, len(order), size)]
    mine = chunks[acc.process_index :: acc.num_processes]
    if sharded:
        # Each forward of a sharded model gathers parameters from every process: all make the
        # same number of calls, a process out of chunks repeating the first one with weight 0.
        rounds = math.ceil(len(chunks) / acc.num_processes)
        mine = [(chunk, 1.0) for chunk in mine] + [(chunks[0], 0.0)] * (rounds - len(mine))
    else:
        # The unwrapped model: a DDP forward would wait for processes that have no chunk left.
        model, mine = acc.unwrap_model(model), [(chunk, 1.0) for chunk in mine]
    total = torch.zeros(2, dtype=torch.float64, device=acc.device)
    for chunk, weight in mine:
        batch = collate([validation[i] for i in chunk], True, pad_id)
        loss, count = batch_loss_sum(acc, batch, model, head)
        total += torch.tensor([loss.item() * weight, count * weight], dtype=torch.float64, device=acc.device)
    total = acc.reduce(total, reduction="sum")
    wrapped.train()
    return float(total[0] / total[1])


def _gpu_stats() -> tuple[float | None, float | None]:
    if not torch.cuda.is_available():
        return None, None
    try:
        utilization = float(torch.cuda.utilization())
    except Exception:  # needs pynvml / NVML; absent on some hosts
        utilization = None
    return utilization, round(torch.cuda.max_memory_allocated() / 2**30, 3)


def train_step(run: Run, micro_batches: list[list[int]], step_tokens: int) -> tuple[float, float, int, bool]:
    """One optimizer step over this process's micro-batches.

    Returns the mean loss over all processes' target tokens, the grad norm, the real tokens
    processed by all processes, and whether any process has been asked to stop (so all
    processes agree on when to checkpoint).
    """
    acc, hp = run.accelerator, run.spec.hyperparameters
    loss_sum, real = 0.0, 0
    for i, indices in enumerate(micro_batches):
        batch = collate([run.train[j] for j in indices], hp.packing, run.tokenizer.pad_token_id)
        real += batch.real_tokens
        last = i == len(micro_batches) - 1
        # DeepSpeed's engine steps at the backward marked as the boundary; the optimizer wrapper
        # of the other modes steps only when it is set, which it is after the last micro-batch.
        acc.sync_gradients = last
        sync = acc.no_sync(run.model) if not last else _nullcontext()
        with sync:
            loss, _ = batch_loss_sum(acc, batch, run.model, run.head, hp.activation_offload)
            # DDP averages gradients over processes; scaling by world size makes the result the
            # gradient of the mean over every target token of the step, on every process.
            acc.backward(loss * acc.num_processes / step_tokens)
        loss_sum += loss.item()
    # An infinite bound measures the norm without clipping; FSDP's shards and DeepSpeed's engine
    # (which clipped at its boundary, from gradient_clipping) report the global norm.
    norm = acc.clip_grad_norm_(run.model.parameters(), hp.max_grad_norm if hp.max_grad_norm > 0 else math.inf)
    grad_norm = float(norm) if norm is not None else math.nan
    run.optimizer.step()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    shared = torch.tensor([loss_sum, real, float(run.stop_requested)], dtype=torch.float64, device=acc.device)
    shared = acc.reduce(shared, reduction="sum")
    return float(shared[0]) / step_tokens, grad_norm, int(shared[1]), bool(shared[2] > 0)


PROFILE_ENV = "BRIGHTRUN_PROFILE_STEP"


def _profile_step(log) -> int | None:
    """The optimizer step to profile, from BRIGHTRUN_PROFILE_STEP (1 is the first step; a
    later one leaves start-up and compiling out), or None."""
    value = os.environ.get(PROFILE_ENV, "").strip()
    if not value:
        return None
    if not value.isdigit() or int(value) < 1:
        log.info("%s=%s ignored: give the number of an optimizer step (1, 2, ...)", PROFILE_ENV, value)
        return None
    return int(value)


def profiled_step(run: Run, micro_batches: list[list[int]], step_tokens: int) -> tuple[float, float, int, bool]:
    """train_step under torch.profiler; writes profile.txt beside the metrics: the step's wall
    time, how much of it the GPU was busy and with how many kernels, and the operators that
    took the most device (or, without a GPU, CPU) time. For a step far from its FLOP floor:
    a GPU idle between kernels points at the host (launches, syncs), a busy one at kernels."""
    from torch.profiler import ProfilerActivity, profile

    cuda = torch.cuda.is_available()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    if cuda:
        torch.cuda.synchronize()
    started = time.perf_counter()
    with profile(activities=activities, record_shapes=False) as prof:
        result = train_step(run, micro_batches, step_tokens)
        if cuda:
            torch.cuda.synchronize()
    wall = time.perf_counter() - started
    events = prof.events()
    kernels = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA] if cuda else []
    busy = sum(e.time_range.elapsed_us() for e in kernels) / 1e6
    sort = "self_device_time_total" if cuda else "self_cpu_time_total"
    table = prof.key_averages().table(sort_by=sort, row_limit=40)
    summary = (f"step {run.state.step + 1}: {wall:.3f} s wall, {result[2]} real tokens"
               + (f"; GPU busy {busy:.3f} s ({busy / wall:.0%}) in {len(kernels)} kernels" if cuda else ""))
    path = run.spec.output_dir / "profile.txt"
    path.write_text(summary + "\n\n" + table + "\n")
    run.log.info("profile of %s, written to %s", summary, path)
    return result


class _nullcontext:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


# ---------------------------------------------------------------- checkpoints

KEEP_CHECKPOINTS = 2  # the newest (what resume loads) and the one before it


def _checkpoints(run_dir: Path) -> list[Path]:
    found = [p for p in (run_dir / "checkpoints").glob("step-*") if p.name.split("-", 1)[1].isdigit()]
    return sorted(found, key=lambda p: int(p.name.split("-", 1)[1]))


def save_checkpoint(run: Run) -> Path:
    acc = run.accelerator
    root = run.spec.output_dir / "checkpoints"
    final = root / f"step-{run.state.step}"
    tmp = root / f".tmp-step-{run.state.step}"
    if acc.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        if not run.sharded:
            write_adapter(acc.unwrap_model(run.model), None, tmp)
            torch.save(run.optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(run.scheduler.state_dict(), tmp / "scheduler.pt")
        write_json_atomic(tmp / "state.json", run.state.__dict__)
    acc.wait_for_everyone()
    if run.sharded:
        _save_sharded(run, tmp)
    rng = {"torch": torch.get_rng_state(), "python": json.dumps(random.getstate())}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state()
    torch.save(rng, tmp / f"rng-{acc.process_index}.pt")
    acc.wait_for_everyone()
    if acc.is_main_process:
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for old in _checkpoints(run.spec.output_dir)[:-KEEP_CHECKPOINTS]:  # periodic saves would pile up
            shutil.rmtree(old, ignore_errors=True)
    acc.wait_for_everyone()
    run.log.info("checkpoint saved: %s", final)
    return final


SHARDED_DIR = "sharded"  # FSDP checkpoints: torch.distributed.checkpoint files of the LoRA weights + optimizer


def _dcp_state(run: Run):
    """The trainable (LoRA) weights and their optimizer state as torch.distributed.checkpoint
    state dicts: each process holds its shards, the frozen base is left out."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    options = StateDictOptions(ignore_frozen_params=True)
    model_state, optim_state = get_state_dict(run.model, run.optimizer.optimizer, options=options)
    return {"model": model_state, "optimizer": optim_state}, options


def _save_sharded(run: Run, path: Path) -> None:
    """A checkpoint holds the LoRA weights and their optimizer state only: the frozen base
    is in the base model already, and writing it would make a cancel of a 70B job write
    140 GB inside the 30 s grace. Under FSDP through torch.distributed.checkpoint; under
    DeepSpeed the engine's own checkpoint (its state belongs to the engine), told to
    leave the frozen parameters out."""
    if run.accelerator.distributed_type.value != "FSDP":
        import inspect

        # As transformers' Trainer does for a PEFT model (DeepSpeed >= 0.10 takes the flag).
        takes = "exclude_frozen_parameters" in inspect.signature(run.model.save_checkpoint).parameters
        run.accelerator.save_state(str(path), **({"exclude_frozen_parameters": True} if takes else {}))
        return
    import torch.distributed.checkpoint as dcp

    state, _ = _dcp_state(run)
    dcp.save(state, checkpoint_id=str(path / SHARDED_DIR))


def _load_sharded(run: Run, path: Path) -> None:
    if run.accelerator.distributed_type.value != "FSDP":
        # The frozen base is not in the checkpoint: the module loads non-strict (the LoRA
        # weights come back with it, and with the optimizer's fp32 copies).
        run.accelerator.load_state(str(path), load_module_strict=False)
        return
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_state_dict

    state, options = _dcp_state(run)
    # dcp.load fails on any trainable tensor the checkpoint lacks; the frozen base is not in
    # it by design, hence a non-strict model load.
    dcp.load(state, checkpoint_id=str(path / SHARDED_DIR))
    set_state_dict(run.model, run.optimizer.optimizer, model_state_dict=state["model"],
                   optim_state_dict=state["optimizer"], options=replace(options, strict=False))


def _restore_python_rng(serialized: str) -> None:
    version, internal, gauss = json.loads(serialized)
    random.setstate((version, tuple(internal), gauss))


def load_checkpoint(run: Run) -> bool:
    """Restore the newest complete checkpoint; False when there is none."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    found = _checkpoints(run.spec.output_dir)
    if not found:
        return False
    path, acc = found[-1], run.accelerator
    if run.sharded:
        _load_sharded(run, path)
    else:
        set_peft_model_state_dict(acc.unwrap_model(run.model), load_file(str(path / "adapter_model.safetensors")))
        run.optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True, map_location=acc.device))
    run.scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    run.state = State(**json.loads((path / "state.json").read_text()))
    rng_file = path / f"rng-{acc.process_index}.pt"
    if rng_file.exists():
        rng = torch.load(rng_file, weights_only=True)
        torch.set_rng_state(rng["torch"])
        _restore_python_rng(rng["python"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state(rng["cuda"])
    run.log.info("resumed from %s (step %d of %d)", path, run.state.step, run.total_steps)
    return True


# ---------------------------------------------------------------- fit

def _validate(run: Run, epoch: float) -> None:
    _record_validation(run.state, run.metrics, run.log, evaluate(run), epoch, run.total_steps)


def _record_validation(state: State, metrics, log, loss: float | None, epoch: float, total_steps: int) -> None:
    if loss is None:
        return
    state.validation_loss = loss
    if state.step == 0:
        state.base_validation_loss = loss
    log.info("step %d: validation loss %.4f", state.step, loss)
    metrics.write(split="validation", epoch=epoch, step=state.step, total_steps=total_steps,
                  validation_loss=round(loss, 6), tokens_seen=state.tokens_seen)


def _stop_agreed(run: Run) -> bool:
    flag = torch.tensor([float(run.stop_requested)], device=run.accelerator.device)
    return bool(run.accelerator.reduce(flag, reduction="sum")[0] > 0)


def fit(run: Run) -> None:
    spec, hp, acc = run.spec, run.spec.hyperparameters, run.accelerator
    previous = signal.signal(signal.SIGTERM, lambda *_: setattr(run, "stop_requested", True))
    try:
        if not (spec.resume and load_checkpoint(run)) and run.state.base_validation_loss is None:
            _validate(run, 0.0)
        if _stop_agreed(run):
            save_checkpoint(run)
            raise Stopped()
        run.model.train()
        profile_step = _profile_step(run.log)
        window_tokens, window_start = 0, time.perf_counter()
        while run.state.step < run.total_steps:
            epoch, index = divmod(run.state.step, run.steps_per_epoch)
            plan = epoch_plan(len(run.train), hp.batch_size, hp.gradient_accumulation_steps,
                              acc.num_processes, spec.seed, epoch)
            step_groups = plan[index]
            step_tokens = sum(run.train[j].loss_tokens for group in step_groups for mb in group for j in mb)
            learning_rate = run.scheduler.get_last_lr()[0]  # the rate this step uses (the step advances the schedule)
            if run.state.step + 1 == profile_step and acc.is_main_process:
                loss, grad_norm, real, stop = profiled_step(run, step_groups[acc.process_index], step_tokens)
            else:
                loss, grad_norm, real, stop = train_step(run, step_groups[acc.process_index], step_tokens)
            run.state.step += 1
            run.state.tokens_seen += real
            run.state.training_loss = loss
            window_tokens += real
            last = run.state.step == run.total_steps
            if run.state.step % spec.logging_steps == 0 or last:
                elapsed = time.perf_counter() - window_start
                utilization, memory = _gpu_stats()
                run.metrics.write(
                    split="train", epoch=round(run.state.step / run.steps_per_epoch, 4), step=run.state.step,
                    total_steps=run.total_steps, training_loss=round(loss, 6),
                    learning_rate=learning_rate, grad_norm=round(grad_norm, 6),
                    tokens_per_sec=round(window_tokens / max(elapsed, 1e-9), 1), tokens_seen=run.state.tokens_seen,
                    gpu_utilization=utilization, gpu_memory=memory,
                )
                window_tokens, window_start = 0, time.perf_counter()
            if run.state.step % run.steps_per_epoch == 0 or last:
                # Held-out evaluation is not training: its time stays out of the next
                # step's tokens/s, which the estimates calibrate from.
                paused = time.perf_counter()
                _validate(run, round(run.state.step / run.steps_per_epoch, 4))
                window_start += time.perf_counter() - paused
            if stop and not last:
                save_checkpoint(run)
                raise Stopped()
            if spec.save_steps and run.state.step % spec.save_steps == 0 and not last:
                save_checkpoint(run)
    finally:
        signal.signal(signal.SIGTERM, previous)


# Module names that FSDP1 units and activation checkpointing insert into the module tree
# and that state dicts leave out (as torch's FSDP clean_tensor_name does).
WRAPPER_NAMES = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.")


def _unwrapped_name(name: str) -> str:
    for part in WRAPPER_NAMES:
        name = name.replace(part, "")
    return name


def adapter_weights(model, state_dict: dict | None = None) -> tuple[dict, dict, bool]:
    """(the adapter's tensors under the keys peft saves and loads, the state dict to hand
    peft's save_pretrained, whether the module tree has wrapper names).

    peft (0.21 on) finds the adapter's entries by walking the module tree. Under FSDP1 that
    tree has FSDP units whose names the gathered state dict lacks, and peft picked nothing:
    a run "completed" with an empty adapter. So the state dict is renamed to the tree's
    names for peft, and peft's answer renamed back. An adapter short of any trainable tensor
    is an error, never a saved model."""
    from peft import get_peft_model_state_dict

    if state_dict is None:
        state_dict = model.state_dict()
    named = list(model.named_parameters(remove_duplicate=False)) + list(model.named_buffers(remove_duplicate=False))
    tree = {_unwrapped_name(n): n for n, _ in named if _unwrapped_name(n) != n}
    if tree:
        state_dict = {tree.get(k, k): v for k, v in state_dict.items()}
    adapter = {_unwrapped_name(k): v.detach().cpu().contiguous()
               for k, v in get_peft_model_state_dict(model, state_dict=state_dict).items()}
    trainable = sum(1 for p in model.parameters() if p.requires_grad)
    if len(adapter) < trainable:
        raise RuntimeError(f"the adapter to save has {len(adapter)} tensors but the model trains {trainable}: "
                           "peft could not match the state dict's keys to the model")
    return adapter, state_dict, bool(tree)


def write_adapter(model, state_dict: dict | None, directory: Path) -> None:
    """peft's adapter files (config, model card, adapter_model.safetensors) for `model`,
    whose full weights are `state_dict` (None: the model's own)."""
    adapter, state_dict, wrapped = adapter_weights(model, state_dict)
    model.save_pretrained(directory, safe_serialization=True, state_dict=state_dict)
    if wrapped:  # peft named the tensors after the wrapped tree: write them under the keys it loads
        from safetensors.torch import save_file

        save_file(adapter, str(Path(directory) / "adapter_model.safetensors"), metadata={"format": "pt"})


def save_final(run: Run) -> None:
    acc = run.accelerator
    # Sharded weights exist whole only once gathered, a collective every process joins;
    # PEFT then keeps the adapter's keys of the full state dict.
    state_dict = acc.get_state_dict(run.model) if run.sharded else None
    if not acc.is_main_process:
        return
    out = run.spec.output_dir / "final"
    tmp = run.spec.output_dir / ".tmp-final"
    shutil.rmtree(tmp, ignore_errors=True)
    write_adapter(acc.unwrap_model(run.model), state_dict, tmp)
    run.tokenizer.save_pretrained(tmp)
    write_json_atomic(tmp / "spec.json", run.spec.raw)
    write_json_atomic(tmp / "versions.json", library_versions())
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    run.log.info("adapter saved: %s", out)
