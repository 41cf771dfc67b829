"""What every command shares: option aliases, the workspace, JSON and console output.

Only typer/rich/stdlib at import time: `brightrun --help` must stay fast, so services
(and through them SQLAlchemy, torch, ...) are imported inside command bodies.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from datetime import date, datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

if TYPE_CHECKING:
    from brightrun_cli.services.workspace import Workspace

JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout instead of tables.")]
YesOpt = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]


@dataclass
class AppState:
    home: Path | None = None
    _workspace: "Workspace | None" = None

    def workspace(self) -> "Workspace":
        if self._workspace is None:
            from brightrun_cli.services.workspace import Workspace

            self._workspace = Workspace.open(self.home)
        return self._workspace


def workspace(ctx: typer.Context) -> "Workspace":
    """The Workspace for this invocation (home from --home / BRIGHTRUN_HOME / ~/.brightrun)."""
    root = ctx.find_root()
    if not isinstance(root.obj, AppState):
        root.obj = AppState()
    return root.obj.workspace()


def console() -> Console:
    """Console for human output on stdout. Rich honours NO_COLOR and non-terminals itself."""
    return Console(highlight=False, soft_wrap=False)


def err_console() -> Console:
    return Console(stderr=True, highlight=False)


def stdin_is_tty() -> bool:
    return sys.stdin is not None and sys.stdin.isatty()


def _default(value: Any) -> Any:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        # Fixed-width (always microseconds), the same text `dataset list` gets from SQLite.
        return value.astimezone(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "model_dump"):
        return jsonable(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def jsonable(value: Any) -> Any:
    """Rows and pydantic models -> plain dicts using the registry's field names."""
    if hasattr(value, "model_dump"):
        data = value.model_dump()
        if "metadata_" in data:  # SQLAlchemy reserves `metadata`; the column is named metadata
            data["metadata"] = data.pop("metadata_")
        return data
    if isinstance(value, list):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    return value


def print_json(value: Any) -> None:
    # Plain lists/dicts go straight to the C encoder; rows and datetimes reach _default.
    sys.stdout.write(json.dumps(value, default=_default, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def debug_enabled() -> bool:
    return os.environ.get("BRIGHTRUN_DEBUG", "") not in ("", "0")
