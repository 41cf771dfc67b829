"""The base model a run starts from, checked without loading it: where its files are (a
local directory, or the Hugging Face cache and hub for an id) and whether they are complete.

Two callers need this before anything heavy happens:

- every command that reads a base model named by a hub id (`estimate` reading its
  config, dataset token counting loading its tokenizer, `train`). huggingface_hub
  retries a refused or unanswered connection five times with back-off: 25 s and six
  log lines before its error, on a machine without network. So the hub is asked only
  after one short TCP probe of its endpoint (or its proxy) has answered; offline mode
  (HF_HUB_OFFLINE) and an unreachable hub are each one line at once;
- `train`, which must not queue a job that cannot start (`check_files`): a directory
  needs its weights (safetensors headers parse and the files are as long as their
  headers say), a tokenizer and a config. Reading headers costs milliseconds; loading
  the weights would cost the CLI seconds and gigabytes, so that is left to the trainer.

It is also the one place a `.gguf` base model (a file, or a directory holding one)
becomes a plain Hugging Face directory (`local_base_model`): converted once into
`<home>/cache/models/gguf-<sha256[:16]>/` (generation/gguf.py), keyed by the file's
content. Every command that accepts a base model goes through it (`train`, `estimate`
and presets via `presets.resolve_config`, `dataset add/validate --base-model`), so a job,
its model and later `models eval/try` name the converted directory. A damaged file is
refused before anything is written.
"""

from __future__ import annotations

import functools
import json
import os
import struct
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from brightrun_cli.errors import UsageError
from brightrun_cli.generation import gguf
from brightrun_cli.workspace import Workspace

# One TCP handshake to the hub (or its proxy): a reachable endpoint answers in well under
# a second; a black-holed one is given up on after this.
PROBE_TIMEOUT_S = 3.0
DEFAULT_ENDPOINT = "https://huggingface.co"
# A safetensors header is JSON of a few hundred bytes per tensor; 100 MB is the format's own limit.
MAX_SAFETENSORS_HEADER = 100_000_000
# What transformers can build a fast tokenizer from (the trainer needs a fast one).
TOKENIZER_FILES = (("tokenizer.json",), ("tokenizer.model",), ("vocab.json", "merges.txt"), ("tiktoken.model",))
WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def offline_mode() -> bool:
    """HF_HUB_OFFLINE set (not 0/false): huggingface_hub and transformers touch no network."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() not in ("", "0", "false", "no", "off")


def endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "").rstrip("/") or DEFAULT_ENDPOINT


def hub_unreachable() -> str | None:
    """Why the hub cannot be used now (offline mode, no name resolution, refused, no
    answer), or None when one TCP connection to it (or its proxy) succeeds."""
    if offline_mode():
        return "HF_HUB_OFFLINE is set"
    # Imported here: only a hub id needs them, and urllib.request (http.client, ssl) alone
    # costs `estimate` and `train` of a local model 50-100 ms of start-up.
    import urllib.request

    url = endpoint()
    parts = urlsplit(url)
    if not parts.hostname:
        return f"HF_ENDPOINT {url!r} is not a URL"
    proxy = urllib.request.getproxies().get(parts.scheme or "https")
    if proxy and urllib.request.proxy_bypass(parts.hostname):
        proxy = None
    return _probe(url, proxy)


@functools.lru_cache(maxsize=8)
def _probe(url: str, proxy: str | None) -> str | None:
    """One answer per endpoint and proxy for the process: a command asks about the hub at
    several places (config, tokenizer, weights), and the network does not change in
    between. The connection runs in a thread so that a slow name lookup is bounded too."""
    import socket
    import threading

    parts = urlsplit(url)
    if proxy:
        parts = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    where = f"{parts.hostname}:{port}"
    outcome: list[str | None] = []

    def connect() -> None:
        try:
            socket.create_connection((parts.hostname, port), timeout=PROBE_TIMEOUT_S).close()
            outcome.append(None)
        except OSError as exc:
            outcome.append(f"{where}: {exc.strerror or exc}")

    thread = threading.Thread(target=connect, daemon=True)
    thread.start()
    thread.join(PROBE_TIMEOUT_S + 0.5)
    return outcome[0] if outcome else f"{where}: no answer within {PROBE_TIMEOUT_S:g} s"


def _no_hub(subject: str, repo_id: str, reason: str) -> UsageError:
    return UsageError(
        f"{subject}: not in the local Hugging Face cache, and the hub cannot be reached ({reason})",
        f"pass a local model directory with --base-model, or fill this machine's cache (HF_HOME) where there is network: 'hf download {repo_id}'",
    )


def cached_file(repo_id: str, filename: str) -> str | None:
    """The file's path in the local Hugging Face cache, or None."""
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(repo_id, filename)
    except ValueError:  # not a valid repo id (HFValidationError): nothing of it can be cached
        return None
    return found if isinstance(found, str) else None


