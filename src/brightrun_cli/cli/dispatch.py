"""Run an ordinary command line without typer, click or Rich.

Importing typer and building its click commands costs ~0.1 s, most of what `brightrun
jobs list` takes. The commands are declared without typer (cli/common.py: `Group`, `Opt`,
`Arg`), so this module can read a command line from the same declarations: the command
path, its options (`--x v`, `--x=v`, `-x v`, `-xv`, flags, `--x/--no-x`, repeated
options) and its arguments, converted and checked as click would (str, int, float, Path,
min/max), and call the command with what typer would have passed.

Anything else goes to typer, which answers it as before: `--help`, `--version`, a
usage error of any kind (unknown option, missing or extra argument, a value out of
range), an option or command feature this parser does not model. This parser never
prints an error of its own, so every error message stays typer's; tests/test_dispatch.py
checks, command by command, that both read the same values from the same command lines.
"""

from __future__ import annotations

import importlib
import sys
import types
import typing
from pathlib import Path
from typing import Any, Callable

from brightrun_cli.cli import common
from brightrun_cli.errors import EXIT_FAILED, BrightrunError, OperationError, debug_enabled

# Top-level command -> the cli module whose `commands` group declares it (tests/test_cli_app.py
# checks this against what the modules really declare).
COMMAND_MODULES = {
    "dataset": "datasets", "presets": "presets", "estimate": "estimate", "gpus": "estimate",
    "train": "jobs", "jobs": "jobs", "watch": "watch", "models": "models", "hosts": "hosts",
    "costs": "costs", "notifications": "notifications", "status": "fleet", "prune": "fleet",
}
_HELP = ("--help", "-h")
# typer.Option / typer.Argument / command() / group arguments this parser honours: those that
# only shape the help page, and the group settings resolve() follows (name,
# no_args_is_help, invoke_without_command). Any other (callback, envvar, prompt, ...) sends
# the command line to typer.
_MODELLED = {"help", "show_default", "rich_help_panel", "metavar", "hidden", "short_help", "epilog", "no_args_is_help",
             "name", "invoke_without_command"}


_Call = tuple[Callable, dict[str, Any], "str | None", str]  # function, keyword arguments, its ctx parameter, command word


class _Empty:
    def __repr__(self) -> str:
        return "EMPTY"


EMPTY = _Empty()  # a parameter without a default


class Unparsed(Exception):
    """This command line is typer's to answer (help, an error, a feature not modelled here)."""


# ------------------------------------------------------------------ errors -> exit codes

def report(message: str) -> None:
    sys.stderr.write(f"error: {message}\n")
    sys.stderr.flush()


def _known_failure(exc: BaseException) -> BrightrunError | None:
    """Ordinary trouble that reaches the top as a library's exception, as a domain error:
    a full disk, a reader that closed our stdout (handled by the caller)."""
    import errno

    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT) and exc.filename is None and _stdout_failed():
        return OperationError("could not write the output: no space left on the device of stdout",
                              "send stdout somewhere with room (or to a pipe), or free space there")
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        where = f" ({exc.filename})" if exc.filename else ""
        return OperationError(f"no space left on the device{where}", "free space there, or point --home / storage_url at another disk")
    if type(exc).__name__ == "OperationalError" and "disk is full" in str(exc):  # sqlite3's (or SQLAlchemy's wrapping of it)
        return OperationError("no space left on the device of the registry", "free space there, or point --home at another disk")
    return None


def _stdout_failed() -> bool:
    """Whether stdout is what cannot take more: flushing it fails, or it is a full device."""
    try:
        sys.stdout.flush()
    except OSError:
        return True
    try:
        import os

        return os.fstat(sys.stdout.fileno()).st_rdev == os.stat("/dev/full").st_rdev and os.path.exists("/dev/full")
    except (OSError, ValueError, AttributeError):
        return False


