"""Where the brightrun home is, and creating private directories in it.

Kept apart from `config` (which needs pydantic, ~0.1 s to import) so that commands
that never read config.toml, such as `dataset list`, start fast.
"""

from __future__ import annotations

import os
from pathlib import Path

from brightrun_cli.errors import UsageError


def resolve_home(override: str | os.PathLike[str] | None = None) -> Path:
    raw = override or os.environ.get("BRIGHTRUN_HOME") or "~/.brightrun"
    return Path(raw).expanduser().absolute()


def ensure_private_dir(path: Path) -> Path:
    """Create `path` (and parents) if needed; the leaf gets mode 0700."""
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(path, 0o700)
    except OSError as exc:
        raise UsageError(
            f"cannot use {path} as the brightrun home ({exc.strerror})",
            "pass a writable directory with --home or BRIGHTRUN_HOME",
        ) from exc
    return path
