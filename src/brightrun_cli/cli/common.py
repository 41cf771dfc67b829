"""What every command shares: how commands are declared, option aliases, the workspace,
JSON and console output.

Commands are declared here without typer: `Group.command` records a function, and `Opt` /
`Arg` record what `typer.Option` / `typer.Argument` would take. cli/app.py turns the
declarations into a typer app (help pages, usage errors); cli/dispatch.py parses an
ordinary command line from the same declarations without importing typer, click or Rich,
which is most of a read command's start-up. Options that several commands take are
declared once here (as huggingface_hub's CLI does) and imported, so their flag, short form
and help read the same everywhere. Services (and through them the registry, torch, ...) are
imported inside command bodies; that is the CLI's one exception to "imports at the top".
"""

from __future__ import annotations

import json
import sys
from datetime import date, datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Callable, Optional

from brightrun_cli.cli import term
from brightrun_cli.errors import debug_enabled

if TYPE_CHECKING:
    from rich.console import Console

    from brightrun_cli.workspace import Workspace


class Opt:
    """`typer.Option(*decls, **kwargs)`, recorded without importing typer."""

    def __init__(self, *decls: str, **kwargs: Any):
        self.decls, self.kwargs = decls, kwargs


class Arg:
    """`typer.Argument(**kwargs)`, recorded without importing typer."""

    def __init__(self, **kwargs: Any):
        self.kwargs = kwargs


class Context:
    """The annotation of a command's `ctx` parameter: typer passes its click Context, the
    fast path (cli/dispatch.py) a stand-in with the same `find_root().obj` and
    `invoked_subcommand`."""

    obj: Any
    invoked_subcommand: str | None

    def find_root(self) -> Any: ...


class Group:
    """A command group as typer.Typer declares one (`name`, `help`, `no_args_is_help`, ...),
    with its commands (name -> function, typer's command() arguments), subgroups and
    callback; typer is only imported to build the app."""

    def __init__(self, name: str | None = None, **kwargs: Any):
        self.name, self.kwargs = name, kwargs
        self.commands: dict[str, tuple[Callable, dict[str, Any]]] = {}
        self.groups: dict[str, Group] = {}
        self.callback_fn: tuple[Callable, dict[str, Any]] | None = None

    def command(self, name: str | None = None, **kwargs: Any) -> Callable[[Callable], Callable]:
        def add(fn: Callable) -> Callable:
            self.commands[name or fn.__name__.replace("_", "-")] = (fn, kwargs)
            return fn
        return add

    def callback(self, **kwargs: Any) -> Callable[[Callable], Callable]:
        def add(fn: Callable) -> Callable:
            self.callback_fn = (fn, kwargs)
            return fn
        return add

    def add_group(self, group: "Group", name: str | None = None) -> None:
        self.groups[name or group.name or ""] = group


def echo(message: str = "", *, err: bool = False, nl: bool = True) -> None:
    """A line for people, on stdout (or stderr), flushed: typer.echo without typer."""
    stream = sys.stderr if err else sys.stdout
    stream.write(message + ("\n" if nl else ""))
    stream.flush()


def confirm(text: str, *, default: bool = False, abort: bool = False) -> bool:
    """Ask yes/no on the terminal (typer's prompt: only commands without --yes get here)."""
    import typer

    return typer.confirm(text, default=default, abort=abort)


JsonOpt = Annotated[bool, Opt("--json", help="Print machine-readable JSON on stdout instead of tables.")]
YesOpt = Annotated[bool, Opt("--yes", "-y", help="Do not ask for confirmation.")]
DatasetOpt = Annotated[str, Opt("--dataset", "-d", help="Dataset id, unique id prefix or name (see 'brightrun dataset list').", show_default=False)]
PresetOpt = Annotated[Optional[str], Opt("--preset", "-p", help="Preset name (see 'brightrun presets list'; default: balanced).", show_default=False)]
SetOpt = Annotated[Optional[list[str]], Opt("--set", help="Override one setting, key=value (repeatable; see 'brightrun presets show').", show_default=False)]
ConfigOpt = Annotated[Optional[Path], Opt("--config", help="TOML, JSON or YAML file of settings, applied over the preset.", show_default=False)]
BaseModelOpt = Annotated[Optional[str], Opt("--base-model", help="Hugging Face id, local model directory, .gguf file, or builtin:tiny.", show_default=False)]
GpusOpt = Annotated[Optional[int], Opt("--gpus", min=1, help="GPUs per host (default: all of the host's).", show_default=False)]
MaxCostOpt = Annotated[Optional[float], Opt("--max-cost", help="Budget in USD: refuse a larger estimate, stop the job if it gets there.", show_default=False)]
RequireOpt = Annotated[Optional[list[str]], Opt("--require", help="A gate on the answer eval, METRIC OP VALUE: \"exact_match>=0.5\", \"rougeL>base\" (repeatable; exit 6 when one fails).", show_default=False)]
EvalLimitOpt = Annotated[Optional[int], Opt("--limit", min=1, max=1_000_000_000, help="Evaluate the first N held-out samples (default: 50).", show_default=False)]
HostOpt = Annotated[Optional[str], Opt("--host", help="Host to run on (default: config.toml default_host, else local; see 'brightrun hosts list').", show_default=False)]


class AppState:
    """The root command's state: the home it was given, the workspace opened on first use."""

    def __init__(self, home: Path | None = None):
        self.home = home
        self._workspace: Workspace | None = None

    def workspace(self) -> "Workspace":
        if self._workspace is None:
            from brightrun_cli.workspace import Workspace

            self._workspace = Workspace.open(self.home)
        return self._workspace


def workspace(ctx: Context) -> "Workspace":
    """The Workspace for this invocation (home from --home / BRIGHTRUN_HOME / ~/.brightrun)."""
    root = ctx.find_root()
    if not isinstance(root.obj, AppState):
        root.obj = AppState()
    return root.obj.workspace()


def console() -> "term.Console":
    """Console for human output on stdout: markup lines and tables drawn without Rich
    (cli/term.py), which honours NO_COLOR, FORCE_COLOR and non-terminals as Rich does."""
    return term.Console()


def rich_console() -> "Console":
    """A Rich console on stdout, for what only Rich draws (the live dashboard)."""
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


def print_raw_json(data: bytes) -> None:
    """JSON already rendered as UTF-8 (by SQLite, for long lists) straight to stdout's bytes."""
    sys.stdout.flush()
    out = getattr(sys.stdout, "buffer", None)
    if out is None:  # a text-only stream (an embedding program's)
        sys.stdout.write(data.decode() + "\n")
    else:
        out.write(data + b"\n")
        out.flush()


LIST_DEFAULT = 50  # rows a list table shows unless --limit says otherwise (--json: all)
MAX_LIMIT = 1_000_000_000  # --limit's upper bound (SQLite's LIMIT takes 64-bit integers; no list is longer)
LimitOpt = Annotated[Optional[int], Opt("--limit", min=1, max=MAX_LIMIT, help=f"At most this many (default: {LIST_DEFAULT} in a table, all with --json).", show_default=False)]


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


def list_table(*headers: str, wrap: tuple[str, ...] = (), right: tuple[str, ...] = ()) -> term.ListTable:
    """A list table that reads at 80 columns (cli/term.py: ListTable)."""
    return term.ListTable(*headers, wrap=wrap, right=right)


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
