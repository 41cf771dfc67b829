"""Running the trainer as a Slurm job: sbatch on a login node, Slurm's own queue and states.

The login node is this machine (`--slurm local`: brightrun runs there) or is reached
over SSH with the SSH runner's multiplexed connection. Either way every command is a
fixed `sh -c SCRIPT` with its variable parts as positional arguments, run in the login
home directory. The workdir is on the filesystem the compute nodes share; the layout
below it is the SSH runner's:

    <workdir>/code/<sha16>/brightrun_cli/   the local package, shipped by content hash
    <workdir>/runs/<job_id>/                spec.json ("resume": true), split files, sbatch.sh in;
                                            launcher.log (the job's output), trainer output,
                                            exit_code, term_time_left, stop_requested (runners/slurm_batch.py)

A handle is `slurm:<Slurm job id>:<job_id>`: any brightrun process can follow, stop or
re-attach to the job from it. What Slurm says about the job comes from
`scontrol show job` (one record with state, reason, exit code, restarts and nodes), and,
once the controller has forgotten the job (MinJobAge), from `sacct` (slurmdbd) or
`sacct -c` (jobcomp/filetxt); neither is required. Slurm is asked at most every
`state_interval_s` (10 s) while the job is queued or running, every second once the
trainer has ended or once output appears while Slurm still said queued (it has started);
the output files are tailed on every `sync`.

`state(handle)` maps Slurm's state to brightrun's (`STATUS_OF`): PENDING and a requeued
job (REQUEUED, REQUEUE_HOLD; a requeued preemption shows as PENDING again) are
`queued`, with Slurm's reason (Priority, Resources, BeginTime, ...); CONFIGURING,
RUNNING, COMPLETING, SUSPENDED are `running`; COMPLETED is `completed`; CANCELLED is
`cancelled`; FAILED, TIMEOUT ('time limit'), NODE_FAIL ('node failure'),
OUT_OF_MEMORY ('out of memory'), PREEMPTED without requeue ('preempted'), BOOT_FAIL and
DEADLINE are `failed`. A FAILED job whose trainer stopped (exit 75) on the time-limit
warning is failed with reason 'time limit' too.
"""

from __future__ import annotations

import json
import re
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from brightrun_cli.errors import OperationError, UsageError
from brightrun_cli.runners.base import LaunchRequest, Runner
from brightrun_cli.runners.slurm_batch import (
    SCRIPT_NAME,
    SIGNAL_SLACK_S,
    SlurmSettings,
    batch_script,
    sbatch_argv,
    slurm_seconds,
)
from brightrun_cli.runners.ssh import (
    COMMAND_TIMEOUT_S,
    JOB_ID_RE,
    TAIL,
    TAILED_FILES,
    Reconnect,
    SSHConnection,
    SSHFailure,
    append_tail,
    code_version,
    fetch_outputs,
    read_tail,
    record_code,
    remote_python,
    remote_workdir,
    run_inputs,
    ship_code,
    tail_args,
)

if TYPE_CHECKING:
    from brightrun_cli.registry.rows import HostRow
    from brightrun_cli.workspace import Workspace

STATE_INTERVAL_S = 10.0  # how often Slurm's controller is asked about a queued or running job
ENDING_INTERVAL_S = 1.0  # ... once the trainer has written its exit status, or output while Slurm said queued
FILES_FRESH_S = 1.0  # how old a probe by sync may be for poll/state to reuse it
STOPPED_EXIT = 75  # the trainer's exit status after saving a checkpoint on SIGTERM

