"""The fast parser (cli/dispatch.py) reads a command line exactly as typer does.

`brightrun jobs list` runs without typer: dispatch.resolve reads the line from the
commands' declarations. A command line it misread would run the command with other values
than typer passes (a Path as a str, an int as a float, a list as None) or run it where typer
would refuse the line. So, for every command the modules declare (walked from
dispatch.COMMAND_MODULES, so a command added later is covered without touching this file)
and for a synthetic module declaring the parser features no command uses yet (`--x/--no-x`,
list arguments, float ranges, short-only options), lines are generated from the declared
parameters and each is read twice: by typer (the real app, with every command function
swapped for a recorder before it is built) and by dispatch.resolve. Valid lines must give
the same calls with the same values of the same types, and must not fall back to typer;
lines typer refuses must make dispatch give up (Unparsed), never invent a value or an error.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import inspect
import io
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import pytest

from brightrun_cli.cli import common, dispatch
from conftest import invoke_cli

SYNTHETIC = "_test_dispatch_synthetic"  # a cli module name that exists only in this test

# ------------------------------------------------------------------ a synthetic module
# Parser features the real commands do not (yet) use, declared as a cli module would.

_syn = common.Group(name="syn", help="Synthetic commands of tests/test_dispatch.py.", no_args_is_help=True)
_syn_sub = common.Group(name="sub", invoke_without_command=True)
_syn.add_group(_syn_sub)


@_syn.command("opts")
def _syn_opts(
    ctx: common.Context,
    color: Annotated[bool, common.Opt("--color/--no-color", help="Colours.")] = True,
    quiet: Annotated[bool, common.Opt("--quiet", "-q")] = False,
    plain_flag: bool = False,  # typer's default names: --plain-flag/--no-plain-flag
    ratio: Annotated[float, common.Opt("--ratio", "-r", min=0.5, max=2.5)] = 1.0,
    count: Annotated[int, common.Opt("--count", "-c", max=9)] = 0,
    tags: Annotated[Optional[list[str]], common.Opt("--tag", "-t")] = None,
    levels: Annotated[Optional[list[int]], common.Opt("--level")] = None,
    out: Annotated[Optional[Path], common.Opt("--out", "-o")] = None,
    mode: str = "fast",  # no declaration: option --mode
) -> None:
    """Options of every kind."""


@_syn.command("drop")
def _syn_drop(keep: Annotated[bool, common.Opt("--drop")] = True) -> None:
    """A one-name flag defaulting to True: what `--drop` sets depends on typer's version
    (click 8.1: False, typer 0.28: True), so dispatch leaves the command to typer."""


@_syn.command("args")
def _syn_args(
    src: Annotated[Path, common.Arg()],
    names: Annotated[Optional[list[str]], common.Arg()] = None,
    verbose: Annotated[bool, common.Opt("--verbose", "-v")] = False,
) -> None:
    """A Path argument and an optional list argument."""


@_syn.command("two")
def _syn_two(
    first: str,  # no declaration, no default: an argument
    second: Annotated[Optional[str], common.Arg()] = None,
    n: Annotated[int, common.Opt("-n", min=-2)] = 1,
) -> None:
    """Two arguments, one optional; a short-only option."""


@_syn.command("many")
def _syn_many(
    values: Annotated[list[float], common.Arg()],
    scale: Annotated[float, common.Opt("--scale")] = 1.0,
) -> None:
    """A required list argument of floats."""


@_syn_sub.callback()
def _syn_sub_callback(
    ctx: common.Context,
    verbose: Annotated[bool, common.Opt("--verbose", "-v")] = False,
    limit: Annotated[int, common.Opt("--limit", min=1)] = 5,
) -> None:
    """A group with its own options, run alone or before its command."""


@_syn_sub.command("leaf")
def _syn_sub_leaf(
    ctx: common.Context,
    item: Annotated[Optional[str], common.Arg()] = None,
    all_: Annotated[bool, common.Opt("--all")] = False,
) -> None:
    """A subcommand of a group with a callback."""


_synthetic_module = types.ModuleType(f"brightrun_cli.cli.{SYNTHETIC}")
_synthetic_module.commands = common.Group()
_synthetic_module.commands.add_group(_syn)


@contextlib.contextmanager
def _with_synthetic():
    """The synthetic module, importable and listed as the provider of `syn`."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(sys.modules, _synthetic_module.__name__, _synthetic_module)
        mp.setitem(dispatch.COMMAND_MODULES, "syn", SYNTHETIC)
        yield


# ------------------------------------------------------------------ the declarations, read independently

