"""The root command: global options, command groups, and the one place where errors
become a stderr line and an exit code (0 ok, 1 operation failed, 2 bad usage/input)."""

from __future__ import annotations

import functools
import importlib
import inspect
import math
import sys
import types
import typing
from pathlib import Path
from typing import Annotated, Callable

import typer
from typer.core import TyperGroup

from brightrun_cli import __version__
from brightrun_cli.cli import common, dispatch
from brightrun_cli.errors import EXIT_FAILED, EXIT_USAGE


# typer's own exits and usage errors pass through untouched. typer >= 0.26 vendors click
# (its ClickException derives from TyperException), older typer raises click's classes:
# found through typer's public BadParameter, so click itself is never imported (~40 ms).
_PASS_THROUGH = tuple(
    {typer.Exit, typer.Abort} | {c for c in typer.BadParameter.__mro__ if c.__name__ in ("ClickException", "TyperException")}
)


class BrightrunGroup(TyperGroup):
    """Maps domain errors to one line on stderr and an exit code, for every subcommand."""

    def invoke(self, ctx: typer.Context):
        try:
            return super().invoke(ctx)
        except _PASS_THROUGH:
            raise
        except BaseException as exc:
            code = dispatch.failure_code(exc)
            if code is None:
                raise
            raise typer.Exit(code) from None


def _is_float(hint) -> bool:
    return hint is float or (typing.get_origin(hint) in (typing.Union, types.UnionType) and float in typing.get_args(hint))


def _finite(value):
    """Every float option: nan and inf are no number a setting or a budget can be."""
    if isinstance(value, float) and not math.isfinite(value):
        raise typer.BadParameter(f"{value} is not a finite number; give an ordinary number such as 25 or 0.5")
    return value


def _typer_callback(fn: Callable) -> Callable:
    """`fn` as typer reads a command: its declarations (common.Opt, common.Arg,
    common.Context) turned into typer's (typer.Option, typer.Argument, typer.Context)."""
    hints = typing.get_type_hints(fn, include_extras=True)
    signature = inspect.signature(fn)
    params = []
    for p in signature.parameters.values():
        hint = hints.get(p.name, p.annotation)
        if hint is common.Context:
            hint = typer.Context
        elif typing.get_origin(hint) is Annotated:
            base, *extras = typing.get_args(hint)
            checks = {"callback": _finite} if _is_float(base) else {}
            extras = [typer.Option(*e.decls, **{**checks, **e.kwargs}) if isinstance(e, common.Opt)
                      else typer.Argument(**{**checks, **e.kwargs}) if isinstance(e, common.Arg) else e for e in extras]
            hint = Annotated[(base, *extras)]
        params.append(p.replace(annotation=hint))

    @functools.wraps(fn)
    def command(*args, **kwargs):
        return fn(*args, **kwargs)

    command.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in params}
    return command


def help_text(doc: str | None) -> str | None:
    """A command's docstring as its help page shows it: each prose paragraph one line, for
    Rich to wrap at the terminal's width (typer >= 0.26 keeps every line break of the
    source, so text wrapped at 88 columns there reads ragged on an 80-column terminal).
    A paragraph with indented lines (examples) or items ("- ...") keeps its breaks;
    an item's continuation lines join the item."""
    if not doc:
        return doc
    paragraphs = []
    for paragraph in inspect.cleandoc(doc).split("\n\n"):
        lines = paragraph.split("\n")
        if lines[0].startswith("- "):
            items: list[str] = []
            for line in lines:
                if line.startswith("- ") or not items:
                    items.append(line.rstrip())
                else:
                    items[-1] += " " + line.strip()
            paragraphs.append("\n".join(items))
        elif any(line.startswith(" ") for line in lines) or lines[0].rstrip().endswith(":"):
            paragraphs.append(paragraph)
        else:
            paragraphs.append(" ".join(line.strip() for line in lines))
    return "\n\n".join(paragraphs)


