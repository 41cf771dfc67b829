"""Training jobs: submit (`train`), list/show, cancel, retry, resume, logs, rm, and the
lifecycle every other part writes through.

Lifecycle: queued -> initializing -> running -> completed | failed | cancelled. Every
status change is one compare-and-set UPDATE (`transition`) that names the statuses it
may leave, so concurrent writers (supervisor, queue kick, `jobs cancel`) never move a
job backwards and never leave a terminal status. The one deliberate way back is `jobs
resume`, which reopens a failed or cancelled job as a new *attempt* (resume_count+1,
a new supervisor marker): writers of the earlier attempt match on their marker and
can no longer touch it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlmodel import Session, col, select, update

from brightrun_cli.errors import ConflictError, NotFoundError, OperationError, UsageError
from brightrun_cli.registry.ids import new_id
from brightrun_cli.registry.queries import resolve
from brightrun_cli.registry.tables import CostRecord, Host, MetricPoint, TrainingJob
from brightrun_cli.registry.timeutil import utcnow
from brightrun_cli.services.notifications import notify

if TYPE_CHECKING:
    from brightrun_cli.services import queue
    from brightrun_cli.runners.base import LaunchRequest
    from brightrun_cli.services.workspace import Workspace

QUEUED, INITIALIZING, RUNNING = "queued", "initializing", "running"
COMPLETED, FAILED, CANCELLED = "completed", "failed", "cancelled"
ACTIVE = (QUEUED, INITIALIZING, RUNNING)
STARTED = (INITIALIZING, RUNNING)
TERMINAL = (COMPLETED, FAILED, CANCELLED)
STATUSES = ACTIVE + TERMINAL
# What each status may be reached from; anything else is refused by `transition`.
ALLOWED_FROM: dict[str, tuple[str, ...]] = {
    QUEUED: (),
    INITIALIZING: (QUEUED,),
    RUNNING: (INITIALIZING,),
    COMPLETED: STARTED,
    FAILED: ACTIVE,
    CANCELLED: ACTIVE,
}
RESUMABLE = (FAILED, CANCELLED)
CANCEL_WAIT_S = 90.0  # supervisor grace for the trainer (30 s) plus final bookkeeping, with room for a slow machine
STORAGE_USD_PER_GB_MONTH = 0.021  # the reference's storage price
SEED = 42


def transition(session: Session, job_id: str, to: str, *, marker: str | None = None,
               only_from: tuple[str, ...] | None = None, **values: Any) -> bool:
    """Compare-and-set the job's status to `to` (plus `values`) in the caller's transaction.

    Applies only when the job is in a status `to` may follow (narrowed by `only_from`)
    and, when `marker` is given, still belongs to that supervisor attempt. Returns
    whether it applied.
    """
    if to not in ALLOWED_FROM or not ALLOWED_FROM[to]:
        raise ValueError(f"no transition leads to {to!r}")
    sources = [s for s in ALLOWED_FROM[to] if only_from is None or s in only_from]
    query = update(TrainingJob).where(col(TrainingJob.id) == job_id, col(TrainingJob.status).in_(sources))
    if marker is not None:
        query = query.where(col(TrainingJob.supervisor_marker) == marker)
    if to in TERMINAL:
        values.setdefault("completed_at", utcnow())
    values.setdefault("current_stage", to if to != RUNNING else "training")
    result = session.exec(query.values(status=to, updated_at=utcnow(), **values))
    return result.rowcount == 1


def update_attempt(session: Session, job_id: str, marker: str, **values: Any) -> bool:
    """Update fields of a started job only while `marker`'s attempt still owns it (not terminal)."""
    result = session.exec(
        update(TrainingJob)
        .where(col(TrainingJob.id) == job_id, col(TrainingJob.supervisor_marker) == marker, col(TrainingJob.status).in_(STARTED))
        .values(updated_at=utcnow(), **values)
    )
    return result.rowcount == 1


# ---------------------------------------------------------------------------- costs


def hourly_rate(job: TrainingJob) -> float:
    return float((job.gpu_config or {}).get("hourly_rate") or 0.0)


def previous_compute_cost(session: Session, job_id: str) -> float:
    """Compute cost of this job's earlier attempts (one record per ended attempt)."""
    rows = session.exec(select(CostRecord.amount).where(col(CostRecord.job_id) == job_id, col(CostRecord.cost_type) == "compute")).all()
    return float(sum(rows))