@dataclass
class Param:
    name: str
    kind: type
    is_list: bool
    argument: bool
    required: bool
    longs: list[str] = field(default_factory=list)  # --x names taking a value
    shorts: list[str] = field(default_factory=list)  # -x names taking a value
    flags: dict[str, bool] = field(default_factory=dict)  # flag name -> the value it sets
    min: Any = None
    max: Any = None

    @property
    def flag(self) -> bool:
        return bool(self.flags)

    @property
    def first(self) -> str:
        return (self.longs + self.shorts + list(self.flags))[0]

    def samples(self) -> tuple[str, str]:
        """Two distinct valid values as text."""
        if self.kind is int:
            low = self.min if self.min is not None else 3
            return str(low), str(low + 1)
        if self.kind is float:
            low = self.min if self.min is not None else 1.5
            return str(low), str(low + 0.25)
        if self.kind is Path:
            return "some/file", "other/dir"
        return "abc", "x y"


def declared(fn: Callable) -> tuple[str | None, list[Param]]:
    """A command's context parameter and parameters, read from its declaration as typer reads it."""
    hints = typing.get_type_hints(fn, include_extras=True)
    ctx_name, params = None, []
    for p in inspect.signature(fn).parameters.values():
        hint = hints[p.name]
        if hint is common.Context:
            ctx_name = p.name
            continue
        meta = None
        if typing.get_origin(hint) is Annotated:
            hint, *extras = typing.get_args(hint)
            meta = next((e for e in extras if isinstance(e, (common.Opt, common.Arg))), None)
        if typing.get_origin(hint) in (typing.Union, types.UnionType):
            (hint,) = [t for t in typing.get_args(hint) if t is not type(None)]
        is_list = typing.get_origin(hint) is list
        if is_list:
            (hint,) = typing.get_args(hint)
        required = p.default is inspect.Parameter.empty
        argument = isinstance(meta, common.Arg) or (meta is None and required)
        kwargs = meta.kwargs if meta is not None else {}
        param = Param(p.name, hint, is_list, argument, required, min=kwargs.get("min"), max=kwargs.get("max"))
        if not argument:
            decls = meta.decls if isinstance(meta, common.Opt) and meta.decls else ()
            dashed = p.name.replace("_", "-")
            if hint is bool:
                for decl in decls or (f"--{dashed}/--no-{dashed}",):
                    on, _, off = (part.strip() for part in decl.partition("/"))
                    param.flags[on] = True if off or not p.default else None  # None: see _syn_drop
                    if off:
                        param.flags[off] = False
            else:
                for decl in decls or (f"--{dashed}",):
                    (param.longs if decl.startswith("--") else param.shorts).append(decl)
        params.append(param)
    return ctx_name, params


@dataclass
class Entry:
    """One command line shape: the words from the root and, for each, its function (a
    group's callback, the command) or None (a group without one)."""

    levels: list[tuple[str, Callable | None]]

    @property
    def id(self) -> str:
        return " ".join(word for word, _ in self.levels)


def _walk(group: common.Group, above: list[tuple[str, Callable | None]]) -> list[Entry]:
    entries = []
    for word, (fn, _) in group.commands.items():
        entries.append(Entry([*above, (word, fn)]))
    for word, sub in group.groups.items():
        callback = sub.callback_fn[0] if sub.callback_fn else None
        level = [*above, (word, callback)]
        if callback is not None and sub.kwargs.get("invoke_without_command"):
            entries.append(Entry(level))  # the group alone runs its callback
        entries += _walk(sub, level)
    return entries


def all_entries() -> list[Entry]:
    entries = []
    with _with_synthetic():
        for name in dict.fromkeys(dispatch.COMMAND_MODULES.values()):
            entries += _walk(importlib.import_module(f"brightrun_cli.cli.{name}").commands, [])
    return entries


ENTRIES = all_entries()


def test_the_walk_finds_every_command_and_the_synthetic_ones():
    ids = {e.id for e in ENTRIES}
    for top in dispatch.COMMAND_MODULES:
        assert any(i == top or i.startswith(top + " ") for i in ids), top
    assert {"jobs list", "notifications", "notifications read", "syn sub", "syn sub leaf", "syn opts"} <= ids


# ------------------------------------------------------------------ command lines from the declarations

def _required(params: list[Param], skip: Param | None = None) -> list[str]:
    """The tokens of the required options and arguments (arguments last, one value each)."""
    opts = [t for p in params if p.required and not p.argument and p is not skip for t in (p.first, p.samples()[0])]
    return opts + [p.samples()[0] for p in params if p.required and p.argument]


