"""Reading presets and config files, parsing `--set key=value`, and turning schema
violations into one-line errors that name the flag or file and the allowed range."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import msgspec

from brightrun_cli.errors import UsageError
from brightrun_cli.presets.schema import FIELDS, TrainingConfig, field_allowed, field_description, field_range, validate

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

CONFIG_SUFFIXES = (".toml", ".json", ".yaml", ".yml")
# Keys a preset file may carry besides the config fields.
META_KEYS = ("description",)


class Preset(msgspec.Struct, frozen=True):
    name: str
    description: str
    source: str  # "shipped" | "user"
    path: Path
    values: dict[str, Any]  # the fields the file sets, as written
    config: TrainingConfig


def read_config_file(path: Path) -> dict[str, Any]:
    """A TOML, JSON or YAML file holding one table of config fields."""
    if path.suffix.lower() not in CONFIG_SUFFIXES:
        raise UsageError(f"{path}: unsupported config file type '{path.suffix}'", f"use one of {', '.join(CONFIG_SUFFIXES)}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}", "check the path") from exc
    try:
        if path.suffix.lower() == ".toml":
            data = tomllib.loads(text)
        elif path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as exc:  # each parser has its own error type; all mean "not parseable"
        raise UsageError(f"{path}: not valid {path.suffix.lstrip('.').upper()}: {exc}".replace("\n", " "), "fix the syntax") from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UsageError(f"{path}: expected a table of fields at the top level, got {type(data).__name__}", "write key = value pairs")
    return data


def load_preset_file(path: Path, source: str) -> Preset:
    data = read_config_file(path)
    description = data.pop("description", "")
    if not isinstance(description, str):
        raise UsageError(f"{path}: 'description' must be a string", "quote it")
    config = build_config([(data, lambda key: f"{path}: field '{key}'")])
    return Preset(path.stem, description, source, path, data, config)


def parse_override(text: str) -> tuple[str, Any]:
    """`key=value` -> (key, value). Values are read as TOML literals (32, 2e-4, false,
    ["q_proj", "v_proj"]) and fall back to the plain string (org/model, q_proj,v_proj);
    null (or none) unsets an optional field."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise UsageError(f"--set '{text}' is not key=value", "write it like --set lora_rank=32")
    raw = raw.strip()
    if raw.lower() in ("null", "none"):  # unset an optional field a preset sets (TOML itself has no null)
        return key, None
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key, value


def build_config(layers: list[tuple[dict[str, Any], Any]]) -> TrainingConfig:
    """Merge layers of field values (later wins) and validate.

    Each layer is (values, label) where `label(key)` says where a value came from
    ("--set lora_rank=200", "my.toml: field 'lora_rank'"), so an error names it.
    """
    merged: dict[str, Any] = {}
    origin: dict[str, Any] = {}
    for values, label in layers:
        for key, value in values.items():
            if key not in FIELDS:
                raise UsageError(f"{label(key)}: unknown field '{key}'", _unknown_hint(key))
            merged[key] = value
            origin[key] = label
    try:
        return validate(merged)
    except msgspec.ValidationError as exc:
        message, _, path = str(exc).rpartition(" - at `$.")
        key = path.split(".")[0].split("[")[0].rstrip("`")
        where = origin[key](key) if key in origin else f"field '{key}'"
        raise UsageError(f"{where}: {_explain(key, message or str(exc), merged.get(key))}", _fix_hint(key)) from None


def _explain(key: str, message: str, got: Any) -> str:
    allowed = field_range(key)
    if allowed and any(op in message for op in ("<=", ">=", " < ", " > ")):
        return f"{key} must be in {allowed} (got {got!r})"
    if "invalid enum value" in message.lower() and key in FIELDS:
        return f"{key} must be one of {field_allowed(key).replace('|', ', ')} (got {got!r})"
    return f"{key}: {message[0].lower() + message[1:]} (got {got!r})"


def _fix_hint(key: str) -> str:
    if key not in FIELDS:
        return "'brightrun presets show balanced' lists the fields"
    allowed = field_range(key)
    return f"pick a value in {allowed} ({key}: {field_description(key)})" if allowed else f"{key}: {field_description(key)}"


def _unknown_hint(key: str) -> str:
    import difflib  # here, not at the top: only a misspelt key needs it, every command imports this module

    close = difflib.get_close_matches(key, list(FIELDS), n=1)
    if close:
        return f"did you mean '{close[0]}'? ('brightrun presets show balanced' lists the fields)"
    return "'brightrun presets show balanced' lists the fields"
