"""`TrainingConfig`: one typed schema for presets, `--config` files and `--set` overrides.

Every field is described (the descriptions are what `presets show` prints) and bounded;
the bounds are SPEC section 4's where it gives them. `hyperparameters()` returns exactly
the keys of the trainer spec's `hyperparameters` object (docs/ARCHITECTURE.md).
"""

from __future__ import annotations

from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, field_validator

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
)


class TrainingConfig(BaseModel):
    """A complete, validated training configuration. Defaults are the spec example's values."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    base_model: str | None = Field(
        None, min_length=1,
        description="Base model: a Hugging Face id, a local directory, or builtin:tiny (unset: --base-model, then config.toml default_base_model)",
    )
    learning_rate: float = Field(2e-4, ge=1e-5, le=1e-3, description="Peak learning rate of the LoRA parameters")
    batch_size: int = Field(4, ge=1, le=64, description="Sequences per device per optimizer micro-step")
    num_epochs: int = Field(3, ge=1, le=20, description="Passes over the training split")
    lora_rank: int = Field(16, ge=4, le=128, description="Rank r of the LoRA update matrices")
    lora_alpha: int = Field(32, ge=1, le=1024, description="LoRA scaling numerator (the update is scaled by alpha / r)")
    lora_dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the LoRA input")
    warmup_steps: int = Field(100, ge=0, le=100_000, description="Optimizer steps of linear learning-rate warm-up (capped by the trainer at the run's length)")
    weight_decay: float = Field(0.01, ge=0, le=1, description="AdamW weight decay on the LoRA parameters")
    max_seq_length: int = Field(2048, ge=32, le=131_072, description="Tokens per training sequence (packed block, or truncation length without packing)")
    target_modules: Literal["all-linear"] | list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"], min_length=1,
        description="Linear modules that get LoRA adapters: names (comma-separated with --set), or all-linear",
    )
    gradient_accumulation_steps: int = Field(1, ge=1, le=256, description="Micro-steps accumulated per optimizer step")
    lr_scheduler: Literal["cosine", "linear", "constant"] = Field(
        "cosine", description="Learning-rate schedule after the linear warm-up"
    )
    max_grad_norm: float = Field(1.0, gt=0, le=100, description="Gradient clipping norm")
    packing: bool = Field(True, description="Pack several conversations into one sequence (attention never crosses conversations)")
    gradient_checkpointing: bool = Field(False, description="Recompute activations in the backward pass: less memory, about a third more compute")
    assistant_only_loss: bool = Field(True, description="Compute the loss on assistant tokens only")
    precision: Literal["auto", "bf16", "fp16", "fp32"] = Field(
        "auto", description="Compute precision: auto = bf16 where the device supports it, else fp32"
    )
    gpu_type: str | None = Field(
        None, min_length=1, description="GPU type from `brightrun gpus` (unset: the host's type)"
    )
    gpus: int | None = Field(None, ge=1, le=8, description="GPUs per host (unset: all of the host's)")

    @field_validator("target_modules", mode="before")
    @classmethod
    def _split_modules(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip() != "all-linear":
            return [part.strip() for part in value.split(",") if part.strip()]
        if isinstance(value, str):
            return value.strip()
        return value

    def hyperparameters(self) -> dict[str, Any]:
        """The trainer spec's `hyperparameters` object (exactly its keys)."""
        data = self.model_dump()
        return {key: data[key] for key in HYPERPARAMETER_KEYS}


def field_range(name: str) -> str | None:
    """The allowed range of a numeric field as text ("4..128"), from its declared bounds."""
    info = TrainingConfig.model_fields.get(name)
    if info is None:
        return None
    low = high = None
    for item in info.metadata:
        for attr in ("ge", "gt"):
            if getattr(item, attr, None) is not None:
                low = (getattr(item, attr), attr)
        for attr in ("le", "lt"):
            if getattr(item, attr, None) is not None:
                high = (getattr(item, attr), attr)
    if low is None and high is None:
        return None
    left = "" if low is None else f"{'>' if low[1] == 'gt' else ''}{_num(low[0])}"
    right = "" if high is None else f"{'<' if high[1] == 'lt' else ''}{_num(high[0])}"
    return f"{left}..{right}"


def field_allowed(name: str) -> str:
    """What a field accepts, for help tables: its range, or its choices."""
    info = TrainingConfig.model_fields[name]
    if get_origin(info.annotation) is Literal:
        return "|".join(get_args(info.annotation))
    if info.annotation is bool:
        return "true|false"
    return field_range(name) or ""


def _num(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)
