"""The house rules, checked on the code itself (docs/ARCHITECTURE.md, "Layers"):

- no import cycle between brightrun's modules, counting imports inside functions too;
- each layer imports only the layers below it (cli -> services -> registry ...; the
  trainer and nothing else of brightrun but its leaf helpers);
- SQL (statements, sqlite3, SQLAlchemy, SQLModel) lives in registry/ only;
- the read commands never import SQLAlchemy/SQLModel, the ML libraries, typer, click or Rich.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

PACKAGE = REPO / "src" / "brightrun_cli"

# Who may import whom: a module of the key's layer may import brightrun modules of these layers.
ALLOWED = {
    "cli": {"cli", "services", "errors", "home", "workspace"},
    "services": {"services", "registry", "storage", "runners", "presets", "lifecycle", "workspace", "errors", "home",
                 "config", "builtin", "supervisor.launch", "trainer.spec", "trainer.schedule", "trainer.data", "generation", "trackers",
                 "report"},
    "supervisor": {"supervisor", "services", "registry", "runners", "lifecycle", "workspace", "errors", "home", "trainer.spec"},
    "lifecycle": {"registry", "errors"},
    "registry": {"registry", "errors"},
    "runners": {"runners", "registry.rows", "errors", "home", "workspace"},
    "storage": {"storage", "errors"},
    "presets": {"presets", "errors"},
    "trainer": {"trainer", "errors", "builtin", "generation", "trackers"},
    "trackers": {"trackers", "errors"},
    "report": {"report", "trackers"},
    "generation": {"generation", "errors", "builtin"},
    "workspace": {"config", "home", "registry", "storage", "errors"},
    "config": {"errors", "home", "trackers"},
    "home": {"errors"},
    "builtin": set(),
    "errors": set(),
    "__main__": {"cli"},
    "": set(),  # the package's face
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _type_checking_lines(tree: ast.AST) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def _imports(path: Path) -> set[str]:
    """brightrun modules `path` imports anywhere (module level or in functions), TYPE_CHECKING aside."""
    tree = ast.parse(path.read_text())
    skip = _type_checking_lines(tree)
    found: set[str] = set()
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skip:
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("brightrun_cli"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("brightrun_cli"):
            for alias in node.names:  # `from brightrun_cli.services import jobs` imports the module services.jobs
                candidate = f"{node.module}.{alias.name}"
                found.add(candidate if _exists(candidate) else node.module)
    return {name.removeprefix("brightrun_cli").lstrip(".") for name in found}


def _exists(dotted: str) -> bool:
    base = PACKAGE.parent / dotted.replace(".", "/")
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def _graph() -> dict[str, set[str]]:
    return {_module_name(p): _imports(p) - {""} for p in PACKAGE.rglob("*.py")}


def _layer(module: str) -> str:
    for layer in sorted(ALLOWED, key=len, reverse=True):
        if module == layer or (layer and module.startswith(layer + ".")):
            return layer
    return module


def test_no_import_cycle_between_modules():
    graph = _graph()
    seen: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(node: str, path: list[str]) -> None:
        seen[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if seen.get(nxt) == 1:
                cycle = path[path.index(nxt):] + [nxt] if nxt in path else [node, nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in seen:
                visit(nxt, path + [nxt])
        seen[node] = 2

    for node in sorted(graph):
        if node not in seen:
            visit(node, [node])


def test_each_layer_imports_only_what_it_may():
    wrong = []
    for module, imported in sorted(_graph().items()):
        layer = _layer(module)
        if layer not in ALLOWED:
            wrong.append(f"{module}: not in a known layer (add it to ALLOWED and docs/ARCHITECTURE.md)")
            continue
        for target in sorted(imported):
            if _layer(target) != layer and not any(target == ok or target.startswith(ok + ".") for ok in ALLOWED[layer]):
                wrong.append(f"{module} imports {target}")
    assert not wrong, "layering broken:\n" + "\n".join(wrong)


SQL_TEXT = re.compile(
    r"\b(SELECT\b.+\bFROM|INSERT (OR \w+ )?INTO|UPDATE \w+ SET|DELETE FROM|CREATE (TABLE|INDEX|TRIGGER)|DROP (TABLE|INDEX)|PRAGMA \w+|BEGIN IMMEDIATE)\b",
    re.DOTALL,
)
SQL_LIBRARIES = ("sqlite3", "sqlalchemy", "sqlmodel")


def test_sql_lives_in_the_registry_only():
    wrong = []
    for path in PACKAGE.rglob("*.py"):
        module = _module_name(path)
        if module.startswith("registry"):
            continue
        tree = ast.parse(path.read_text())
        skip = _type_checking_lines(tree)
        for node in ast.walk(tree):
            if getattr(node, "lineno", None) in skip:
                continue
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and SQL_TEXT.match(node.value):
                wrong.append(f"{module}:{node.lineno}: SQL text {node.value[:40]!r}")
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            for name in names:
                if name.split(".")[0] in SQL_LIBRARIES:
                    wrong.append(f"{module}:{node.lineno}: imports {name}")
    assert not wrong, "SQL outside registry/:\n" + "\n".join(wrong)


HEAVY = ("sqlalchemy", "sqlmodel", "pydantic", "torch", "transformers", "peft", "accelerate", "datasets", "fsspec", "matplotlib")
# The read commands run from their declarations (cli/dispatch.py) and print with cli/term.py:
# importing typer + click + Rich would cost them ~0.1 s, most of their start-up.
CLI_FRAMEWORKS = ("typer", "click", "rich")
READ_COMMANDS = [
    ("jobs", "list"), ("jobs", "list", "--json"), ("jobs", "show", "JOB"), ("dataset", "list"), ("dataset", "list", "--json"),
    ("dataset", "show", "DATASET"), ("models", "list"), ("models", "show", "MODEL"), ("costs",), ("costs", "--json"),
    ("notifications",), ("notifications", "--json"), ("hosts", "list"), ("gpus",), ("presets", "list"), ("presets", "show", "tiny"),
    ("estimate", "--dataset", "DATASET", "--preset", "tiny", "--base-model", "builtin:tiny"),
    ("status",), ("status", "--json"),
]


@pytest.fixture(scope="module")
def full_home(tmp_path_factory) -> Path:
    """A registry with a dataset, a completed job, its model, costs and notifications."""
    home = tmp_path_factory.mktemp("layout-home")
    env = {**os.environ, "BRIGHTRUN_HOME": str(home), "PYTHONPATH": os.pathsep.join([str(REPO / "tests"), str(REPO / "src")])}
    subprocess.run([sys.executable, "-c", "import registry_fill, sys; registry_fill.populate(sys.argv[1])", str(home)],
                   env=env, check=True, timeout=120)
    return home


def _imported_by(argv: list[str], home: Path) -> set[str]:
    """Top-level packages in sys.modules after a real `brightrun ARGV` (as the console script runs it)."""
    program = ("import json, sys\nsys.argv = ['brightrun', *sys.argv[1:]]\nfrom brightrun_cli.cli.entry import main\n"
               "try:\n    main()\nfinally:\n    sys.stderr.write('\\nMODULES ' + json.dumps(sorted(sys.modules)))\n")
    env = {**os.environ, "BRIGHTRUN_HOME": str(home), "PYTHONPATH": str(REPO / "src"), "NO_COLOR": "1"}
    done = subprocess.run([sys.executable, "-c", program, *argv], env=env, capture_output=True, text=True, timeout=60)
    assert "MODULES " in done.stderr and done.returncode == 0, f"{argv}: {done.stderr[-2000:]}"
    return {name.split(".")[0] for name in json.loads(done.stderr.rsplit("MODULES ", 1)[1])}


# Standard-library modules that cost milliseconds each on a small CPU and serve rare paths
# (launching, hashing files, temporary files, config files, suggestions): the modules every
# command imports use them inside functions (docs/ARCHITECTURE.md, Imports), and value
# objects are msgspec Structs, not dataclasses.
RARE_STDLIB = ("subprocess", "secrets", "hashlib", "tempfile", "shutil", "tomllib", "difflib", "statistics", "logging", "dataclasses")
LEAN_COMMANDS = [("dataset", "list"), ("models", "list"), ("costs",), ("notifications",), ("status",)]


@pytest.mark.parametrize("command", READ_COMMANDS, ids=" ".join)
def test_read_commands_import_no_orm_no_ml_library_and_no_typer_or_rich(command, full_home):
    ids = (full_home / "ids.txt").read_text().split()
    argv = [{"JOB": ids[0], "DATASET": ids[1], "MODEL": ids[2]}.get(word, word) for word in command]
    imported = _imported_by(argv, full_home)
    heavy = sorted(set(HEAVY + CLI_FRAMEWORKS) & imported)
    assert not heavy, f"brightrun {' '.join(command)} imports {heavy}"
    if command in LEAN_COMMANDS:
        rare = sorted(set(RARE_STDLIB) & imported)
        assert not rare, f"brightrun {' '.join(command)} imports {rare} (import them where they are used)"