def failure_code(exc: BaseException) -> int | None:
    """A command's exception as one stderr line and its exit code; None: let it propagate
    (SystemExit, or anything under BRIGHTRUN_DEBUG=1, whose traceback is wanted)."""
    if isinstance(exc, BrightrunError):
        if debug_enabled():
            import traceback  # not at module level: ~20 ms of every run for a debug-only path

            traceback.print_exc()
        report(str(exc))
        return exc.exit_code
    if isinstance(exc, KeyboardInterrupt):
        sys.stderr.write("interrupted\n")
        return 130
    if isinstance(exc, BrokenPipeError):
        return common.reader_left()
    if not isinstance(exc, Exception) or debug_enabled():
        return None
    known = _known_failure(exc)
    if known is not None:
        report(str(known))
        return known.exit_code
    report(f"internal error: {type(exc).__name__}: {exc}; rerun with BRIGHTRUN_DEBUG=1 for the traceback and report it")
    return EXIT_FAILED


# ------------------------------------------------------------------ the root command's part

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


def empty_home(argv: list[str]) -> bool:
    """`--home ''`, `--home=` or a trailing `--home` with its value left off (after hoist_home)."""
    for i, arg in enumerate(argv):
        if arg == "--":
            return False
        if arg == "--home":
            return i + 1 >= len(argv) or not argv[i + 1].strip()
        if arg.startswith("--home="):
            return not arg.partition("=")[2].strip()
    return False


def command_of(argv: list[str]) -> str | None:
    """The top-level command word of argv, skipping root options (`--home DIR`, `--home=DIR`)."""
    args = iter(argv)
    for arg in args:
        if arg == "--home":
            next(args, None)
        elif not arg.startswith("-"):
            return arg
    return None


def start(ctx: Any, home: Path | None) -> None:
    """What the root command does before any subcommand: the workspace's home, config.toml's
    warnings (a broken file is the command's one error line), and the queue's housekeeping."""
    ctx.obj = common.AppState(home=home)
    for warning in common.workspace(ctx).config_warnings():
        sys.stderr.write(f"warning: {warning}\n")
    common.kick_queue(home)


class _Context:
    """What a command's `ctx` offers on this path (see common.Context)."""

    def __init__(self, root: "_Context | None" = None, invoked_subcommand: str | None = None):
        self._root, self.obj, self.invoked_subcommand = root, None, invoked_subcommand

    def find_root(self) -> "_Context":
        return self._root or self


# ------------------------------------------------------------------ parsing

class _Param:
    """One declared parameter as click sees it: an argument or an option (its option strings,
    flag values), its type, bounds and default. Unparsed for anything else."""

    def __init__(self, name: str, hint: Any, default: Any):
        self.name, self.default = name, default
        meta = None
        if typing.get_origin(hint) is typing.Annotated:
            hint, *extras = typing.get_args(hint)
            meta = next((e for e in extras if isinstance(e, (common.Opt, common.Arg))), None)
        self.required = default is EMPTY
        self.is_argument = isinstance(meta, common.Arg) or (meta is None and self.required)
        kwargs = meta.kwargs if meta is not None else {}
        if set(kwargs) - _MODELLED - {"min", "max"}:
            raise Unparsed(f"{name}: {sorted(set(kwargs) - _MODELLED)}")
        self.min, self.max = kwargs.get("min"), kwargs.get("max")
        self.is_list = False
        if typing.get_origin(hint) in (typing.Union, types.UnionType):
            kinds = [t for t in typing.get_args(hint) if t is not type(None)]
            if len(kinds) != 1:
                raise Unparsed(name)
            hint = kinds[0]
        if typing.get_origin(hint) is list:
            hint, self.is_list = typing.get_args(hint)[0], True
        if hint not in (str, int, float, bool, Path):
            raise Unparsed(f"{name}: type {hint!r}")
        self.type = hint
        self.flag = hint is bool and not self.is_argument
        if self.flag and not isinstance(default, bool):
            raise Unparsed(f"{name}: flag default {default!r}")
        decls = meta.decls if isinstance(meta, common.Opt) and meta.decls else ()
        if not decls:
            flag_name = name.replace("_", "-")
            decls = (f"--{flag_name}/--no-{flag_name}",) if self.flag else (f"--{flag_name}",)
        self.names: dict[str, Any] = {}  # option string -> value it sets (flags), or None (takes a value)
        for decl in decls:
            first, _, second = decl.partition("/")
            if self.flag:
                if not second and default:  # `--x` defaulting to True: click 8.1 (older typer) sets False, typer 0.28's click True
                    raise Unparsed(f"{name}: one-name flag defaulting to True")
                self.names[first.strip()] = True
                if second:
                    self.names[second.strip()] = False
            else:
                self.names[first.strip()] = None

    def convert(self, text: str) -> Any:
        """The value click and typer make of `text`, or Unparsed where they would refuse it."""
        try:
            value: Any = self.type(text) if self.type is not Path else text
        except ValueError:
            raise Unparsed(self.name) from None
        if self.type is float and value - value != 0:  # nan or inf: typer refuses them (cli/app.py)
            raise Unparsed(self.name)
        if self.type in (int, float):
            if (self.min is not None and value < self.min) or (self.max is not None and value > self.max):
                raise Unparsed(self.name)
        if self.type is Path:
            if not text:
                raise Unparsed(self.name)
            value = Path(text)
        return value


