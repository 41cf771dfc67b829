"""What a host has: its GPUs, Python, packages, tools and disk, found by running probes there.

`probe_local()` looks at this machine; `probe_ssh()` runs one fixed script over an SSH
connection (every word quoted: runners/ssh.py). Both return a `Probe` of facts;
services/hosts.py turns them into `hosts check`'s problems and advice.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import msgspec

if TYPE_CHECKING:
    from brightrun_cli.runners.ssh import SSHConnection


class Probe(msgspec.Struct):
    python: str | None = None  # the interpreter found (absolute path), None when missing
    python_version: str | None = None
    packages: dict[str, str | None] = msgspec.field(default_factory=dict)  # name -> version (None: missing)
    trainer: str | None = None  # "ok", or why brightrun's trainer does not import
    gpus: list[dict] = msgspec.field(default_factory=list)  # [{"name", "memory_gb"}] as nvidia-smi reports them
    disk_free_gb: float | None = None
    tools: dict[str, bool] = msgspec.field(default_factory=dict)


# $1 python, $2 workdir, $3 code dir ("" when not shipped), $4 packages (space separated).
CHECK_SCRIPT = r"""
py=$1; case $py in "~/"*) py="$HOME/${py#\~/}";; esac
wd=$2; code=$3; pkgs=$4
mkdir -p "$wd" 2>/dev/null
echo "disk $(df -Pk "$wd" 2>/dev/null | awk 'NR==2 {print $4}')"
for t in rsync setsid; do if command -v "$t" >/dev/null 2>&1; then echo "tool $t 1"; else echo "tool $t 0"; fi; done
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader,nounits 2>/dev/null | sed 's/^/gpu /'
fi
if ! command -v "$py" >/dev/null 2>&1; then echo "nopython"; exit 0; fi
echo "python $(command -v "$py")"
[ -n "$code" ] && PYTHONPATH="$(cd "$code" && pwd)"; export PYTHONPATH
"$py" -c '
import json, sys, importlib, importlib.metadata as md
out = {"version": "%d.%d.%d" % sys.version_info[:3], "packages": {}, "trainer": None}
for name in sys.argv[1].split():
    try:
        out["packages"][name] = md.version(name)
    except Exception:
        out["packages"][name] = None
try:
    importlib.import_module("brightrun_cli.trainer")
    out["trainer"] = "ok"
except BaseException as exc:
    out["trainer"] = "%s: %s" % (type(exc).__name__, exc)
print("json " + json.dumps(out))
' "$pkgs"
"""


def probe_ssh(conn: "SSHConnection", python: str, workdir: str, code_dir: str, packages: tuple[str, ...]) -> Probe:
    """Run CHECK_SCRIPT on the host behind `conn` (SSHFailure/OperationError when it cannot run)."""
    out = conn.run_script(CHECK_SCRIPT, python, workdir, code_dir, " ".join(packages))
    return parse_check_output(out.stdout.decode(errors="replace"))


def parse_check_output(text: str) -> Probe:
    """The facts in CHECK_SCRIPT's output, wherever it ran."""
    probe = Probe()
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key == "disk" and value.strip().isdigit():
            probe.disk_free_gb = round(int(value) / 2**20, 1)
        elif key == "tool":
            tool, _, present = value.partition(" ")
            probe.tools[tool] = present == "1"
        elif key == "gpu":
            probe.gpus.append(parse_gpu_line(value))
        elif key == "python":
            probe.python = value
        elif key == "json":
            info = json.loads(value)
            probe.python_version, probe.packages, probe.trainer = info["version"], info["packages"], info.get("trainer")
    return probe


def probe_local(packages: tuple[str, ...]) -> Probe:
    import importlib.metadata as md
    import importlib.util
    import platform
    import shutil
    import sys
    from pathlib import Path

    probe = Probe(python=sys.executable, python_version=platform.python_version(), gpus=local_gpus())
    for name in packages:
        try:
            probe.packages[name] = md.version(name)
        except md.PackageNotFoundError:
            probe.packages[name] = None
    probe.trainer = "ok" if importlib.util.find_spec("brightrun_cli.trainer") is not None else "brightrun_cli.trainer is not importable"
    probe.disk_free_gb = round(shutil.disk_usage(Path.home()).free / 2**30, 1)
    return probe


def parse_gpu_line(line: str) -> dict:
    """One `nvidia-smi --query-gpu=name,memory.total --format=csv,noheader,nounits` line."""
    name, _, mem = line.rpartition(",")
    try:
        memory = round(float(mem) / 1024, 1)
    except ValueError:
        memory = None
    return {"name": name.strip(), "memory_gb": memory}


def local_gpus() -> list[dict]:
    """This machine's NVIDIA GPUs as nvidia-smi reports them ([] without nvidia-smi or a driver)."""
    import shutil
    import subprocess

    if not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [parse_gpu_line(line) for line in out.stdout.splitlines() if line.strip()] if out.returncode == 0 else []