def record_attempt_cost(session: Session, job: TrainingJob, *, attempt_start, attempt_end, storage_bytes: int | None = None) -> float:
    """Record this attempt's compute cost (GPU-hours x rate), and storage when given; return the job's total."""
    period = attempt_end.strftime("%Y-%m-01")
    gpu_type = (job.gpu_config or {}).get("type")
    count = int((job.gpu_config or {}).get("count") or 1)
    start = attempt_start or attempt_end
    hours = max(0.0, (attempt_end - start).total_seconds() / 3600)
    rate = hourly_rate(job)
    session.add(CostRecord(
        job_id=job.id, cost_type="compute", amount=round(hours * rate, 6), gpu_type=gpu_type, billing_period=period,
        details={"attempt": job.resume_count, "hours": round(hours, 6), "gpu_hours": round(hours * count, 6),
                 "gpus": count, "hourly_rate": rate, "started_at": start.isoformat(), "ended_at": attempt_end.isoformat()},
    ))
    if storage_bytes is not None:
        gb = storage_bytes / 1e9
        session.add(CostRecord(
            job_id=job.id, cost_type="storage", amount=round(gb * STORAGE_USD_PER_GB_MONTH, 6), gpu_type=gpu_type,
            billing_period=period, details={"bytes": storage_bytes, "usd_per_gb_month": STORAGE_USD_PER_GB_MONTH},
        ))
    session.flush()
    rows = session.exec(select(CostRecord.amount).where(col(CostRecord.job_id) == job.id)).all()
    return round(float(sum(rows)), 6)


# ---------------------------------------------------------------------------- train


@dataclass
class TrainRequest:
    dataset: str
    preset: str | None = None
    overrides: tuple[str, ...] = ()
    config_file: Path | None = None
    base_model: str | None = None
    host: str | None = None
    hosts: tuple[str, ...] = ()
    gpus: int | None = None
    max_cost: float | None = None
    accelerate_config: Path | None = None  # passed to `accelerate launch --config_file` (FSDP, DeepSpeed)


@dataclass
class TrainPlan:
    """Everything `train` decided before creating anything (what --dry-run prints)."""

    job_id: str
    dataset: Any
    hosts: list[Host]
    resolved: Any
    estimate: Any
    spec: dict[str, Any]
    argv: list[str]
    max_cost: float | None
    gpu_config: dict[str, Any] = field(default_factory=dict)
    accelerate_config: Any = None  # trainer.spec.AccelerateConfig of the user's file

    def to_json(self) -> dict[str, Any]:
        accelerate = None
        if self.accelerate_config is not None:
            accelerate = {"source": str(self.accelerate_config.path), "file": self.spec["accelerate_config"],
                          "distributed_type": self.accelerate_config.distributed_type}
        return {
            "job_id": self.job_id,
            "dataset_id": self.dataset.id,
            "preset_id": self.resolved.preset_id,
            "hosts": [h.name for h in self.hosts],
            "gpu_config": self.gpu_config,
            "max_cost": self.max_cost,
            "estimate": self.estimate.to_json(),
            "spec": self.spec,
            "accelerate_config": accelerate,
            "argv": self.argv,
        }