def require_hub(subject: str, repo_id: str) -> None:
    """Raise the one-line UsageError "<subject>: not in the local Hugging Face cache, and the
    hub cannot be reached (why)" unless the hub answers: call before anything that would
    download files of `repo_id`."""
    reason = hub_unreachable()
    if reason is not None:
        raise _no_hub(subject, repo_id, reason)


def hub_config(repo_id: str) -> str:
    """config.json of a hub model: from the cache, else downloaded when the hub answers.
    UsageError when neither works (offline, unreachable, unknown or gated repo)."""
    cached = cached_file(repo_id, "config.json")
    if cached is not None:
        return cached
    require_hub(f"cannot read the config of base model '{repo_id}'", repo_id)
    from huggingface_hub import hf_hub_download

    try:
        return hf_hub_download(repo_id, "config.json")
    except Exception as exc:  # unknown repo, gated, a connection lost meanwhile: each means "cannot read it"
        raise UsageError(f"cannot read the config of base model '{repo_id}' from the hub ({_first_line(exc)})",
                         "check the model id (and access to a gated model: 'hf auth login'), or pass a local model directory") from exc


def check_directory(path: Path) -> list[str]:
    """What of a model directory would stop the trainer, one line each (none: it is
    complete): config.json, the weights (every shard an index names; safetensors headers
    that parse, files as long as the headers say) and tokenizer files. Nothing is loaded."""
    problems: list[str] = []
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
        if not isinstance(config, dict):
            problems.append("config.json is not a JSON object")
    except FileNotFoundError:
        problems.append("no config.json")
    except (OSError, ValueError) as exc:
        problems.append(f"config.json does not parse ({exc})")
    problems += _weight_problems(path)
    if not any(all((path / name).is_file() for name in names) for names in TOKENIZER_FILES):
        problems.append("no tokenizer (tokenizer.json, tokenizer.model, or vocab.json with merges.txt)")
    return problems


def _weight_problems(path: Path) -> list[str]:
    for index_name in WEIGHT_INDEXES:
        index = path / index_name
        if index.is_file():
            try:
                shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
                return [f"{index_name} does not parse ({exc})"]
            missing = [s for s in shards if not (path / s).is_file()]
            if missing:
                return [f"{index_name} names {len(shards)} weight files, {len(missing)} missing ({', '.join(missing[:3])})"]
            return [p for s in shards if s.endswith(".safetensors") and (p := safetensors_problem(path / s))]
    for name in WEIGHT_FILES:
        if (path / name).is_file():
            problem = safetensors_problem(path / name) if name.endswith(".safetensors") else None
            return [problem] if problem else []
    shards = sorted(p.name for p in path.glob("*.safetensors"))
    if shards:  # shards without an index: transformers would not find them
        return [f"weights {', '.join(shards[:3])} without model.safetensors.index.json"]
    return ["no weights (model.safetensors, a sharded model.safetensors.index.json, or pytorch_model.bin)"]


def safetensors_problem(file: Path) -> str | None:
    """Why `file` is not a complete safetensors file, or None: the 8-byte header length,
    the JSON header, and a file long enough for the last tensor the header places."""
    try:
        size = file.stat().st_size
        with file.open("rb") as handle:
            head = handle.read(8)
            if len(head) < 8:
                return f"{file.name} is not a safetensors file ({size} bytes)"
            (length,) = struct.unpack("<Q", head)
            if length > min(MAX_SAFETENSORS_HEADER, size - 8):
                return f"{file.name} is not a safetensors file (its header length {length} exceeds the file)"
            header = json.loads(handle.read(length))
    except OSError as exc:
        return f"{file.name} cannot be read ({exc.strerror or exc})"
    except ValueError:
        return f"{file.name} is not a safetensors file (its header is not JSON)"
    if not isinstance(header, dict):
        return f"{file.name} is not a safetensors file (its header is not a JSON object)"
    try:
        end = max((int(t["data_offsets"][1]) for k, t in header.items() if k != "__metadata__"), default=0)
    except (KeyError, TypeError, ValueError, IndexError):
        return f"{file.name} is not a safetensors file (a tensor without data_offsets)"
    if 8 + length + end > size:
        return f"{file.name} is cut off: {size:,} bytes, its header places tensors up to byte {8 + length + end:,}"
    return None


