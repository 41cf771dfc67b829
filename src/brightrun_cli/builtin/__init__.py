"""Base models shipped inside the package, usable offline.

`builtin:tiny` is a ~0.9M-parameter Llama-architecture model with a byte-level
tokenizer and a ChatML chat template, built by scripts/build_builtin_model.py. This
module imports nothing heavy: the trainer, dataset validation (tokenizer) and
estimates (config.json) all resolve the name to a directory and load from there.
"""

from __future__ import annotations

from pathlib import Path

PREFIX = "builtin:"
_ROOT = Path(__file__).resolve().parent


def builtin_names() -> list[str]:
    """Every shipped model, as the name a user types (e.g. "builtin:tiny")."""
    return sorted(PREFIX + p.name for p in _ROOT.iterdir() if (p / "config.json").is_file())


def resolve_base_model(name: str) -> str:
    """Map "builtin:<name>" to its shipped directory; pass any other name through unchanged.

    Raises ValueError for an unknown builtin name (the message lists the known ones).
    """
    if not name.startswith(PREFIX):
        return name
    directory = _ROOT / name[len(PREFIX):]
    if not name[len(PREFIX):].isidentifier() or not (directory / "config.json").is_file():
        raise ValueError(f"unknown built-in base model {name!r} (known: {', '.join(builtin_names())})")
    return str(directory)


def names_a_path(name: str) -> bool:
    """Whether a base-model name means a directory rather than a hub id: it starts like a
    path, or a directory of that name exists here (transformers would load it too)."""
    return name.startswith(("/", ".", "~")) or Path(name).expanduser().is_dir()


def absolute_base_model(name: str) -> str:
    """A base model given as a path on this machine, made absolute: the trainer and later
    commands run in other directories than the one it was typed in. Built-in names and
    hub ids are returned unchanged."""
    if name.startswith(PREFIX) or not names_a_path(name):
        return name
    return str(Path(name).expanduser().resolve())