def plan_training(ws: "Workspace", req: TrainRequest) -> TrainPlan:
    """Validate a `train` request completely and resolve it; writes nothing. Bad input: UsageError."""
    from brightrun_cli.runners import get_runner
    from brightrun_cli.services.datasets import get_dataset
    from brightrun_cli.services.estimates import estimate_run
    from brightrun_cli.services.presets import resolve_config

    if req.max_cost is not None and req.max_cost <= 0:
        raise UsageError(f"--max-cost must be positive (got {req.max_cost:g})", "pass a budget in USD, e.g. --max-cost 25")
    if req.gpus is not None and req.gpus < 1:
        raise UsageError(f"--gpus must be at least 1 (got {req.gpus})", "pass --gpus 1 or more")
    dataset = get_dataset(ws, req.dataset)
    if dataset.status != "ready" or not dataset.training_ready:
        why = f": {dataset.error_message}" if dataset.error_message else ""
        raise UsageError(f"dataset '{dataset.name}' is {dataset.status}, not ready for training{why}",
                         f"run 'brightrun dataset show {dataset.name}' and fix or re-add it")
    hosts = _resolve_hosts(ws, req.hosts or (req.host or ws.config.default_host,))
    host = hosts[0]
    gpus = req.gpus or host.gpus
    for h in hosts:
        if gpus > h.gpus:
            raise UsageError(f"--gpus {gpus} is more than host '{h.name}' has ({h.gpus})", f"pass --gpus {h.gpus} or less, or another --host")
    _check_gpu_type_matches(ws, req, host)
    resolved = resolve_config(
        ws, preset=req.preset, overrides=tuple(req.overrides), config_file=req.config_file,
        base_model=req.base_model, gpu_type=host.gpu_type, gpus=gpus, dataset_base_model=dataset.base_model,
    )
    config = resolved.config
    config.base_model = _check_base_model(config.base_model, hosts)
    model_config = None
    if hosts[0].kind == "ssh" and config.base_model.startswith("/"):
        from brightrun_cli.runners.ssh import remote_model_config

        model_config = remote_model_config(ws, hosts[0], config.base_model)  # what that host will train
    estimate = estimate_run(ws, dataset, resolved, nodes=len(hosts), model_config=model_config)
    estimate_json = estimate.to_json()
    cost = float(estimate_json["estimated_cost"])
    if req.max_cost is not None and cost > req.max_cost:
        raise UsageError(
            f"the estimated cost ${cost:,.2f} is over --max-cost ${req.max_cost:,.2f}",
            "raise --max-cost, or pick a cheaper preset, fewer epochs or GPUs (see 'brightrun estimate')",
        )
    job_id = new_id()
    request = launch_request(ws, job_id, gpus=gpus, gpu_type=host.gpu_type)
    accelerate = None
    if req.accelerate_config is not None:
        accelerate = check_accelerate_config(req.accelerate_config, hosts, request.num_processes, config.hyperparameters())
    spec = _spec(job_id, config, accelerate)
    if accelerate is not None:
        request.accelerate_config, request.distributed_type = spec["accelerate_config"], accelerate.distributed_type
    argv = get_runner(ws, hosts).launch_argv(request)
    gpu_config = {"type": config.gpu_type or host.gpu_type, "count": gpus, "hourly_rate": float(estimate.hourly_rate)}
    return TrainPlan(job_id=job_id, dataset=dataset, hosts=hosts, resolved=resolved, estimate=estimate, spec=spec,
                     argv=argv, max_cost=req.max_cost, gpu_config=gpu_config, accelerate_config=accelerate)


def _check_gpu_type_matches(ws: "Workspace", req: TrainRequest, host: Host) -> None:
    """A job runs on its host's GPUs. A preset's gpu_type is only an estimate hint, but one
    the user asks for (--set or --config) that the host does not have is refused rather
    than silently replaced."""
    from brightrun_cli.presets.files import parse_override, read_config_file
    from brightrun_cli.services.gpus import get_gpu

    asked: list[tuple[str, str]] = []
    if req.config_file is not None and "gpu_type" in (data := read_config_file(req.config_file)):
        asked.append((f"--config {req.config_file}", str(data["gpu_type"])))
    asked += [(f"--set {text}", str(value)) for text in req.overrides for key, value in [parse_override(text)] if key == "gpu_type"]
    for where, value in asked:
        if get_gpu(ws, value).name != get_gpu(ws, host.gpu_type).name:
            raise UsageError(
                f"{where}: host '{host.name}' has {host.gpu_type}, and a job runs on its host's GPUs",
                f"drop gpu_type, or pass --host with {value} GPUs (see 'brightrun hosts list'; 'brightrun estimate --gpu {value}' prices it)",
            )


def launch_request(ws: "Workspace", job_id: str, *, gpus: int, gpu_type: str | None, resume: bool = False) -> "LaunchRequest":
    """What the runner starts: one process per GPU; one on a CPU host."""
    from brightrun_cli.runners.base import LaunchRequest

    path = ws.home / "runs" / job_id
    return LaunchRequest(job_id=job_id, run_dir=path, spec_path=path / "spec.json",
                         num_processes=1 if (gpu_type or "cpu") == "cpu" else gpus, resume=resume)


