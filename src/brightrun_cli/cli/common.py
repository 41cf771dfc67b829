"""What every command shares: option aliases, the workspace, JSON and console output.

Only typer/rich/stdlib at import time: `brightrun --help` must stay fast, so services
(and through them SQLAlchemy, torch, ...) are imported inside command bodies.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from datetime import date, datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from brightrun_cli.errors import debug_enabled

if TYPE_CHECKING:
    from rich.console import Console

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


def console() -> "Console":
    """Console for human output on stdout. Rich honours NO_COLOR and non-terminals itself.
    (Rich is imported here, not at module level: --json output never needs it.)"""
    from rich.console import Console

    return Console(highlight=False, soft_wrap=False)


def err_console() -> "Console":
    from rich.console import Console

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


SHORT_ID = 12  # 10 characters of creation time + 2 random: unique in practice, and any unique prefix resolves


def short_id(value: str) -> str:
    """The id as list tables show it (`show` and --json give the whole id)."""
    return value[:SHORT_ID]


def list_table(*headers: str, wrap: tuple[str, ...] = (), right: tuple[str, ...] = ()):
    """A list table that reads at 80 columns: no box, one space between columns, no cell
    cut short; columns named in `wrap` fold onto more lines when space runs out."""
    from rich.table import Table

    table = Table(box=None, padding=(0, 1, 0, 0), header_style="bold")
    for header in headers:
        table.add_column(header, no_wrap=header not in wrap, overflow="fold", justify="right" if header in right else "left")
    return table


def kick_queue(home: "Path | None") -> None:
    """Notice dead jobs and start queued ones (there is no daemon). Every command does it on
    start and `watch` while it follows; housekeeping never fails the command that runs it."""
    try:
        from brightrun_cli.home import resolve_home
        from brightrun_cli.services.queue import kick_if_needed

        kick_if_needed(resolve_home(home))
    except Exception:
        if debug_enabled():
            import traceback

            traceback.print_exc()
