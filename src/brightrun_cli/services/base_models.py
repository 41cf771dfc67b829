"""A base model as this machine hands it to the trainer and the generation engine.

The one place a `.gguf` base model (a file, or a directory holding one) becomes a plain
Hugging Face directory: converted once into `<home>/cache/models/gguf-<sha256[:16]>/`
(generation/gguf.py), keyed by the file's content. Every command that accepts a base
model goes through here (`train`, `estimate` and presets via `presets.resolve_config`,
`dataset add/validate --base-model`), so a job, its model and later `models eval/try`
name the converted directory. A damaged file is refused before anything is written.
"""

from __future__ import annotations

from brightrun_cli.generation import gguf
from brightrun_cli.workspace import Workspace


def local_base_model(ws: Workspace, name: str | None) -> str | None:
    """`name`, or for a GGUF file the directory converted from it (converting on first use)."""
    if not name or not gguf.is_gguf(name):
        return name
    return str(gguf.convert_gguf(name, ws.home / "cache"))
