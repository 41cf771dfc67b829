"""`TrainingConfig`: one typed schema for presets, `--config` files and `--set` overrides.

Every field is described (the descriptions are what `presets show` prints) and bounded;
the bounds are SPEC section 4's where it gives them. `hyperparameters()` returns exactly
the keys of the trainer spec's `hyperparameters` object (docs/ARCHITECTURE.md).

A msgspec Struct rather than a pydantic model: commands that only read presets or
estimate a run (`presets list`, `gpus`, `estimate`) answer in about a tenth of a second,
and `from pydantic import BaseModel` alone costs twice that in CPU (bench_startup.py).
The bounds and descriptions live in `Meta` next to each field, validation happens in
`msgspec.convert`, and `field_meta()` reads them back for help tables and error hints.
"""

from __future__ import annotations

import functools
import types as types_module
import typing
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

# The keys handed to the trainer, in the spec's order. base_model, gpu_type and gpus
# describe where and on what the run happens, so they sit beside these, not inside.
HYPERPARAMETER_KEYS = (
    "learning_rate",
    "batch_size",
    "num_epochs",
    "lora_rank",
    "lora_alpha",
    "lora_dropout",
    "warmup_steps",
    "max_warmup_fraction",
    "weight_decay",
    "max_seq_length",
    "target_modules",
    "gradient_accumulation_steps",
    "lr_scheduler",
    "max_grad_norm",
    "packing",
    "gradient_checkpointing",
    "assistant_only_loss",
    "precision",
    "use_dora",
    "use_rslora",
    "quantization",
    "fused_cross_entropy",
    "compile_layers",
    "activation_offload",
    "chat_template",
)



Modules = Annotated[list[Annotated[str, Meta(min_length=1)]], Meta(min_length=1)]


class TrainingConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A complete, validated training configuration. Defaults are the spec example's values."""

    base_model: Annotated[str, Meta(min_length=1, description=(
        "Base model: a Hugging Face id, a local directory, a .gguf file, or builtin:tiny "
        "(unset: --base-model, then config.toml default_base_model)"))] | None = None
    learning_rate: Annotated[float, Meta(ge=1e-5, le=1e-3, description="Peak learning rate of the LoRA parameters")] = 2e-4
    batch_size: Annotated[int, Meta(ge=1, le=64, description="Sequences per device per optimizer micro-step")] = 4
    num_epochs: Annotated[int, Meta(ge=1, le=20, description="Passes over the training split")] = 3
    lora_rank: Annotated[int, Meta(ge=4, le=128, description="Rank r of the LoRA update matrices")] = 16
    lora_alpha: Annotated[int, Meta(ge=1, le=1024, description="LoRA scaling numerator (the update is scaled by alpha / r)")] = 32
    lora_dropout: Annotated[float, Meta(ge=0, lt=1, description="Dropout on the LoRA input")] = 0.05
    warmup_steps: Annotated[int, Meta(ge=0, le=100_000, description="Optimizer steps of linear learning-rate warm-up (at most max_warmup_fraction of the run)")] = 100
    max_warmup_fraction: Annotated[float, Meta(ge=0, le=1, description=(
        "Warm-up takes at most this fraction of the run's optimizer steps: warmup_steps is cut to it on short runs"))] = 0.1
    weight_decay: Annotated[float, Meta(ge=0, le=1, description="AdamW weight decay on the LoRA parameters")] = 0.01
    max_seq_length: Annotated[int, Meta(ge=32, le=131_072, description="Tokens per training sequence (packed block, or truncation length without packing)")] = 2048
    target_modules: Literal["all-linear"] | Annotated[Modules, Meta(description=(
        "Linear modules that get LoRA adapters: names (comma-separated with --set), or all-linear"))] = msgspec.field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    gradient_accumulation_steps: Annotated[int, Meta(ge=1, le=256, description="Micro-steps accumulated per optimizer step")] = 1
    lr_scheduler: Annotated[Literal["cosine", "linear", "constant"], Meta(description="Learning-rate schedule after the linear warm-up")] = "cosine"
    max_grad_norm: Annotated[float, Meta(gt=0, le=100, description="Gradient clipping norm")] = 1.0
    packing: Annotated[bool, Meta(description="Pack several conversations into one sequence (attention never crosses conversations)")] = True
    gradient_checkpointing: Annotated[bool, Meta(description="Recompute activations in the backward pass: less memory, about a third more compute")] = False
    assistant_only_loss: Annotated[bool, Meta(description="Compute the loss on assistant tokens only")] = True
    precision: Annotated[Literal["auto", "bf16", "fp16", "fp32"], Meta(description="Compute precision: auto = bf16 where the device supports it, else fp32")] = "auto"
    use_dora: Annotated[bool, Meta(description=(
        "DoRA: each adapted weight's magnitude trained apart from its LoRA direction (peft use_dora); "
        "often better at low rank, slower per step"))] = False
    use_rslora: Annotated[bool, Meta(description="rsLoRA: scale the update by alpha / sqrt(r) instead of alpha / r (steadier at high rank)")] = False
    quantization: Annotated[Literal["none", "4bit", "8bit"], Meta(description=(
        "Base weights quantised on a CUDA GPU with bitsandbytes (QLoRA): 4bit = NF4 with double quantisation, "
        "8bit = LLM.int8; the adapter stays a standard one"))] = "none"
    fused_cross_entropy: Annotated[bool, Meta(description=(
        "Loss from the last hidden states in token chunks (Liger's fused kernel on CUDA when installed), "
        "so the full logits never exist: less memory at large vocabularies"))] = True
    compile_layers: Annotated[bool, Meta(description="torch.compile each decoder layer (a minute or two of compiling before the first step)")] = False
    activation_offload: Annotated[bool, Meta(description=(
        "Keep activations saved for the backward pass in CPU memory: for long sequences that do not fit, "
        "at the cost of host-device copies"))] = False
    chat_template: Annotated[Literal["model", "chatml"], Meta(description=(
        "How conversations are written for the model: model = its tokenizer's chat template (ChatML when it has none), "
        "chatml = ChatML with tools, tool calls and reasoning, for a base whose own template drops them; saved with the adapter"))] = "model"
    save_steps: Annotated[int, Meta(ge=0, le=1_000_000, description=(
        "Also checkpoint every N optimizer steps (the newest two kept), so a run killed without warning "
        "(node failure, out of memory, a Slurm requeue) resumes from there; 0 = only when stopped (cancel, budget, SIGTERM)"))] = 0
    max_steps: Annotated[int, Meta(ge=1, le=100_000_000, description=(
        "Stop after this many optimizer steps, before num_epochs ends (a smoke run: --set max_steps=20); "
        "the schedule, warm-up and estimate follow it; unset: every epoch"))] | None = None
    gpu_type: Annotated[str, Meta(min_length=1, description="GPU type from `brightrun gpus` (unset: the host's type)")] | None = None
    gpus: Annotated[int, Meta(ge=1, le=8, description="GPUs per host (unset: all of the host's)")] | None = None

    def hyperparameters(self) -> dict[str, Any]:
        """The trainer spec's `hyperparameters` object (exactly its keys)."""
        return {key: getattr(self, key) for key in HYPERPARAMETER_KEYS}

    def to_dict(self) -> dict[str, Any]:
        return msgspec.structs.asdict(self)

    def replace(self, **changes: Any) -> "TrainingConfig":
        return msgspec.structs.replace(self, **changes)


