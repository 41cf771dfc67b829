"""`--help` pages rendered once by typer/Rich, then served from the registry home's cache.

Rendering a help page means importing typer, click and Rich (about 0.3 s on a small
CPU) for output that only changes when brightrun, typer or Rich change or the terminal
does. The first `brightrun [COMMAND...] --help` renders it the normal way and records
the exact bytes written; later ones print those bytes without importing any of it.

The cache key covers everything the rendering depends on: the argv, brightrun's
version and CLI source files (size + mtime), the installed typer and Rich, whether
stdout is a terminal, its size, and the environment variables Rich and typer read
(colour, width, TERM). Only pages that exited 0 are kept. This module imports the
standard library alone: it runs before typer is imported.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import sys
from pathlib import Path

_WORD = re.compile(r"^[a-z][a-z0-9-]*$")
_HELP = ("--help", "-h")
_ENV = re.compile(r"COLOR|TERM|COLUMNS|LINES|TTY|TYPER|RICH|JUPYTER|PYCHARM|VSCODE|BRIGHTRUN_DEBUG")
_CLI_DIR = Path(__file__).resolve().parent
MAX_PAGES = 200


def is_help_request(argv: list[str]) -> bool:
    """`--help`/`-h` last, after nothing but command names (no options, no values)."""
    return bool(argv) and argv[-1] in _HELP and all(_WORD.match(a) for a in argv[:-1])


def _home() -> Path:
    env = os.environ.get("BRIGHTRUN_HOME")
    return Path(env).expanduser() if env else Path.home() / ".brightrun"


def _stamp(path: Path) -> str:
    try:
        st = path.stat()
    except OSError:
        return f"{path}:-"
    return f"{path}:{st.st_size}:{st.st_mtime_ns}"


def _package_stamp(name: str) -> str:
    """Where an installed package lives and when it changed, without importing it."""
    import importlib.util

    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        return f"{name}:-"
    return _stamp(Path(spec.origin))  # its __init__.py: rewritten by any upgrade


def _terminal() -> str:
    out = sys.stdout
    try:
        tty = out.isatty()
    except (AttributeError, ValueError):
        tty = False
    size = "-"
    for fd in (0, 1, 2):
        try:
            size = "%dx%d" % tuple(os.get_terminal_size(fd))
            break
        except OSError:
            continue
    return f"tty={tty} size={size} encoding={getattr(out, 'encoding', None)}"


def cache_key(argv: list[str]) -> str:
    from brightrun_cli import __version__

    parts = [__version__, sys.executable, " ".join("--help" if a in _HELP else a for a in argv), _terminal()]
    parts += [f"{k}={v}" for k, v in sorted(os.environ.items()) if _ENV.search(k)]
    parts += [_stamp(p) for p in sorted(_CLI_DIR.glob("*.py"))]
    parts += [_package_stamp("typer"), _package_stamp("rich")]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:32]


def _path(argv: list[str]) -> Path:
    return _home() / "cache" / "help" / f"{cache_key(argv)}.txt"


def serve(argv: list[str]) -> bool:
    """Print the cached page for argv and return True, or return False (not cached)."""
    try:
        data = _path(argv).read_bytes()
    except OSError:
        return False
    out = getattr(sys.stdout, "buffer", None)
    if out is None:
        sys.stdout.write(data.decode(errors="replace"))
    else:
        out.write(data)
    sys.stdout.flush()
    return True


class _Tee(io.TextIOBase):
    """stdout that records what is written; isatty/fileno/encoding stay the real stream's,
    so Rich renders exactly what it would have."""

    def __init__(self, real):
        self._real, self.chunks = real, []

    def write(self, text) -> int:
        if isinstance(text, (bytes, bytearray)):  # click writes bytes where it finds no buffer
            self.chunks.append(bytes(text))
            self._real.flush()
            return self._real.buffer.write(text)
        self.chunks.append(text.encode(self._real.encoding or "utf-8", errors="replace"))
        return self._real.write(text)

    def flush(self) -> None:
        self._real.flush()

    def isatty(self) -> bool:
        return self._real.isatty()

    def fileno(self) -> int:
        return self._real.fileno()

    @property
    def encoding(self):  # type: ignore[override]
        return self._real.encoding

    @property
    def errors(self):  # type: ignore[override]
        return self._real.errors


def render_and_store(argv: list[str], render) -> None:
    """Run render() (the typer app, which exits), keeping stdout's bytes if it exits 0.

    The page is stored only where the registry home already exists: `--help` alone
    never creates a home. Any failure to store is ignored: the page was printed.
    """
    key_path = _path(argv)
    real = sys.stdout
    tee = _Tee(real)
    sys.stdout = tee
    code: object = 0
    try:
        render()
    except SystemExit as exc:
        code = exc.code
        raise
    finally:
        sys.stdout = real
        if code in (0, None) and tee.chunks and _home().is_dir():
            _store(key_path, b"".join(tee.chunks))


def _store(path: Path, data: bytes) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
        pages = sorted(path.parent.glob("*.txt"), key=lambda p: p.stat().st_mtime_ns)
        for old in pages[:-MAX_PAGES]:  # terminal sizes and upgrades add pages; keep the newest
            old.unlink(missing_ok=True)
    except OSError:
        pass