# Where brightrun's value for each accelerate launch key comes from (for the refusal's hint).
_LAUNCH_KEY_OWNERS = {
    "num_processes": "brightrun starts one process per GPU: --gpus, --hosts",
    "num_machines": "one machine per --hosts entry",
    "machine_rank": "brightrun numbers the hosts",
    "main_process_ip": "brightrun picks the rendezvous",
    "main_process_port": "brightrun picks the rendezvous",
    "mixed_precision": "the trainer's precision comes from the spec: --set precision=bf16",
}


def check_accelerate_config(path: Path, hosts: list[Host], processes: int, hyperparameters: dict[str, Any]):
    """Read `train --accelerate-config FILE` with the trainer's own parser and refuse what would
    not run as written: launch values that differ from brightrun's (its explicit flags would
    override them), and FSDP/DeepSpeed where accelerate cannot shard. Returns the AccelerateConfig."""
    from brightrun_cli.runners.accelerate import LAUNCH_KEYS
    from brightrun_cli.trainer.spec import SpecError, load_accelerate_config

    hint = "fix the file (README: 'Using FSDP or DeepSpeed configs')"
    if not path.is_file():
        raise UsageError(f"--accelerate-config {path} is not a file", "pass an accelerate config file (YAML, or JSON ending in .json)")
    try:
        config = load_accelerate_config(path)
    except SpecError as exc:
        raise UsageError(str(exc), hint) from None
    precision = hyperparameters.get("precision", "auto")
    ours = {"num_processes": processes * len(hosts), "num_machines": len(hosts), "machine_rank": 0,
            "main_process_ip": None, "main_process_port": None,
            "mixed_precision": {"auto": "no", "fp32": "no"}.get(precision, precision)}
    for key in LAUNCH_KEYS:
        given = config.settings.get(key)
        if given is not None and given != ours[key] and not (key == "mixed_precision" and given == "no"):
            raise UsageError(
                f"accelerate config {path}: {key} = {given} differs from this job's "
                f"{ours[key] if ours[key] is not None else 'own choice'} (brightrun's launch flags would override it)",
                f"remove {key} from the file ({_LAUNCH_KEY_OWNERS[key]})",
            )
    kind = config.distributed_type
    if kind == "NO" and processes * len(hosts) > 1:
        raise UsageError(f"accelerate config {path}: distributed_type NO runs one process, this job launches "
                         f"{processes * len(hosts)}", "use MULTI_GPU, FSDP or DEEPSPEED, or --gpus 1")
    if config.sharded:
        cpu = [h.name for h in hosts if h.gpu_type == "cpu"]
        if cpu:
            raise UsageError(f"accelerate config {path} asks for {kind}, but host '{cpu[0]}' has no GPU and accelerate "
                             "shards only on GPUs (on a CPU it silently runs DDP)", "run it on a GPU host, or leave out --accelerate-config")
        if kind == "DEEPSPEED" and hosts[0].kind == "local" and importlib.util.find_spec("deepspeed") is None:
            raise UsageError(f"accelerate config {path} asks for DeepSpeed, which is not installed here", "pip install deepspeed")
    return config


def place_accelerate_config(source: Path, run_dir: Path, name: str) -> None:
    """Copy the job's accelerate config into its run dir (atomically), where runners ship it with the spec."""
    from brightrun_cli.config import ensure_private_dir

    ensure_private_dir(run_dir)
    tmp = run_dir / f".{name}.tmp"
    shutil.copyfile(source, tmp)
    os.replace(tmp, run_dir / name)


def _spec(job_id: str, config: Any, accelerate: Any = None) -> dict[str, Any]:
    spec = {
        "version": 1,
        "job_id": job_id,
        "base_model": config.base_model,
        "train_file": "train.jsonl",
        "validation_file": "validation.jsonl",
        "output_dir": ".",
        "seed": SEED,
        "hyperparameters": config.hyperparameters(),
        "logging_steps": 1,  # every optimizer step: the curves and the ETA want them all
        "save_steps": 0,  # the trainer checkpoints on SIGTERM (cancel, budget, a reaped job): what resume needs
        "max_steps": None,
        "resume": False,
    }
    if accelerate is not None:  # the copy in the run dir; accelerate reads .json as JSON, anything else as YAML
        spec["accelerate_config"] = "accelerate_config" + (".json" if accelerate.path.suffix == ".json" else ".yaml")
    return spec


