"""Running the trainer on SSH hosts: the system `ssh`/`rsync`, multiplexed, detached.

Everything goes through the system OpenSSH client as argument lists, so the user's
~/.ssh/config, agents and ProxyJump apply (or the file named by `ssh_config` in
config.toml). One ControlMaster per host keeps per-command latency low; it lives in
a private directory under the home (short path: unix sockets have a ~104 byte limit).

Remote commands are never built by string interpolation: each one is a fixed POSIX
`sh -c SCRIPT` with the variable parts passed as positional arguments, and the whole
argv is joined with `shlex.quote`, so host names, paths and values can never be run
as shell code on either side.

Remote layout, all below the host's workdir (relative paths are relative to the
remote home):

    <workdir>/code/<sha>/brightrun_cli/   the local package, shipped as is (PYTHONPATH)
    <workdir>/runs/<job_id>/              spec.json + split files in, trainer output out

A started trainer is the leader of its own session (setsid), so it survives the SSH
connection; its process group id is part of the handle. Trainer processes also carry
`BRIGHTRUN_REMOTE_JOB=<marker>` in their environment, which lets `stop` find workers
that torch's launcher puts in sessions of their own.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import stat
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

from brightrun_cli.errors import OperationError, UsageError
from brightrun_cli.runners.base import LaunchRequest, Runner, RunnerLost, RunnerUnreachable


if TYPE_CHECKING:
    from brightrun_cli.registry.rows import HostRow
    from brightrun_cli.workspace import Workspace

DEFAULT_PYTHON = "python3"
DEFAULT_WORKDIR = "brightrun"  # relative: below the remote home, i.e. ~/brightrun
CONNECT_TIMEOUT_S = 10
COMMAND_TIMEOUT_S = 60.0
CONTROL_PERSIST_S = 300  # idle master lifetime after its last client
STATUS_FRESH_S = 1.0  # how old a status seen by sync may be for poll to reuse it
WORKER_EXIT_GRACE_S = 30.0  # after rank 0 ends, how long the other nodes' processes get to end too
MASTER_RECHECK_S = 30.0  # how long a verified master is trusted without `ssh -O check`
SOCKET_PATH_MAX = 100  # sun_path is 104-108 bytes; ssh appends a temp suffix while binding
REMOTE_ENV_MARKER = "BRIGHTRUN_REMOTE_JOB"
# Files the trainer appends to and `sync` tails home, in this order.
TAILED_FILES = ("metrics.jsonl", "trainer.log", "launcher.log")
JOB_ID_RE = re.compile(r"^[0-9a-z]{26}$")
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
DEFAULT_MAIN_PORT_BASE = 29500


class SSHFailure(OperationError):
    """ssh itself failed (exit 255): not reachable, auth refused, host key problem.

    `kind` is one of unreachable | auth | host_key | host_key_changed | ssh.
    """

    def __init__(self, message: str, hint: str | None = None, *, kind: str = "ssh"):
        super().__init__(message, hint)
        self.kind = kind


def classify_ssh_error(host: "HostRow", stderr: str) -> SSHFailure:
    """One clear line for the ways a connection fails, from ssh's own stderr."""
    text = stderr.strip()
    detail = next((line.strip() for line in text.splitlines() if line.strip()), "ssh failed without a message")
    where = f"{host.ssh_host}:{host.ssh_port or 22}"
    if "REMOTE HOST IDENTIFICATION HAS CHANGED" in text or ("Host key for" in text and "has changed" in text):
        return SSHFailure(
            f"host '{host.name}' ({where}) presented a DIFFERENT host key than the one recorded in known_hosts",
            "this can be a man-in-the-middle; if the machine was really reinstalled, remove the old key with ssh-keygen -R and connect once with ssh",
            kind="host_key_changed",
        )
    if "Host key verification failed" in text or "No ED25519 host key is known" in text or "host key is known" in text:
        return SSHFailure(
            f"host key of '{host.name}' ({where}) is unknown",
            "connect once with ssh to verify and record it, or re-add the host with --accept-new-host-key to trust it on first contact",
            kind="host_key",
        )
    if "Permission denied" in text or "Too many authentication failures" in text:
        return SSHFailure(
            f"authentication refused by '{host.name}' ({where}): {detail}",
            "check the user name, --identity KEY or your ssh agent; 'ssh' must log in without a password prompt",
            kind="auth",
        )
    unreachable = ("Connection refused", "timed out", "No route to host", "Could not resolve hostname",
                   "Network is unreachable", "Connection closed", "Connection reset", "Broken pipe",
                   "kex_exchange_identification", "Name or service not known")
    if any(marker in text for marker in unreachable):
        return SSHFailure(
            f"host '{host.name}' ({where}) is unreachable: {detail}",
            "check that the machine is up, sshd listens there and no firewall is in the way",
            kind="unreachable",
        )
    return SSHFailure(f"ssh to '{host.name}' ({where}) failed: {detail}", "try 'brightrun hosts check " + host.name + "'")