def valid_variants(params: list[Param], *, group: bool) -> list[list[str]]:
    """Token lists for one level of a command line, each valid for typer."""
    opts = [p for p in params if not p.argument]
    args = [p for p in params if p.argument]
    req_opts = [t for p in opts if p.required for t in (p.first, p.samples()[0])]
    arg_min = [p.samples()[0] for p in args if p.required]
    arg_all = [t for p in args for t in (p.samples() if p.is_list else p.samples()[:1])]
    every_opt = [t for p in opts for t in ([p.first] if p.flag else [p.first, p.samples()[0]])]

    out = [req_opts + arg_min]
    for p in opts:
        base = [t for q in opts if q.required and q is not p for t in (q.first, q.samples()[0])]
        if p.flag:
            out += [base + [name] + arg_min for name in p.flags]
            out.append(base + list(p.flags) + arg_min)  # all of them: the last one wins
            continue
        one, two = p.samples()
        for name in p.longs:
            out += [base + [name, one] + arg_min, base + [f"{name}={one}"] + arg_min]
        for name in p.shorts:
            out += [base + [name, one] + arg_min, base + [name + one] + arg_min]
        out.append(base + [p.first, one, p.first, two] + arg_min)  # repeated: a list collects, else the last wins
        if p.kind is str:
            out.append(base + [p.first, "-dash"] + arg_min)  # a value may start with a dash
            out.append(base + [p.first, "--"] + arg_min)  # even be --
            out.append(base + [p.first, "k=v ü"] + arg_min)
            if p.longs:
                out.append(base + [f"{p.longs[0]}="] + arg_min)  # empty
                out.append(base + [f"{p.longs[0]}=k=v"] + arg_min)
    if args:
        out.append(req_opts + arg_all)
        out.append(arg_all + every_opt)  # options after the arguments
        out.append(arg_all[:1] + every_opt + arg_all[1:])  # and between them
        out.append(every_opt + ["--"] + arg_all)
        if args[0].kind is str:
            rest = [p.samples()[0] for p in args[1:] if p.required]
            out.append(req_opts + ["--", "--json"] + rest)  # after --, an option-looking argument
            out.append(req_opts + ["-"] + rest)  # a lone dash is an argument
    out.append(every_opt + arg_min)
    if group:
        out = [v for v in out if v == [] or v[-1:] != ["--"]]
    return out


def _minimal(entry: Entry) -> list[list[str]]:
    return [_required(declared(fn)[1]) if fn else [] for _, fn in entry.levels]


def _line(entry: Entry, tokens: list[list[str]]) -> list[str]:
    return [t for (word, _), level in zip(entry.levels, tokens) for t in (word, *level)]


def valid_lines(entry: Entry) -> list[list[str]]:
    minimal = _minimal(entry)
    lines = [_line(entry, minimal)]
    for i, (_, fn) in enumerate(entry.levels):
        if fn is None:
            continue
        last = i == len(entry.levels) - 1
        for variant in valid_variants(declared(fn)[1], group=not last):
            lines.append(_line(entry, [*minimal[:i], variant, *minimal[i + 1:]]))
        if not last:  # a group's options end at `--`; the next word is still its command
            lines.append(_line(entry, [*minimal[:i], [*minimal[i], "--"], *minimal[i + 1:]]))
    base = lines[0]
    lines += [["--home", "h/dir", *base], ["--home=h/dir", *base], [*base, "--home", "h/dir"],
              [base[0], "--home", "h/dir", *base[1:]], [*base, "--home=h/dir"]]
    unique = []
    for line in lines:
        if line not in unique:
            unique.append(line)
    return unique


def rejected_lines(entry: Entry) -> list[list[str]]:
    """Lines typer refuses, built at the command's own level."""
    minimal = _minimal(entry)
    _, fn = entry.levels[-1]
    params = declared(fn)[1] if fn else []
    lines = []

    def at_end(*tokens: str, level: list[str] | None = None) -> None:
        lines.append(_line(entry, [*minimal[:-1], [*(minimal[-1] if level is None else level), *tokens]]))

    at_end("--no-such-option")
    at_end("-Z")
    for p in params:
        if p.argument:
            continue
        base = _required(params, skip=p)
        if p.flag:
            lines += [_line(entry, [*minimal[:-1], [*base, f"{name}=1"]]) for name in p.flags if name.startswith("--")]
            continue
        at_end(p.first, level=base)  # no value
        if p.kind in (int, float):
            at_end(p.first, "abc", level=base)
        if p.kind is int:
            at_end(p.first, "1.5", level=base)
        if p.min is not None:
            at_end(p.first, str(p.min - 1), level=base)
        if p.max is not None:
            at_end(p.first, str(p.max + 1), level=base)
        if p.required:
            at_end(level=base)  # a required option left out
    args = [p for p in params if p.argument]
    if not any(p.is_list for p in args):
        extra = [t for p in args for t in p.samples()[:1]]
        at_end(*extra, "extra", level=[t for p in params if p.required and not p.argument for t in (p.first, p.samples()[0])])
    if any(p.required for p in args):
        at_end(level=[t for p in params if p.required and not p.argument for t in (p.first, p.samples()[0])])
    for p in args:
        if p.kind in (int, float):
            at_end(level=[*_required(params)[:-1], "abc"])
    return lines