QUEUED, RUNNING, COMPLETED, FAILED, CANCELLED = "queued", "running", "completed", "failed", "cancelled"
ENDED = (COMPLETED, FAILED, CANCELLED)
# Slurm's job state -> (brightrun status, reason kept when the state itself is the reason).
STATUS_OF: dict[str, tuple[str, str | None]] = {
    "PENDING": (QUEUED, None),
    "REQUEUED": (QUEUED, "requeued"),
    "REQUEUE_FED": (QUEUED, "requeued"),
    "REQUEUE_HOLD": (QUEUED, "requeued and held: release it with 'scontrol release'"),
    "SPECIAL_EXIT": (QUEUED, "held after a special exit: release it with 'scontrol release'"),
    "RESV_DEL_HOLD": (QUEUED, "held: its reservation was deleted"),
    "CONFIGURING": (RUNNING, None),
    "RUNNING": (RUNNING, None),
    "COMPLETING": (RUNNING, None),
    "SUSPENDED": (RUNNING, "suspended"),
    "STOPPED": (RUNNING, "stopped"),
    "SIGNALING": (RUNNING, None),
    "STAGE_OUT": (RUNNING, None),
    "RESIZING": (RUNNING, None),
    "COMPLETED": (COMPLETED, None),
    "FAILED": (FAILED, None),
    "CANCELLED": (CANCELLED, "cancelled"),
    "REVOKED": (CANCELLED, "revoked (it ran on another cluster of the federation)"),
    "TIMEOUT": (FAILED, "time limit"),
    "NODE_FAIL": (FAILED, "node failure"),
    "OUT_OF_MEMORY": (FAILED, "out of memory"),
    "PREEMPTED": (FAILED, "preempted"),  # final only without requeue; a requeued one is PENDING again
    "BOOT_FAIL": (FAILED, "node boot failure"),
    "DEADLINE": (FAILED, "deadline"),
}
UNINFORMATIVE_REASONS = ("", "None", "NonZeroExitCode", "(null)")


class SlurmUnavailable(OperationError):
    """Slurm's controller did not answer (down, restarting, overloaded): try again later."""


