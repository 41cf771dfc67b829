"""Compute hosts: `local` (always there), SSH machines and Slurm clusters (services/slurm_hosts.py
builds those rows; services/host_check.py runs `hosts check` of any kind).

Everything a user types about a host is validated here before it is stored, so the
runner only ever sees names, users, addresses and paths made of safe characters
(and still quotes every remote word). Only *paths* to keys are stored, never keys.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path

import msgspec

from brightrun_cli import lifecycle
from brightrun_cli.errors import ConflictError, OperationError, UsageError
from brightrun_cli.registry import hosts as host_rows
from brightrun_cli.registry import jobs as job_rows
from brightrun_cli.registry.engine import read_in
from brightrun_cli.registry.rows import HostRow, JobRow
from brightrun_cli.registry.timeutil import utcnow
from brightrun_cli.runners.probe import Probe, local_gpus
from brightrun_cli.runners.ssh import (
    DEFAULT_PYTHON,
    DEFAULT_WORKDIR,
    SSHConnection,
    SSHFailure,
)
from brightrun_cli.services.gpus import get_gpu, list_gpus, normalize_gpu_name
from brightrun_cli.workspace import Workspace

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
USER_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,31}$")
LABEL_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
SAFE_PATH_PART_RE = re.compile(r"^[A-Za-z0-9_.+@-]+$")
COMMAND_RE = re.compile(r"^[A-Za-z0-9_.+-]+$")
# Packages the trainer imports on the remote side, and what to install for them.
REQUIRED_PACKAGES = ("torch", "transformers", "peft", "accelerate", "safetensors")
# Reported by `hosts check` but needed only by some jobs: bitsandbytes by quantization=4bit|8bit
# (`train` refuses those where the last check found it missing: services.training).
OPTIONAL_PACKAGES = ("bitsandbytes",)
PROBED_PACKAGES = REQUIRED_PACKAGES + OPTIONAL_PACKAGES
MIN_PYTHON = (3, 10)
LOCAL = "local"


def validate_name(name: str) -> str:
    if not NAME_RE.match(name or ""):
        raise UsageError(
            f"invalid host name {name!r}",
            "use 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit",
        )
    if name == LOCAL:
        raise ConflictError("the host name 'local' is reserved for this machine", "pick another name")
    return name


ZONE_RE = re.compile(r"^[A-Za-z0-9_.-]{1,32}$")


def _validate_address(host: str) -> str:
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        # Python accepts any text as an IPv6 zone (`::1%a b;c`); an interface name is all a zone can be.
        zone = getattr(address, "scope_id", None)
        if zone is not None and not ZONE_RE.match(zone):
            raise UsageError(f"invalid IPv6 zone in SSH host address {host!r}", "a zone is an interface name, e.g. fe80::1%eth0")
        return str(address)
    if len(host) <= 253 and host and all(LABEL_RE.match(label) for label in host.split(".")):
        return host
    raise UsageError(f"invalid SSH host address {host!r}", "give a host name (or ssh config alias) or an IP address")


def parse_ssh_target(target: str) -> tuple[str | None, str, int | None]:
    """`user@host[:port]` (user optional, IPv6 in brackets) -> (user, host, port)."""
    raw = (target or "").strip()
    user: str | None = None
    if "@" in raw:
        user, raw = raw.rsplit("@", 1)
        if not USER_RE.match(user):
            raise UsageError(f"invalid SSH user name {user!r}", "use letters, digits, '.', '_' or '-'")
    port: int | None = None
    m = re.match(r"^(\[[^\]]+\]|[^:]+)(?::(\d{1,5}))?$", raw)
    if not m:
        raise UsageError(f"invalid --ssh target {target!r}", "use user@host or user@host:port")
    host = _validate_address(m.group(1))
    if m.group(2) is not None:
        port = int(m.group(2))
        if not 1 <= port <= 65535:
            raise UsageError(f"invalid SSH port {port}", "use a port between 1 and 65535")
    return user, host, port


def _safe_parts(path: str, what: str) -> list[str]:
    parts = [p for p in path.split("/") if p not in ("", ".")]
    for part in parts:
        if part == ".." or not SAFE_PATH_PART_RE.match(part) or part.startswith("-"):
            raise UsageError(
                f"invalid {what} {path!r}",
                "use letters, digits and . _ + @ - in each path component (no '..', spaces or shell characters)",
            )
    return parts


def normalize_workdir(workdir: str | None) -> str:
    """Remote workdir: absolute, or relative to the remote home (`~/x` and `x` mean the same)."""
    if workdir is None:
        return DEFAULT_WORKDIR
    raw = workdir.strip()
    absolute = raw.startswith("/")
    if raw == "~" or raw.startswith("~/"):
        raw = raw[1:]
        absolute = False
    parts = _safe_parts(raw, "--workdir")
    if not parts:
        if absolute:
            raise UsageError("--workdir cannot be the remote root '/'", "use a directory such as ~/brightrun")
        return "."
    return ("/" if absolute else "") + "/".join(parts)


def normalize_python(python: str | None) -> str:
    """Remote interpreter: absolute path, ~/path, or a command name on the remote PATH."""
    if python is None:
        return DEFAULT_PYTHON
    raw = python.strip()
    if raw.startswith("/"):
        return "/" + "/".join(_safe_parts(raw, "--python"))
    if raw.startswith("~/"):
        return "~/" + "/".join(_safe_parts(raw[2:], "--python"))
    if COMMAND_RE.match(raw) and not raw.startswith("-"):
        return raw
    raise UsageError(f"invalid --python {python!r}", "give an absolute path, ~/path, or a command name such as python3")


def identity_path(identity: str | None) -> str | None:
    if identity is None:
        return None
    path = Path(identity).expanduser().absolute()
    if not path.is_file():
        raise UsageError(f"identity file {identity} does not exist", "give the path of a private key (it is not copied, only its path is stored)")
    if any(c in str(path) for c in "\n\r'\""):
        raise UsageError(f"identity path {str(path)!r} contains quotes or newlines", "move the key to a plain path")
    return str(path)


def list_hosts(ws: Workspace) -> list[HostRow]:
    """Every host, `local` first (brought in line with this machine's GPUs)."""
    refresh_local_host(ws)
    with ws.registry.reading() as conn:
        return host_rows.all_hosts(conn)


def get_host(ws: Workspace, ref: str) -> HostRow:
    with ws.registry.reading() as conn:
        return host_rows.resolve(conn, ref)


def hosts_of(ws: Workspace, job: JobRow) -> list[HostRow]:
    """The job's hosts in order (the first is the main node); NotFoundError if one was removed."""
    with ws.registry.reading() as conn:
        return host_rows.of_job(conn, job)


def add_host(
    ws: Workspace,
    name: str,
    ssh: str,
    *,
    identity: str | None = None,
    gpus: int | None = None,
    gpu_type: str | None = None,
    python: str | None = None,
    workdir: str | None = None,
    accept_new_host_key: bool = False,
    connect: bool = True,
) -> HostRow:
    """Validate, (unless connect=False) log in once to prove the host is usable, store.

    Nothing is stored when validation or the login fails.
    """
    validate_name(name)
    user, address, port = parse_ssh_target(ssh)
    if gpus is not None and not 1 <= gpus <= 1024:
        raise UsageError(f"invalid --gpus {gpus}", "give the number of GPUs (at least 1; a CPU host has 1 slot)")
    if gpu_type is not None and gpu_type.lower() != "cpu":
        gpu_type = get_gpu(ws, gpu_type).name
    fields = dict(
        name=name, kind="ssh", ssh_user=user, ssh_host=address, ssh_port=port,
        identity_file=identity_path(identity), gpus=gpus or 1, gpu_type=gpu_type or "cpu",
        python=normalize_python(python), workdir=normalize_workdir(workdir),
        options={"accept_new_host_key": True} if accept_new_host_key else {},
    )
    with ws.registry.reading() as conn:
        if host_rows.by_name(conn, name) is not None:
            raise ConflictError(f"a host named '{name}' already exists", f"remove it first with 'brightrun hosts rm {name}' or pick another name")
    if connect:
        conn = SSHConnection(ws, unsaved_host(fields))
        try:
            conn.ensure_master()
            conn.run(conn.ssh_argv(["true"]))
        except SSHFailure as exc:
            raise OperationError(exc.message, (exc.hint or "") + "; or add it with --no-check to store it without connecting") from exc
    return _store(ws, fields)


STORED_AT_ADD = ("id", "created_at", "updated_at", "last_check", "last_checked_at")


def _store(ws: Workspace, fields: dict) -> HostRow:
    fields = {k: v for k, v in fields.items() if k not in STORED_AT_ADD}
    with ws.registry.write() as tx:
        if host_rows.name_taken(tx, fields["name"]):
            raise ConflictError(f"a host named '{fields['name']}' already exists", "pick another name")
        return host_rows.insert(tx, **fields)


def add_slurm_host(ws: Workspace, host: HostRow, *, connect: bool = True) -> HostRow:
    """Store a slurm host built by slurm_hosts.new_slurm_host; unless connect=False, its login
    node must answer first (a local login always does). Nothing is stored when it does not."""
    with ws.registry.reading() as conn:
        if host_rows.by_name(conn, host.name) is not None:
            raise ConflictError(f"a host named '{host.name}' already exists", f"remove it first with 'brightrun hosts rm {host.name}' or pick another name")
    if connect and host.ssh_host:
        login = SSHConnection(ws, host)
        try:
            login.ensure_master()
            login.run(login.ssh_argv(["true"]))
        except SSHFailure as exc:
            raise OperationError(exc.message, (exc.hint or "") + "; or add it with --no-check to store it without connecting") from exc
    return _store(ws, host.to_fields())


def unsaved_host(fields: dict) -> HostRow:
    """A host row not stored yet (to try the connection before storing it)."""
    now = utcnow()
    return HostRow(**{"id": "", "last_check": None, "last_checked_at": None, "created_at": now, "updated_at": now, **fields})


def remove_host(ws: Workspace, ref: str) -> HostRow:
    """Remove an SSH host. Refused for `local` and while jobs are queued or running on it;
    finished jobs keep their history (their host_id is cleared, `hosts` names stay)."""
    host = get_host(ws, ref)
    if host.name == LOCAL:
        raise UsageError("the 'local' host cannot be removed", "it is this machine")
    with ws.registry.write() as tx:
        active = job_rows.on_host(read_in(tx), host.id, lifecycle.ACTIVE)
        if active:
            raise ConflictError(
                f"host '{host.name}' has {len(active)} queued or running job(s) ({active[0].id})",
                "cancel them or wait for them to end ('brightrun jobs list')",
            )
        job_rows.detach_host(tx, host.id, host.name)
        host_rows.delete(tx, host.id)
    SSHConnection(ws, host).close_master()
    return host


class HostCheck(msgspec.Struct):
    """What `hosts check` found. `problems` has one actionable line per problem."""

    name: str
    kind: str = "ssh"
    ok: bool = False
    reachable: bool = False
    latency_ms: float | None = None
    python: str | None = None
    python_version: str | None = None
    packages: dict[str, str | None] = msgspec.field(default_factory=dict)
    trainer_importable: bool = False
    code_version: str | None = None
    gpus: list[dict] = msgspec.field(default_factory=list)
    disk_free_gb: float | None = None
    workdir: str | None = None
    tools: dict[str, bool] = msgspec.field(default_factory=dict)
    slurm: dict = msgspec.field(default_factory=dict)  # a Slurm host: version, partition, nodes, gres, time_limit
    problems: list[str] = msgspec.field(default_factory=list)

    def to_json(self) -> dict:
        return msgspec.structs.asdict(self)


def apply_probe(result: HostCheck, probe: Probe) -> None:
    """Copy what a check script found into `result`."""
    result.python = probe.python or result.python
    result.python_version = probe.python_version
    result.packages = probe.packages
    result.gpus = probe.gpus
    result.disk_free_gb = probe.disk_free_gb
    result.tools = probe.tools


def missing_required(packages: dict[str, str | None]) -> list[str]:
    """The required packages a probe found missing (an optional one missing is no problem)."""
    return [name for name, version in packages.items() if version is None and name not in OPTIONAL_PACKAGES]


def judge_probe(result: HostCheck, host: HostRow, python: str, found: Probe) -> None:
    """Fill `result` from what the check script found (on an SSH host, or on a Slurm compute
    node), with one actionable line per problem."""
    apply_probe(result, found)
    for tool, present in result.tools.items():
        if not present:
            result.problems.append(f"'{tool}' is missing on '{host.name}'; install it (e.g. apt-get install {'util-linux' if tool == 'setsid' else tool})")
    if found.python is None:
        result.problems.append(
            f"python '{python}' not found on '{host.name}'; install Python {MIN_PYTHON[0]}.{MIN_PYTHON[1]}+ there or re-add the host with --python PATH"
        )
    if found.python_version:
        if tuple(int(x) for x in found.python_version.split(".")[:2]) < MIN_PYTHON:
            result.problems.append(
                f"python on '{host.name}' is {found.python_version}; brightrun's trainer needs {MIN_PYTHON[0]}.{MIN_PYTHON[1]}+ (re-add the host with --python PATH)"
            )
        missing = missing_required(result.packages)
        if missing:
            result.problems.append(
                f"missing Python packages on '{host.name}': {', '.join(missing)}; install them with: {python} -m pip install {' '.join(missing)}"
            )
        result.trainer_importable = found.trainer == "ok"
        if not result.trainer_importable and not missing:
            result.problems.append(f"brightrun's trainer does not import on '{host.name}': {found.trainer}")
    if host.gpu_type != "cpu":
        if not result.gpus:
            result.problems.append(f"no NVIDIA GPU found on '{host.name}' (nvidia-smi missing or failing) but the host is declared with {host.gpus} x {host.gpu_type}")
        elif len(result.gpus) < host.gpus:
            result.problems.append(f"'{host.name}' is declared with {host.gpus} GPUs but nvidia-smi shows {len(result.gpus)}; re-add it with --gpus {len(result.gpus)}")


def catalog_gpu_for(ws: Workspace, name: str, memory_gb: float | None) -> str | None:
    """The GPU catalog type of an nvidia-smi name ('NVIDIA A100-SXM4-40GB' -> A100-40GB), or None.

    A catalog type matches when its model ('A100' of 'A100-80GB') appears in the name; the
    longest model wins ('L40S' over 'L4') and memory decides between sizes of one model.
    """
    key = normalize_gpu_name(name.replace("NVIDIA", "").replace("GeForce", ""))
    candidates = []
    for gpu in list_gpus(ws):
        model = re.sub(r"-\d+GB$", "", gpu.name)
        if gpu.name != "cpu" and normalize_gpu_name(model) in key:
            candidates.append((-len(model), abs((memory_gb or gpu.memory_gb) - gpu.memory_gb), gpu.name))
    return min(candidates)[2] if candidates else None


def refresh_local_host(ws: Workspace, host: HostRow | None = None) -> HostRow | None:
    """The 'local' host row (read unless given) brought in line with this machine's GPUs,
    so `train` on a GPU box launches one process per GPU and bills GPU-hours without a
    `hosts` command first."""
    if host is None:
        with ws.registry.reading() as conn:
            host = host_rows.by_name(conn, LOCAL)
    if host is None:
        return None
    return sync_local(ws, host, local_gpus(), [])


def sync_local(ws: Workspace, host: HostRow, gpus: list[dict], problems: list[str]) -> HostRow:
    """The local host row set to these GPUs (`local_gpus()`: nvidia-smi), when the catalog knows
    them; otherwise a line for `problems` and the row as it was."""
    gpu_type, count = "cpu", 1
    if gpus:
        types = {catalog_gpu_for(ws, g["name"], g["memory_gb"]) for g in gpus}
        if None in types or len(types) > 1:
            names = ", ".join(sorted({g["name"] for g in gpus}))
            problems.append(f"this machine's GPUs ({names}) are not one type of the GPU catalog ('brightrun gpus'); "
                            f"local jobs run as 1 x {host.gpu_type} (one process, billed at that rate)")
            return host
        gpu_type, count = types.pop(), len(gpus)
    if (host.gpu_type, host.gpus) == (gpu_type, count):
        return host
    with ws.registry.write() as tx:
        host_rows.update(tx, host.id, gpu_type=gpu_type, gpus=count)
    return host.replace(gpu_type=gpu_type, gpus=count)
