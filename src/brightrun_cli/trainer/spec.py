"""The job spec (version 1, docs/ARCHITECTURE.md): loading and validation, no heavy imports.

Everything a user can get wrong in a spec is checked here, before a model is loaded,
so a bad spec costs a second and exits 2 with one line naming the field to change.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from brightrun_cli.generation.evaluate import DEFAULT_LIMIT as DEFAULT_EVAL_LIMIT
from brightrun_cli.trackers import check_report_to, check_settings


class SpecError(Exception):
    """The spec or its inputs are invalid: nothing was trained (exit 2)."""


SCHEDULERS = ("cosine", "linear", "constant")
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
QUANTIZATIONS = ("none", "4bit", "8bit")
CHAT_TEMPLATES = ("model", "chatml")
_FLAGS = ("packing", "gradient_checkpointing", "assistant_only_loss", "use_dora", "use_rslora", "fused_cross_entropy",
          "compile_layers", "activation_offload")
# The accelerate distributed types a passed-through config may ask for.
DISTRIBUTED_TYPES = ("NO", "MULTI_GPU", "MULTI_CPU", "FSDP", "DEEPSPEED")
SHARDED_TYPES = ("FSDP", "DEEPSPEED")


@dataclass
class Hyperparameters:
    learning_rate: float = 2e-4
    batch_size: int = 4  # conversations per micro-batch per process
    num_epochs: int = 3
    lora_rank: int = 16
    lora_alpha: float = 32
    lora_dropout: float = 0.05
    warmup_steps: int = 100
    # Warm-up is cut to this fraction of the run (`warmup_for`). A spec without the key
    # (written before it existed) keeps its full warm-up, within the run's length.
    max_warmup_fraction: float = 1.0
    weight_decay: float = 0.01
    max_seq_length: int = 2048  # longer conversations are truncated
    target_modules: list[str] | str = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    gradient_accumulation_steps: int = 1
    lr_scheduler: str = "cosine"
    max_grad_norm: float = 1.0  # 0 disables clipping
    packing: bool = True
    gradient_checkpointing: bool = False
    assistant_only_loss: bool = True
    precision: str = "auto"
    use_dora: bool = False
    use_rslora: bool = False
    quantization: str = "none"  # bitsandbytes on CUDA: 4bit (NF4, double quantisation) or 8bit
    fused_cross_entropy: bool = True  # chunked head + cross-entropy (trainer/loss.py)
    compile_layers: bool = False  # torch.compile each decoder layer (CUDA)
    activation_offload: bool = False  # saved activations in CPU memory
    chat_template: str = "model"  # "chatml": brightrun's tool-aware ChatML instead of the tokenizer's own


@dataclass
class AccelerateConfig:
    """An accelerate config file (`accelerate launch --config_file`), read as accelerate reads it."""

    path: Path
    distributed_type: str
    settings: dict[str, Any]

    @property
    def sharded(self) -> bool:
        """FSDP or DeepSpeed: the parameters (and saving them) belong to accelerate's engine."""
        return self.distributed_type in SHARDED_TYPES


