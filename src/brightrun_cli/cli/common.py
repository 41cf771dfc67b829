"""What every command shares: option aliases, the workspace, JSON and console output.

Options that several commands take are declared once here (as huggingface_hub's CLI
does) and imported, so their flag, short form and help read the same everywhere.
Only typer and the standard library at import time: `brightrun --help` must stay fast,
so services (and through them the registry, torch, ...) are imported inside command
bodies; that is the CLI's one exception to "imports at the top".
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from datetime import date, datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from brightrun_cli.errors import debug_enabled

if TYPE_CHECKING:
    from rich.console import Console

    from brightrun_cli.workspace import Workspace

JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout instead of tables.")]
YesOpt = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]
DatasetOpt = Annotated[str, typer.Option("--dataset", "-d", help="Dataset id, unique id prefix or name (see 'brightrun dataset list').", show_default=False)]
PresetOpt = Annotated[Optional[str], typer.Option("--preset", "-p", help="Preset name (see 'brightrun presets list'; default: balanced).", show_default=False)]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", help="Override one setting, key=value (repeatable; see 'brightrun presets show').", show_default=False)]
ConfigOpt = Annotated[Optional[Path], typer.Option("--config", help="TOML, JSON or YAML file of settings, applied over the preset.", show_default=False)]
BaseModelOpt = Annotated[Optional[str], typer.Option("--base-model", help="Hugging Face id, local model directory, .gguf file, or builtin:tiny.", show_default=False)]
GpusOpt = Annotated[Optional[int], typer.Option("--gpus", min=1, help="GPUs per host (default: all of the host's).", show_default=False)]
MaxCostOpt = Annotated[Optional[float], typer.Option("--max-cost", help="Budget in USD: refuse a larger estimate, stop the job if it gets there.", show_default=False)]
RequireOpt = Annotated[Optional[list[str]], typer.Option("--require", help="A gate on the answer eval, METRIC OP VALUE: \"exact_match>=0.5\", \"rougeL>base\" (repeatable; exit 6 when one fails).", show_default=False)]
EvalLimitOpt = Annotated[Optional[int], typer.Option("--limit", help="Evaluate the first N held-out samples (default: 50).", show_default=False)]
HostOpt = Annotated[Optional[str], typer.Option("--host", help="Host to run on (default: config.toml default_host, else local; see 'brightrun hosts list').", show_default=False)]


@dataclass
class AppState:
    home: Path | None = None
    _workspace: "Workspace | None" = None

    def workspace(self) -> "Workspace":
        if self._workspace is None:
            from brightrun_cli.workspace import Workspace

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

    class StdoutConsole(Console):
        def on_broken_pipe(self) -> None:  # Rich's own exits 1; a reader that left is 141, quietly
            raise SystemExit(reader_left())

    return StdoutConsole(highlight=False, soft_wrap=False)


def err_console() -> "Console":
    from rich.console import Console

    return Console(stderr=True, highlight=False)


EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: what a shell reports for a program whose reader left


def reader_left() -> int:
    """The reader of our stdout went away (`brightrun jobs list | head -1`): stop quietly, as
    a program killed by SIGPIPE would; returns the exit code to use."""
    import os

    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the final flush must not fail again
    return EXIT_BROKEN_PIPE


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
    if hasattr(value, "model_dump") or hasattr(value, "to_json"):
        return jsonable(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def jsonable(value: Any) -> Any:
    """Registry rows, pydantic models and results with a `to_json` -> plain dicts using the
    registry's field names."""
    if hasattr(value, "to_json"):
        return value.to_json()
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


def print_raw_json(text: str) -> None:
    """JSON text already rendered (by SQLite, for long lists) straight to stdout."""
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


LIST_DEFAULT = 50  # rows a list table shows unless --limit says otherwise (--json: all)
LimitOpt = Annotated[Optional[int], typer.Option("--limit", min=1, help=f"At most this many (default: {LIST_DEFAULT} in a table, all with --json).", show_default=False)]


