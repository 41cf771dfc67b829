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