def _signature(fn: Callable) -> list[tuple[str, Any]]:
    """(name, default or EMPTY) of each parameter, read from the code object: what
    inspect.signature gives for a plain function, without importing inspect (~10 ms).
    A decorated function is read through `__wrapped__`, as inspect.signature reads it."""
    while hasattr(fn, "__wrapped__"):
        fn = fn.__wrapped__
    code = fn.__code__
    if code.co_flags & (0x04 | 0x08):  # *args / **kwargs: not a command typer could build either
        raise Unparsed(f"{fn.__name__}: variadic parameters")
    names = code.co_varnames[:code.co_argcount + code.co_kwonlyargcount]
    defaults = dict(zip(names[code.co_argcount - len(fn.__defaults__ or ()):code.co_argcount], fn.__defaults__ or ()))
    defaults.update(fn.__kwdefaults__ or {})
    return [(name, defaults.get(name, EMPTY)) for name in names]


def _params(fn: Callable) -> tuple[str | None, list[_Param]]:
    """The command's context parameter and its other parameters, from its declaration."""
    try:
        hints = typing.get_type_hints(fn, include_extras=True)
    except Exception as exc:  # an annotation only typer's build can resolve
        raise Unparsed(str(exc)) from None
    ctx_name, params = None, []
    for name, default in _signature(fn):
        hint = hints.get(name, str)
        if hint is common.Context:
            ctx_name = name
            continue
        params.append(_Param(name, hint, default))
    return ctx_name, params


def parse(params: list[_Param], tokens: list[str], *, stop_at_word: bool = False) -> tuple[dict[str, Any], list[str]]:
    """Keyword arguments for `params` from `tokens`, as click parses a command line; with
    `stop_at_word` (a group's own options), the tokens from the first word on are returned."""
    by_name: dict[str, _Param] = {}
    for p in params:
        if not p.is_argument:
            for opt in p.names:
                by_name[opt] = p
    values: dict[str, Any] = {}
    lists: dict[str, list[Any]] = {}
    words: list[str] = []
    rest = list(tokens)
    while rest:
        token = rest.pop(0)
        if token == "--":
            if stop_at_word:  # a group's options end here; the next word is still its command
                return _finish(params, values, lists, []), rest
            words += rest
            rest = []
            break
        if token in _HELP:
            raise Unparsed("help")
        if token[:1] != "-" or len(token) == 1:
            if stop_at_word:
                return _finish(params, values, lists, []), [token, *rest]
            words.append(token)
            continue
        name, eq, attached = token.partition("=") if token.startswith("--") else (token, "", "")
        if not token.startswith("--") and token[:2] not in by_name:
            raise Unparsed(token)
        if not token.startswith("--") and len(token) > 2:  # -xVALUE (a value attached to a short option)
            name, attached, eq = token[:2], token[2:], "="
        param = by_name.get(name)
        if param is None:
            raise Unparsed(token)
        if param.flag:
            if eq:
                raise Unparsed(token)
            values[param.name] = param.names[name]
            continue
        if eq:
            text = attached
        elif rest:
            text = rest.pop(0)
        else:
            raise Unparsed(token)
        value = param.convert(text)
        if param.is_list:
            lists.setdefault(param.name, []).append(value)
        else:
            values[param.name] = value
    if stop_at_word:
        return _finish(params, values, lists, []), []
    return _finish(params, values, lists, words), []


