"""Files brightrun writes where the user asked (`jobs plot --out`, `jobs report --out`,
`models merge`): whole or not at all, with the permissions the user's umask gives.

Written to a temporary file in the same directory (created exclusively: no symlink placed
there is followed) and renamed over the target, so a reader never sees half a file and a
failure leaves the old one. mkstemp's 0600 suits a scratch file, not a result meant to be
shared, so the file gets what `open()` would give it (0666 less the umask).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import IO


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomically(out: Path, write: Callable[[IO[bytes]], object]) -> Path:
    """Create or replace `out` with what `write` writes to the binary handle it is given."""
    import tempfile  # here: `models list` imports this module and never writes a file

    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    try:
        os.fchmod(fd, 0o666 & ~umask())
        with os.fdopen(fd, "wb") as handle:
            write(handle)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out
