"""What brightrun submits to Slurm: a slurm host's validated settings, the sbatch argv and
the batch script.

Pure functions of a host row and a LaunchRequest (no I/O), so `train --dry-run` shows
exactly what `SlurmRunner.start` submits and fast tests read the text without a cluster.

Nothing a user typed reaches a shell unquoted: the settings are checked against strict
patterns when a host is added and again whenever a runner reads them back from the
registry, sbatch gets every value as its own argv word (over SSH each word is
`shlex.quote`d), and the script's variable parts are `shlex.quote`d words.

The job (`sbatch.sh`, run by Slurm in the remote run dir, possibly more than once):

- `srun` starts one task per node. One process on one node runs the trainer module
  itself; otherwise each task runs `accelerate launch` with `--machine_rank` from the
  task's SLURM_NODEID, the first node of SLURM_JOB_NODELIST (its NodeAddr) as the main
  address and a port derived from the Slurm job id, SLURM_NNODES machines.
- `--signal=B:TERM@<lead>`: some minutes before the time limit Slurm TERMs the batch
  shell (only it). The shell hands the TERM to the trainer through Slurm
  (`scancel --signal=TERM <job>`: the job's steps, not the batch shell) and never to
  srun, which turns a TERM of its own into a KILL of its tasks. The trainer saves a
  checkpoint and exits 75; the shell records the time left at that moment
  (`term_time_left`), which is how the runner tells the time-limit warning from other
  stops.
- `--requeue`: Slurm may run the job again (requeue, preemption, node failure). The
  shipped spec.json says `"resume": true`, so each run continues from the newest
  checkpoint (a run without one starts at step 0, as a fresh one would).
- The trainer's exit status goes to `exit_code`. When brightrun asked for the stop
  (`stop_requested` in the run dir), the shell cancels its own job once the trainer has
  saved its checkpoint, so Slurm records CANCELLED rather than FAILED.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from brightrun_cli.errors import UsageError

if TYPE_CHECKING:
    from brightrun_cli.registry.rows import HostRow
    from brightrun_cli.runners.base import LaunchRequest

SCRIPT_NAME = "sbatch.sh"
OUTPUT_NAME = "launcher.log"  # the job's stdout and stderr (batch shell, srun, trainer), appended per run
# Written by the batch script into the run dir (see the module docstring).
EXIT_FILE = "exit_code"
TIME_LEFT_FILE = "term_time_left"
STOP_FILE = "stop_requested"

SIGNAL_LEAD_MAX_S = 300  # TERM this long before the time limit: time to save a checkpoint
# Slurm checks time limits every ~30 s and sends --signal up to 60 s early or late: a TERM
# that came with less than lead + this left is the time-limit warning.
SIGNAL_SLACK_S = 90
MAIN_PORT_BASE = 29500  # + Slurm job id % MAIN_PORT_SPAN: jobs sharing a node rendezvous apart
MAIN_PORT_SPAN = 20000

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")  # partition, account, qos
_GRES_ITEM = r"[A-Za-z0-9_.-]+(?::[A-Za-z0-9_.-]+){0,2}"
GRES_RE = re.compile(rf"^{_GRES_ITEM}(?:,{_GRES_ITEM})*$")
TIME_RE = re.compile(r"^(?:(\d{1,3})-)?(\d{1,5})(?::(\d{1,2}))?(?::(\d{1,2}))?$")
# --name or --name=value; the value without whitespace, quotes, $, `, ;, <, >, (, ), \, ~, #.
SBATCH_ARG_RE = re.compile(r"^--([a-z][a-z0-9-]*)(?:=([A-Za-z0-9_.,:@%+=/&|\[\]*!-]+))?$")
# hosts.options keys that are not submission settings: the login as typed, the SSH opt-in.
HOST_OPTIONS = ("login", "accept_new_host_key")
# Options brightrun sets itself (or that would change what a submission is). sbatch takes
# any unambiguous prefix of a long option too, so a prefix of one of these is refused as well.
RESERVED_SBATCH_OPTIONS = (
    "parsable", "job-name", "nodes", "ntasks", "ntasks-per-node", "partition", "account", "qos", "time",
    "gres", "gpus", "gpus-per-node", "gpus-per-task", "requeue", "no-requeue", "signal", "open-mode",
    "output", "error", "input", "chdir", "wrap", "array", "wait", "test-only", "batch",
)


def slurm_seconds(text: str) -> int | None:
    """Slurm's time syntax in seconds: minutes, minutes:seconds, hours:minutes:seconds,
    days-hours[:minutes[:seconds]] (sbatch --time, squeue's time left). None for
    UNLIMITED/INFINITE. Raises ValueError for anything else."""
    raw = text.strip()
    if raw.upper() in ("UNLIMITED", "INFINITE"):
        return None
    m = TIME_RE.match(raw)
    if not m:
        raise ValueError(f"not a Slurm time: {text!r}")
    days, a, b, c = m.groups()
    if days is not None:
        return ((int(days) * 24 + int(a)) * 60 + int(b or 0)) * 60 + int(c or 0)
    if c is not None:
        return (int(a) * 60 + int(b)) * 60 + int(c)
    if b is not None:
        return int(a) * 60 + int(b)
    return int(a) * 60


@dataclass(frozen=True)
class SlurmSettings:
    """A slurm host's submission settings (kept in `hosts.options`). The login node, the
    Python on the compute nodes and the workdir on the shared filesystem are the host
    row's own ssh_*/python/workdir columns, as for an SSH host."""

    partition: str | None = None  # --partition; None: the cluster's default partition
    account: str | None = None  # --account
    qos: str | None = None  # --qos
    time: str | None = None  # --time (Slurm syntax); None: the partition's default limit
    gpus_per_node: int | None = None  # --gpus-per-node default of a job; None on a CPU cluster
    gres: str | None = None  # --gres instead of --gpus-per-node (e.g. gpu:a100:4)
    nodes_max: int = 1  # the most nodes one job may ask for
    sbatch_args: tuple[str, ...] = ()  # further sbatch options, each one --name[=value] word

    @classmethod
    def validated(cls, *, partition: str | None = None, account: str | None = None, qos: str | None = None,
                  time: str | None = None, gpus_per_node: int | None = None, gres: str | None = None,
                  nodes_max: int | None = None, sbatch_args: list[str] | tuple[str, ...] | None = None) -> "SlurmSettings":
        """Check every field; a bad one raises UsageError naming its flag."""
        for flag, value in (("--partition", partition), ("--account", account), ("--qos", qos)):
            if value is not None and not (isinstance(value, str) and NAME_RE.match(value)):
                raise UsageError(f"invalid {flag} {value!r}",
                                 "use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit")
        if time is not None:
            _check_time(time)
        if gpus_per_node is not None and (isinstance(gpus_per_node, bool) or not isinstance(gpus_per_node, int)
                                          or not 1 <= gpus_per_node <= 64):
            raise UsageError(f"invalid --gpus-per-node {gpus_per_node!r}", "give the GPUs of one node, 1 to 64")
        if gres is not None:
            if not (isinstance(gres, str) and GRES_RE.match(gres)):
                raise UsageError(f"invalid --gres {gres!r}", "use Slurm's name[:type][:count] form, e.g. gpu:a100:4")
            if gpus_per_node is not None:
                raise UsageError("--gres and --gpus-per-node both ask for GPUs", "pass one of them")
        if nodes_max is not None and (isinstance(nodes_max, bool) or not isinstance(nodes_max, int)
                                      or not 1 <= nodes_max <= 1024):
            raise UsageError(f"invalid --nodes-max {nodes_max!r}", "give the most nodes one job may use, 1 to 1024")
        args = tuple(sbatch_args or ())
        for arg in args:
            _check_sbatch_arg(arg)
        return cls(partition=partition, account=account, qos=qos, time=time, gpus_per_node=gpus_per_node,
                   gres=gres, nodes_max=nodes_max or 1, sbatch_args=args)

    @classmethod
    def from_host(cls, host: "HostRow") -> "SlurmSettings":
        """The settings stored on a slurm host row, checked again: a registry edited by
        hand gets no further than `hosts add` would."""
        if host.kind != "slurm":
            raise UsageError(f"host '{host.name}' is not a Slurm host", "add one with 'brightrun hosts add NAME --slurm LOGIN'")
        options = {k: v for k, v in (host.options or {}).items() if k not in HOST_OPTIONS}
        unknown = sorted(set(options) - set(cls.__dataclass_fields__))
        if unknown:
            raise UsageError(f"host '{host.name}' has unknown Slurm settings: {', '.join(unknown)}",
                             "remove the host and add it again")
        return cls.validated(**options)

    def to_options(self) -> dict[str, Any]:
        """The JSON kept in `hosts.options` (unset fields left out)."""
        data = asdict(self)
        data["sbatch_args"] = list(self.sbatch_args)
        return {k: v for k, v in data.items() if v not in (None, [])}

    @property
    def time_s(self) -> int | None:
        return slurm_seconds(self.time) if self.time else None

    @property
    def signal_lead_s(self) -> int:
        """Seconds before the time limit the batch shell gets TERM: 5 minutes, or half a
        shorter limit. Slurm sends it up to a minute early (its 30 s ticks look ahead), so a
        lead close to the limit would stop a short job while its trainer is still loading,
        with nothing to save (a 3-minute job: TERM 90 s before the end, 30-90 s in)."""
        limit = self.time_s
        return SIGNAL_LEAD_MAX_S if limit is None else max(1, min(SIGNAL_LEAD_MAX_S, limit // 2))


def gres_gpus(gres: str | None) -> int | None:
    """GPUs per node a --gres asks for: the count of its gpu item (gpu:a100:4 -> 4, gpu -> 1)."""
    for item in (gres or "").split(","):
        parts = item.split(":")
        if parts[0] == "gpu":
            return int(parts[-1]) if len(parts) > 1 and parts[-1].isdigit() else 1
    return None


def _check_time(value: str) -> None:
    m = TIME_RE.match(value.strip()) if isinstance(value, str) else None
    _days, _first, b, c = m.groups() if m else (None, None, None, None)
    if m is None or int(b or 0) > 59 or int(c or 0) > 59 or (slurm_seconds(value) or 0) < 60:
        raise UsageError(f"invalid --time {value!r}",
                         "use minutes, HH:MM:SS or D-HH:MM:SS (Slurm's --time syntax), at least one minute")


def _check_sbatch_arg(arg: str) -> None:
    m = SBATCH_ARG_RE.match(arg if isinstance(arg, str) else "")
    if not m:
        raise UsageError(f"invalid --sbatch-arg {arg!r}",
                         "give one long sbatch option per --sbatch-arg as --name=value (letters, digits and _ . , : @ % + = / & | [ ] * ! -)")
    name = m.group(1)
    clash = next((r for r in RESERVED_SBATCH_OPTIONS if r.startswith(name)), None)
    if clash:
        raise UsageError(f"--sbatch-arg {arg!r} would set --{clash}, which brightrun sets itself",
                         "use the host's own flag (--partition, --time, --gres, ...) or drop it")


def task_command(request: "LaunchRequest", *, python: str, gpu: bool) -> str:
    """The `sh -c` text each srun task runs: `exec` of the trainer (one process on one
    node) or of `accelerate launch` with this task's rank and the job's rendezvous."""
    from brightrun_cli.runners.accelerate import trainer_command

    multi = request.nodes > 1
    argv, _ = trainer_command(
        "spec.json",
        num_processes=request.num_processes,
        num_machines=request.nodes,
        machine_rank=0,  # each task's SLURM_NODEID, below
        main_process_ip="main" if multi else None,
        main_process_port=MAIN_PORT_BASE if multi or request.num_processes > 1 else None,
        python=python,
        # CPU DDP (several processes or machines) must leave cpu unset: gloo workers.
        cpu=True if not gpu and not multi and request.num_processes == 1 else None,
        config_file=request.accelerate_config,
        distributed_type=request.distributed_type,
    )
    per_task = {"--machine_rank": '"$SLURM_NODEID"', "--main_process_ip": '"$BRIGHTRUN_MAIN_ADDR"',
                "--main_process_port": '"$BRIGHTRUN_MAIN_PORT"'}
    words = [_python_word(argv[0])]
    for previous, word in zip(argv, argv[1:]):
        words.append(per_task.get(previous) or shlex.quote(word))
    return "exec " + " ".join(words)


def _python_word(python: str) -> str:
    """The interpreter as a shell word; a leading ~/ is the compute node's $HOME."""
    if python.startswith("~/"):
        return '"$HOME"/' + shlex.quote(python[2:])
    return shlex.quote(python)


def job_name(job_id: str) -> str:
    return f"brightrun-{job_id}"


def sbatch_argv(settings: SlurmSettings, request: "LaunchRequest", *, gpu: bool) -> list[str]:
    """sbatch's argv, run in the remote run dir (relative paths are below it)."""
    if not 1 <= request.nodes <= settings.nodes_max:
        raise UsageError(f"a job on this Slurm host may use 1 to {settings.nodes_max} nodes, not {request.nodes}",
                         "ask for fewer nodes, or re-add the host with a larger --nodes-max")
    argv = ["sbatch", "--parsable", f"--job-name={job_name(request.job_id)}", f"--nodes={request.nodes}",
            "--ntasks-per-node=1"]
    for option, value in (("partition", settings.partition), ("account", settings.account), ("qos", settings.qos),
                          ("time", settings.time)):
        if value:
            argv.append(f"--{option}={value}")
    if settings.gres:
        argv.append(f"--gres={settings.gres}")
    elif gpu:
        argv.append(f"--gpus-per-node={request.num_processes}")
    argv += ["--requeue", f"--signal=B:TERM@{settings.signal_lead_s}", "--open-mode=append", f"--output={OUTPUT_NAME}",
             *settings.sbatch_args, SCRIPT_NAME]
    return argv


def batch_script(settings: SlurmSettings, request: "LaunchRequest", *, python: str, gpu: bool, code_version: str) -> str:
    """The text of `sbatch.sh` (see the module docstring). It runs in the remote run dir
    `<workdir>/runs/<job_id>`; the shipped code is `<workdir>/code/<code_version>`."""
    q = shlex.quote
    env = dict(request.env)
    if not gpu:
        # Without it accelerate's state falls back to a non-distributed CPU run in each
        # process torchrun starts, instead of gloo DDP.
        env.setdefault("ACCELERATE_USE_CPU", "true")
    bad = [k for k in env if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", k)]
    if bad:
        raise UsageError(f"invalid environment variable name {bad[0]!r}", "use letters, digits and _")
    exports = "".join(f"{k}={q(v)}; export {k}\n" for k, v in sorted(env.items()))
    submitted = shlex.join(sbatch_argv(settings, request, gpu=gpu))
    task = task_command(request, python=python, gpu=gpu)
    return f"""#!/bin/sh
# brightrun job {request.job_id}: written by brightrun (runners/slurm_batch.py), submitted
# from its run directory with
#   {submitted}
# Slurm may run it more than once (requeue, preemption): spec.json says "resume": true.
src=$(cd {q(f"../../code/{code_version}")} && pwd) || exit 3
PYTHONPATH="$src${{PYTHONPATH:+:$PYTHONPATH}}"; export PYTHONPATH
{exports}rm -f {EXIT_FILE} {EXIT_FILE}.tmp {TIME_LEFT_FILE}
echo "brightrun: Slurm job $SLURM_JOB_ID, run ${{SLURM_RESTART_COUNT:-0}}, on $SLURM_JOB_NODELIST" >&2
if [ -e {STOP_FILE} ]; then scancel "$SLURM_JOB_ID"; exit 75; fi
first=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
addr=$(scontrol show node "$first" 2>/dev/null | sed -n 's/.*NodeAddr=\\([^ ]*\\).*/\\1/p')
BRIGHTRUN_MAIN_ADDR=${{addr:-$first}}; export BRIGHTRUN_MAIN_ADDR
BRIGHTRUN_MAIN_PORT=$(({MAIN_PORT_BASE} + SLURM_JOB_ID % {MAIN_PORT_SPAN})); export BRIGHTRUN_MAIN_PORT
# The time-limit warning (--signal=B:TERM) reaches this shell only: pass it to the
# trainer through Slurm (the job's steps), never to srun, which would KILL its tasks.
on_term() {{
  squeue -h -j "$SLURM_JOB_ID" -o %L > {TIME_LEFT_FILE} 2>/dev/null
  scancel --signal=TERM "$SLURM_JOB_ID" 2>/dev/null
}}
trap on_term TERM
srun --ntasks-per-node=1 --kill-on-bad-exit=1 --export=ALL sh -c {q(task)} &
step=$!
while :; do wait "$step"; status=$?; kill -0 "$step" 2>/dev/null || break; done
echo "$status" > {EXIT_FILE}.tmp && mv {EXIT_FILE}.tmp {EXIT_FILE}
if [ -e {STOP_FILE} ]; then
  # brightrun's stop: the trainer has saved its checkpoint; end the job as CANCELLED.
  trap - TERM
  scancel "$SLURM_JOB_ID"
  sleep 60
fi
exit "$status"
"""
