"""The root command: global options, command groups, and the one place where errors
become a stderr line and an exit code (0 ok, 1 operation failed, 2 bad usage/input)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Annotated

import typer
from typer.core import TyperGroup

from brightrun_cli import __version__
from brightrun_cli.cli import common
from brightrun_cli.errors import EXIT_FAILED, EXIT_USAGE, BrightrunError, OperationError


def _report(message: str) -> None:
    sys.stderr.write(f"error: {message}\n")
    sys.stderr.flush()


def _known_failure(exc: BaseException) -> BrightrunError | None:
    """Ordinary trouble that reaches the top as a library's exception, as a domain error:
    a full disk, a reader that closed our stdout (handled by `run`)."""
    import errno

    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        where = f" ({exc.filename})" if exc.filename else ""
        return OperationError(f"no space left on the device{where}", "free space there, or point --home / storage_url at another disk")
    if type(exc).__name__ == "OperationalError" and "disk is full" in str(exc):  # sqlite3's (or SQLAlchemy's wrapping of it)
        return OperationError("no space left on the device of the registry", "free space there, or point --home at another disk")
    return None


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
        except BrightrunError as exc:
            if common.debug_enabled():
                import traceback  # not at module level: ~20 ms of every run for a debug-only path

                traceback.print_exc()
            _report(str(exc))
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            sys.stderr.write("interrupted\n")
            raise typer.Exit(130) from None
        except BrokenPipeError:
            raise typer.Exit(common.reader_left()) from None
        except Exception as exc:
            if common.debug_enabled():
                raise
            known = _known_failure(exc)
            if known is not None:
                _report(str(known))
                raise typer.Exit(known.exit_code) from None
            _report(f"internal error: {type(exc).__name__}: {exc}; rerun with BRIGHTRUN_DEBUG=1 for the traceback and report it")
            raise typer.Exit(EXIT_FAILED) from None


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
    names = [COMMAND_MODULES[command]] if command in COMMAND_MODULES else list(dict.fromkeys(COMMAND_MODULES.values()))
    for name in names:
        importlib.import_module(f"brightrun_cli.cli.{name}").register(app)
    return app


# Top-level command -> the cli module whose register() adds it (tests/test_cli_app.py
# checks this against what the modules really register).
COMMAND_MODULES = {
    "dataset": "datasets", "presets": "presets", "estimate": "estimate", "gpus": "estimate",
    "train": "jobs", "jobs": "jobs", "watch": "watch", "models": "models", "hosts": "hosts",
    "costs": "costs", "notifications": "notifications", "status": "fleet", "prune": "fleet",
}


def run(argv: list[str]) -> None:
    """Run the command line `argv` (without the program name) and exit with its code.

    Usage errors (unknown option, missing argument) become one `error:` line naming the
    command's --help, like every other error, instead of click's framed block. A reader
    that closes our stdout (`brightrun jobs list | head -1`) ends the command quietly."""
    from typer.main import get_command

    argv = hoist_home(argv)
    command = get_command(make_app(command_of(argv)))
    try:
        code = command.main(argv, prog_name="brightrun", standalone_mode=False)
    except typer.Abort:
        sys.stderr.write("aborted\n")
        sys.exit(1)
    except _USAGE_ERRORS as exc:
        _report(f"{exc.format_message().rstrip('.')}; see '{_command_path(command, argv)} --help'")
        sys.exit(EXIT_USAGE)
    except _CLICK_ERRORS as exc:
        _report(exc.format_message())
        sys.exit(getattr(exc, "exit_code", EXIT_FAILED))
    sys.exit(code if isinstance(code, int) else 0)


_CLICK_ERRORS = tuple(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")
_USAGE_ERRORS = tuple(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")


def _command_path(root, argv: list[str]) -> str:
    """`brightrun jobs show` for argv `jobs show --bad`: the deepest command argv names."""
    path, command = ["brightrun"], root
    for word in (a for a in argv if not a.startswith("-")):
        sub = getattr(command, "commands", {}).get(word)
        if sub is None:
            break
        path.append(word)
        command = sub
    return " ".join(path)


def hoist_home(argv: list[str]) -> list[str]:
    """`--home DIR` is the root command's option; accept it after the subcommand too
    (`brightrun jobs list --home DIR`) by moving it to the front (not after `--`)."""
    out: list[str] = []
    home: list[str] = []
    args = iter(argv)
    for arg in args:
        if arg == "--":
            out += [arg, *args]
            break
        if arg == "--home":
            home = [arg, next(args, "")]
        elif arg.startswith("--home="):
            home = [arg]
        else:
            out.append(arg)
    return home + out


def command_of(argv: list[str]) -> str | None:
    """The top-level command word of argv, skipping root options (`--home DIR`, `--home=DIR`)."""
    args = iter(argv)
    for arg in args:
        if arg == "--home":
            next(args, None)
        elif not arg.startswith("-"):
            return arg
    return None


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
        # Every command reads config.toml the same way: a broken file is its one error line,
        # a key it does not know or a hook that cannot run a warning.
        for warning in common.workspace(ctx).config_warnings():
            sys.stderr.write(f"warning: {warning}\n")
        common.kick_queue(home)


def __getattr__(name: str):
    """`app`: the full app, built on first use (tests, docs, `typer brightrun_cli.cli.app`)."""
    if name == "app":
        globals()["app"] = full = make_app()
        return full
    raise AttributeError(name)
