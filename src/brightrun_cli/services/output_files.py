"""Files brightrun writes where the user asked (`jobs plot --out`, `jobs report --out`,
`models merge`): whole or not at all, with the permissions the user's umask gives.

Written to a temporary file in the same directory (created exclusively: no symlink placed
there is followed) and renamed over the target, so a reader never sees half a file and a
failure leaves the old one. mkstemp's 0600 suits a scratch file, not a result meant to be
shared, so the file gets what `open()` would give it (0666 less the umask).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomically(out: Path, write: Callable[[IO[bytes]], object], label: str = "--out") -> Path:
    """Create or replace `out` with what `write` writes to the binary handle it is given.
    A missing or unwritable directory is a usage error naming `out` (`label`: how the user gave it)."""
    import tempfile  # here: `models list` imports this module and never writes a file

    check_parent(out, label)
    with user_path(out, label):
        fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    try:
        os.fchmod(fd, 0o666 & ~umask())
        with os.fdopen(fd, "wb") as handle:
            write(handle)
        with user_path(out, label):
            os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out


def check_parent(out: Path, label: str) -> None:
    """Refuse an output path whose directory is missing or not a directory (every command
    that writes where the user asked refuses rather than creating directories)."""
    from brightrun_cli.errors import UsageError

    parent = out.parent
    if not parent.exists():
        raise UsageError(f"cannot write {label} {out}: the directory {parent} does not exist", "create it first or write elsewhere")
    if not parent.is_dir():
        raise UsageError(f"cannot write {label} {out}: {parent} is not a directory", "choose a path inside a directory")


@contextmanager
def user_path(out: "Path | str", label: str) -> Iterator[None]:
    """OSErrors while writing a path the user named (read-only, no permission, a file where
    a directory should be) as one usage error naming the path; a full disk stays what it is."""
    import errno

    from brightrun_cli.errors import UsageError

    try:
        yield
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise
        reason = exc.strerror or str(exc) or type(exc).__name__
        where = f" ({exc.filename})" if exc.filename and str(exc.filename) != str(out) else ""
        raise UsageError(f"cannot write {label} {out}: {reason}{where}", "choose a writable location") from exc