def _sha256(text: str) -> str:
    """Hex SHA-256 of `text`. hashlib (OpenSSL) and tempfile are imported where used: every
    command that reads hosts imports this module, few of them connect anywhere."""
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()


def _control_dir(home: Path) -> Path:
    """Private directory for ControlMaster sockets, short enough for a unix socket path."""
    candidate = home / "ssh"
    if len(str(candidate)) + 1 + 3 + 20 + 25 > SOCKET_PATH_MAX or "'" in str(candidate) or " " in str(candidate):
        import tempfile

        digest = _sha256(str(home))[:10]
        candidate = Path(tempfile.gettempdir()) / f"brightrun-{os.getuid()}-{digest}"
    candidate.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = os.lstat(candidate)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        # A shared temp dir: someone else's directory or link must never hold our sockets.
        raise OperationError(f"{candidate} is not a directory owned by you", "remove it, or use a shorter --home path")
    os.chmod(candidate, 0o700)
    return candidate


def remote_python(host: "HostRow") -> str:
    return host.python or DEFAULT_PYTHON


def remote_workdir(host: "HostRow") -> str:
    return host.workdir or DEFAULT_WORKDIR


class Reconnect:
    """Reconnect-with-backoff bookkeeping of a remote runner (SSH hosts, a Slurm login node).

    Calling it with `call` runs `call()`. While the far side is down (`call` raised one of
    `transient`), it raises RunnerUnreachable without calling again before the next
    backoff slot (1, 2, 4 ... up to backoff_max_s seconds), and RunnerLost once the
    outage has lasted limit_s. `on_failure` runs after each failed call (SSH: check the
    ControlMaster again next time).
    """

    def __init__(self, what: str, *, limit_s: float, backoff_max_s: float,
                 transient: tuple[type[Exception], ...] = (), on_failure=None):
        self.what = what
        self.limit_s = limit_s
        self.backoff_max_s = backoff_max_s
        self.transient = (SSHFailure, *transient)
        self.on_failure = on_failure
        self._down_since: float | None = None
        self._failures = 0
        self._next_try = 0.0
        self._last_error = ""

    def __call__(self, call):
        now = time.monotonic()
        if self._down_since is not None and now < self._next_try:
            raise self._unreachable(self._last_error)
        try:
            result = call()
        except self.transient as exc:
            if self._down_since is None:
                self._down_since = now
            self._failures += 1
            self._next_try = now + min(self.backoff_max_s, 2 ** (self._failures - 1))
            self._last_error = getattr(exc, "message", str(exc))
            if self.on_failure is not None:
                self.on_failure()
            raise self._unreachable(self._last_error) from exc
        self._down_since = None
        self._failures = 0
        return result

    def _unreachable(self, why: str) -> RunnerUnreachable:
        down = time.monotonic() - (self._down_since or time.monotonic())
        if down >= self.limit_s:
            return RunnerLost(
                f"lost contact with {self.what} for {down:.0f} s ({why})",
                "the remote trainer may still be running; 'brightrun jobs resume' re-attaches once the host is back",
                down_for_s=down,
            )
        return RunnerUnreachable(f"no answer from {self.what} for {down:.0f} s ({why})", "reconnecting with backoff", down_for_s=down)