def _finish(params: list[_Param], values: dict[str, Any], lists: dict[str, list[Any]], words: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for p in params:
        if p.is_argument:
            if p.is_list:
                taken, words = [p.convert(w) for w in words], []
                out[p.name] = taken or (None if p.default in (None, EMPTY) else list(p.default))
                if not taken and p.required:
                    raise Unparsed(p.name)
            elif words:
                out[p.name] = p.convert(words.pop(0))
            elif p.required:
                raise Unparsed(p.name)
            else:
                out[p.name] = p.default
        elif p.is_list:
            out[p.name] = lists.get(p.name) or (None if p.default is None else list(p.default))
            if p.required and p.name not in lists:
                raise Unparsed(p.name)
        elif p.name in values:
            out[p.name] = values[p.name]
        elif p.required:
            raise Unparsed(p.name)
        else:
            out[p.name] = p.default
    if words:
        raise Unparsed(f"extra arguments {words}")
    return out


def _check_kwargs(kwargs: dict[str, Any]) -> None:
    if set(kwargs) - _MODELLED:
        raise Unparsed(f"command settings {sorted(set(kwargs) - _MODELLED)}")


def resolve(argv: list[str]) -> tuple[Path | None, list[_Call]]:
    """The home and the calls that typer would make for `argv` (a group's callback, then its
    command); Unparsed where this is typer's to answer."""
    argv = hoist_home(argv)
    home: Path | None = None
    while argv and argv[0].startswith("-"):
        token = argv.pop(0)
        if token == "--home" and argv:
            text = argv.pop(0)
        elif token.startswith("--home="):
            text = token.partition("=")[2]
        else:
            raise Unparsed(token)  # --version, --help, a typo
        if not text:
            raise Unparsed("--home")
        home = Path(text)
    if not argv or argv[0] not in COMMAND_MODULES:
        raise Unparsed("no command")
    module = importlib.import_module(f"brightrun_cli.cli.{COMMAND_MODULES[argv[0]]}")
    node: common.Group = module.commands
    calls: list[_Call] = []
    tokens = argv
    while True:
        word, tokens = tokens[0], tokens[1:]
        if word in node.commands:
            fn, settings = node.commands[word]
            _check_kwargs(settings)
            if settings.get("no_args_is_help") and not tokens:
                raise Unparsed("no arguments")
            ctx_name, params = _params(fn)
            kwargs, _ = parse(params, tokens)
            calls.append((fn, kwargs, ctx_name, word))
            return home, calls
        if word not in node.groups:
            raise Unparsed(word)
        node = node.groups[word]
        _check_kwargs(node.kwargs)
        if node.callback_fn is None:
            if not tokens or tokens[0].startswith("-"):
                raise Unparsed("group options")
            continue
        fn, settings = node.callback_fn
        _check_kwargs(settings)
        ctx_name, params = _params(fn)
        kwargs, tokens = parse(params, tokens, stop_at_word=True)
        calls.append((fn, kwargs, ctx_name, word))
        if not tokens:
            if not node.kwargs.get("invoke_without_command"):
                raise Unparsed("group without a command")
            return home, calls


def run(argv: list[str]) -> None:
    """Run `argv` here and exit with its code, or return (having done nothing) when the
    command line is typer's to answer."""
    try:
        home, calls = resolve(list(argv))
    except Unparsed:
        return
    root = _Context()
    try:
        start(root, home)
        for i, (fn, kwargs, ctx_name, _) in enumerate(calls):
            if ctx_name is not None:
                following = calls[i + 1][3] if i + 1 < len(calls) else None
                kwargs = {ctx_name: _Context(root, invoked_subcommand=following), **kwargs}
            fn(**kwargs)
    except SystemExit:
        raise
    except BaseException as exc:
        if type(exc).__name__ == "Abort" and "typer" in sys.modules:  # a declined confirm(abort=True)
            sys.stderr.write("aborted\n")
            sys.exit(1)
        code = failure_code(exc)
        if code is None:
            raise
        sys.exit(code)
    sys.exit(0)