def help_lines(entry: Entry) -> list[list[str]]:
    base = _line(entry, _minimal(entry))
    return [[*base, "--help"], [*base, "-h"], [base[0], "--help", *base[1:]], ["--help", *base],
            [*base[:-1], "-h", base[-1]] if len(base) > 1 else ["-h"]]


# ------------------------------------------------------------------ reading a line both ways

TYPER_CALLS: list[tuple[Callable, dict[str, Any]]] = []
HOMES: list[Path | None] = []


def _recorder(fn: Callable) -> Callable:
    """What typer calls instead of `fn`: the arguments it passes, the ctx as its invoked_subcommand."""
    ctx_name, _ = declared(fn)

    @functools.wraps(fn)
    def record(*args: Any, **kwargs: Any) -> None:
        bound = dict(inspect.signature(fn).bind(*args, **kwargs).arguments)
        if ctx_name is not None:
            bound[ctx_name] = bound[ctx_name].invoked_subcommand
        TYPER_CALLS.append((fn, bound))

    return record


def _swap(group: common.Group, saved: list[Callable[[], None]]) -> None:
    for word, (fn, settings) in list(group.commands.items()):
        group.commands[word] = (_recorder(fn), settings)
        saved.append(functools.partial(group.commands.__setitem__, word, (fn, settings)))
    if group.callback_fn is not None:
        fn, settings = group.callback_fn
        group.callback_fn = (_recorder(fn), settings)
        saved.append(functools.partial(setattr, group, "callback_fn", (fn, settings)))
    for sub in group.groups.values():
        _swap(sub, saved)


@pytest.fixture(scope="module")
def typer_command():
    """The real typer app (all modules and the synthetic one) as a click command, built with
    every command function swapped for a recorder; the declarations are restored at once."""
    from typer.main import get_command

    from brightrun_cli.cli.app import make_app

    saved: list[Callable[[], None]] = []
    with _with_synthetic():
        try:
            for name in dict.fromkeys(dispatch.COMMAND_MODULES.values()):
                _swap(importlib.import_module(f"brightrun_cli.cli.{name}").commands, saved)
            command = get_command(make_app())
        finally:
            for restore in saved:
                restore()
    return command


@pytest.fixture
def both(typer_command, monkeypatch):
    """read(argv) -> (typer's reading, dispatch's reading); each is ("ok", home, calls) or
    ("refused", reason)."""
    from brightrun_cli.cli.app import _CLICK_ERRORS

    monkeypatch.setitem(sys.modules, _synthetic_module.__name__, _synthetic_module)
    monkeypatch.setitem(dispatch.COMMAND_MODULES, "syn", SYNTHETIC)
    monkeypatch.setattr(dispatch, "start", lambda ctx, home: HOMES.append(home))

    def by_typer(argv: list[str]) -> tuple:
        TYPER_CALLS.clear()
        HOMES.clear()
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            try:
                typer_command.main(dispatch.hoist_home(list(argv)), prog_name="brightrun", standalone_mode=False)
            except _CLICK_ERRORS as exc:
                return ("refused", f"{type(exc).__name__}: {exc.format_message()}")
        return ("ok", HOMES[0] if HOMES else None, [(fn, typed(kwargs)) for fn, kwargs in TYPER_CALLS])

    def by_dispatch(argv: list[str]) -> tuple:
        try:
            home, calls = dispatch.resolve(list(argv))
        except dispatch.Unparsed as exc:
            return ("refused", f"Unparsed: {exc}")
        out = []
        for i, (fn, kwargs, ctx_name, _) in enumerate(calls):
            if ctx_name is not None:
                kwargs = {**kwargs, ctx_name: calls[i + 1][3] if i + 1 < len(calls) else None}
            out.append((fn, typed(kwargs)))
        return ("ok", home, out)

    def read(argv: list[str]) -> tuple[tuple, tuple]:
        return by_typer(argv), by_dispatch(argv)

    return read