class SSHConnection:
    """How to reach one host: the ssh/rsync argv, the multiplexing master, remote scripts."""

    def __init__(self, ws: "Workspace", host: "HostRow"):
        self.ws = ws
        self.host = host
        identity = f"{host.ssh_user}@{host.ssh_host}:{host.ssh_port}:{host.identity_file}:{ws.config.ssh_config}"
        self.control_path = _control_dir(ws.home) / f"cm-{_sha256(identity)[:20]}"
        self._master_seen = 0.0  # monotonic time the master was last known to answer

    # -- argv ---------------------------------------------------------------------
    def ssh_options(self, *, master: bool = False) -> list[str]:
        """Options shared by ssh and rsync's ssh (no destination)."""
        h = self.host
        argv: list[str] = []
        if self.ws.config.ssh_config:
            argv += ["-F", str(Path(self.ws.config.ssh_config).expanduser())]
        argv += [
            "-o", "BatchMode=yes",  # never prompt: a supervisor has no terminal
            "-o", f"ConnectTimeout={CONNECT_TIMEOUT_S}",
            "-o", "ServerAliveInterval=5",
            "-o", "ServerAliveCountMax=3",
            "-o", "LogLevel=ERROR",
            "-o", f"ControlPath={self.control_path}",
        ]
        if master:
            argv += ["-o", "ControlMaster=yes", "-o", f"ControlPersist={CONTROL_PERSIST_S}"]
        else:
            # Use the master when it is there; without one ssh just connects directly.
            argv += ["-o", "ControlMaster=no"]
        if (h.options or {}).get("accept_new_host_key"):
            # Explicit user opt-in for first contact; a *changed* key is still refused.
            argv += ["-o", "StrictHostKeyChecking=accept-new"]
        if h.identity_file:
            argv += ["-i", h.identity_file, "-o", "IdentitiesOnly=yes"]
        if h.ssh_port:
            argv += ["-p", str(h.ssh_port)]
        if h.ssh_user:
            argv += ["-l", h.ssh_user]
        return argv

    def ssh_argv(self, remote_argv: list[str]) -> list[str]:
        """`ssh ... -- host 'word' 'word' ...`: the remote shell sees each word quoted."""
        return ["ssh", *self.ssh_options(), "--", self.host.ssh_host, shlex.join(remote_argv)]

    def script_argv(self, script: str, *args: str) -> list[str]:
        return self.ssh_argv(["sh", "-c", script, "sh", *args])

    # -- running ------------------------------------------------------------------
    def ensure_master(self, timeout: float = COMMAND_TIMEOUT_S) -> None:
        """Start the multiplexing master if none is listening. Raises SSHFailure."""
        now = time.monotonic()
        if now - self._master_seen < MASTER_RECHECK_S and self.control_path.exists():
            return  # checked moments ago; a failure in between resets this (forget_master)
        if self.control_path.exists():
            check = subprocess.run(
                ["ssh", *self.ssh_options(), "-O", "check", "--", self.host.ssh_host],
                capture_output=True, timeout=timeout,
            )
            if check.returncode == 0:
                self._master_seen = now
                return
            self.control_path.unlink(missing_ok=True)  # stale socket of a dead master
        # -f forks once authenticated; the forked master keeps stderr open, so it goes
        # to a file (a pipe would never reach EOF) and is read back on failure.
        import tempfile

        with tempfile.TemporaryFile() as err:
            try:
                proc = subprocess.run(
                    ["ssh", *self.ssh_options(master=True), "-f", "-N", "--", self.host.ssh_host],
                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err, timeout=timeout,
                )
            except subprocess.TimeoutExpired:
                raise SSHFailure(
                    f"host '{self.host.name}' ({self.host.ssh_host}) did not answer within {timeout:.0f} s",
                    "check that the machine is up and reachable", kind="unreachable",
                ) from None
            if proc.returncode != 0:
                err.seek(0)
                raise classify_ssh_error(self.host, err.read().decode(errors="replace"))
        self._master_seen = time.monotonic()

    def forget_master(self) -> None:
        """After a failed command: check (and if need be restart) the master next time."""
        self._master_seen = 0.0

    def close_master(self) -> None:
        if self.control_path.exists():
            subprocess.run(["ssh", *self.ssh_options(), "-O", "exit", "--", self.host.ssh_host],
                           capture_output=True, timeout=30)
            self.control_path.unlink(missing_ok=True)

    def run(self, argv: list[str], *, timeout: float = COMMAND_TIMEOUT_S, check: bool = True) -> subprocess.CompletedProcess:
        """Run an ssh/rsync argv; exit 255 (ssh's own failure) raises SSHFailure."""
        try:
            proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            self.forget_master()
            raise SSHFailure(
                f"host '{self.host.name}' did not answer within {timeout:.0f} s", "check the connection", kind="unreachable"
            ) from None
        stderr = proc.stderr.decode(errors="replace")
        # rsync reports a broken ssh as 255 or as its own protocol/IO errors (12, 35).
        if proc.returncode == 255 or (argv[0] == "rsync" and proc.returncode in (12, 35) and "ssh" in stderr.lower()):
            self.forget_master()
            raise classify_ssh_error(self.host, stderr)
        if check and proc.returncode != 0:
            first = next((line for line in stderr.splitlines() if line.strip()), f"exit status {proc.returncode}")
            raise OperationError(f"remote command on '{self.host.name}' failed: {first}", "see 'brightrun hosts check " + self.host.name + "'")
        return proc

    def run_script(self, script: str, *args: str, timeout: float = COMMAND_TIMEOUT_S, check: bool = True) -> subprocess.CompletedProcess:
        self.ensure_master(timeout)
        return self.run(self.script_argv(script, *args), timeout=timeout, check=check)

    def rsync_argv(self, sources: list[str], dest: str, *, to_remote: bool, extra: tuple[str, ...] = ()) -> list[str]:
        """rsync over this connection. Remote paths are ours (validated workdir + ids)."""
        rsh = shlex.join(["ssh", *self.ssh_options()])
        address = self.host.ssh_host or ""
        prefix = f"[{address}]:" if ":" in address else f"{address}:"  # rsync's host:path needs an IPv6 address in brackets
        if to_remote:
            srcs, dst = sources, prefix + dest
        else:
            srcs, dst = [prefix + s for s in sources], dest
        return ["rsync", "-a", "--timeout=60", "-e", rsh, *extra, "--", *srcs, dst]

    def rsync(self, sources: list[str], dest: str, *, to_remote: bool, extra: tuple[str, ...] = (), timeout: float = 600) -> None:
        self.ensure_master()
        self.run(self.rsync_argv(sources, dest, to_remote=to_remote, extra=extra), timeout=timeout)