def check_hub_model(repo_id: str) -> None:
    """A hub model for a local run: complete in the cache (its snapshot checked like a
    directory), or downloadable (the hub answers). Raises the one-line UsageError otherwise."""
    config = cached_file(repo_id, "config.json")
    missing = check_directory(Path(config).parent) if config is not None else None
    if missing is not None and not missing:
        return
    reason = hub_unreachable()
    if reason is None:
        return  # the trainer downloads what the cache lacks
    incomplete = "" if missing is None else f" (its cached copy: {'; '.join(missing)})"
    raise _no_hub(f"base model '{repo_id}' cannot be trained from{incomplete}", repo_id, reason)


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def local_base_model(ws: Workspace, name: str | None) -> str | None:
    """`name`, or for a GGUF file the directory converted from it (converting on first use)."""
    if not name or not gguf.is_gguf(name):
        return name
    return str(gguf.convert_gguf(name, ws.home / "cache"))


def weight_module_names(path: Path) -> list[str] | None:
    """The modules of a model directory that hold a weight matrix (safetensors keys ending in
    `.weight` with two dimensions), from the index or the headers alone; None when the weights
    are not safetensors or cannot be read (nothing to check against then)."""
    keys: dict[str, Any] = {}
    index = path / "model.safetensors.index.json"
    try:
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        elif (path / "model.safetensors").is_file():
            shards = ["model.safetensors"]
        else:
            return None
        for shard in shards:
            with (path / shard).open("rb") as handle:
                (length,) = struct.unpack("<Q", handle.read(8))
                if length > MAX_SAFETENSORS_HEADER:
                    return None
                keys.update(json.loads(handle.read(length)))
    except (OSError, ValueError, KeyError, TypeError, struct.error):
        return None
    return sorted(key[: -len(".weight")] for key, tensor in keys.items()
                  if key.endswith(".weight") and isinstance(tensor, dict) and len(tensor.get("shape") or ()) == 2)


def check_target_modules(name: str | None, targets: list[str] | str) -> None:
    """Refuse LoRA target modules that no module of the base model is named (peft matches a
    name against the end of each module's path), before a job is queued or priced: a typo
    would otherwise be priced as a tiny adapter, queued, and fail when the trainer starts.
    A model that cannot be looked at here (a hub id not cached, weights not in safetensors)
    is left to the trainer."""
    if not name or targets == "all-linear":
        return
    from brightrun_cli.builtin import names_a_path, resolve_base_model

    try:
        location = resolve_base_model(name)
    except ValueError:
        return
    if names_a_path(location):
        directory = Path(location).expanduser()
    else:
        config = cached_file(location, "config.json")
        if config is None:
            return
        directory = Path(config).parent
    modules = weight_module_names(directory)
    if not modules:
        return
    missing = [t for t in targets if not any(m == t or m.endswith("." + t) for m in modules)]
    if not missing:
        return
    import difflib

    leaves = sorted({m.rsplit(".", 1)[-1] for m in modules if ".layers." in m or ".h." in m or ".blocks." in m} or
                    {m.rsplit(".", 1)[-1] for m in modules})
    close = [c for t in missing for c in difflib.get_close_matches(t, leaves, n=1)]
    raise UsageError(
        f"target_modules {', '.join(missing)}: no module of base model '{gguf.describe(name, short=True)}' is named so "
        f"(its layers' weight modules: {', '.join(leaves[:12])}{', ...' if len(leaves) > 12 else ''})",
        (f"did you mean {', '.join(close)}? " if close else "") + "fix --set target_modules=..., or use target_modules=all-linear",
    )


def display_name(name: str | None, *, short: bool = False) -> str:
    """A base model as people read it: a converted .gguf by its file name (`gguf.describe`)."""
    return gguf.describe(name, short=short)