_HF_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")


def _check_base_model(name: str | None, hosts: list[Host]) -> str:
    """The base model as the job will name it: a local directory made absolute (the trainer
    runs in its run dir), checked to be a model; on SSH hosts a path must be absolute."""
    if not name:
        raise UsageError("no base model given", "pass --base-model (a Hugging Face id, a local directory or builtin:tiny)")
    from brightrun_cli.builtin import absolute_base_model, names_a_path, resolve_base_model

    try:
        resolved = resolve_base_model(name)
    except (KeyError, ValueError) as exc:
        raise UsageError(f"unknown base model '{name}' ({exc})", "pass --base-model builtin:tiny, a Hugging Face id or a local directory") from exc
    local = all(h.kind == "local" for h in hosts)
    if not local and resolved.startswith(("/", ".", "~")):  # a directory on that host: read there (plan_training)
        if not resolved.startswith("/"):
            raise UsageError(f"base model path '{name}' is not absolute, and host '{hosts[0].name}' is reached over SSH",
                             "pass the model directory's absolute path on that host")
        return name
    if local and names_a_path(resolved):
        path = Path(absolute_base_model(resolved))
        if not (path / "config.json").is_file():
            raise UsageError(f"base model directory '{path}' has no config.json", "pass a directory saved with save_pretrained, a Hugging Face id or builtin:tiny")
        return name if name.startswith("builtin:") else str(path)
    if not _HF_ID.match(resolved):
        raise UsageError(f"base model '{name}' is neither a directory nor a Hugging Face id", "pass org/name, a local directory or builtin:tiny")
    if local and os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0"):
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(resolved, "config.json"), str):
            raise UsageError(f"base model '{resolved}' is not in the Hugging Face cache and HF_HUB_OFFLINE is set",
                             "download it first, unset HF_HUB_OFFLINE, or pass a local directory")
    return name


def _resolve_hosts(ws: "Workspace", names: tuple[str, ...]) -> list[Host]:
    if len(set(names)) != len(names):
        raise UsageError(f"--hosts names a host twice ({','.join(names)})", "list each host once")
    with ws.registry.session() as session:
        hosts = []
        for name in names:
            row = session.exec(select(Host).where(col(Host.name) == name)).first()
            if row is None:
                raise UsageError(f"unknown host '{name}'", "run 'brightrun hosts list', or add it with 'brightrun hosts add'")
            hosts.append(row)
    if len(hosts) > 1 and any(h.kind == "local" for h in hosts):
        raise UsageError("a multi-node job cannot include the local host", "list only SSH hosts in --hosts")
    if hosts[0].kind == "local":
        from brightrun_cli.services.hosts import refresh_local_host

        refresh_local_host(ws, hosts[0])
    return hosts


def submit(ws: "Workspace", plan: TrainPlan, standby: "queue.Standby | None" = None) -> TrainingJob:
    """Create the job (queued) with its notification in one transaction, then start the queue
    (with `standby`, a supervisor already started for it: queue.start_standby)."""
    from brightrun_cli.services import queue

    config = plan.resolved.config
    est = plan.estimate.to_json()
    details = est.get("training_details") or {}
    if plan.accelerate_config is not None:
        place_accelerate_config(plan.accelerate_config.path, ws.runs_dir / plan.job_id, plan.spec["accelerate_config"])
    job = TrainingJob(
        id=plan.job_id,
        dataset_id=plan.dataset.id,
        preset_id=plan.resolved.preset_id,
        base_model=config.base_model,
        hyperparameters=config.hyperparameters(),
        gpu_config=plan.gpu_config,
        host_id=plan.hosts[0].id,
        hosts=[h.name for h in plan.hosts],
        total_epochs=int(config.hyperparameters()["num_epochs"]),
        total_steps=details.get("total_steps"),
        estimated_duration_hours=est.get("estimated_duration_hours"),
        estimated_total_cost=float(est["estimated_cost"]),
        max_cost=plan.max_cost,
        spec=plan.spec,
        run_dir=f"runs/{plan.job_id}",
    )
    with ws.registry.write() as session:
        session.add(job)
        notify(session, "job_queued", "Training queued",
               f"Job {job.id[:10]} on '{plan.dataset.name}' ({job.preset_id}) is queued on {', '.join(job.hosts)}; estimate ${job.estimated_total_cost:,.2f}",
               priority="low", action_command=f"brightrun watch {job.id}", job_id=job.id, dataset_id=job.dataset_id)
    queue.kick(ws, standby=standby)
    return get_job(ws, job.id)


