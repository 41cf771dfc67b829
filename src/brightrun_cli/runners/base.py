"""The runner interface: how a supervisor starts, follows and stops one trainer attempt.

A runner hides *where* the trainer runs. The supervisor only ever sees the local run
directory (`<home>/runs/<job_id>/`): a local runner's trainer writes there directly; a
remote runner mirrors the remote run directory into it on `sync()`. Everything is
built as argument lists (never a shell string) and every argv is loggable with
`shlex.join` and shown by `train --dry-run`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

import msgspec

from brightrun_cli.errors import OperationError


class RunnerUnreachable(OperationError):
    """The machine running the trainer cannot be reached right now (network, sshd down).

    Raised by `poll`/`sync`/`collect` of remote runners. The trainer may well still be
    running there: keep the job, call again later (the runner reconnects with backoff
    and resumes tailing where it stopped). `down_for_s` says how long it has been gone.
    """

    def __init__(self, message: str, hint: str | None = None, *, down_for_s: float = 0.0):
        super().__init__(message, hint)
        self.down_for_s = down_for_s


class RunnerLost(RunnerUnreachable):
    """Unreachable for longer than the runner's reconnect limit: mark the job failed with
    str(exc). `jobs resume` can still re-attach later if the remote trainer survived."""


class LaunchRequest(msgspec.Struct):
    job_id: str
    run_dir: Path  # local run dir; holds spec.json, and receives metrics.jsonl etc.
    spec_path: Path  # run_dir / "spec.json"
    num_processes: int = 1  # processes per machine (GPUs on a GPU host, 1 on CPU)
    nodes: int = 1  # machines a Slurm job allocates (SSH runners: one per host instead)
    resume: bool = False  # continue from the newest checkpoint in the run dir
    accelerate_config: str | None = None  # an accelerate config file's name in run_dir (`--config_file`)
    distributed_type: str | None = None  # that file's distributed_type
    env: dict[str, str] = msgspec.field(default_factory=dict)  # extra environment for the trainer

    @classmethod
    def for_job(cls, home: Path, job_id: str, *, gpus: int, gpu_type: str | None, resume: bool = False) -> "LaunchRequest":
        """What a runner starts for a job: one process per GPU; one on a CPU host."""
        path = home / "runs" / job_id
        return cls(job_id=job_id, run_dir=path, spec_path=path / "spec.json",
                   num_processes=1 if (gpu_type or "cpu") == "cpu" else gpus, resume=resume)


class Runner(ABC):
    """One implementation per kind of host (local, ssh, slurm)."""

    @abstractmethod
    def launch_argv(self, request: LaunchRequest) -> list[str]:
        """The exact command that starts the trainer (for logs and --dry-run)."""

    @abstractmethod
    def start(self, request: LaunchRequest) -> str:
        """Start the trainer detached from the caller; return a handle (stored as external_job_id)."""

    @abstractmethod
    def poll(self, handle: str) -> int | None:
        """The trainer's exit status if it has ended, else None. Never blocks long."""

    def batch_script(self, request: LaunchRequest) -> str | None:
        """The script a batch scheduler runs for this request (shown by `train --dry-run`);
        None for a runner that starts the trainer itself."""
        return None

    def sync(self, handle: str) -> None:
        """Bring new remote output (metrics.jsonl, logs) into the local run dir. Local: nothing to do."""

    @abstractmethod
    def stop(self, handle: str, grace_s: float = 30.0) -> None:
        """TERM the whole trainer process tree, wait up to grace_s, then KILL what is left."""

    def collect(self, handle: str) -> None:
        """After the end: bring the final adapter/result home into the local run dir. Local: nothing."""