FIELDS: tuple[str, ...] = TrainingConfig.__struct_fields__


def normalize(values: dict[str, Any]) -> dict[str, Any]:
    """What a user may write for convenience, in the schema's form: target_modules as one
    comma-separated string (`--set target_modules=q_proj,v_proj`)."""
    modules = values.get("target_modules")
    if isinstance(modules, str):
        modules = modules.strip()
        values = {**values, "target_modules": modules if modules == "all-linear" else [m.strip() for m in modules.split(",") if m.strip()]}
    return values


def validate(values: dict[str, Any]) -> TrainingConfig:
    """A TrainingConfig from field values; msgspec.ValidationError names the first bad field ($.name)."""
    return msgspec.convert(normalize(values), TrainingConfig)


class FieldInfo(msgspec.Struct, frozen=True):
    """A field's declared type (without None and Meta) and its Meta's bounds and description."""

    types: tuple[Any, ...]
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    description: str = ""


@functools.cache
def _hints() -> dict[str, Any]:
    """TrainingConfig's annotations, evaluated once (each evaluation compiles every one)."""
    return typing.get_type_hints(TrainingConfig, include_extras=True)


@functools.cache
def field_info(name: str) -> FieldInfo:
    metas: list[Meta] = []
    types: list[Any] = []

    def walk(hint: Any) -> None:
        if typing.get_origin(hint) is Annotated:
            base, *extras = typing.get_args(hint)
            metas.extend(m for m in extras if isinstance(m, Meta))
            walk(base)
        elif typing.get_origin(hint) in (typing.Union, types_module.UnionType):
            for arm in typing.get_args(hint):
                walk(arm)
        elif hint is not type(None):
            types.append(hint)

    walk(_hints()[name])
    first = lambda attr: next((getattr(m, attr) for m in metas if getattr(m, attr) is not None), None)  # noqa: E731
    return FieldInfo(tuple(types), first("ge"), first("gt"), first("le"), first("lt"), first("description") or "")


def field_description(name: str) -> str:
    return field_info(name).description


def field_range(name: str) -> str | None:
    """The allowed range of a numeric field as text ("4..128"), from its declared bounds."""
    if name not in FIELDS:
        return None
    info = field_info(name)
    low = (info.ge, "") if info.ge is not None else (info.gt, ">") if info.gt is not None else None
    high = (info.le, "") if info.le is not None else (info.lt, "<") if info.lt is not None else None
    if low is None and high is None:
        return None
    left = "" if low is None else f"{low[1]}{_num(low[0])}"
    right = "" if high is None else f"{high[1]}{_num(high[0])}"
    return f"{left}..{right}"


def field_allowed(name: str) -> str:
    """What a field accepts, for help tables: its range, or its choices."""
    choices = [value for t in field_info(name).types if typing.get_origin(t) is Literal for value in typing.get_args(t)]
    others = [t for t in field_info(name).types if typing.get_origin(t) is not Literal]
    if choices:
        return "|".join(["names" for t in others if typing.get_origin(t) is list] + choices)
    if others == [bool]:
        return "true|false"
    return field_range(name) or ""


def _num(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)
