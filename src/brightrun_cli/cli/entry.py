"""The `brightrun` executable. Standard library only until it knows what to run: a help
page already rendered for this terminal is printed from the cache (cli/help_cache.py),
and an ordinary command line is run from the commands' declarations (cli/dispatch.py),
both without importing typer or click; typer answers the rest (help pages not yet
cached, usage errors, `--version`)."""

from __future__ import annotations

import gc
import sys


def main() -> None:
    # A command's imports (SQLAlchemy, pydantic, typer, Rich) make hundreds of thousands of
    # long-lived objects; with the default threshold (700) the collector rescans them
    # dozens of times before the command does anything (~0.1 s of a 1 s `train`). Long
    # commands (watch, dataset add) still collect, just less often.
    gc.set_threshold(50_000, 10, 10)
    try:
        argv = sys.argv[1:]
        if argv and argv[-1] in ("--help", "-h"):
            from brightrun_cli.cli import help_cache

            if help_cache.is_help_request(argv):
                if not help_cache.serve(argv):
                    help_cache.render_and_store(argv, _run)
                return
        _run()
    finally:
        # The interpreter's last collection at exit walks every object the imports made
        # (~17 ms of a 0.15 s read command); frozen, they are left to the process's end.
        # Everything else about exiting is unchanged: atexit handlers, flushing, modules torn down.
        gc.freeze()


def _run() -> None:
    from brightrun_cli.errors import own_the_process, quiet_library_warnings

    own_the_process()
    quiet_library_warnings()
    run(sys.argv[1:])


def run(argv: list[str]) -> None:
    """Run the command line `argv` and exit with its code: here if the declarations can
    read it, else through typer."""
    from brightrun_cli.cli import dispatch

    dispatch.run(argv)
    from brightrun_cli.cli.app import run as run_typer

    run_typer(argv)