# -- remote scripts (fixed text; every variable part is a positional argument) ----------

# $1 python. Expands a leading ~/ (a quoted word would not be).
_PY = 'py=$1; case $py in "~/"*) py="$HOME/${py#\\~/}";; esac; '

SHIP_CHECK = r"""
[ -f "$1/.complete" ] && echo present || { mkdir -p "$1" && echo absent; }
"""

SHIP_DONE = r"""
: > "$1/.complete"
"""

# $1 python, $2 preferred port. Prints the address this host was reached on (from
# SSH_CONNECTION: the other nodes are told to rendezvous there), then a free port.
RENDEZVOUS = _PY + r"""
set -- "$py" "$2" $SSH_CONNECTION
echo "${5:-}"
"$1" -c 'import socket, sys
p = int(sys.argv[1])
s = socket.socket()
try:
    s.bind(("", p))
except OSError:
    s = socket.socket(); s.bind(("", 0))
print(s.getsockname()[1])' "$2"
"""

# $1 python, $2 run dir, $3 code dir, $4 marker, then the trainer argv. The setsid'd
# wrapper is the session and process-group leader; its TERM trap lets it outlive a
# TERM long enough to record the trainer's exit status, and a KILL takes it down too.
# (dash's kill takes no "--": negative pids are process groups as they stand.)
START = _PY + r"""
run=$2; code=$3; marker=$4; shift 4
code=$(cd "$code" && pwd) || exit 3
cd "$run" || exit 3
rm -f exit_code exit_code.tmp trainer.pid
PYTHONPATH="$code${PYTHONPATH:+:$PYTHONPATH}"; export PYTHONPATH
BRIGHTRUN_REMOTE_JOB=$marker; export BRIGHTRUN_REMOTE_JOB
setsid sh -c 'echo $$ > trainer.pid; trap ":" TERM INT; "$@" </dev/null >>launcher.log 2>&1; echo $? > exit_code.tmp; mv exit_code.tmp exit_code' sh "$@" </dev/null >/dev/null 2>&1 &
i=0
while [ ! -s trainer.pid ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i + 1)); done
cat trainer.pid
"""

# The end of a probe script, run in the run dir: for each (file, offset) pair left in
# "$@", a line "<name> <n>" and exactly n bytes of the file from that offset
# (`tail_args` builds the pairs, `read_tail` splits the answer).
TAIL = r"""
while [ $# -ge 2 ]; do
  f=$1; off=$2; shift 2
  size=0; [ -f "$f" ] && size=$(wc -c < "$f")
  n=0; [ "$size" -gt "$off" ] && n=$((size - off))
  echo "$f $n"
  if [ "$n" -gt 0 ]; then tail -c +"$((off + 1))" "$f" | head -c "$n"; fi
done
"""

# $1 run dir, then (file, offset) pairs. First line: exit N | running | gone | missing;
# then the TAIL chunks.
PROBE = r"""
run=$1; shift
cd "$run" 2>/dev/null || { echo missing; exit 0; }
pg=$(cat trainer.pid 2>/dev/null)
if [ -f exit_code ]; then echo "exit $(cat exit_code)"
elif [ -n "$pg" ] && kill -0 "-$pg" 2>/dev/null; then echo running
else echo gone; fi
""" + TAIL


def tail_args(run_dir: Path, files: tuple[str, ...]) -> list[str]:
    """(file, offset) words for TAIL: the offset is the local copy's size, so a reconnect
    neither loses nor repeats a line."""
    args: list[str] = []
    for name in files:
        path = run_dir / name
        args += [name, str(path.stat().st_size if path.exists() else 0)]
    return args


