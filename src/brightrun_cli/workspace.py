"""The Workspace: everything a service needs about one brightrun home.

Opened once per command by the CLI (`Workspace.open(home)`); the registry and the
blob store are created lazily so commands that need neither stay fast.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from brightrun_cli.config import CONFIG_FILE, Config, load_config, warnings
from brightrun_cli.home import ensure_private_dir, resolve_home
from brightrun_cli.registry.engine import Registry, open_registry

if TYPE_CHECKING:
    from brightrun_cli.storage import BlobStore


class Workspace:
    def __init__(self, home: Path, config: "Config | None" = None):
        self.home = home
        if config is not None:
            self.__dict__["config"] = config

    @classmethod
    def open(cls, home: str | Path | None = None) -> "Workspace":
        return cls(ensure_private_dir(resolve_home(home)))

    @cached_property
    def config(self) -> Config:
        """config.toml, read on first use."""
        return load_config(self.home)

    def config_warnings(self) -> list[str]:
        """What is off in config.toml without making it unusable (config.warnings)."""
        return warnings(self.config, self.home / CONFIG_FILE)

    @cached_property
    def registry(self) -> Registry:
        return open_registry(self.home)

    @cached_property
    def storage(self) -> "BlobStore":
        from brightrun_cli.storage import BlobStore

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
