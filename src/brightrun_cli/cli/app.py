"""The root command: global options, command groups, and the one place where errors
become a stderr line and an exit code (0 ok, 1 operation failed, 2 bad usage/input)."""

from __future__ import annotations

import sys
import traceback
from pathlib import Path
from typing import Annotated

import click
import typer
from typer.core import TyperGroup
from typer.exceptions import TyperException

from brightrun_cli import __version__
from brightrun_cli.cli import common
from brightrun_cli.errors import EXIT_FAILED, BrightrunError


def _report(message: str) -> None:
    sys.stderr.write(f"error: {message}\n")
    sys.stderr.flush()


class BrightrunGroup(TyperGroup):
    """Maps domain errors to one line on stderr and an exit code, for every subcommand."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        # typer >= 0.2x raises its own Exit/Abort/ClickException classes, not click's.
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort, typer.Exit, typer.Abort, TyperException):
            raise
        except BrightrunError as exc:
            if common.debug_enabled():
                traceback.print_exc()
            _report(str(exc))
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            sys.stderr.write("interrupted\n")
            raise typer.Exit(130) from None
        except Exception as exc:
            if common.debug_enabled():
                raise
            _report(f"internal error: {type(exc).__name__}: {exc}; rerun with BRIGHTRUN_DEBUG=1 for the traceback and report it")
            raise typer.Exit(EXIT_FAILED) from None


app = typer.Typer(
    name="brightrun",
    cls=BrightrunGroup,
    help="LoRA fine-tuning from the command line: datasets, estimates, training (local or SSH), live watch, measured adapters.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"brightrun {__version__}")
        raise typer.Exit()


@app.callback()
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
        common.kick_queue(home)


def _register_commands() -> None:
    from brightrun_cli.cli import costs, datasets, estimate, hosts, jobs, models, notifications, presets, watch

    for module in (datasets, presets, estimate, jobs, watch, models, hosts, costs, notifications):
        module.register(app)


_register_commands()


def main() -> None:
    app(prog_name="brightrun")
