"""`config.toml` in the home: the user's settings, every key optional and described.

A msgspec Struct, like the training config (presets/schema.py), so that commands which
read a setting (`gpus` for its prices, `estimate` for the default host) stay fast.
Reading it is strict about values (a wrong type or range is one clear error, the same
from every command) and lenient about unknown keys: a misspelled one is reported with
what it most likely meant (`unknown_keys`), and ignored.
"""

from __future__ import annotations

import os
import re
import shlex
import sys
from pathlib import Path
from typing import Annotated, Any

import msgspec
from msgspec import Meta

from brightrun_cli.errors import UsageError
from brightrun_cli.trackers import TRACKERS, check_report_to, check_settings

CONFIG_FILE = "config.toml"
DEFAULT_MAX_DATASET_BYTES = 500 * 1024 * 1024


class Config(msgspec.Struct, kw_only=True):
    """User settings read from `<home>/config.toml`. Every key is optional."""

    storage_url: Annotated[str, Meta(description="fsspec URL of the blob store root (default: <home>/storage), e.g. s3://bucket/prefix")] | None = None
    storage_options: Annotated[dict[str, Any], Meta(description=(
        "Extra fsspec options for the storage URL (e.g. endpoint_url). No secrets: use the provider's own credential chain."))] = msgspec.field(default_factory=dict)
    default_host: Annotated[str, Meta(min_length=1, description="Host used by `train` when --host is not given")] = "local"
    ssh_config: Annotated[str, Meta(description="ssh client config file for SSH hosts (passed as `ssh -F`; default: the system's ~/.ssh/config)")] | None = None
    default_base_model: Annotated[str, Meta(min_length=1, description=(
        "Base model (HF id, local dir, .gguf file or builtin:tiny) used when --base-model is not given: "
        "for dataset token counts, and for train when the preset names none"))] | None = None
    max_dataset_bytes: Annotated[int, Meta(gt=0, description="Datasets larger than this are refused before copying")] = DEFAULT_MAX_DATASET_BYTES
    max_stored_validation_errors: Annotated[int, Meta(ge=1, description="How many validation errors are kept on a dataset (all are counted)")] = 100
    gpu_prices: Annotated[dict[str, float], Meta(description="Hourly price overrides per GPU type, e.g. {H100 = 2.99}")] = msgspec.field(default_factory=dict)
    notification_hook: Annotated[list[str], Meta(description=(
        "Command (argv list, or a string split like a shell would, never run by a shell) that receives each notification as JSON on stdin"))] | None = None
    notification_hook_timeout: Annotated[float, Meta(gt=0, description="Seconds before the hook is killed")] = 10.0
    report_to: Annotated[list[str], Meta(description=(
        f"Experiment trackers every `train` reports to ({', '.join(TRACKERS)}) unless --report-to says otherwise"))] = msgspec.field(default_factory=list)
    trackers: Annotated[dict[str, dict[str, str]], Meta(description=(
        "Per-tracker settings: [trackers.mlflow] tracking_uri (default: sqlite:///<home>/mlflow/mlflow.db), experiment; "
        "[trackers.wandb] project, entity, mode (offline or online)"))] = msgspec.field(default_factory=dict)
    unknown_keys: list[str] = msgspec.field(default_factory=list)  # keys of the file this brightrun does not know (not a setting)


KEYS = tuple(name for name in Config.__struct_fields__ if name != "unknown_keys")


def load_config(home: Path) -> Config:
    """The home's config.toml (defaults when there is none). A file that cannot be parsed, or
    a known key with a wrong value, is a UsageError naming the file and the key."""
    path = home / CONFIG_FILE
    if not path.exists():
        return Config()
    # Imported here, not at the top: ~5 ms of every command's start, paid only where a config.toml exists.
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib

    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise UsageError(f"cannot read {path}: {exc}", "fix the file or move it away") from None
    unknown = [key for key in data if key not in KEYS]
    known = {key: value for key, value in data.items() if key in KEYS}
    hook = known.get("notification_hook")
    if isinstance(hook, str):
        known["notification_hook"] = shlex.split(hook)
    elif hook is not None and not (isinstance(hook, list) and all(isinstance(word, str) for word in hook)):
        raise UsageError(f"{path}: key 'notification_hook': expected a command, got {hook!r}",
                         'write it as a string, notification_hook = "notify-send-json --channel ml", or a list of words')
    try:  # trackers first: its messages name the tracker and the setting (msgspec's a JSON path)
        if "trackers" in known:
            check_settings(known["trackers"])
    except ValueError as exc:
        raise UsageError(f"{path}: {exc}", "fix that key in config.toml (README: 'Experiment trackers')") from None
    try:
        config = msgspec.convert({**known, "unknown_keys": unknown}, Config)
    except msgspec.ValidationError as exc:
        message, _, where = str(exc).rpartition(" - at `$.")
        key = re.sub(r"\[['\"]?([^\]'\"]+)['\"]?\]", r".\1", where.rstrip("`")) or "(file)"
        raise UsageError(f"{path}: key '{key}': {message or exc}", "fix that key in config.toml") from None
    try:  # the trainer checks the same values in its spec: one vocabulary, one set of messages
        check_report_to(config.report_to)
        check_settings(config.trackers)
    except ValueError as exc:
        raise UsageError(f"{path}: {exc}", "fix that key in config.toml (README: 'Experiment trackers')") from None
    return config


def warnings(config: Config, path: Path) -> list[str]:
    """What every command says about a config.toml that loads but will not do what its author
    meant: keys this brightrun does not know, a notification hook that cannot run, or one
    that failed since the last command (taken from <home>/hook.failed, so said once)."""
    out = []
    for key in config.unknown_keys:
        import difflib  # here, not at the top: every command calls this, and rarely with unknown keys

        close = difflib.get_close_matches(key, KEYS, n=1)
        hint = f"did you mean '{close[0]}'?" if close else f"known keys: {', '.join(KEYS)}"
        out.append(f"{path}: unknown key '{key}' is ignored; {hint}")
    hook = config.notification_hook
    if hook:
        import shutil
    if hook and shutil.which(hook[0]) is None:
        out.append(f"{path}: notification_hook '{hook[0]}' is not an executable command, so no notification reaches it; "
                   "fix notification_hook (an absolute path, or a command on PATH)")
    if hook:  # the hook runs detached: its failures since the last command, said once (one line)
        failures = take_hook_failures(path.parent)
        if failures:
            out.append(failures)
    return out


# Written by services/hook_runner.py (a standalone script, so it names the file itself too).
HOOK_FAILED_FILE = "hook.failed"


def take_hook_failures(home: Path) -> str | None:
    """The hook failures since the last command as one warning (None when none), taken
    from hook.failed so that each is said once."""
    path = home / HOOK_FAILED_FILE
    taken = path.with_name(f"{HOOK_FAILED_FILE}.{os.getpid()}")
    try:
        os.replace(path, taken)  # a runner appending now starts a new file
    except OSError:
        return None
    try:
        lines = [line for line in taken.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
        taken.unlink()
    except OSError:
        return None
    if not lines:
        return None
    count = "a notification hook failed" if len(lines) == 1 else f"a notification hook failed {len(lines)} times"
    return f"{count} since the last command, the last: {lines[-1]}; see {home / 'hook.log'}"
