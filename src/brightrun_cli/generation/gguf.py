"""A `.gguf` file as a base model: converted once into a plain Hugging Face directory.

transformers loads a GGUF file (`from_pretrained(dir, gguf_file=NAME)`, weights
dequantized to float, tokenizer and chat template rebuilt from the file's metadata), but
that takes a minute for a 135M model, and the result cannot be saved
(`save_pretrained`: "quantized with gguf and is not serializable"), nor trained by peft.
So the file is converted once into `<cache_root>/models/gguf-<sha256[:16]>/`, keyed by
its content (a renamed or copied file is not converted again; a changed one is), holding
`config.json` (without `quantization_config`), `model.safetensors`,
`generation_config.json`, the tokenizer files with the chat template, and
`gguf_source.json` (file name, size, sha256, architecture, transformers version).
Everything else (trainer, engine, estimates) then treats it as a local model directory.

The cheap checks (`is_gguf`, `find_gguf`, `check_gguf`) import nothing heavy, so the CLI
can call them while it validates a command.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import os
import struct
import sys
from pathlib import Path

from brightrun_cli.errors import OperationError, UsageError

SUFFIX = ".gguf"
SOURCE_FILE = "gguf_source.json"  # written last into a converted directory, with its provenance
# GGUF metadata value types (the spec's gguf_metadata_value_type) with a fixed width.
_SCALAR_BYTES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_STRING, _ARRAY = 8, 9


def is_gguf(name: str) -> bool:
    """Whether a base-model name means a GGUF file: it ends in .gguf (existing or not, so a
    mistyped path gets find_gguf's error rather than a hub lookup), or it is a directory
    without config.json that holds .gguf files."""
    path = Path(name).expanduser()
    if name.lower().endswith(SUFFIX):
        return True
    return path.is_dir() and not (path / "config.json").exists() and any(_gguf_files(path))


@functools.lru_cache(maxsize=64)  # a converted directory never changes; watch redraws often
def source_name(model: str | None) -> str | None:
    """The .gguf file a converted directory was made from (its `gguf_source.json`), or None
    for any other base model: what a user typed is shown beside the cache path it became."""
    if not model or not model.startswith(("/", "~")) or "gguf-" not in model:
        return None
    try:
        return str(json.loads((Path(model).expanduser() / SOURCE_FILE).read_text())["file"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def describe(model: str | None, *, short: bool = False) -> str:
    """A base model for people: `X.gguf (converted: DIR)` for a converted GGUF file (`X.gguf`
    when `short`), the name itself otherwise."""
    source = source_name(model)
    if source is None:
        return str(model) if model is not None else "-"
    return source if short else f"{source} (converted: {model})"


def check_local_base(model: str) -> None:
    """A base model named by its path (as models and jobs record it) must still be there; one
    converted from a .gguf file into the cache says how to get it back (the same file converts
    into the same directory), instead of transformers reading the path as a hub id."""
    if not model.startswith(("/", "~")):
        return
    path = Path(model).expanduser()
    if path.exists():
        return
    if path.name.startswith("gguf-") and path.parent.name == "models":
        raise UsageError(f"the base model converted from a .gguf file into {path} is gone (its cache was cleared or moved)",
                         "pass the .gguf file to any command once and it is converted into that place again, "
                         "e.g. 'brightrun estimate --dataset DATASET --base-model FILE.gguf'")
    raise UsageError(f"the base model directory {path} does not exist (moved or deleted?)",
                     "put the model back at that path: models and jobs record their base model by where it was")


def _gguf_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.name.lower().endswith(SUFFIX) and p.is_file())


def find_gguf(path: str | Path) -> Path:
    """The GGUF file a path names: the file itself, or the one .gguf file in a directory."""
    path = Path(path).expanduser()
    if path.is_dir():
        found = _gguf_files(path)
        if len(found) != 1:
            listed = ", ".join(p.name for p in found[:5]) + (", ..." if len(found) > 5 else "")
            raise UsageError(
                f"directory {path} holds {len(found)} .gguf files{': ' + listed if found else ''}",
                "name the .gguf file itself as the base model" if found else "give the path of a .gguf file",
            )
        return found[0].resolve()
    if not path.is_file():
        raise UsageError(f"GGUF file {path} does not exist", "check the path of the base model")
    return path.resolve()


def check_gguf(path: Path) -> str:
    """Check a GGUF file's structure (magic, version, metadata, tensor table, and that the
    tensor data the table promises lies inside the file) and return its architecture
    (e.g. "llama"). A damaged or truncated file is a UsageError, found in milliseconds
    instead of after a minute of conversion."""
    import mmap

    try:
        with open(path, "rb") as fh:
            if os.fstat(fh.fileno()).st_size < 24:
                raise _Damaged("it is too short to hold a GGUF header")
            # Mapped, not read: only the header's pages are touched, even for a 40 GB file.
            with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as data:
                return _check_layout(data)
    except OSError as exc:
        raise UsageError(f"cannot read GGUF file {path}: {exc.strerror or exc}") from None
    except (struct.error, UnicodeDecodeError, _Damaged) as exc:
        detail = str(exc) if isinstance(exc, _Damaged) else "the file ends in the middle of its header"
        raise UsageError(f"{path.name} is not a valid GGUF file ({detail})",
                         "download or export it again; a partial download is the usual cause") from None


class _Damaged(Exception):
    pass


def _check_layout(data) -> str:
    if data[:4] != b"GGUF":
        raise _Damaged("it does not start with the GGUF magic bytes")
    version, tensor_count, kv_count = struct.unpack_from("<IQQ", data, 4)
    if version not in (2, 3):
        raise _Damaged(f"GGUF version {version}; versions 2 and 3 are read")
    # Every entry takes at least 12 (metadata) or 24 (tensor info) bytes: a garbage count fails here, not in a loop.
    if kv_count * 12 + tensor_count * 24 > len(data):
        raise _Damaged("its header counts more entries than the file can hold")
    pos, metadata = 24, {}
    for _ in range(kv_count):
        key, pos = _string(data, pos)
        (kind,) = struct.unpack_from("<I", data, pos)
        value, pos = _value(data, pos + 4, kind)
        if key in ("general.architecture", "general.alignment"):
            metadata[key] = value
    architecture = metadata.get("general.architecture")
    if not isinstance(architecture, str):
        raise _Damaged("its metadata names no general.architecture")
    import gguf  # the GGUF package transformers reads these files with: block sizes of every ggml type

    extents = []
    for _ in range(tensor_count):
        name, pos = _string(data, pos)
        (dims,) = struct.unpack_from("<I", data, pos)
        shape = struct.unpack_from(f"<{dims}Q", data, pos + 4)
        kind, offset = struct.unpack_from("<IQ", data, pos + 4 + 8 * dims)
        pos += 4 + 8 * dims + 12
        try:
            block, block_bytes = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(kind)]
        except (ValueError, KeyError):
            raise _Damaged(f"tensor {name} has ggml type {kind}, unknown to gguf {_version('gguf')}") from None
        elements = 1
        for d in shape:
            elements *= d
        extents.append(offset + elements // block * block_bytes)
    alignment = metadata.get("general.alignment", 32)
    start = (pos + alignment - 1) // alignment * alignment
    end = start + max(extents, default=0)
    if end > len(data):
        raise _Damaged(f"its tensors need {end:,} bytes but the file has {len(data):,}: it is truncated")
    return architecture


def _string(data: bytes, pos: int) -> tuple[str, int]:
    (length,) = struct.unpack_from("<Q", data, pos)
    if pos + 8 + length > len(data):
        raise _Damaged("the file ends in the middle of its header")
    return data[pos + 8: pos + 8 + length].decode("utf-8"), pos + 8 + length


def _value(data: bytes, pos: int, kind: int):
    if kind in _SCALAR_BYTES:
        width = _SCALAR_BYTES[kind]
        return int.from_bytes(data[pos:pos + width], "little") if kind in (4, 10) else None, pos + width
    if kind == _STRING:
        return _string(data, pos)
    if kind == _ARRAY:
        item, count = struct.unpack_from("<IQ", data, pos)
        pos += 12
        if item in _SCALAR_BYTES:
            return None, pos + count * _SCALAR_BYTES[item]
        if count > len(data) - pos:
            raise _Damaged("an array counts more items than the file can hold")
        for _ in range(count):
            _, pos = _value(data, pos, item)
        return None, pos
    raise _Damaged(f"a metadata value has unknown type {kind}")


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "(not installed)"


def file_sha256(path: Path) -> str:
    import hashlib  # hashlib, shutil and tempfile are imported where used: every estimate imports this module, few give a .gguf
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def convert_gguf(path: str | Path, cache_root: str | Path) -> Path:
    import shutil
    import tempfile
    """The plain Hugging Face directory for a GGUF file (or a directory holding one),
    converting it on first use: `<cache_root>/models/gguf-<sha256[:16]>/`.

    Built in a temporary directory next to it and renamed into place, so a listed
    directory is complete; a lock makes a second process wait for the first's result
    instead of converting too. Raises UsageError for a damaged file or an architecture
    transformers cannot load from GGUF."""
    source = find_gguf(path)
    digest = file_sha256(source)
    cache_root = Path(cache_root).expanduser()
    models = cache_root / "models"
    target = models / f"gguf-{digest[:16]}"
    if (target / SOURCE_FILE).is_file():
        return target
    architecture = check_gguf(source)
    _check_loadable(source, architecture)  # bad input is refused before anything is written
    models.mkdir(parents=True, exist_ok=True)
    (cache_root / "locks").mkdir(exist_ok=True)
    with _locked(cache_root / "locks" / f"gguf-{digest[:16]}.lock"):
        if (target / SOURCE_FILE).is_file():  # converted by another process while this one waited
            return target
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-gguf-{digest[:16]}-", dir=models))
        # One line instead of transformers' progress bars (carriage returns in a script's log).
        sys.stderr.write(f"converting {source.name} into a plain model directory (once for this file): {target}\n")
        try:
            _convert(source, tmp)
            (tmp / SOURCE_FILE).write_text(json.dumps({
                "file": source.name, "size": source.stat().st_size, "sha256": digest,
                "architecture": architecture, "transformers": _version("transformers"),
            }, indent=2) + "\n")
            shutil.rmtree(target, ignore_errors=True)  # an interrupted copy by a brightrun without the lock
            os.rename(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


@contextlib.contextmanager
def _locked(path: Path):
    import fcntl

    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _check_loadable(source: Path, architecture: str) -> None:
    """transformers maps the file's metadata to a model config, or says it cannot."""
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(str(source.parent), gguf_file=source.name)
    except ValueError as exc:
        if "not supported" in str(exc):
            raise UsageError(
                f"{source.name}: transformers {_version('transformers')} cannot load GGUF files of architecture {architecture!r}",
                "use a model of a supported architecture (llama, mistral, qwen2, phi3, gemma, ...) or its Hugging Face directory",
            ) from None
        raise UsageError(f"cannot read {source.name} as a model: {str(exc).splitlines()[0][:200]}") from None