def read_tail(rest: bytes) -> dict[str, bytes]:
    """TAIL's output -> {file name: new bytes}."""
    chunks: dict[str, bytes] = {}
    pos = 0
    while pos < len(rest):
        nl = rest.index(b"\n", pos)
        name, size = rest[pos:nl].decode().rsplit(" ", 1)
        start = nl + 1
        chunks[name] = rest[start:start + int(size)]
        pos = start + int(size)
    return chunks


def append_tail(run_dir: Path, chunks: dict[str, bytes], *, final: bool) -> None:
    """Append fetched bytes to the local copies. Only whole lines, unless final: the
    local size is the next offset, so a half line is fetched again, never twice."""
    run_dir.mkdir(parents=True, exist_ok=True)
    for name, data in chunks.items():
        if not final:
            data = data[: data.rfind(b"\n") + 1]
        if data:
            with open(run_dir / name, "ab") as fh:
                fh.write(data)
                fh.flush()

# $1 run dir, $2 grace seconds, $3 marker. Prints "gone" when nothing of the job is left.
STOP = r"""
run=$1; grace=$2; marker=$3
pg=$(cat "$run/trainer.pid" 2>/dev/null)
strays() {
  for d in /proc/[0-9]*; do
    tr '\0' '\n' 2>/dev/null < "$d/environ" | grep -qxF "BRIGHTRUN_REMOTE_JOB=$marker" && echo "${d#/proc/}"
  done
}
alive() { { [ -n "$pg" ] && kill -0 "-$pg" 2>/dev/null; } || [ -n "$(strays)" ]; }
signal_all() {
  [ -n "$pg" ] && kill "-$1" "-$pg" 2>/dev/null
  for p in $(strays); do kill "-$1" "$p" 2>/dev/null; done
}
signal_all TERM
end=$(( $(date +%s) + grace ))
while alive && [ "$(date +%s)" -lt "$end" ]; do sleep 0.2; done
if alive; then signal_all KILL; fi
i=0
while alive && [ $i -lt 100 ]; do sleep 0.1; signal_all KILL; i=$((i + 1)); done
if alive; then echo left; else echo gone; fi
"""


def package_dir() -> Path:
    import brightrun_cli

    return Path(brightrun_cli.__file__).resolve().parent


def code_version(root: Path | None = None) -> str:
    """Content hash of the package source: the remote copy lives under code/<hash>."""
    import hashlib

    root = root or package_dir()
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts and path.suffix not in (".pyc", ".pyo"):
            digest.update(str(path.relative_to(root)).encode() + b"\0")
            digest.update(path.read_bytes())
            digest.update(b"\0")
    return digest.hexdigest()[:16]


# $1 model directory. Its config.json (at most 1 MiB), or exit 4 when there is none.
MODEL_CONFIG = r"""
[ -f "$1/config.json" ] || exit 4
head -c 1048576 -- "$1/config.json"
"""


def remote_model_config(ws: "Workspace", host: "HostRow", directory: str) -> dict:
    """The config.json of a base model directory on an SSH host: the job trains what is
    there, whatever a local directory of the same name may hold."""
    proc = SSHConnection(ws, host).run_script(MODEL_CONFIG, directory, check=False)
    if proc.returncode == 4:
        raise UsageError(f"base model directory '{directory}' on host '{host.name}' has no config.json",
                         "pass a directory saved with save_pretrained on that host, a Hugging Face id or builtin:tiny")
    if proc.returncode != 0:
        first = next((l for l in proc.stderr.decode(errors="replace").splitlines() if l.strip()), f"exit status {proc.returncode}")
        raise OperationError(f"cannot read '{directory}/config.json' on host '{host.name}': {first}",
                             f"see 'brightrun hosts check {host.name}'")
    try:
        config = json.loads(proc.stdout)
    except ValueError as exc:
        raise UsageError(f"'{directory}/config.json' on host '{host.name}' is not JSON ({exc})",
                         "pass a directory saved with save_pretrained") from None
    if not isinstance(config, dict):
        raise UsageError(f"'{directory}/config.json' on host '{host.name}' is not a JSON object", "pass a directory saved with save_pretrained")
    return config


def ship_code(conn: SSHConnection) -> str:
    """Make the remote trainer code identical to the local one; return its remote dir."""
    version = code_version()
    remote = f"{remote_workdir(conn.host)}/code/{version}"
    state = conn.run_script(SHIP_CHECK, remote).stdout.decode().strip()
    if state != "present":
        conn.rsync([str(package_dir())], remote + "/", to_remote=True,
                   extra=("--delete", "--exclude", "__pycache__", "--exclude", "*.pyc"))
        conn.run_script(SHIP_DONE, remote)
    return remote


