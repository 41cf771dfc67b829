"""Presets (shipped and the user's own) and resolving the config a run will use.

Resolution order, later wins: config.toml `default_base_model` < the preset <
`--config FILE` < `--set key=value` < explicit flags (--base-model, --gpu, --gpus).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterable

import msgspec

from brightrun_cli.errors import NotFoundError, UsageError
from brightrun_cli.presets import SHIPPED_PRESETS_DIR
from brightrun_cli.presets.files import (
    Preset,
    build_config,
    load_preset_file,
    parse_override,
    read_config_file,
)
from brightrun_cli.presets.schema import FIELDS, TrainingConfig, field_allowed, field_description
from brightrun_cli.services.base_model import local_base_model
from brightrun_cli.services.gpus import get_gpu
from brightrun_cli.workspace import Workspace

DEFAULT_PRESET = "balanced"
# `custom` is not a file: it names "a preset plus overrides" (the reference's preset_id).
CUSTOM = "custom"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class ResolvedConfig(msgspec.Struct, frozen=True):
    preset_id: str  # the preset's name, or "custom" when overrides changed a hyperparameter
    base_preset: str  # the preset the values started from
    config: TrainingConfig


def _preset_paths(ws: Workspace) -> dict[str, tuple[Path, str]]:
    """name -> (file, source); a user preset shadows a shipped one of the same name."""
    found = {p.stem: (p, "shipped") for p in sorted(SHIPPED_PRESETS_DIR.glob("*.toml"))}
    user_dir = ws.user_presets_dir
    if user_dir.is_dir():
        for path in sorted(user_dir.glob("*.toml")):
            if _NAME.match(path.stem) and path.stem != CUSTOM:
                found[path.stem] = (path, "user")
    return found


def list_presets(ws: Workspace) -> list[Preset]:
    """Every preset; a user preset that does not validate raises, naming its file."""
    return [load_preset_file(path, source) for path, source in _preset_paths(ws).values()]


class PresetProblem(msgspec.Struct, frozen=True):
    """A file in <home>/presets/ that `presets list` skips, and why (the message names the file)."""

    path: Path
    error: str


NAME_RULE = "1-64 letters, digits, '_', '.' or '-', starting with a letter or digit"


def shipped_names() -> set[str]:
    return {p.stem for p in SHIPPED_PRESETS_DIR.glob("*.toml")}


def survey_presets(ws: Workspace) -> tuple[list[Preset], list[PresetProblem]]:
    """Every preset that loads, and a problem for each user file that does not (bad TOML,
    an unknown field, a name no --preset could give): one broken file hides no other."""
    presets, problems = [], []
    for path, source in _preset_paths(ws).values():
        try:
            presets.append(load_preset_file(path, source))
        except UsageError as exc:
            if source == "shipped":
                raise
            problems.append(PresetProblem(path, str(exc)))
    user_dir = ws.user_presets_dir
    if user_dir.is_dir():
        for path in sorted(user_dir.glob("*.toml")):
            if not _NAME.match(path.stem):
                problems.append(PresetProblem(path, f"{path}: ignored, preset file names are {NAME_RULE}; rename it to use it"))
            elif path.stem == CUSTOM:
                problems.append(PresetProblem(path, f"{path}: ignored, '{CUSTOM}' is reserved (a preset plus overrides); rename it"))
    return presets, problems


def get_preset(ws: Workspace, name: str) -> Preset:
    paths = _preset_paths(ws)
    if name == CUSTOM:
        name = DEFAULT_PRESET
    if name not in paths:
        if not _NAME.match(name):
            raise NotFoundError(f"unknown preset '{name}' (preset names are {NAME_RULE})", f"use one of {', '.join(sorted(paths))}")
        raise NotFoundError(
            f"unknown preset '{name}'",
            f"use one of {', '.join(sorted(paths))}, or put {name}.toml in {ws.user_presets_dir}",
        )
    path, source = paths[name]
    return load_preset_file(path, source)


def validate_preset_file(path: Path) -> Preset:
    """Check a preset or config file without installing it."""
    return load_preset_file(path, "file")


def resolve_config(
    ws: Workspace,
    preset: str | None = None,
    overrides: Iterable[str] = (),
    config_file: Path | None = None,
    base_model: str | None = None,
    gpu_type: str | None = None,
    gpus: int | None = None,
    dataset_base_model: str | None = None,
) -> ResolvedConfig:
    """The validated config for a run; errors name the flag, file or field at fault.

    `dataset_base_model` is the model a dataset was validated and counted with: a run on
    that dataset trains it unless the preset, a config file or a flag names another."""
    name = preset or DEFAULT_PRESET
    base = get_preset(ws, name)
    layers: list[tuple[dict[str, Any], Any]] = []
    if ws.config.default_base_model:
        layers.append(({"base_model": ws.config.default_base_model}, lambda k: "config.toml default_base_model"))
    if dataset_base_model:
        layers.append(({"base_model": dataset_base_model}, lambda k: "the dataset's base model (dataset add --base-model)"))
    layers.append((base.values, lambda k, p=base.path: f"preset {base.name} ({p}): field '{k}'"))
    if config_file is not None:
        data = read_config_file(config_file)
        data.pop("description", None)
        layers.append((data, lambda k: f"--config {config_file}: field '{k}'"))
    parsed = [parse_override(text) for text in overrides]
    for key, value in parsed:
        layers.append(({key: value}, lambda k, v=value: f"--set {k}={v}"))
    flags = {"base_model": base_model, "gpu_type": gpu_type, "gpus": gpus}
    for key, value in flags.items():
        if value is not None:
            flag = "--" + {"base_model": "base-model", "gpu_type": "gpu", "gpus": "gpus"}[key]
            layers.append(({key: value}, lambda k, f=flag, v=value: f"{f} {v}"))
    config = build_config(layers)
    config.base_model = local_base_model(ws, config.base_model)
    if config.gpu_type is not None:
        config.gpu_type = get_gpu(ws, config.gpu_type).name
    changed = config.hyperparameters() != base.config.hyperparameters()
    preset_id = CUSTOM if (preset == CUSTOM or changed) else base.name
    return ResolvedConfig(preset_id=preset_id, base_preset=base.name, config=config)


def require_base_model(config: TrainingConfig) -> str:
    if not config.base_model:
        raise UsageError(
            "no base model for this run",
            "pass --base-model (an HF id, a local directory, or builtin:tiny), or set default_base_model in config.toml",
        )
    return config.base_model


class PresetField(msgspec.Struct, frozen=True):
    """One field of a preset as `presets show` lists it."""

    name: str
    value: Any
    set_here: bool  # the preset file sets it (else: the schema's default)
    allowed: str
    meaning: str


def preset_fields(preset: Preset) -> list[PresetField]:
    return [PresetField(name, getattr(preset.config, name), name in preset.values, field_allowed(name), field_description(name))
            for name in FIELDS]