def add_group(app: typer.Typer, group: common.Group) -> None:
    """Add a declared group's commands and subgroups to a typer app."""
    for name, (fn, settings) in group.commands.items():
        app.command(name, **{"help": help_text(fn.__doc__), **settings})(_typer_callback(fn))
    for name, sub in group.groups.items():
        sub_app = typer.Typer(**{"name": sub.name, **sub.kwargs})
        if sub.callback_fn is not None:
            fn, settings = sub.callback_fn
            sub_app.callback(**{"help": help_text(fn.__doc__), **settings})(_typer_callback(fn))
        add_group(sub_app, sub)
        app.add_typer(sub_app, name=name)


def make_app(command: str | None = None) -> typer.Typer:
    """The root app with every command group, or only the module that provides `command`.

    Building a click command for every registered typer command costs tens of ms per run,
    so `brightrun dataset list` registers the dataset group alone. A name that is not a
    known command (a typo) gets the full app, so errors and suggestions are unchanged.
    """
    app = typer.Typer(
        name="brightrun",
        cls=BrightrunGroup,
        help="LoRA fine-tuning from the command line: datasets, estimates, training (local or SSH), live watch, measured adapters.",
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        add_completion=False,
        context_settings={"help_option_names": ["-h", "--help"]},
    )
    app.callback()(root)
    modules = dispatch.COMMAND_MODULES
    names = [modules[command]] if command in modules else list(dict.fromkeys(modules.values()))
    for name in names:
        add_group(app, importlib.import_module(f"brightrun_cli.cli.{name}").commands)
    return app


def run(argv: list[str]) -> None:
    """Run the command line `argv` (without the program name) and exit with its code.

    Usage errors (unknown option, missing argument) become one `error:` line naming the
    command's --help, like every other error, instead of click's framed block. A reader
    that closes our stdout (`brightrun jobs list | head -1`) ends the command quietly."""
    from typer.main import get_command

    argv = dispatch.hoist_home(argv)
    if dispatch.empty_home(argv):
        dispatch.report("empty --home: give a directory (or leave --home out for $BRIGHTRUN_HOME or ~/.brightrun)")
        sys.exit(EXIT_USAGE)
    command = get_command(make_app(dispatch.command_of(argv)))
    try:
        code = command.main(argv, prog_name="brightrun", standalone_mode=False)
    except typer.Abort:
        sys.stderr.write("aborted\n")
        sys.exit(1)
    except _USAGE_ERRORS as exc:
        dispatch.report(f"{exc.format_message().rstrip('.')}; see '{_command_path(command, argv)} --help'")
        sys.exit(EXIT_USAGE)
    except _CLICK_ERRORS as exc:
        dispatch.report(exc.format_message())
        sys.exit(getattr(exc, "exit_code", EXIT_FAILED))
    sys.exit(code if isinstance(code, int) else 0)


_CLICK_ERRORS = tuple(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")
_USAGE_ERRORS = tuple(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")


def _command_path(root, argv: list[str]) -> str:
    """`brightrun jobs show` for argv `jobs show --bad`: the deepest command argv names."""
    path, command = ["brightrun"], root
    words = [a for i, a in enumerate(argv) if not a.startswith("-") and not (i and argv[i - 1] == "--home")]
    for word in words:
        sub = getattr(command, "commands", {}).get(word)
        if sub is None:
            break
        path.append(word)
        command = sub
    return " ".join(path)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"brightrun {__version__}")
        raise typer.Exit()


def root(
    ctx: typer.Context,
    home: Annotated[
        Path | None,
        typer.Option("--home", help="Registry home (default: $BRIGHTRUN_HOME or ~/.brightrun).", show_default=False),
    ] = None,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """brightrun: bring data in, estimate, train, watch, and keep the adapter."""
    ctx.obj = common.AppState(home=home)
    if ctx.invoked_subcommand and not ctx.resilient_parsing:
        dispatch.start(ctx, home)


def __getattr__(name: str):
    """`app`: the full app, built on first use (tests, docs, `typer brightrun_cli.cli.app`)."""
    if name == "app":
        globals()["app"] = full = make_app()
        return full
    raise AttributeError(name)