CODE_FILE = "code_version"  # in a job's local run dir: the <sha16> of the shipped code its trainer runs


def record_code(run_dir: Path, remote_code_dir: str) -> None:
    """Remember in the job's local run dir which shipped code (`<workdir>/code/<sha16>`) its
    trainer runs: `brightrun prune` keeps that code while the job is live."""
    (run_dir / CODE_FILE).write_text(remote_code_dir.rstrip("/").rsplit("/", 1)[1] + "\n", encoding="utf-8")


# What `collect` brings home besides the tailed logs: the adapter, the outcome, and what the
# trainer's trackers wrote into the run dir (their record, TensorBoard's event files, the
# MLflow store of a job without a tracking server, W&B's offline run files).
OUTPUTS = ("final", "result.json", "trackers.json", "tensorboard", "mlflow", "wandb")


def fetch_outputs(conn: "SSHConnection", remote_run: str, local_run: Path) -> None:
    """Bring the trainer's OUTPUTS (whichever exist) into the local run dir."""
    present = conn.run_script('cd "$1" && shift && for f in "$@"; do [ -e "$f" ] && echo "$f"; done; true',
                              remote_run, *OUTPUTS).stdout.decode().split()
    if present:
        conn.rsync([f"{remote_run}/./{p}" for p in present], str(local_run) + "/", to_remote=False,
                   extra=("--relative", "--delete"))


def run_inputs(request: LaunchRequest) -> list[str]:
    """spec.json and the files it names (splits, accelerate config), as paths relative to
    the run dir: what a remote runner ships."""
    spec = json.loads(request.spec_path.read_text(encoding="utf-8"))
    names = [request.spec_path.name]
    for key in ("train_file", "validation_file", "accelerate_config"):
        value = spec.get(key)
        if value:
            if Path(value).is_absolute() or ".." in Path(value).parts:
                raise UsageError(
                    f"spec {key} '{value}' is outside the run directory",
                    "a remote run needs a self-contained run dir (split files inside it)",
                )
            names.append(value)
    # A base model given as a directory is the remote host's path (shared storage or
    # a copy there); the trainer reports a missing one in result.json.
    return names


class _Handle(msgspec.Struct):
    job_id: str
    marker: str
    pgids: list[tuple[str, int]]  # (host name, process group id), rank 0 first

    def __str__(self) -> str:
        return f"ssh:{self.job_id}:{self.marker.rsplit(':', 1)[1]}:" + ",".join(f"{n}={p}" for n, p in self.pgids)

    @classmethod
    def parse(cls, text: str) -> "_Handle":
        try:
            kind, job_id, token, rest = text.split(":", 3)
            pgids = [(name, int(pg)) for name, pg in (item.split("=", 1) for item in rest.split(","))]
        except ValueError:
            raise UsageError(f"not an SSH run handle: '{text}'", "the job was not started by the SSH runner") from None
        if kind != "ssh" or not JOB_ID_RE.match(job_id):
            raise UsageError(f"not an SSH run handle: '{text}'", "the job was not started by the SSH runner")
        return cls(job_id, f"{job_id}:{token}", pgids)


