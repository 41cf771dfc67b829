"""The home directory and `config.toml`.

Home: `--home` beats `$BRIGHTRUN_HOME` beats `~/.brightrun`. It is created on first
use with mode 0700; everything brightrun writes for the user lives below it.
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from brightrun_cli.errors import UsageError
from brightrun_cli.home import ensure_private_dir, resolve_home  # noqa: F401  (re-exported: their home used to be here)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

CONFIG_FILE = "config.toml"
DEFAULT_MAX_DATASET_BYTES = 500 * 1024 * 1024


class Config(BaseModel):
    """User settings read from `<home>/config.toml`. Every key is optional."""

    model_config = ConfigDict(extra="forbid")

    storage_url: str | None = Field(
        None, description="fsspec URL of the blob store root (default: <home>/storage), e.g. s3://bucket/prefix"
    )
    storage_options: dict[str, Any] = Field(
        default_factory=dict, description="Extra fsspec options for the storage URL (e.g. endpoint_url). No secrets: use the provider's own credential chain."
    )
    default_host: str = Field("local", description="Host used by `train` when --host is not given")
    ssh_config: str | None = Field(
        None, description="ssh client config file for SSH hosts (passed as `ssh -F`; default: the system's ~/.ssh/config)"
    )
    default_base_model: str | None = Field(
        None, description="Base model (HF id, local dir or builtin:tiny) used when --base-model is not given: for dataset token counts, and for train when the preset names none"
    )
    max_dataset_bytes: int = Field(DEFAULT_MAX_DATASET_BYTES, gt=0, description="Datasets larger than this are refused before copying")
    max_stored_validation_errors: int = Field(100, ge=1, description="How many validation errors are kept on a dataset (all are counted)")
    gpu_prices: dict[str, float] = Field(default_factory=dict, description="Hourly price overrides per GPU type, e.g. {H100 = 2.99}")
    notification_hook: list[str] | None = Field(
        None, description="Command (argv list or a string split like a shell would, never run by a shell) that receives each notification as JSON on stdin"
    )
    notification_hook_timeout: float = Field(10.0, gt=0, description="Seconds before the hook is killed")

    @field_validator("notification_hook", mode="before")
    @classmethod
    def _split_hook(cls, value: Any) -> Any:
        if isinstance(value, str):
            return shlex.split(value)
        return value


def load_config(home: Path) -> Config:
    path = home / CONFIG_FILE
    if not path.exists():
        return Config()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise UsageError(f"cannot read {path}: {exc}", "fix the file or move it away") from exc
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(p) for p in first["loc"]) or "(file)"
        raise UsageError(f"{path}: key '{key}': {first['msg']}", "fix that key in config.toml") from exc
