"""The root app: a command builds only the group that provides it, and the name ->
module table cannot drift from what the modules register."""

from __future__ import annotations

import pytest
import typer.main

from brightrun_cli.cli.app import make_app
from brightrun_cli.cli.dispatch import COMMAND_MODULES, command_of



def commands(app) -> set[str]:
    return set(typer.main.get_command(app).commands)


def test_the_command_table_is_exactly_what_the_modules_register():
    assert commands(make_app()) == set(COMMAND_MODULES)
    for name, module in COMMAND_MODULES.items():
        only = commands(make_app(name))
        assert name in only
        assert only == {n for n, m in COMMAND_MODULES.items() if m == module}


@pytest.mark.parametrize("argv, command", [
    (["dataset", "list"], "dataset"),
    (["--home", "/tmp/x", "jobs", "show", "a"], "jobs"),
    (["--home=/tmp/x", "train", "--dataset", "d"], "train"),
    (["--version"], None),
    ([], None),
])
def test_command_of_skips_root_options(argv, command):
    assert command_of(argv) == command


def test_a_typo_gets_the_full_app_and_its_suggestion(cli):
    from conftest import run_brightrun

    result = run_brightrun("datasets", "list")
    assert result.returncode == 2 and "No such command 'datasets'" in result.stderr


def modules_after(*argv: str) -> set[str]:
    """sys.modules after a real `brightrun ARGV` run (importlib.import_module bypasses -X importtime)."""
    import json
    import os
    import subprocess
    import sys

    from conftest import REPO

    program = ("import json, sys\nsys.argv = ['brightrun', *sys.argv[1:]]\nfrom brightrun_cli.cli.entry import main\n"
               "try:\n    main()\nfinally:\n    sys.stderr.write('\\nMODULES ' + json.dumps(sorted(sys.modules)))\n")
    proc = subprocess.run([sys.executable, "-c", program, *argv], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    assert proc.returncode == 0, proc.stderr[-2000:]
    return set(json.loads(proc.stderr.rsplit("MODULES ", 1)[1]))


def test_a_json_listing_imports_neither_other_groups_nor_rich(brightrun_home):
    modules = modules_after("dataset", "list", "--json")
    assert "brightrun_cli.cli.datasets" in modules
    assert not {"brightrun_cli.cli.watch", "brightrun_cli.cli.jobs", "brightrun_cli.cli.models"} & modules
    assert not {m for m in modules if m.split(".")[0] in ("rich", "click", "pydantic", "sqlalchemy", "torch")}


def _leaf_commands(command, path=()):
    if hasattr(command, "commands"):  # a group (typer vendors click: no isinstance on click's classes)
        for name, sub in command.commands.items():
            yield from _leaf_commands(sub, (*path, name))
        if getattr(command, "invoke_without_command", False) and path:
            yield path, command
    else:
        yield path, command


def test_every_command_has_examples_that_parse():
    """Each command's help ends with an Examples section, and every example in it names
    options and arguments the command really takes (parsed, not run)."""
    import shlex

    root = typer.main.get_command(make_app())
    leaves = list(_leaf_commands(root))
    assert len(leaves) > 20
    missing, broken = [], []
    for path, command in leaves:
        text = command.help or ""
        if "Examples:" not in text:
            missing.append(" ".join(path))
            continue
        for line in text.split("Examples:", 1)[1].splitlines():
            line = line.split("  #")[0].split("&&")[0].strip()
            if not line.startswith("brightrun "):
                continue
            words = shlex.split(line)[1:]
            words = words[: len(path)] + [w.replace("$JOB", "01jd4") for w in words[len(path):]]
            if tuple(words[: len(path)]) != path:
                continue  # an example of another command (e.g. train before watch)
            try:
                command.make_context(" ".join(path), words[len(path):], resilient_parsing=False)
            except Exception as exc:  # click's usage errors
                broken.append(f"{line}: {exc}")
    assert not missing, f"commands without an Examples section: {missing}"
    assert not broken, "examples that do not parse:\n" + "\n".join(broken)


def test_help_prose_is_rewrapped_for_the_terminal_while_examples_and_items_keep_their_lines(brightrun_home):
    """Docstrings are wrapped at the source's width; on an 80-column terminal the page must
    not read ragged (a line broken every few words), and examples stay one per line."""
    from brightrun_cli.cli.app import help_text

    doc = """Do a thing.

        First paragraph wrapped
        in the source.

        - an item that
          goes on
        - another item

        Examples:
          brightrun thing --flag
        """
    assert help_text(doc) == ("Do a thing.\n\nFirst paragraph wrapped in the source.\n\n"
                              "- an item that goes on\n- another item\n\nExamples:\n  brightrun thing --flag")

    from conftest import run_brightrun

    page = run_brightrun("dataset", "add", "--help", env={"COLUMNS": "80"}).stdout
    prose = page[page.index("When lines have problems"):page.index("Examples:")]
    lines = [line.strip() for line in prose.strip().splitlines()]
    assert len(lines) >= 3 and all(len(line) > 60 for line in lines[:-1]), page  # filled to the width, not broken at 88
    assert "\n   brightrun dataset add support.jsonl --name support-v1 " in page
