"""`brightrun prune`: free what nothing needs any more. A dry run unless told `--yes`;
both list the same items with the same byte counts, and the real run removes exactly
those (the plan is made once, then carried out).

What goes, by kind:

- notifications: read notifications created before the cutoff (`--older-than`);
- checkpoints: `checkpoints/` of completed jobs' run dirs, here and on their hosts
  (`final/` stays; a completed job is never resumed);
- runs: run dirs of removed jobs (`jobs rm`), here and on their hosts;
- datasets: the stored files (and local cache) of removed datasets that no queued,
  running, failed or cancelled job trains on (those may run, resume or retry), and
  files under `datasets/<id>/` whose dataset has no row at all (an interrupted add);
- models: the stored files of removed models, and files under `models/<id>/` with no row
  that no artifact being assembled has claimed (`cache/artifacts/<job>/artifact_id`);
- code: `<workdir>/code/<sha16>` on SSH and Slurm hosts except this brightrun's own and
  the code each live job on that host runs (recorded in its run dir when shipped; a live
  job without that record keeps all of its host's code).

Nothing a queued or running job uses is a candidate by construction: their run dirs
are neither completed nor removed, their datasets are kept, their code is kept. The
store is listed before the registry is read, so files of a dataset or model being
added right now (row first, then files) are never taken for orphans.
"""

from __future__ import annotations

import re
import shutil
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from brightrun_cli import lifecycle
from brightrun_cli.errors import BrightrunError, OperationError, UsageError
from brightrun_cli.registry import datasets as dataset_rows
from brightrun_cli.registry import hosts as host_rows
from brightrun_cli.registry import jobs as job_rows
from brightrun_cli.registry import models as model_rows
from brightrun_cli.registry import notifications as notification_rows
from brightrun_cli.registry.rows import HostRow, JobRow
from brightrun_cli.registry.timeutil import utcnow
from brightrun_cli.services.status import tree_usage
from brightrun_cli.workspace import Workspace

KINDS = ("notifications", "checkpoints", "runs", "datasets", "models", "code")
DEFAULT_OLDER_THAN = "30d"
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([hdw]?)\s*$")
_UNIT_DAYS = {"h": 1 / 24, "d": 1.0, "": 1.0, "w": 7.0}
REMOTE_KINDS = ("ssh", "slurm")
DELETE_CHUNK = 500  # notification ids per DELETE (SQLite caps the variables of one statement)


@dataclass(frozen=True)
class Item:
    """One thing prune frees. `location`: registry (a notification row, by id), home (a
    path below the home), storage (a key prefix of the blob store) or workdir (a path
    below `host`'s workdir)."""

    kind: str
    location: str
    host: str
    target: str
    bytes: int
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "location": self.location, "host": self.host, "target": self.target,
                "bytes": self.bytes, "reason": self.reason}


@dataclass
class PrunePlan:
    older_than_days: float
    items: list[Item] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)  # {"host", "reason"}: hosts not looked at

    def totals(self) -> dict[str, dict[str, int]]:
        totals = {kind: {"count": 0, "bytes": 0} for kind in KINDS}
        for item in self.items:
            totals[item.kind]["count"] += 1
            totals[item.kind]["bytes"] += item.bytes
        return totals

    def to_json(self, dry_run: bool) -> dict[str, Any]:
        return {"dry_run": dry_run, "older_than_days": self.older_than_days, "kinds": self.totals(),
                "total_bytes": sum(i.bytes for i in self.items), "items": [i.to_json() for i in self.items],
                "skipped": self.skipped}


MAX_OLDER_THAN_DAYS = 36_500


def parse_older_than(text: str) -> float:
    """`--older-than 30d` (also 12h, 2w, or a plain number of days) as days."""
    found = _DURATION.match(text or "")
    if not found:
        raise UsageError(f"--older-than '{text}' is not a duration", "write it as days, hours or weeks: 30d, 12h, 2w")
    days = float(found[1]) * _UNIT_DAYS[found[2]]
    if days > MAX_OLDER_THAN_DAYS:
        raise UsageError(f"--older-than '{text}' is too long", f"give at most {MAX_OLDER_THAN_DAYS} days (100 years)")
    return days


