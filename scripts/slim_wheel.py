"""Drop files from a wheel, in place: those matching DROP unless they also match KEEP (regexes
on the archive paths), with their RECORD lines, so pip installs the rest as usual.

    python scripts/slim_wheel.py WHEEL KEEP DROP

For carrying a wheel to a machine with no network under a size limit (scripts/gpu_wheels.sh):
bitsandbytes' 43 MB are mostly kernel libraries for CUDA releases that machine does not run.
"""

from __future__ import annotations

import re
import sys
import zipfile
from pathlib import Path


def slim(wheel: Path, keep: str, drop: str) -> list[str]:
    def dropped(name: str) -> bool:
        return re.search(drop, name) is not None and re.search(keep, name) is None

    tmp = wheel.with_suffix(".tmp")
    gone = []
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as out:
        for item in src.infolist():
            if dropped(item.filename):
                gone.append(item.filename)
                continue
            data = src.read(item)
            if item.filename.endswith(".dist-info/RECORD"):
                lines = data.decode().splitlines(keepends=True)
                data = "".join(line for line in lines if not dropped(line.split(",", 1)[0])).encode()
            out.writestr(item, data)
    tmp.replace(wheel)
    return gone


if __name__ == "__main__":
    wheel, keep, drop = sys.argv[1:4]
    for path in Path().glob(wheel) if "*" in wheel else [Path(wheel)]:
        removed = slim(path, keep, drop)
        print(f"{path.name}: dropped {len(removed)} files, now {path.stat().st_size / 2**20:.1f} MiB")