# ---------------------------------------------------------------------------- reading


def get_job(ws: "Workspace", ref: str) -> TrainingJob:
    with ws.registry.session() as session:
        return resolve(session, TrainingJob, ref, "job")


def list_jobs(ws: "Workspace", *, status: str | None = None, limit: int | None = None) -> list[TrainingJob]:
    from brightrun_cli.services import queue

    queue.kick(ws)
    statuses = _parse_statuses(status)
    with ws.registry.session() as session:
        query = select(TrainingJob).where(col(TrainingJob.deleted_at).is_(None)).order_by(col(TrainingJob.created_at).desc(), col(TrainingJob.id).desc())
        if statuses:
            query = query.where(col(TrainingJob.status).in_(statuses))
        if limit:
            query = query.limit(limit)
        return list(session.exec(query).all())


def _parse_statuses(status: str | None) -> list[str]:
    if not status:
        return []
    if status == "active":
        return list(ACTIVE)
    wanted = [s.strip() for s in status.split(",") if s.strip()]
    bad = [s for s in wanted if s not in STATUSES]
    if bad:
        raise UsageError(f"unknown job status '{bad[0]}'", f"use one of {', '.join(STATUSES)} or active (comma-separated)")
    return wanted


def run_dir(ws: "Workspace", job: TrainingJob) -> Path:
    return ws.home / (job.run_dir or f"runs/{job.id}")


def latest_checkpoint(path: Path) -> Path | None:
    """Newest complete checkpoint (`checkpoints/step-<N>`; the trainer renames them into place)."""
    found = []
    for entry in (path / "checkpoints").glob("step-*"):
        suffix = entry.name.removeprefix("step-")
        if entry.is_dir() and suffix.isdigit():
            found.append((int(suffix), entry))
    return max(found)[1] if found else None


def log_path(ws: "Workspace", job: TrainingJob, which: str = "trainer") -> Path:
    names = {"trainer": "trainer.log", "launcher": "launcher.log", "supervisor": "supervisor.log"}
    if which not in names:
        raise UsageError(f"unknown log '{which}'", f"use one of {', '.join(names)}")
    return run_dir(ws, job) / names[which]


def follow_log(ws: "Workspace", ref: str, *, which: str = "trainer", follow: bool = False, poll_s: float = 0.5) -> Iterator[str]:
    """Yield the log's text; with `follow`, keep yielding new text until the job ends."""
    job = get_job(ws, ref)
    path = log_path(ws, job, which)
    if not follow and not path.exists():
        raise NotFoundError(f"job {job.id} has no {which} log yet ({job.status})",
                            "it appears once the job starts; use 'brightrun jobs logs JOB -f' to wait for it")
    offset = 0
    while True:
        ended = _status(ws, job.id) in TERMINAL
        if path.exists():
            with path.open("rb") as fh:
                fh.seek(offset)
                chunk = fh.read()
            if chunk:
                offset += len(chunk)
                yield chunk.decode("utf-8", errors="replace")
        if not follow or ended:
            return
        time.sleep(poll_s)


def _status(ws: "Workspace", job_id: str) -> str:
    conn = ws.registry.connect()
    try:
        return conn.execute("SELECT status FROM training_jobs WHERE id = ?", (job_id,)).fetchone()[0]
    finally:
        conn.close()


# ---------------------------------------------------------------------------- changing