class LocalLogin:
    """`--slurm local`: brightrun runs on the login node itself. The same calls as
    SSHConnection, run here in the home directory (where an SSH session starts), so a
    relative workdir means the same in both cases."""

    def __init__(self, host: "HostRow"):
        self.host = host

    def ssh_argv(self, remote_argv: list[str]) -> list[str]:
        """The argv that runs `remote_argv` on the login node: here, itself."""
        return list(remote_argv)

    def script_argv(self, script: str, *args: str) -> list[str]:
        return ["sh", "-c", script, "sh", *args]

    def ensure_master(self, timeout: float = COMMAND_TIMEOUT_S) -> None:
        """Nothing to connect to."""

    def run(self, argv: list[str], *, timeout: float = COMMAND_TIMEOUT_S, check: bool = True) -> subprocess.CompletedProcess:
        try:
            proc = subprocess.run(argv, cwd=Path.home(), stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise SlurmUnavailable(f"'{argv[0]}' did not finish within {timeout:.0f} s", "is Slurm's controller answering?") from None
        except OSError as exc:
            raise OperationError(f"cannot run '{argv[0]}': {exc.strerror}", "install it on this login node") from None
        if check and proc.returncode != 0:
            stderr = proc.stderr.decode(errors="replace")
            first = next((line for line in stderr.splitlines() if line.strip()), f"exit status {proc.returncode}")
            raise OperationError(f"command on '{self.host.name}' failed: {first}", f"see 'brightrun hosts check {self.host.name}'")
        return proc

    def run_script(self, script: str, *args: str, timeout: float = COMMAND_TIMEOUT_S, check: bool = True) -> subprocess.CompletedProcess:
        return self.run(self.script_argv(script, *args), timeout=timeout, check=check)

    def rsync(self, sources: list[str], dest: str, *, to_remote: bool, extra: tuple[str, ...] = (), timeout: float = 600) -> None:
        self.run(["rsync", "-a", *extra, "--", *sources, dest], timeout=timeout)


def login_for(ws: "Workspace", host: "HostRow") -> "SSHConnection | LocalLogin":
    """How to run commands on a slurm host's login node: over SSH when it has an address."""
    return SSHConnection(ws, host) if host.ssh_host else LocalLogin(host)


# -- what Slurm says ------------------------------------------------------------------------

def expand_hostlist(text: str | None) -> list[str]:
    """Slurm's compressed node list -> host names: 'gpu[01-02,07],login1' ->
    ['gpu01', 'gpu02', 'gpu07', 'login1']. Empty for '', '(null)', 'None assigned'."""
    if not text or text in ("(null)", "None assigned", "None"):
        return []
    items, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += ch == "["
        depth -= ch == "]"
        if ch == "," and depth == 0:
            items.append(text[start:i])
            start = i + 1
    items.append(text[start:])
    return [name for item in items if item for name in _expand_one(item)]


def _expand_one(item: str) -> list[str]:
    m = re.match(r"^([^\[]*)\[([^\]]+)\](.*)$", item)
    if not m:
        return [item]
    prefix, ranges, rest = m.groups()
    tails = _expand_one(rest) if rest else [""]
    names = []
    for part in ranges.split(","):
        low, _, high = part.partition("-")
        for n in range(int(low), int(high or low) + 1):
            names += [f"{prefix}{n:0{len(low)}d}{tail}" for tail in tails]
    return names


@dataclass(frozen=True)
class SlurmState:
    """A Slurm job as brightrun sees it (`SlurmRunner.state`)."""

    slurm_job_id: str
    state: str  # Slurm's word: PENDING, RUNNING, COMPLETED, TIMEOUT, ...; UNKNOWN when no source knows the job
    status: str  # brightrun's: queued | running | completed | failed | cancelled
    reason: str | None = None  # why it waits or how it ended: 'Priority', 'Resources', 'BeginTime', 'time limit', ...
    exit_code: int | None = None  # the trainer's exit status when it recorded one, else Slurm's (-N: signal N)
    nodes: list[str] = field(default_factory=list)
    restarts: int = 0  # how often Slurm requeued it
    source: str = "scontrol"  # scontrol | sacct | jobcomp | files (where the state was read)

    @property
    def ended(self) -> bool:
        return self.status in ENDED

    @property
    def poll_code(self) -> int | None:
        """`Runner.poll`'s answer: None while queued or running, 0 once completed, and a
        non-zero status for any other end."""
        if not self.ended:
            return None
        if self.status == COMPLETED:
            return 0
        return self.exit_code or 1


@dataclass
class _Record:
    """Slurm's answer about one job, from whichever source knew it."""

    source: str
    state: str
    reason: str = ""
    exit_code: int | None = None  # the job's (batch script's) exit status, -signal
    nodes: str = ""
    restarts: int = 0


def _slurm_exit(text: str) -> int | None:
    """Slurm's ExitCode 'status:signal' -> status, or -signal when a signal ended it."""
    m = re.match(r"^(\d+):(\d+)$", text or "")
    if not m:
        return None
    status, signal = int(m.group(1)), int(m.group(2))
    return -signal if signal and not status else status


def parse_scontrol(line: str) -> _Record:
    """One `scontrol show job -o` line."""
    fields = dict(re.findall(r"(?:^|\s)([A-Za-z/:]+)=(\S*)", line))
    return _Record("scontrol", fields.get("JobState", "UNKNOWN"), fields.get("Reason", ""),
                   _slurm_exit(fields.get("ExitCode", "")), fields.get("NodeList", ""),
                   int(fields.get("Restarts", "0") or 0))


def parse_sacct(line: str, source: str) -> _Record:
    """One `sacct -n -P -o State,ExitCode,NodeList` line ('CANCELLED by 0|0:15|n1')."""
    state, exit_code, nodes = (line.split("|") + ["", ""])[:3]
    return _Record(source, (state.split() or ["UNKNOWN"])[0], "", _slurm_exit(exit_code), nodes)


def _near_time_limit(time_left: str, lead_s: int) -> bool:
    """Whether the TERM the batch shell got (time left then: squeue's %L) was the
    warning --signal=B:TERM sends `lead_s` before the limit."""
    try:
        left = slurm_seconds(time_left) if time_left else None
    except ValueError:
        return False
    return left is not None and left <= lead_s + SIGNAL_SLACK_S


def map_state(slurm_job_id: str, record: _Record | None, *, trainer_exit: int | None, time_left: str = "",
              stop_requested: bool = False, lead_s: int = 300) -> SlurmState:
    """Slurm's record plus the run dir's files -> SlurmState (module docstring: the mapping).

    trainer_exit is the batch script's `exit_code` file, time_left its `term_time_left`,
    stop_requested whether brightrun asked for the stop."""
    if record is None:
        # Forgotten by the controller and no accounting: the trainer's exit status is all there is.
        if trainer_exit is None:
            return SlurmState(slurm_job_id, "UNKNOWN", FAILED,
                              f"Slurm has no record of job {slurm_job_id} and the job left no exit status",
                              source="files")
        status = COMPLETED if trainer_exit == 0 else FAILED
        return SlurmState(slurm_job_id, "UNKNOWN", status, _ended_reason(trainer_exit, None, "", time_left, lead_s)
                          if status == FAILED else None, trainer_exit, source="files")
    status, reason = STATUS_OF.get(record.state, (FAILED, f"Slurm state {record.state}"))
    code = trainer_exit if trainer_exit is not None else record.exit_code
    if status == QUEUED:
        reason = reason or (record.reason if record.reason not in UNINFORMATIVE_REASONS else None)
    elif status == FAILED and record.state == "FAILED":
        reason = _ended_reason(trainer_exit, record.exit_code, record.reason, time_left, lead_s)
    elif status == CANCELLED and record.state == "CANCELLED" and not stop_requested:
        reason = "cancelled in Slurm (scancel), not by brightrun"
    if status not in ENDED:
        code = None  # an exit_code file now is the previous run's (requeued) or this one's, still ending
    return SlurmState(slurm_job_id, record.state, status, reason, code, expand_hostlist(record.nodes),
                      record.restarts, record.source)


def _ended_reason(trainer_exit: int | None, slurm_exit: int | None, slurm_reason: str, time_left: str, lead_s: int) -> str:
    if _near_time_limit(time_left, lead_s):
        return "time limit"  # the warning stopped it (a trainer still loading dies of the TERM: nothing to save yet)
    if trainer_exit == STOPPED_EXIT:
        return "stopped by SIGTERM after saving a checkpoint"
    if trainer_exit == 2:
        return "invalid spec or inputs"
    code = trainer_exit if trainer_exit is not None else slurm_exit
    text = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
    if slurm_reason not in UNINFORMATIVE_REASONS:
        text += f" ({slurm_reason})"
    return text


# -- remote scripts (fixed text; every variable part is a positional argument) ----------------

# $1 run dir: made ready for a new submission (an earlier attempt's markers removed).
PREPARE = r"""
mkdir -p "$1" && cd "$1" && rm -f stop_requested exit_code exit_code.tmp term_time_left
"""

# $1 a directory, then an argv to run there. sbatch runs in the run dir, so its relative
# paths (sbatch.sh, --output) and the job's working directory are the run dir.
IN_DIR = r"""
cd "$1" || exit 3
shift
exec "$@"
"""

# $1 run dir, $2 Slurm job id, $3 1 to ask Slurm, then (file, offset) pairs for TAIL.
# Prints Slurm's answers as "<source> <exit status> <line>" lines, then the run dir's
# markers, then "files" and the TAIL chunks ("missing" instead when the run dir is gone).
PROBE = r"""
run=$1; job=$2; ask=$3; shift 3
if [ "$ask" = 1 ]; then
  out=$(scontrol show job -o "$job" 2>&1); rc=$?
  printf '%s\n' "$out" | sed "s/^/scontrol $rc /"
  if [ "$rc" != 0 ]; then
    out=$(sacct -X -n -P -j "$job" -o State,ExitCode,NodeList 2>&1); rc=$?
    printf '%s\n' "$out" | sed "s/^/sacct $rc /"
    out=$(sacct -c -n -P -j "$job" -o State,ExitCode,NodeList 2>&1); rc=$?
    printf '%s\n' "$out" | sed "s/^/jobcomp $rc /"
  fi
fi
cd "$run" 2>/dev/null || { echo missing; exit 0; }
echo "exit_code $(cat exit_code 2>/dev/null)"
echo "time_left $(cat term_time_left 2>/dev/null)"
if [ -e stop_requested ]; then echo "stop_requested 1"; else echo "stop_requested 0"; fi
echo files
""" + TAIL

# $1 run dir, $2 Slurm job id, $3 grace seconds. Mark the stop, then: a queued job is
# cancelled; a running one gets TERM in its steps (the trainer saves a checkpoint and
# the batch script cancels the job) and, still running after the grace, scancel.
# Exit 9: Slurm did not answer.
STOP = r"""
run=$1; job=$2; grace=$3
[ -d "$run" ] && : > "$run/stop_requested"
state() {
  out=$(squeue -h -t all -j "$job" -o %T 2>&1) && { printf '%s\n' "$out"; return; }
  case $out in *"Invalid job id"*) echo GONE ;; *) echo "$out" >&2; echo ERROR ;; esac
}
running() {
  st=$(state)
  [ "$st" = ERROR ] && exit 9
  case $st in RUNNING|CONFIGURING|COMPLETING|SUSPENDED|STOPPED|SIGNALING|STAGE_OUT|RESIZING) return 0 ;; esac
  return 1
}
st=$(state)
case $st in
  ERROR) exit 9 ;;
  PENDING|REQUEUED|REQUEUE_HOLD|REQUEUE_FED|SPECIAL_EXIT|RESV_DEL_HOLD) scancel "$job"; exit 0 ;;
esac
running || exit 0
scancel --signal=TERM "$job" 2>/dev/null
end=$(( $(date +%s) + grace ))
while running && [ "$(date +%s)" -lt "$end" ]; do sleep 1; done
if running; then
  scancel "$job"
  end=$(( $(date +%s) + 120 ))
  while running && [ "$(date +%s)" -lt "$end" ]; do sleep 1; done
fi
exit 0
"""


# $1 workdir. What `hosts check` asks the login node: "version <sinfo --version>" (or
# "noslurm <error>"), "partition <name>|<available>|<nodes>|<gres>|<time limit>" lines
# (or "unavailable <error>": no controller), "workdir ok|no" (writable there).
CLUSTER_CHECK = r"""
v=$(sinfo --version 2>&1) || { echo "noslurm $(printf '%s' "$v" | head -n 1)"; exit 0; }
echo "version $v"
if out=$(sinfo -h -o '%P|%a|%D|%G|%l' 2>&1); then
  printf '%s\n' "$out" | sed 's/^/partition /'
else
  echo "unavailable $(printf '%s' "$out" | head -n 1)"
fi
if mkdir -p "$1" 2>/dev/null && t=$(mktemp "$1/.brightrun-check.XXXXXX" 2>/dev/null); then rm -f "$t"; echo "workdir ok"; else echo "workdir no"; fi
"""


@dataclass
class ClusterFacts:
    """What the login node says about the cluster (`SlurmRunner.cluster_facts`)."""

    version: str | None = None  # "slurm 22.05.8"; None when Slurm's commands are missing
    error: str | None = None  # why Slurm could not be asked
    partitions: dict[str, dict] = field(default_factory=dict)  # name -> {default, available, nodes, gres, time_limit}
    workdir_writable: bool = False


@dataclass
class _SlurmHandle:
    slurm_job_id: str
    job_id: str

    def __str__(self) -> str:
        return f"slurm:{self.slurm_job_id}:{self.job_id}"

    @classmethod
    def parse(cls, text: str) -> "_SlurmHandle":
        parts = text.split(":")
        if len(parts) != 3 or parts[0] != "slurm" or not parts[1].isdigit() or not JOB_ID_RE.match(parts[2]):
            raise UsageError(f"not a Slurm run handle: '{text}'", "the job was not started by the Slurm runner")
        return cls(parts[1], parts[2])


@dataclass
class _Seen:
    """The last probe of a job: when it ran and what it found."""

    probed_at: float = 0.0
    asked_at: float = 0.0  # when Slurm itself was last asked
    record: _Record | None = None
    trainer_exit: int | None = None
    time_left: str = ""
    stop_requested: bool = False
    wrote_at: float = 0.0  # when the tailed output files last grew


class SlurmRunner(Runner):
    """The trainer as one Slurm batch job (one srun task per node) on a slurm host."""

    def __init__(self, ws: "Workspace", host: "HostRow", *, state_interval_s: float = STATE_INTERVAL_S,
                 reconnect_limit_s: float = 600.0, backoff_max_s: float = 30.0):
        self.ws = ws
        self.host = host
        self.settings = SlurmSettings.from_host(host)
        self.login = login_for(ws, host)
        self.gpu = host.gpu_type != "cpu"
        self.state_interval_s = state_interval_s
        forget = self.login.forget_master if isinstance(self.login, SSHConnection) else None
        self._guarded = Reconnect(f"Slurm on '{host.name}'", limit_s=reconnect_limit_s, backoff_max_s=backoff_max_s,
                                  transient=(SlurmUnavailable,), on_failure=forget)
        self._seen: dict[str, _Seen] = {}

    # -- paths and text ---------------------------------------------------------------------
    def remote_run_dir(self, job_id: str) -> str:
        if not JOB_ID_RE.match(job_id):
            raise UsageError(f"invalid job id '{job_id}'", "job ids are 26 lowercase letters and digits")
        return f"{remote_workdir(self.host)}/runs/{job_id}"

    def local_run_dir(self, job_id: str) -> Path:
        return self.ws.runs_dir / job_id

    def batch_script(self, request: LaunchRequest) -> str:
        """The text of sbatch.sh for this request (shown by `train --dry-run`)."""
        return batch_script(self.settings, request, python=remote_python(self.host), gpu=self.gpu,
                            code_version=code_version())

    # -- Runner ---------------------------------------------------------------------------------
    def launch_argv(self, request: LaunchRequest) -> list[str]:
        """The command that submits the job: sbatch, run in the remote run dir on the login node."""
        argv = sbatch_argv(self.settings, request, gpu=self.gpu)
        return self.login.script_argv(IN_DIR, self.remote_run_dir(request.job_id), *argv)

    def start(self, request: LaunchRequest) -> str:
        submit = self.launch_argv(request)  # refuses a bad request before anything is shipped
        script = self.batch_script(request)
        inputs = [name for name in run_inputs(request) if name != request.spec_path.name]
        spec = json.loads(request.spec_path.read_text(encoding="utf-8"))
        spec["resume"] = True  # Slurm may restart the job by itself: each run continues from a checkpoint
        (request.run_dir / SCRIPT_NAME).write_text(script, encoding="utf-8")
        remote_run = self.remote_run_dir(request.job_id)
        try:
            record_code(request.run_dir, ship_code(self.login))
            self.login.run_script(PREPARE, remote_run)
            with tempfile.TemporaryDirectory() as tmp:
                (Path(tmp) / "spec.json").write_text(json.dumps(spec, indent=2), encoding="utf-8")
                # "/./" anchors --relative: each file keeps its place below the run dir.
                sources = [f"{tmp}/./spec.json", *(f"{request.run_dir}/./{name}" for name in [*inputs, SCRIPT_NAME])]
                self.login.rsync(sources, remote_run + "/", to_remote=True, extra=("--relative",))
            self.login.ensure_master()
            out = self.login.run(submit).stdout.decode().strip()
        except (SSHFailure, SlurmUnavailable) as exc:
            raise OperationError(f"cannot submit the job to Slurm on '{self.host.name}': {exc.message}", exc.hint) from exc
        slurm_job_id = out.split(";")[0]
        if not slurm_job_id.isdigit():
            raise OperationError(f"sbatch on '{self.host.name}' did not print a job id ({out[:200]!r})",
                                 f"see 'brightrun hosts check {self.host.name}'")
        return str(_SlurmHandle(slurm_job_id, request.job_id))

    def state(self, handle: str) -> SlurmState:
        """What Slurm says about the job now (module docstring: the mapping). Raises
        RunnerUnreachable while the login node or the controller does not answer."""
        h = _SlurmHandle.parse(handle)
        seen = self._seen.get(handle)
        if seen is None or time.monotonic() - seen.probed_at >= FILES_FRESH_S or self._must_ask(seen):
            seen = self._guarded(lambda: self._probe(h, (), final=False))
        return map_state(h.slurm_job_id, seen.record, trainer_exit=seen.trainer_exit, time_left=seen.time_left,
                         stop_requested=seen.stop_requested, lead_s=self.settings.signal_lead_s)

    def poll(self, handle: str) -> int | None:
        return self.state(handle).poll_code

    def sync(self, handle: str) -> None:
        h = _SlurmHandle.parse(handle)
        self._guarded(lambda: self._probe(h, TAILED_FILES, final=False))

    def collect(self, handle: str) -> None:
        h = _SlurmHandle.parse(handle)

        def call() -> None:
            self._probe(h, TAILED_FILES, final=True)
            fetch_outputs(self.login, self.remote_run_dir(h.job_id), self.local_run_dir(h.job_id))

        self._guarded(call)

    def stop(self, handle: str, grace_s: float = 30.0) -> None:
        """TERM the trainer through Slurm (it saves a checkpoint; the job ends CANCELLED),
        scancel after grace_s. A queued job is simply cancelled."""
        h = _SlurmHandle.parse(handle)

        def call() -> None:
            proc = self.login.run_script(STOP, self.remote_run_dir(h.job_id), h.slurm_job_id, str(int(grace_s)),
                                         timeout=grace_s + 180, check=False)
            if proc.returncode == 9:
                raise SlurmUnavailable(f"Slurm did not answer: {_first_line(proc.stderr)}", "try again later")
            if proc.returncode != 0:
                raise OperationError(f"cannot stop Slurm job {h.slurm_job_id} on '{self.host.name}': {_first_line(proc.stderr)}",
                                     f"cancel it by hand: scancel {h.slurm_job_id}")

        self._guarded(call)
        self._seen.pop(handle, None)  # what Slurm says now is news

    # -- hosts check --------------------------------------------------------------------------------
    def cluster_facts(self) -> ClusterFacts:
        """Slurm's version, its partitions and whether the workdir is writable, from the
        login node. Raises SSHFailure when the login node cannot be reached."""
        self.login.ensure_master()
        out = self.login.run_script(CLUSTER_CHECK, remote_workdir(self.host), check=False).stdout.decode(errors="replace")
        facts = ClusterFacts()
        for line in out.splitlines():
            key, _, value = line.partition(" ")
            if key == "version":
                facts.version = value.strip()
            elif key in ("noslurm", "unavailable"):
                facts.error = value.strip() or key
            elif key == "partition":
                name, available, nodes, gres, limit = (value.split("|") + [""] * 4)[:5]
                entry = facts.partitions.setdefault(name.rstrip("*"), {
                    "default": name.endswith("*"), "available": available, "nodes": 0, "gres": [], "time_limit": limit})
                entry["nodes"] += int(nodes) if nodes.isdigit() else 0
                if gres not in ("", "(null)") and gres not in entry["gres"]:
                    entry["gres"].append(gres)
            elif key == "workdir":
                facts.workdir_writable = value.strip() == "ok"
        return facts

    def compute_node_argv(self, script: str, *args: str) -> list[str]:
        """srun of `sh -c script` on one compute node of the host's partition, with the
        job's GPUs and sbatch options; it gives up after 2 minutes without a free node."""
        s = self.settings
        argv = ["srun", "--immediate=120", "--nodes=1", "--ntasks=1", "--time=5", "--job-name=brightrun-check"]
        argv += [f"--{name}={value}" for name, value in (("partition", s.partition), ("account", s.account),
                                                          ("qos", s.qos), ("gres", s.gres)) if value]
        if self.gpu and not s.gres:
            argv.append(f"--gpus-per-node={self.host.gpus}")
        return self.login.script_argv(IN_DIR, ".", *argv, *s.sbatch_args, "sh", "-c", script, "sh", *args)

    def run_on_compute_node(self, script: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        """Run `sh -c script` there (see compute_node_argv); the CompletedProcess, whatever its status."""
        self.login.ensure_master()
        return self.login.run(self.compute_node_argv(script, *args), timeout=timeout, check=False)

    # -- probing ------------------------------------------------------------------------------------
    def _must_ask(self, seen: _Seen) -> bool:
        """Whether Slurm itself must be asked (rather than only the run dir's files)."""
        age = time.monotonic() - seen.asked_at
        if seen.record is None or age >= self.state_interval_s:
            return True
        status = STATUS_OF.get(seen.record.state, (FAILED,))[0]
        # The trainer has ended: Slurm is finishing the job (or requeueing it).
        ending = seen.trainer_exit is not None and status == RUNNING
        # Output appeared after Slurm last said "queued": it has started the job.
        starting = status == QUEUED and seen.wrote_at > seen.asked_at
        return (ending or starting) and age >= ENDING_INTERVAL_S

    def _probe(self, h: _SlurmHandle, files: tuple[str, ...], *, final: bool) -> _Seen:
        handle = str(h)
        seen = self._seen.get(handle) or _Seen()
        ask = self._must_ask(seen)
        local = self.local_run_dir(h.job_id)
        out = self.login.run_script(PROBE, self.remote_run_dir(h.job_id), h.slurm_job_id, "1" if ask else "0",
                                    *tail_args(local, files)).stdout
        head, rest, markers = _split_probe(out)
        now = time.monotonic()
        if ask:
            seen.record = _read_record(head, h.slurm_job_id)
            seen.asked_at = now
        exit_text = markers.get("exit_code", "")
        seen.trainer_exit = int(exit_text) if exit_text.lstrip("-").isdigit() else None
        seen.time_left = markers.get("time_left", "")
        seen.stop_requested = markers.get("stop_requested") == "1"
        seen.probed_at = now
        self._seen[handle] = seen
        if rest is not None and files:
            chunks = read_tail(rest)
            if any(chunks.values()):
                seen.wrote_at = now
            append_tail(local, chunks, final=final)
        return seen


def _first_line(data: bytes) -> str:
    text = data.decode(errors="replace")
    return next((line.strip() for line in text.splitlines() if line.strip()), "no message")


def _split_probe(out: bytes) -> tuple[list[str], bytes | None, dict[str, str]]:
    """PROBE's output -> (Slurm's tagged lines, the TAIL bytes or None, the run dir's markers)."""
    lines: list[str] = []
    markers: dict[str, str] = {}
    pos = 0
    while pos < len(out):
        nl = out.find(b"\n", pos)
        nl = len(out) if nl < 0 else nl
        line = out[pos:nl].decode(errors="replace")
        pos = nl + 1
        if line in ("files", "missing"):
            return lines, (out[pos:] if line == "files" else None), markers
        key, _, value = line.partition(" ")
        if key in ("exit_code", "time_left", "stop_requested"):
            markers[key] = value.strip()
        else:
            lines.append(line)
    return lines, None, markers


def _read_record(lines: list[str], slurm_job_id: str) -> _Record | None:
    """The first source that knows the job: scontrol, then sacct, then sacct -c.
    Raises SlurmUnavailable when the controller did not answer."""
    by_source: dict[str, list[tuple[int, str]]] = {}
    for line in lines:
        source, rc, text = (line.split(" ", 2) + ["", ""])[:3]
        by_source.setdefault(source, []).append((int(rc) if rc.lstrip("-").isdigit() else 1, text))
    scontrol = by_source.get("scontrol", [])
    if scontrol and scontrol[0][0] == 0:
        record_line = next((t for _, t in scontrol if f"JobId={slurm_job_id} " in t + " "), scontrol[0][1])
        return parse_scontrol(record_line)
    text = " ".join(t for _, t in scontrol)
    if scontrol and scontrol[0][0] == 127:
        raise OperationError(f"Slurm's commands are not on the login node's PATH ({text.strip()})",
                             "install the Slurm client there, or add the host again with the right login node")
    if "Invalid job id" not in text:
        raise SlurmUnavailable(f"scontrol failed: {text.strip() or 'no message'}", "is Slurm's controller up?")
    for source in ("sacct", "jobcomp"):
        answers = [t for rc, t in by_source.get(source, []) if rc == 0 and t.strip()]
        if answers:
            return parse_sacct(answers[-1], source)
    return None