def _convert(source: Path, out: Path) -> None:
    """Load the GGUF file through transformers (dequantized), rebuild a plain model of the
    same config, and save it with the tokenizer as safetensors."""
    import copy

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(source.parent), source.name
    try:  # transformers' tqdm bars (one a tensor file pass) go nowhere: convert_gguf said what happens
        with contextlib.redirect_stderr(io.StringIO()):
            tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
            loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, **_dequantized())
    except Exception as exc:  # the loaders raise assorted types for what they cannot map
        raise OperationError(f"converting {name} failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}",
                             "set BRIGHTRUN_DEBUG=1 for details") from exc
    config = copy.deepcopy(loaded.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    # Built on the meta device and given the loaded tensors (assign): no random init, no second copy.
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(config, dtype=loaded.dtype)
    plain.load_state_dict(loaded.state_dict(), strict=True, assign=True)
    plain.tie_weights()
    plain.generation_config = loaded.generation_config
    with contextlib.redirect_stderr(io.StringIO()):
        plain.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


def _dequantized() -> dict:
    """Ask for plain float weights where transformers could keep GGUF blocks (its GgufConfig,
    in recent releases, packs weights when the `kernels` package is installed)."""
    try:
        from transformers import GgufConfig
    except ImportError:  # older releases always dequantize
        return {}
    return {"quantization_config": GgufConfig(dequantize=True)}