class SSHRunner(Runner):
    """The trainer on one SSH host, or one accelerate process set per host (multi-node).

    hosts[0] is machine rank 0: the rendezvous runs there and its run directory is the
    one mirrored home (metrics, logs, final adapter, result.json).
    """

    def __init__(self, ws: "Workspace", hosts: list["HostRow"], *, reconnect_limit_s: float = 600.0,
                 backoff_max_s: float = 30.0):
        if not hosts:
            raise UsageError("no SSH host given", "pass --host NAME (see 'brightrun hosts list')")
        for h in hosts:
            if h.kind != "ssh" or not h.ssh_host:
                raise UsageError(f"host '{h.name}' is not an SSH host", "use the local runner for it")
        if len({h.name for h in hosts}) != len(hosts):
            raise UsageError("a host is named twice in --hosts", "name each machine once")
        self.ws = ws
        self.hosts = hosts
        self.conns = {h.name: SSHConnection(ws, h) for h in hosts}
        self._guarded = Reconnect("the SSH host", limit_s=reconnect_limit_s, backoff_max_s=backoff_max_s,
                                  on_failure=self._forget_masters)
        # Rank 0's status as seen by the last sync (same round trip as the new lines), so
        # the supervisor's sync-then-poll costs one SSH round trip, not two.
        self._rank0_status: dict[str, tuple[float, str]] = {}
        self._rank0_ended: dict[str, float] = {}  # handle -> when rank 0 was first seen ended

    # -- paths ------------------------------------------------------------------------
    def _remote_run_dir(self, host: "HostRow", job_id: str) -> str:
        if not JOB_ID_RE.match(job_id):
            raise UsageError(f"invalid job id '{job_id}'", "job ids are 26 lowercase letters and digits")
        return f"{remote_workdir(host)}/runs/{job_id}"

    def _main_port(self, job_id: str) -> int:
        return DEFAULT_MAIN_PORT_BASE + int(_sha256(job_id), 16) % 2000

    def _trainer_argv(self, request: LaunchRequest, rank: int, rendezvous: tuple[str, int]) -> list[str]:
        from brightrun_cli.runners.accelerate import trainer_command

        host = self.hosts[rank]
        multi = len(self.hosts) > 1
        argv, launch_env = trainer_command(
            "spec.json",
            num_processes=request.num_processes,
            num_machines=len(self.hosts),
            machine_rank=rank,
            main_process_ip=rendezvous[0] if multi else None,
            main_process_port=rendezvous[1] if multi else None,
            python=remote_python(host),
            # CPU DDP (several processes or machines) must leave cpu unset: gloo workers.
            cpu=True if host.gpu_type == "cpu" and not multi and request.num_processes == 1 else None,
            config_file=request.accelerate_config,  # shipped next to spec.json; the trainer runs in that dir
            distributed_type=request.distributed_type,
        )
        env = {**launch_env, **request.env}
        if host.gpu_type == "cpu":
            # Without it accelerate's state falls back to a non-distributed CPU run in each
            # process that torchrun starts (DistributedType.NO), instead of gloo DDP.
            env.setdefault("ACCELERATE_USE_CPU", "true")
        bad = [k for k in env if not ENV_NAME_RE.match(k)]
        if bad:
            raise UsageError(f"invalid environment variable name {bad[0]!r}", "use letters, digits and _")
        return (["env", *(f"{k}={v}" for k, v in sorted(env.items()))] if env else []) + argv

    def _start_argv(self, request: LaunchRequest, rank: int, rendezvous: tuple[str, int], code_dir: str, marker: str) -> list[str]:
        host = self.hosts[rank]
        conn = self.conns[host.name]
        return conn.script_argv(
            START, remote_python(host), self._remote_run_dir(host, request.job_id), code_dir, marker,
            *self._trainer_argv(request, rank, rendezvous),
        )

    # -- Runner -------------------------------------------------------------------------
    def launch_argv(self, request: LaunchRequest) -> list[str]:
        """The ssh command that starts rank 0 (other ranks differ only in host and rank)."""
        code_dir = f"{remote_workdir(self.hosts[0])}/code/{code_version()}"
        rendezvous = (self.hosts[0].ssh_host, self._main_port(request.job_id))
        return self._start_argv(request, 0, rendezvous, code_dir, f"{request.job_id}:<token>")

    def start(self, request: LaunchRequest) -> str:
        inputs = run_inputs(request)
        import secrets  # secrets and logging are imported where used: every command that reads hosts imports this module

        marker = f"{request.job_id}:{secrets.token_hex(4)}"
        code_dirs: dict[str, str] = {}
        pgids: list[tuple[str, int]] = []
        host = self.hosts[0]
        try:
            for host in self.hosts:
                conn = self.conns[host.name]
                code_dirs[host.name] = ship_code(conn)
                remote_run = self._remote_run_dir(host, request.job_id)
                conn.run_script('mkdir -p "$1"', remote_run)
                # "/./" anchors --relative, so a split file in a subdirectory keeps its place.
                conn.rsync([f"{request.run_dir}/./{name}" for name in inputs], remote_run + "/", to_remote=True,
                           extra=("--relative",))
            host = self.hosts[0]
            record_code(request.run_dir, code_dirs[host.name])
            rendezvous = (host.ssh_host, self._main_port(request.job_id))
            if len(self.hosts) > 1:
                out = self.conns[host.name].run_script(RENDEZVOUS, remote_python(host), str(rendezvous[1])).stdout.decode().split()
                rendezvous = (out[0], int(out[1])) if len(out) == 2 else (host.ssh_host, int(out[-1]))
            for rank, host in enumerate(self.hosts):
                proc = self.conns[host.name].run(self._start_argv(request, rank, rendezvous, code_dirs[host.name], marker))
                text = proc.stdout.decode().strip()
                if not text.isdigit():
                    raise OperationError(f"the trainer did not start on '{host.name}'",
                                         f"check the host with 'brightrun hosts check {host.name}'")
                pgids.append((host.name, int(text)))
        except BaseException as exc:
            if pgids:  # no half-started multi-node job: stop the ranks already running
                try:
                    self.stop(str(_Handle(request.job_id, marker, pgids)), grace_s=5)
                except OperationError:
                    pass
            if isinstance(exc, SSHFailure):
                raise OperationError(f"cannot start the trainer on '{host.name}': {exc.message}", exc.hint) from exc
            raise
        return str(_Handle(request.job_id, marker, pgids))

    def _forget_masters(self) -> None:
        for conn in self.conns.values():
            conn.forget_master()

    # -- following ----------------------------------------------------------------------------
    def _host(self, name: str) -> "HostRow":
        for host in self.hosts:
            if host.name == name:
                return host
        raise UsageError(f"the run was started on host '{name}', which this job no longer lists", "add the host back with 'brightrun hosts add'")

    def _probe(self, handle: _Handle, rank: int, files: tuple[str, ...]) -> tuple[str, dict[str, bytes]]:
        name = handle.pgids[rank][0]
        host = self._host(name)
        conn = self.conns[name]
        args = tail_args(self.local_run_dir(handle.job_id), files)
        out = conn.run_script(PROBE, self._remote_run_dir(host, handle.job_id), *args).stdout
        status, _, rest = out.partition(b"\n")
        return status.decode().strip(), read_tail(rest)

    def local_run_dir(self, job_id: str) -> Path:
        return self.ws.runs_dir / job_id

    def _append(self, job_id: str, chunks: dict[str, bytes], *, final: bool) -> None:
        append_tail(self.local_run_dir(job_id), chunks, final=final)

    @staticmethod
    def _status_code(status: str) -> int | None:
        if status == "running":
            return None
        if status.startswith("exit "):
            return int(status.split()[1])
        return 1  # gone without recording a status (killed, host rebooted) or never there

    def poll(self, handle: str) -> int | None:
        h = _Handle.parse(handle)

        def status(rank: int) -> str:
            seen = self._rank0_status.pop(handle, None) if rank == 0 else None
            if seen is not None and time.monotonic() - seen[0] < STATUS_FRESH_S:
                return seen[1]
            return self._probe(h, rank, ())[0]

        def call() -> int | None:
            codes = [self._status_code(status(rank)) for rank in range(len(h.pgids))]
            if codes[0] is not None:  # rank 0's outputs are the job's; the workers end with it
                ended = self._rank0_ended.setdefault(handle, time.monotonic())
                if None in codes[1:]:
                    if time.monotonic() - ended < WORKER_EXIT_GRACE_S:
                        return None  # still tearing down: the job ends when its last process does
                    import logging

                    logging.getLogger("brightrun.runner.ssh").warning("workers of %s still running %.0f s after rank 0 ended; stopping them", h.job_id, WORKER_EXIT_GRACE_S)
                    self.stop(handle)
                self._rank0_ended.pop(handle, None)
                return codes[0]
            failed = [c for c in codes[1:] if c not in (None, 0)]
            return failed[0] if failed else None  # a dead worker node: rank 0 cannot finish

        return self._guarded(call)

    def sync(self, handle: str) -> None:
        h = _Handle.parse(handle)

        def call() -> None:
            status, chunks = self._probe(h, 0, TAILED_FILES)
            self._append(h.job_id, chunks, final=False)
            self._rank0_status[handle] = (time.monotonic(), status)

        self._guarded(call)

    def collect(self, handle: str) -> None:
        h = _Handle.parse(handle)
        name = h.pgids[0][0]
        host = self._host(name)
        conn = self.conns[name]

        def call() -> None:
            _, chunks = self._probe(h, 0, TAILED_FILES)
            self._append(h.job_id, chunks, final=True)
            fetch_outputs(conn, self._remote_run_dir(host, h.job_id), self.local_run_dir(h.job_id))

        self._guarded(call)

    def stop(self, handle: str, grace_s: float = 30.0) -> None:
        h = _Handle.parse(handle)

        def call() -> list[str]:
            left = []
            for name, _pg in h.pgids:
                host = self._host(name)
                out = self.conns[name].run_script(
                    STOP, self._remote_run_dir(host, h.job_id), str(int(grace_s)), h.marker, timeout=grace_s + 60
                ).stdout.decode().strip()
                if out != "gone":
                    left.append(name)
            return left

        left = self._guarded(call)
        if left:
            raise OperationError(f"trainer processes survived KILL on {', '.join(left)}", "check the host by hand")