def plan_prune(ws: Workspace, older_than: str = DEFAULT_OLDER_THAN) -> PrunePlan:
    """What prune would free now (changes nothing)."""
    days = parse_older_than(older_than)
    plan = PrunePlan(older_than_days=days)
    store = ws.storage
    # Listed before the registry is read: a dataset or model row is written before its files.
    stored = {kind: _by_id(store.sizes(kind)) for kind in ("datasets", "models")}
    claimed = _claimed_artifact_ids(ws.cache_dir / "artifacts")
    cutoff = utcnow() - timedelta(days=days)
    with ws.registry.reading() as conn:
        notes = notification_rows.read_before(conn, cutoff)
        completed = job_rows.live_in(conn, (lifecycle.COMPLETED,))
        removed_jobs = job_rows.removed(conn)
        active = job_rows.live_in(conn, lifecycle.ACTIVE)
        needed_datasets = job_rows.dataset_ids_of(conn, lifecycle.ACTIVE + lifecycle.RESUMABLE)
        removed_datasets = {d.id: d for d in dataset_rows.removed(conn)}
        dataset_ids = dataset_rows.all_ids(conn)
        removed_models = {m.id: m for m in model_rows.removed(conn)}
        model_ids = model_rows.all_ids(conn)
        hosts = {h.name: h for h in host_rows.all_hosts(conn)}
    plan.items += [Item("notifications", "registry", "local", n.id, 0, f"read, created {n.created_at:%Y-%m-%d}") for n in notes]
    remote: dict[str, list[tuple[str, str, str]]] = defaultdict(list)  # host -> [(kind, path, reason)]
    for job in completed:
        _job_dir(ws, plan, remote, hosts, job, "checkpoints", f"runs/{job.id}/checkpoints", f"job {job.id} completed")
    for job in removed_jobs:
        _job_dir(ws, plan, remote, hosts, job, "runs", f"runs/{job.id}", f"job {job.id} was removed")
    for dataset_id, size in sorted(stored["datasets"].items()):
        if dataset_id in removed_datasets and dataset_id not in needed_datasets:
            reason = f"dataset '{removed_datasets[dataset_id].name}' was removed"
        elif dataset_id not in dataset_ids:
            reason = "files of a dataset that has no row (an interrupted add)"
        else:
            continue
        plan.items.append(Item("datasets", "storage", "local", f"datasets/{dataset_id}", size, reason))
    for dataset_id in sorted(set(removed_datasets) - needed_datasets):
        _home_dir(ws, plan, "datasets", f"cache/datasets/{dataset_id}", f"cached files of removed dataset '{removed_datasets[dataset_id].name}'")
    for model_id, size in sorted(stored["models"].items()):
        if model_id in removed_models:
            reason = f"model {removed_models[model_id].name} v{removed_models[model_id].version} was removed"
        elif model_id not in model_ids and model_id not in claimed:
            reason = "files of a model that has no row (an interrupted store)"
        else:
            continue
        plan.items.append(Item("models", "storage", "local", f"models/{model_id}", size, reason))
    remote_hosts = sorted(n for n, h in hosts.items() if h.kind in REMOTE_KINDS)
    if remote_hosts:
        from brightrun_cli.runners.ssh import code_version

        ours = code_version()
        for name in remote_hosts:
            _remote(ws, plan, hosts[name], remote.get(name, []), [j for j in active if name in _host_names(j, hosts)], ours)
    plan.items.sort(key=lambda i: (KINDS.index(i.kind), i.host, i.location, i.target))
    return plan


def _by_id(sizes: dict[str, int]) -> dict[str, int]:
    """{"datasets/<id>/data.jsonl": n, ...} -> {<id>: bytes under datasets/<id>/}."""
    totals: dict[str, int] = defaultdict(int)
    for key, size in sizes.items():
        parts = key.split("/")
        if len(parts) >= 3:
            totals[parts[1]] += size
    return dict(totals)


def _claimed_artifact_ids(staging: Path) -> set[str]:
    """Artifact ids that a completed job's artifact creation chose (in progress, or to be
    retried by `jobs resume`): their files under models/ have no row yet."""
    claimed = set()
    for marker in staging.glob("*/artifact_id"):
        try:
            claimed.add(marker.read_text().strip())
        except OSError:
            pass
    return claimed