def cancel_job(ws: "Workspace", ref: str, *, wait_s: float = CANCEL_WAIT_S) -> TrainingJob:
    """Cancel a job: a queued one at once; a started one through its supervisor (TERM the trainer's
    process tree, grace, KILL; checkpoint kept; cost so far recorded). Returns the final row."""
    from brightrun_cli.services import queue

    job = get_job(ws, ref)
    if job.status in TERMINAL:
        raise ConflictError(f"job {job.id} is already {job.status}", "nothing to cancel")
    with ws.registry.write() as session:
        if transition(session, job.id, CANCELLED, only_from=(QUEUED,), error_message="cancelled while queued"):
            notify_cancelled(session, job, "while queued")
    deadline = time.monotonic() + wait_s
    signalled = None
    while time.monotonic() < deadline:
        job = get_job(ws, job.id)
        if job.status in TERMINAL:
            return job
        if job.status == QUEUED:  # resumed or released between reads: cancel the queued row again
            with ws.registry.write() as session:
                if transition(session, job.id, CANCELLED, only_from=(QUEUED,), error_message="cancelled while queued"):
                    notify_cancelled(session, job, "while queued")
            continue
        if job.supervisor_pid is not None:
            if signalled != job.supervisor_marker and queue.signal_supervisor(job.supervisor_pid, job.supervisor_marker):
                signalled = job.supervisor_marker  # it stops the trainer and records the end itself
            elif not queue.supervisor_alive(job.supervisor_pid, job.supervisor_marker):
                queue.end_without_supervisor(ws, job, CANCELLED, "cancelled by the user (its supervisor was already gone)")
        elif queue.claim_is_stale(job):
            queue.end_without_supervisor(ws, job, CANCELLED, "cancelled by the user (its supervisor never started)")
        time.sleep(0.2)
    raise OperationError(f"job {job.id} is still stopping after {wait_s:.0f}s", f"check 'brightrun jobs show {job.id}' in a moment")


def notify_cancelled(session: Session, job: TrainingJob, how: str) -> None:
    notify(session, "job_cancelled", "Training cancelled", f"Job {job.id[:10]} was cancelled {how}",
           priority="medium", action_command=f"brightrun jobs retry {job.id}", job_id=job.id, dataset_id=job.dataset_id)


def retry_job(ws: "Workspace", ref: str, standby: "queue.Standby | None" = None) -> TrainingJob:
    """A new attempt from scratch: a new queued job with the same configuration, retry_count+1."""
    from brightrun_cli.services import queue

    old = get_job(ws, ref)
    if old.status not in RESUMABLE:
        raise ConflictError(f"job {old.id} is {old.status}; only failed or cancelled jobs can be retried",
                            "cancel it first" if old.status in ACTIVE else "start a new one with 'brightrun train'")
    new_job_id = new_id()
    spec = dict(old.spec or {}, job_id=new_job_id, resume=False)
    if spec.get("accelerate_config"):
        source = run_dir(ws, old) / spec["accelerate_config"]
        if not source.is_file():
            raise ConflictError(f"job {old.id}'s accelerate config ({source}) is gone",
                                "start a new job with 'brightrun train --accelerate-config FILE'")
        place_accelerate_config(source, ws.runs_dir / new_job_id, spec["accelerate_config"])
    job = TrainingJob(
        id=new_job_id, dataset_id=old.dataset_id, preset_id=old.preset_id, base_model=old.base_model,
        hyperparameters=old.hyperparameters, gpu_config=old.gpu_config, host_id=old.host_id, hosts=old.hosts,
        total_epochs=old.total_epochs, total_steps=old.total_steps, estimated_duration_hours=old.estimated_duration_hours,
        estimated_total_cost=old.estimated_total_cost, max_cost=old.max_cost, spec=spec, run_dir=f"runs/{new_job_id}",
        retry_count=old.retry_count + 1,
    )
    with ws.registry.write() as session:
        session.add(job)
        notify(session, "job_queued", "Training queued (retry)", f"Job {job.id[:10]} retries {old.id[:10]} (attempt {job.retry_count + 1})",
               priority="low", action_command=f"brightrun watch {job.id}", job_id=job.id, dataset_id=job.dataset_id,
               metadata={"retry_of": old.id})
    queue.kick(ws, standby=standby)
    return get_job(ws, job.id)