def typed(value: Any) -> Any:
    """A value with the type of every part spelled out, so 3 != 3.0 and Path('x') != 'x'."""
    if isinstance(value, dict):
        return {k: typed(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, [typed(v) for v in value])
    return (type(value).__name__, value)


def _modelled(entry: Entry) -> bool:
    """Whether dispatch reads this command's declarations (else every line may go to typer)."""
    try:
        for _, fn in entry.levels:
            if fn is not None:
                dispatch._params(fn)
    except dispatch.Unparsed:
        return False
    return True


# ------------------------------------------------------------------ the tests

@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: e.id)
def test_valid_lines_are_read_as_typer_reads_them(entry, both):
    modelled = _modelled(entry)
    wrong = []
    for argv in valid_lines(entry):
        by_typer, by_dispatch = both(argv)
        if by_typer[0] != "ok":
            wrong.append(f"{argv}: the test meant a valid line, typer refused it: {by_typer[1]}")
        elif by_dispatch[0] != "ok":
            if modelled:
                wrong.append(f"{argv}: dispatch fell back to typer ({by_dispatch[1]}) on a line it should read")
        elif by_dispatch != by_typer:
            wrong.append(f"{argv}:\n  typer:    {by_typer}\n  dispatch: {by_dispatch}")
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: e.id)
def test_lines_typer_refuses_are_left_to_typer(entry, both):
    wrong = []
    for argv in rejected_lines(entry):
        by_typer, by_dispatch = both(argv)
        if by_typer[0] != "refused":
            wrong.append(f"{argv}: the test meant a bad line, typer accepted it: {by_typer}")
        elif by_dispatch[0] != "refused":
            wrong.append(f"{argv}: typer refuses it ({by_typer[1]}) but dispatch read {by_dispatch}")
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: e.id)
def test_help_anywhere_is_left_to_typer(entry, both):
    for argv in help_lines(entry):
        with pytest.raises(dispatch.Unparsed):
            dispatch.resolve(argv)


@pytest.mark.parametrize("argv", [
    ["--version"], [], ["--home"], ["--home="], ["nosuchcommand"], ["jobs"], ["dataset"], ["jobs", "nosuch"],
    ["jobs", "--json", "list"], ["--bogus", "jobs", "list"],
], ids=" ".join)
def test_root_lines_typer_answers_are_left_to_it(argv):
    with pytest.raises(dispatch.Unparsed):
        dispatch.resolve(argv)


@pytest.mark.parametrize("argv, message", [
    (["jobs", "list", "--no-such-option"], "No such option: --no-such-option"),
    (["jobs", "list", "--limit", "0"], "--limit"),
    (["dataset", "list", "--limit"], "Option '--limit' requires an argument"),
    (["jobs", "show", "a", "b"], "unexpected extra argument"),
    (["jobs", "list", "--json=1"], "Option '--json' does not take a value"),
    (["models", "list", "--limit", "many"], "'many' is not a valid"),
    (["jobs", "show"], "Missing argument"),
    (["notifications", "--limit", "0", "read", "--all"], "--limit"),
])
def test_a_bad_line_gets_typers_one_line_error_and_exit_2(argv, message):
    result = invoke_cli(*argv)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr
    assert "--help'" in lines[0] and result.stdout == ""


def test_a_flag_whose_meaning_depends_on_typers_version_is_left_to_typer(both):
    by_typer, by_dispatch = both(["syn", "drop", "--drop"])
    assert by_typer[0] == "ok" and by_dispatch == ("refused", "Unparsed: keep: one-name flag defaulting to True")


def test_notifications_read_runs_the_callback_told_read_and_alone_it_lists(monkeypatch):
    from brightrun_cli.cli import notifications

    told = []
    fn, settings = notifications.notifications_app.callback_fn

    def callback(ctx, **kwargs):
        told.append(ctx.invoked_subcommand)
        return fn(ctx, **kwargs)

    monkeypatch.setattr(notifications.notifications_app, "callback_fn", (functools.wraps(fn)(callback), settings))
    monkeypatch.setattr("brightrun_cli.cli.app.run", lambda argv: pytest.fail(f"{argv} went to typer"))  # both lines run here
    done = invoke_cli("notifications", "read", "--all")
    assert done.exit_code == 0 and done.stdout.strip() == "marked 0 notifications read"
    done = invoke_cli("notifications")
    assert done.exit_code == 0 and done.stdout.strip() == "no notifications yet"
    assert told == ["read", None]