def _host_names(job: JobRow, hosts: dict[str, HostRow]) -> list[str]:
    if job.host_names:
        return job.host_names
    return [h.name for h in hosts.values() if h.id == job.host_id]


def _home_dir(ws: Workspace, plan: PrunePlan, kind: str, relative: str, reason: str) -> None:
    path = ws.home / relative
    if path.is_dir() and not path.is_symlink():
        plan.items.append(Item(kind, "home", "local", relative, tree_usage(path).bytes, reason))


def _job_dir(ws: Workspace, plan: PrunePlan, remote: dict, hosts: dict[str, HostRow], job: JobRow, kind: str,
             relative: str, reason: str) -> None:
    """The job's directory `relative` (runs/<id>[/checkpoints]) here, and on each remote host it ran on."""
    local_relative = relative.replace(f"runs/{job.id}", job.run_dir or f"runs/{job.id}", 1)
    _home_dir(ws, plan, kind, local_relative, reason)
    for name in _host_names(job, hosts):
        if name in hosts and hosts[name].kind in REMOTE_KINDS:
            remote[name].append((kind, relative, reason))


def _remote(ws: Workspace, plan: PrunePlan, host: HostRow, candidates: list[tuple[str, str, str]], active: list[JobRow],
            ours: str) -> None:
    """Size the host's candidates and its shipped code in one round trip; keep the code of
    this brightrun (`ours`) and of every live job there. An unreachable host is skipped, said so."""
    from brightrun_cli.runners import remote_files

    keep = {ours}
    unknown = []
    for job in active:
        version = remote_files.recorded_code(lifecycle.run_dir(ws.home, job))
        if version:
            keep.add(version)
        elif job.status != lifecycle.QUEUED and job.external_job_id:  # started before its code was recorded
            unknown.append(job.id)
    try:
        scan = remote_files.scan(ws, host, sorted({path for _, path, _ in candidates}))
    except BrightrunError as exc:
        plan.skipped.append({"host": host.name, "reason": exc.message})
        return
    for kind, path, reason in candidates:
        if path in scan.paths:
            plan.items.append(Item(kind, "workdir", host.name, path, scan.paths[path], reason))
    if unknown:
        plan.skipped.append({"host": host.name, "reason": f"code dirs kept: job {unknown[0]} runs code this brightrun did not record"})
        return
    for version, size in sorted(scan.code.items()):
        if version not in keep:
            plan.items.append(Item("code", "workdir", host.name, f"code/{version}", size, "shipped code no live job runs"))


def prune(ws: Workspace, plan: PrunePlan) -> PrunePlan:
    """Remove exactly the plan's items; returns the plan. Every item is tried; if some could
    not be removed, OperationError names the first and how many."""
    failed: list[str] = []
    notes = [i.target for i in plan.items if i.location == "registry"]
    if notes:
        with ws.registry.write() as tx:
            for start in range(0, len(notes), DELETE_CHUNK):
                notification_rows.delete(tx, notes[start:start + DELETE_CHUNK])
    remote: dict[str, list[str]] = defaultdict(list)
    for item in plan.items:
        try:
            if item.location == "home":
                _remove_tree(ws.home / item.target)
            elif item.location == "storage":
                ws.storage.delete(item.target)
            elif item.location == "workdir":
                remote[item.host].append(item.target)
        except (OSError, BrightrunError) as exc:
            failed.append(f"{item.target}: {getattr(exc, 'message', None) or exc}")
    if remote:
        from brightrun_cli.runners import remote_files

        with ws.registry.reading() as conn:
            hosts = {h.name: h for h in host_rows.all_hosts(conn)}
        for name, paths in remote.items():
            try:
                remote_files.remove(ws, hosts[name], paths)
            except (KeyError, BrightrunError) as exc:
                failed.append(f"{name}: {getattr(exc, 'message', None) or exc}")
    if failed:
        raise OperationError(f"could not remove {len(failed)} item(s), first {failed[0]}", "run 'brightrun prune' again to see what is left")
    return plan


def _remove_tree(path: Path) -> None:
    """Remove a directory tree below the home (not following links out of it)."""
    if path.is_symlink() or not path.is_dir():
        path.unlink(missing_ok=True)
        return
    shutil.rmtree(path)
    if path.exists():
        raise OSError(f"{path} is still there")