def resume_job(ws: "Workspace", ref: str, *, max_cost: float | None = None,
               standby: "queue.Standby | None" = None) -> TrainingJob:
    """Continue a failed or cancelled job from its last checkpoint: same job id, a new attempt."""
    from brightrun_cli.services import queue

    job = get_job(ws, ref)
    if job.status not in RESUMABLE:
        raise ConflictError(f"job {job.id} is {job.status}; only failed or cancelled jobs can be resumed",
                            "wait for it to end" if job.status in ACTIVE else "completed jobs are done")
    is_local = _is_local(ws, job)
    if is_local and latest_checkpoint(run_dir(ws, job)) is None and not finished_uncollected(run_dir(ws, job)):
        raise ConflictError(f"job {job.id} has no checkpoint to resume from", f"run 'brightrun jobs retry {job.id}' to start it again")
    if max_cost is not None and max_cost <= job.current_cost:
        raise UsageError(f"--max-cost ${max_cost:,.2f} is not above what the job has already cost (${job.current_cost:,.2f})", "pass a higher --max-cost")
    values: dict[str, Any] = dict(
        status=QUEUED, current_stage=QUEUED, queued_at=utcnow(), completed_at=None, error_message=None, error_stack=None,
        final_cost=None, supervisor_pid=None, supervisor_marker=None, heartbeat_at=None, estimated_completion_at=None,
        resume_count=job.resume_count + 1, updated_at=utcnow(),
    )
    if max_cost is not None:
        values["max_cost"] = max_cost
    with ws.registry.write() as session:
        # The deliberate way back: CAS on the status and attempt we saw, so two resumes make one attempt.
        result = session.exec(
            update(TrainingJob).where(col(TrainingJob.id) == job.id, col(TrainingJob.status) == job.status,
                                      col(TrainingJob.resume_count) == job.resume_count).values(**values)
        )
        if result.rowcount != 1:
            raise ConflictError(f"job {job.id} changed while resuming", "look at 'brightrun jobs show' and try again")
        notify(session, "job_queued", "Training queued (resume)", f"Job {job.id[:10]} resumes from its last checkpoint (attempt {job.resume_count + 2})",
               priority="low", action_command=f"brightrun watch {job.id}", job_id=job.id, dataset_id=job.dataset_id)
    queue.kick(ws, standby=standby)
    return get_job(ws, job.id)


def hosts_of(ws: "Workspace", job: TrainingJob) -> list[Host]:
    """The job's hosts in order (the first is the main node); NotFoundError if one was removed."""
    with ws.registry.session() as session:
        if job.hosts:
            rows = {h.name: h for h in session.exec(select(Host).where(col(Host.name).in_(job.hosts))).all()}
            missing = [n for n in job.hosts if n not in rows]
            if missing:
                raise NotFoundError(f"host '{missing[0]}' of job {job.id} no longer exists", "add it again with 'brightrun hosts add'")
            return [rows[n] for n in job.hosts]
        host = session.get(Host, job.host_id) if job.host_id else None
        if host is None:
            raise NotFoundError(f"job {job.id} has no host", "retry it with 'brightrun train --host ...'")
        return [host]


def _is_local(ws: "Workspace", job: TrainingJob) -> bool:
    return all(h.kind == "local" for h in hosts_of(ws, job))


def remove_job(ws: "Workspace", ref: str) -> TrainingJob:
    """Forget a finished job: hide the row, drop its metric points and local run directory.

    Its model artifact (if any) stays, and so do its cost records (spend is history)."""
    job = get_job(ws, ref)
    if job.status in ACTIVE:
        raise ConflictError(f"job {job.id} is {job.status}", f"cancel it first: brightrun jobs cancel {job.id}")
    with ws.registry.write() as session:
        result = session.exec(
            update(TrainingJob).where(col(TrainingJob.id) == job.id, col(TrainingJob.status).in_(TERMINAL), col(TrainingJob.deleted_at).is_(None))
            .values(deleted_at=utcnow(), updated_at=utcnow())
        )
        if result.rowcount != 1:
            raise ConflictError(f"job {job.id} changed while removing it", "look at 'brightrun jobs show' and try again")
        session.exec(MetricPoint.__table__.delete().where(MetricPoint.__table__.c.job_id == job.id))
    shutil.rmtree(run_dir(ws, job), ignore_errors=True)
    return job


def finished_uncollected(path: Path) -> bool:
    """The trainer in this run dir completed and saved its adapter (a supervisor that died
    before recording that leaves the job failed): a resume only has to collect it."""
    result = read_result(path) or {}
    return result.get("status") == "completed" and result.get("exit_code") == 0 and (path / "final" / "adapter_model.safetensors").is_file()


def read_result(path: Path) -> dict[str, Any] | None:
    """The trainer's result.json, or None when absent or unreadable (a killed trainer writes none)."""
    try:
        data = json.loads((path / "result.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
