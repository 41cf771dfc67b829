"""What brightrun leaves below an SSH or Slurm host's workdir that `brightrun prune` may
free: shipped code (`code/<sha16>/`, one per brightrun version that ran there) and run
directories (`runs/<job_id>/`, with their `checkpoints/`).

`scan` sizes them in one round trip (a Python walk on the host, so the bytes are exact
and a dry run and the real run report the same figure); `remove` deletes exactly the
paths it is given, each checked against the shapes brightrun itself creates, so nothing
else below (or outside) the workdir can be named. Which code a job runs is recorded in
its local run dir when the runner ships it (`runners.ssh.record_code`), so `prune` can
keep the code of every live job.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from brightrun_cli.errors import OperationError, UsageError
from brightrun_cli.runners.ssh import _PY, CODE_FILE, SSHConnection, remote_python, remote_workdir

if TYPE_CHECKING:
    from brightrun_cli.registry.rows import HostRow
    from brightrun_cli.workspace import Workspace

REMOVABLE = re.compile(r"^(code/[0-9a-f]{16}|runs/[0-9a-z]{26}(/checkpoints)?)$")

# $1 python, $2 workdir, then relative paths to size. Prints one JSON object:
# {"code": {sha16: bytes}, "paths": {path: bytes}} (paths that are not directories are left out).
SCAN = _PY + r"""
wd=$2; shift 2
cd "$wd" 2>/dev/null || { echo '{"code": {}, "paths": {}}'; exit 0; }
exec "$py" -c '
import json, os, sys
def usage(top):
    total = 0
    for root, dirs, files in os.walk(top):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total
code = sorted(n for n in os.listdir("code") if os.path.isdir(os.path.join("code", n))) if os.path.isdir("code") else []
print(json.dumps({"code": {n: usage(os.path.join("code", n)) for n in code},
                  "paths": {p: usage(p) for p in sys.argv[1:] if os.path.isdir(p) and not os.path.islink(p)}}))
' "$@"
"""

# $1 workdir, then relative paths to remove (checked by `remove`).
REMOVE = r"""
wd=$1; shift
cd "$wd" || exit 3
for p in "$@"; do rm -rf -- "$p" || exit 4; done
"""


@dataclass(frozen=True)
class RemoteScan:
    workdir: str
    code: dict[str, int]  # shipped code version -> bytes
    paths: dict[str, int]  # requested path that exists -> bytes


def recorded_code(run_dir: Path) -> str | None:
    try:
        version = (run_dir / CODE_FILE).read_text(encoding="utf-8").strip()
    except OSError:
        return None
    return version if re.fullmatch(r"[0-9a-f]{16}", version) else None


def _connection(ws: "Workspace", host: "HostRow"):
    if host.kind == "slurm":
        from brightrun_cli.runners.slurm import login_for

        return login_for(ws, host)
    if host.kind == "ssh":
        return SSHConnection(ws, host)
    raise UsageError(f"host '{host.name}' is not an SSH or Slurm host", "only remote hosts keep files below a workdir")


def scan(ws: "Workspace", host: "HostRow", paths: list[str]) -> RemoteScan:
    """Sizes of the host's shipped code dirs and of `paths` (relative to its workdir)."""
    for path in paths:
        _check(path)
    workdir = remote_workdir(host)
    out = _connection(ws, host).run_script(SCAN, remote_python(host), workdir, *paths, timeout=300).stdout
    try:
        found = json.loads(out)
        return RemoteScan(workdir=workdir, code={str(k): int(v) for k, v in found["code"].items()},
                          paths={str(k): int(v) for k, v in found["paths"].items()})
    except (ValueError, KeyError, TypeError, AttributeError):
        raise OperationError(f"cannot read the file sizes on host '{host.name}' ({out[:200]!r})",
                             f"check the host with 'brightrun hosts check {host.name}'") from None


def remove(ws: "Workspace", host: "HostRow", paths: list[str]) -> None:
    """Delete `paths` (relative to the host's workdir; each a code dir, run dir or checkpoints dir)."""
    for path in paths:
        _check(path)
    if paths:
        _connection(ws, host).run_script(REMOVE, remote_workdir(host), *paths, timeout=600)


def _check(path: str) -> None:
    if not REMOVABLE.match(path):
        raise UsageError(f"refusing to remove '{path}' on a host", "only code/<sha16>, runs/<job id> and their checkpoints are brightrun's")
