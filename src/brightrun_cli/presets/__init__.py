"""Training configuration as data: the typed schema, shipped presets and the GPU catalog.

A leaf package (pydantic and the stdlib only; this face is stdlib alone, for the GPU catalog's path): services load presets and GPUs through
it; the registry, storage and CLI are none of its business.
"""

from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent / "data"
SHIPPED_PRESETS_DIR = DATA_DIR / "presets"
GPU_CATALOG_FILE = DATA_DIR / "gpus.toml"
