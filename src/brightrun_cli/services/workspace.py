"""The Workspace: everything a service needs about one brightrun home.

Opened once per command by the CLI (`Workspace.open(home)`); the registry and the
blob store are created lazily so commands that need neither stay fast.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

from brightrun_cli.config import Config, ensure_private_dir, load_config, resolve_home
from brightrun_cli.registry.engine import Registry, open_registry
from brightrun_cli.storage import BlobStore


class Workspace:
    def __init__(self, home: Path, config: Config):
        self.home = home
        self.config = config

    @classmethod
    def open(cls, home: str | Path | None = None) -> "Workspace":
        path = ensure_private_dir(resolve_home(home))
        return cls(path, load_config(path))

    @cached_property
    def registry(self) -> Registry:
        return open_registry(self.home)

    @cached_property
    def storage(self) -> BlobStore:
        url = self.config.storage_url or str(self.home / "storage")
        return BlobStore(url, self.config.storage_options)

    @property
    def runs_dir(self) -> Path:
        """Local working directories of jobs (`runs/<job_id>`), outside the blob store."""
        return ensure_private_dir(self.home / "runs")

    @property
    def cache_dir(self) -> Path:
        """Local copies of remote blobs and built artifacts such as the builtin base model."""
        return ensure_private_dir(self.home / "cache")

    @property
    def user_presets_dir(self) -> Path:
        return self.home / "presets"