def load_accelerate_config(path: Path) -> AccelerateConfig:
    """Parse an accelerate config file (JSON when it ends in .json, else YAML, as accelerate
    decides) and check that it is a mapping with a distributed_type brightrun can launch."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"cannot read accelerate config {path}: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        if path.suffix == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as exc:  # json and yaml raise different types; both mean "not parseable"
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise SpecError(f"accelerate config {path} is not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {first}") from None
    if not isinstance(data, dict):
        raise SpecError(f"accelerate config {path} must be a mapping of settings (as 'accelerate config' writes)")
    kind = data.get("distributed_type")
    if kind not in DISTRIBUTED_TYPES:
        quote = " (quote it: 'NO'; YAML reads a bare NO as false)" if kind is False else ""
        raise SpecError(f"accelerate config {path}: distributed_type must be one of {', '.join(DISTRIBUTED_TYPES)}, got {kind!r}{quote}")
    _check_sharding(path, kind, data)
    return AccelerateConfig(path=path, distributed_type=kind, settings=data)


def _check_sharding(path: Path, kind: str, data: dict[str, Any]) -> None:
    """Settings under which LoRA training cannot work or its adapter cannot be saved."""
    fsdp = data.get("fsdp_config") or {}
    deepspeed = data.get("deepspeed_config") or {}
    if not isinstance(fsdp, dict) or not isinstance(deepspeed, dict):
        raise SpecError(f"accelerate config {path}: fsdp_config and deepspeed_config must be mappings")
    if kind == "FSDP" and str(fsdp.get("fsdp_version", 1)) == "1" and str(fsdp.get("fsdp_use_orig_params", True)).lower() == "false":
        raise SpecError(f"accelerate config {path}: LoRA under FSDP1 needs fsdp_use_orig_params: true "
                        "(frozen and trainable weights share FSDP units), or use fsdp_version: 2")
    if kind == "DEEPSPEED":
        if deepspeed.get("deepspeed_config_file"):
            raise SpecError(f"accelerate config {path}: deepspeed_config_file names a file brightrun does not ship "
                            "with the job; put the settings (zero_stage, offload_*) in deepspeed_config itself")
        if str(deepspeed.get("zero_stage")) == "3" and str(deepspeed.get("zero3_save_16bit_model", False)).lower() != "true":
            raise SpecError(f"accelerate config {path}: under ZeRO-3 the adapter is saved from gathered weights: "
                            "set deepspeed_config.zero3_save_16bit_model: true")


def check_quantization_engine(quantization: str, config: AccelerateConfig | None) -> None:
    """QLoRA trains under one process or DDP: each process holds the whole quantised base.
    Sharding bitsandbytes weights needs FSDP/DeepSpeed storage settings brightrun does not
    set (bnb_4bit_quant_storage, zero.Init), so the combination is refused rather than
    left to fail inside accelerate."""
    if quantization != "none" and config is not None and config.sharded:
        raise SpecError(f"hyperparameters.quantization = {quantization} with the accelerate config's "
                        f"{config.distributed_type}: a quantised base trains on one GPU or under DDP only; "
                        "leave out the accelerate config, or set quantization=none")


@dataclass
class EvalSettings:
    """The answer eval run after training (generation/evaluate.py): greedy base and tuned
    answers to the first `limit` held-out samples, written into final/."""

    limit: int = DEFAULT_EVAL_LIMIT
    max_new_tokens: int | None = None  # None: from the longest reference (generation.evaluate)


@dataclass
class Spec:
    path: Path
    base_model: str
    train_file: Path
    validation_file: Path | None
    output_dir: Path
    hyperparameters: Hyperparameters
    job_id: str = ""
    seed: int = 42
    logging_steps: int = 1
    save_steps: int = 0  # 0: checkpoint only on SIGTERM
    max_steps: int | None = None
    resume: bool = False
    accelerate_config: AccelerateConfig | None = None  # the file given to `accelerate launch --config_file`
    report_to: list[str] = field(default_factory=list)  # experiment trackers (brightrun_cli.trackers.TRACKERS)
    trackers: dict[str, dict[str, str]] = field(default_factory=dict)  # their settings, by tracker name
    eval: EvalSettings | None = field(default_factory=EvalSettings)  # None: no answer eval
    raw: dict[str, Any] = field(default_factory=dict)  # the file as read, copied into final/


# (key, type, check, human rule) for every numeric hyperparameter.
_RANGES = {
    "learning_rate": (float, lambda v: 0 < v <= 1, "in (0, 1]"),
    "batch_size": (int, lambda v: 1 <= v <= 4096, "an integer in [1, 4096]"),
    "num_epochs": (int, lambda v: 1 <= v <= 1000, "an integer in [1, 1000]"),
    "lora_rank": (int, lambda v: 1 <= v <= 1024, "an integer in [1, 1024]"),
    "lora_alpha": (float, lambda v: 0 < v <= 4096, "in (0, 4096]"),
    "lora_dropout": (float, lambda v: 0 <= v < 1, "in [0, 1)"),
    "warmup_steps": (int, lambda v: 0 <= v, "an integer >= 0"),
    "max_warmup_fraction": (float, lambda v: 0 <= v <= 1, "in [0, 1]"),
    "weight_decay": (float, lambda v: 0 <= v <= 1, "in [0, 1]"),
    "max_seq_length": (int, lambda v: 8 <= v <= 1_048_576, "an integer in [8, 1048576]"),
    "gradient_accumulation_steps": (int, lambda v: 1 <= v <= 4096, "an integer in [1, 4096]"),
    "max_grad_norm": (float, lambda v: 0 <= v, ">= 0 (0 disables clipping)"),
}


_TOP_LEVEL_KEYS = {
    "version", "job_id", "base_model", "train_file", "validation_file", "output_dir", "seed",
    "hyperparameters", "logging_steps", "save_steps", "max_steps", "resume", "accelerate_config",
    "report_to", "trackers", "eval",
}


def _number(where: str, value: Any, kind: type) -> float | int:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SpecError(f"{where} must be a number, got {value!r}")
    if kind is int:
        if isinstance(value, float) and not value.is_integer():
            raise SpecError(f"{where} must be an integer, got {value!r}")
        return int(value)
    return float(value)


def _hyperparameters(raw: Any) -> Hyperparameters:
    if not isinstance(raw, dict):
        raise SpecError("hyperparameters must be an object")
    known = Hyperparameters.__dataclass_fields__
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise SpecError(f"unknown hyperparameter(s) {', '.join(unknown)} (known: {', '.join(known)})")
    hp = Hyperparameters()
    for key, value in raw.items():
        if key in _RANGES:
            kind, ok, rule = _RANGES[key]
            value = _number(f"hyperparameters.{key}", value, kind)
            if not ok(value):
                raise SpecError(f"hyperparameters.{key} = {value} is out of range: must be {rule}")
        elif key in _FLAGS:
            if not isinstance(value, bool):
                raise SpecError(f"hyperparameters.{key} must be true or false, got {value!r}")
        elif key == "lr_scheduler" and value not in SCHEDULERS:
            raise SpecError(f"hyperparameters.lr_scheduler must be one of {', '.join(SCHEDULERS)}, got {value!r}")
        elif key == "precision" and value not in PRECISIONS:
            raise SpecError(f"hyperparameters.precision must be one of {', '.join(PRECISIONS)}, got {value!r}")
        elif key == "quantization" and value not in QUANTIZATIONS:
            raise SpecError(f"hyperparameters.quantization must be one of {', '.join(QUANTIZATIONS)}, got {value!r}")
        elif key == "chat_template" and value not in CHAT_TEMPLATES:
            raise SpecError(f"hyperparameters.chat_template must be one of {', '.join(CHAT_TEMPLATES)}, got {value!r}")
        elif key == "target_modules" and not (
            value == "all-linear" or (isinstance(value, list) and value and all(isinstance(m, str) and m for m in value))
        ):
            raise SpecError("hyperparameters.target_modules must be a non-empty list of module names or \"all-linear\"")
        setattr(hp, key, value)
    return hp


def _eval_settings(raw: Any) -> EvalSettings | None:
    """`"eval": {"limit": 50, "max_new_tokens": 128}`; null or a limit of 0 turns the eval off."""
    if raw is None:
        return None
    how = 'eval must be an object like {"limit": 50, "max_new_tokens": 128}, or null to turn the answer eval off'
    if not isinstance(raw, dict):
        raise SpecError(how)
    unknown = sorted(set(raw) - set(EvalSettings.__dataclass_fields__))
    if unknown:
        raise SpecError(f"unknown eval key(s) {', '.join(unknown)}: {how}")
    settings = EvalSettings()
    if "limit" in raw:
        settings.limit = _number("eval.limit", raw["limit"], int)
        if settings.limit < 0:
            raise SpecError(f"eval.limit = {settings.limit} is out of range: must be >= 0 (0 turns the eval off)")
    if raw.get("max_new_tokens") is not None:
        settings.max_new_tokens = _number("eval.max_new_tokens", raw["max_new_tokens"], int)
        if not 1 <= settings.max_new_tokens <= 4096:
            raise SpecError(f"eval.max_new_tokens = {settings.max_new_tokens} is out of range: must be in [1, 4096] or null")
    return settings if settings.limit else None


def _read(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise SpecError(f"cannot read spec {path}: {exc.strerror or exc}") from None
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as exc:  # json and yaml raise different types; both mean "not parseable"
        raise SpecError(f"spec {path} is not valid {'YAML' if path.suffix in ('.yaml', '.yml') else 'JSON'}: {exc}") from None
    if not isinstance(data, dict):
        raise SpecError(f"spec {path} must hold an object")
    return data


def _file(base: Path, value: Any, key: str, required: bool) -> Path | None:
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value:
        raise SpecError(f"{key} must be a file path")
    path = (base / value).resolve()
    if not path.is_file():
        raise SpecError(f"{key} {value!r} does not exist (looked for {path})")
    return path


def load_spec(path: str | Path) -> Spec:
    """Read and validate a spec file; relative paths resolve against the spec's directory."""
    path = Path(path).resolve()
    raw = _read(path)
    if raw.get("version") != 1:
        raise SpecError(f"unsupported spec version {raw.get('version')!r} (this trainer reads version 1)")
    unknown = sorted(set(raw) - _TOP_LEVEL_KEYS)
    if unknown:
        raise SpecError(f"unknown spec key(s) {', '.join(unknown)} (known: {', '.join(sorted(_TOP_LEVEL_KEYS))})")
    base = path.parent
    if not isinstance(raw.get("base_model"), str) or not raw["base_model"]:
        raise SpecError("base_model must be a model name, a directory or builtin:tiny")
    spec = Spec(
        path=path,
        base_model=raw["base_model"],
        train_file=_file(base, raw.get("train_file"), "train_file", required=True),
        validation_file=_file(base, raw.get("validation_file"), "validation_file", required=False),
        output_dir=(base / str(raw.get("output_dir") or ".")).resolve(),
        hyperparameters=_hyperparameters(raw.get("hyperparameters", {})),
        job_id=str(raw.get("job_id") or ""),
        raw=raw,
    )
    for key, minimum in (("seed", 0), ("logging_steps", 1), ("save_steps", 0)):
        if key in raw:
            value = _number(key, raw[key], int)
            if value < minimum:
                raise SpecError(f"{key} = {value} is out of range: must be >= {minimum}")
            setattr(spec, key, value)
    if raw.get("max_steps") is not None:
        spec.max_steps = _number("max_steps", raw["max_steps"], int)
        if spec.max_steps < 1:
            raise SpecError(f"max_steps = {spec.max_steps} is out of range: must be >= 1 or null")
    if not isinstance(raw.get("resume", False), bool):
        raise SpecError("resume must be true or false")
    spec.resume = raw.get("resume", False)
    if "eval" in raw:
        spec.eval = _eval_settings(raw["eval"])
    if raw.get("accelerate_config") is not None:
        spec.accelerate_config = load_accelerate_config(_file(base, raw["accelerate_config"], "accelerate_config", required=True))
    check_quantization_engine(spec.hyperparameters.quantization, spec.accelerate_config)
    try:
        spec.report_to = check_report_to([] if raw.get("report_to") is None else raw["report_to"])
        spec.trackers = check_settings({} if raw.get("trackers") is None else raw["trackers"])
    except ValueError as exc:
        raise SpecError(str(exc)) from None
    return spec