def more_rows_note(shown: int, total: int) -> None:
    """Under a list table cut at the default: how many there are and how to see them."""
    if total > shown:
        console().print(f"[dim]{shown} of {total:,} shown; --limit N for more, --json for all[/dim]")


def human_bytes(size: float) -> str:
    """A size as people read it (decimal units, as disks and stores are sold)."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size} B"


def human_duration(seconds: float | None) -> str:
    """A duration as people say it: "21 s", "7.5 min", "3.25 h" (never "0.0058 h"); "-" unknown."""
    if seconds is None or seconds < 0:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


SHORT_ID = 12  # 10 characters of creation time + 2 random: unique in practice, and any unique prefix resolves


def short_id(value: str) -> str:
    """The id as list tables show it (`show` and --json give the whole id)."""
    return value[:SHORT_ID]


class ListTable:
    """A list table that reads at 80 columns: no box, one space between columns, no cell cut
    short; columns named in `wrap` fold onto more lines when space runs out.

    Drawn line by line as Rich Text, without Rich's Table: measuring every cell of a Table
    costs about a millisecond a row, the better part of a list command's time. A cell is a
    string, or (string, style)."""

    def __init__(self, *headers: str, wrap: tuple[str, ...] = (), right: tuple[str, ...] = ()):
        self.headers = headers
        self.wrap = [h in wrap for h in headers]
        self.right = [h in right for h in headers]
        self.rows: list[tuple[tuple[str, str | None], ...]] = []

    def add_row(self, *cells: "str | tuple[str, str | None]") -> None:
        self.rows.append(tuple(c if isinstance(c, tuple) else (c, None) for c in cells))

    def _widths(self, max_width: int) -> list[int]:
        from rich.cells import cell_len

        widths = [max([cell_len(h)] + [cell_len(r[i][0]) for r in self.rows]) for i, h in enumerate(self.headers)]
        excess = sum(widths) + len(widths) - 1 - max_width
        for i in sorted(range(len(widths)), key=lambda i: -widths[i]):
            if excess <= 0:
                break
            if self.wrap[i]:
                cut = min(excess, widths[i] - max(8, len(self.headers[i])))
                widths[i] -= max(0, cut)
                excess -= max(0, cut)
        return widths

    def __rich_console__(self, console, options):
        from rich.text import Text

        widths = self._widths(options.max_width)
        header = Text(style="bold")
        for i, (head, width) in enumerate(zip(self.headers, widths)):
            header.append((head.rjust(width) if self.right[i] else head.ljust(width)) + (" " if i < len(widths) - 1 else ""))
        yield header
        for row in self.rows:
            parts = [[text[k:k + width] for k in range(0, max(len(text), 1), width)] if self.wrap[i] else [text]
                     for i, ((text, _), width) in enumerate(zip(row, widths))]
            for line in range(max(len(p) for p in parts)):
                out = Text()
                for i, ((_, style), width) in enumerate(zip(row, widths)):
                    piece = parts[i][line] if line < len(parts[i]) else ""
                    out.append(piece.rjust(width) if self.right[i] else piece.ljust(width), style=style)
                    if i < len(widths) - 1:
                        out.append(" ")
                out.rstrip()
                yield out


def list_table(*headers: str, wrap: tuple[str, ...] = (), right: tuple[str, ...] = ()) -> ListTable:
    return ListTable(*headers, wrap=wrap, right=right)


def kick_queue(home: "Path | None") -> None:
    """Notice dead jobs and start queued ones (there is no daemon). Every command does it on
    start and `watch` while it follows; housekeeping never fails the command that runs it.
    The check is a plain read; only when there is something to do does anything change."""
    try:
        from brightrun_cli.home import resolve_home
        from brightrun_cli.services.queue import kick_if_needed

        kick_if_needed(resolve_home(home))
    except Exception:
        if debug_enabled():
            import traceback

            traceback.print_exc()
