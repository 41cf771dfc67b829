"""`--help` pages: rendered by typer/Rich once, then printed from the home's cache
byte for byte, without importing typer, click or Rich (cli/help_cache.py)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest

from brightrun_cli.cli import help_cache

from conftest import REPO, run_brightrun

UI_MODULES = ("typer", "click", "rich")


def imports_of(*args: str) -> tuple[str, set[str]]:
    """stdout and the top-level names of the modules imported."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "brightrun_cli", *args],
                          env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    names = {l.rsplit("|", 1)[1].strip().split(".")[0] for l in proc.stderr.splitlines() if l.startswith("import time:")}
    return proc.stdout, names


def pages(home) -> list:
    return sorted((home / "cache" / "help").glob("*.txt")) if (home / "cache" / "help").is_dir() else []


@pytest.mark.parametrize("argv", [["--help"], ["dataset", "--help"], ["dataset", "add", "-h"]])
def test_a_help_page_is_rendered_once_then_served_without_the_ui_libraries(brightrun_home, argv):
    first, first_imports = imports_of(*argv)
    assert {"typer", "rich"} <= first_imports and "Usage: brightrun" in first
    assert len(pages(brightrun_home)) == 1
    page = pages(brightrun_home)[0]
    assert stat.S_IMODE(page.stat().st_mode) == 0o600
    second, second_imports = imports_of(*argv)
    assert second == first
    assert not (second_imports & set(UI_MODULES)), second_imports & set(UI_MODULES)


def test_errors_are_not_cached_and_options_are_never_served(brightrun_home):
    assert run_brightrun("nosuch", "--help").returncode == 2
    assert pages(brightrun_home) == []
    # Anything but command names before --help goes through typer as always.
    assert not help_cache.is_help_request(["--home", "/x", "--help"])
    assert not help_cache.is_help_request(["dataset", "add", "data.jsonl", "--help"])
    assert not help_cache.is_help_request([])
    assert help_cache.is_help_request(["dataset", "add", "-h"])


def test_the_page_follows_the_terminal_width_and_environment(brightrun_home, monkeypatch):
    wide = run_brightrun("--help", env={"COLUMNS": "140"}).stdout
    narrow = run_brightrun("--help", env={"COLUMNS": "60"}).stdout
    assert max(map(len, wide.splitlines())) > 100 >= max(map(len, narrow.splitlines()))
    assert run_brightrun("--help", env={"COLUMNS": "60"}).stdout == narrow
    assert len(pages(brightrun_home)) == 2
    key = help_cache.cache_key(["--help"])
    monkeypatch.setenv("FORCE_COLOR", "1")
    assert help_cache.cache_key(["--help"]) != key


def test_a_changed_cli_source_file_invalidates_the_page(tmp_path, monkeypatch):
    module = tmp_path / "datasets.py"
    module.write_text("# v1\n")
    monkeypatch.setattr(help_cache, "_CLI_DIR", tmp_path)
    before = help_cache.cache_key(["--help"])
    module.write_text("# v2, one byte longer\n")
    assert help_cache.cache_key(["--help"]) != before


def test_help_never_creates_a_home(tmp_path):
    home = tmp_path / "no-home-yet"
    result = run_brightrun("--help", env={"BRIGHTRUN_HOME": str(home)})
    assert result.returncode == 0 and "Usage: brightrun" in result.stdout
    assert not home.exists()
