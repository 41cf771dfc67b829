"""`brightrun status`: the fleet at a glance, from plain reads (a read command: no ORM).

Per host: GPU slots, the jobs queued for it and those running on it (a multi-node job
counts on each of its hosts, as the queue counts it). Jobs that ended in the last 7 and
30 days: how many completed, failed, were cancelled, the success rate (completed out of
completed + failed: a cancel is the user's choice, not a failure) and the mean wall time
of the completed ones (start of the last attempt to the end). Spend this calendar month
and last (UTC, from cost records). Storage: the blob store's datasets and models and the
run directories' checkpoints, measured on disk; a remote store (S3, ...) is listed only
when asked (`--storage`), since a listing is network round trips.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec

from brightrun_cli import lifecycle
from brightrun_cli.registry import costs as cost_records
from brightrun_cli.registry import hosts as host_rows
from brightrun_cli.registry import jobs as job_rows
from brightrun_cli.registry.rows import iso
from brightrun_cli.registry.timeutil import utcnow
from brightrun_cli.workspace import Workspace

WINDOWS_DAYS = (7, 30)
STORAGE_KINDS = ("datasets", "models", "checkpoints")


class HostLoad(msgspec.Struct, frozen=True):
    name: str
    kind: str
    gpu_type: str
    gpus: int  # slots
    gpus_in_use: int
    queued: list[str]  # job ids, oldest first
    running: list[str]  # initializing or running

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "gpu_type": self.gpu_type, "gpus": self.gpus,
                "gpus_in_use": self.gpus_in_use, "queued": len(self.queued), "running": len(self.running),
                "queued_jobs": self.queued, "running_jobs": self.running}


class Outcomes(msgspec.Struct, frozen=True):
    days: int
    since: datetime
    completed: int = 0
    failed: int = 0
    cancelled: int = 0
    avg_duration_s: float | None = None  # completed jobs only

    @property
    def ended(self) -> int:
        return self.completed + self.failed + self.cancelled

    @property
    def success_rate(self) -> float | None:
        decided = self.completed + self.failed
        return self.completed / decided if decided else None

    def to_json(self) -> dict[str, Any]:
        return {"days": self.days, "since": iso(self.since), "ended": self.ended, "completed": self.completed,
                "failed": self.failed, "cancelled": self.cancelled,
                "success_rate": None if self.success_rate is None else round(self.success_rate, 4),
                "avg_duration_s": None if self.avg_duration_s is None else round(self.avg_duration_s, 1)}


class Usage(msgspec.Struct, frozen=True):
    bytes: int
    files: int

    def to_json(self) -> dict[str, int]:
        return {"bytes": self.bytes, "files": self.files}


class Storage(msgspec.Struct, frozen=True):
    url: str
    measured: bool  # False: a remote store not listed (pass --storage); its kinds are None
    kinds: dict[str, Usage | None] = msgspec.field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        measured = [u.bytes for u in self.kinds.values() if u is not None]
        return {"url": self.url, "measured": self.measured,
                **{kind: None if usage is None else usage.to_json() for kind, usage in self.kinds.items()},
                "total_bytes": sum(measured) if self.measured else None}


class FleetStatus(msgspec.Struct, frozen=True):
    generated_at: datetime
    hosts: list[HostLoad]
    windows: list[Outcomes]
    this_month: tuple[str, float]  # (YYYY-MM, USD)
    last_month: tuple[str, float]
    storage: Storage

    def to_json(self) -> dict[str, Any]:
        return {
            "generated_at": iso(self.generated_at),
            "hosts": [h.to_json() for h in self.hosts],
            "jobs": [w.to_json() for w in self.windows],
            "spend": {"this_month": {"period": self.this_month[0], "total_cost": round(float(self.this_month[1]), 6)},
                      "last_month": {"period": self.last_month[0], "total_cost": round(float(self.last_month[1]), 6)}},
            "storage": self.storage.to_json(),
        }


def fleet_status(ws: Workspace, *, measure_remote: bool = False, now: datetime | None = None) -> FleetStatus:
    now = now or utcnow()
    month = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    last = (month - timedelta(days=1)).replace(day=1)
    with ws.registry.reading() as conn:
        hosts = host_rows.all_hosts(conn)
        active = job_rows.in_status(conn, lifecycle.ACTIVE)
        sinces = [now - timedelta(days=days) for days in WINDOWS_DAYS]
        windows = [_outcomes(days, since, rows) for days, since, rows in
                   zip(WINDOWS_DAYS, sinces, job_rows.outcomes_since(conn, sinces, lifecycle.TERMINAL))]
        spent_before, spent = cost_records.totals_between(conn, [last, month])
    return FleetStatus(generated_at=now, hosts=_loads(hosts, active), windows=windows,
                       this_month=(f"{month:%Y-%m}", spent), last_month=(f"{last:%Y-%m}", spent_before),
                       storage=_storage(ws, measure_remote))


def _loads(hosts, active) -> list[HostLoad]:
    by_name = {h.name: (h, [], [], [0]) for h in hosts}
    names_by_id = {h.id: h.name for h in hosts}
    for job in active:
        names = job.host_names or [names_by_id.get(job.host_id or "", "")]
        for name in names:
            if name not in by_name:  # a host removed while the job waits: the queue fails it
                continue
            _, queued, running, used = by_name[name]
            if job.status == lifecycle.QUEUED:
                queued.append(job.id)
            else:
                running.append(job.id)
                used[0] += max(1, int((job.gpu_config or {}).get("count") or 1))
    return [HostLoad(name=h.name, kind=h.kind, gpu_type=h.gpu_type, gpus=h.gpus, gpus_in_use=used[0], queued=queued,
                     running=running) for h, queued, running, used in by_name.values()]


def _outcomes(days: int, since: datetime, rows: list[tuple[str, int, float | None]]) -> Outcomes:
    counts = {status: n for status, n, _ in rows}
    duration = next((seconds for status, _, seconds in rows if status == lifecycle.COMPLETED), None)
    return Outcomes(days=days, since=since, completed=counts.get(lifecycle.COMPLETED, 0), failed=counts.get(lifecycle.FAILED, 0),
                    cancelled=counts.get(lifecycle.CANCELLED, 0), avg_duration_s=duration)


def local_store_root(ws: Workspace) -> Path | None:
    """The blob store's directory when it is on this machine (no fsspec import), else None."""
    url = ws.config.storage_url
    if url is None:
        return ws.home / "storage"
    if url.startswith("file://"):
        return Path(url[len("file://"):])
    return None if "://" in url or "::" in url else Path(url).expanduser()


def _storage(ws: Workspace, measure_remote: bool) -> Storage:
    root = local_store_root(ws)
    checkpoints = Usage(0, 0)
    runs = ws.home / "runs"
    if runs.is_dir():
        for entry in os.scandir(runs):
            checkpoints = _add(checkpoints, tree_usage(Path(entry.path) / "checkpoints"))
    if root is not None:
        return Storage(url=str(root), measured=True, kinds={
            "datasets": tree_usage(root / "datasets"), "models": tree_usage(root / "models"), "checkpoints": checkpoints})
    if not measure_remote:
        return Storage(url=ws.config.storage_url or "", measured=False,
                       kinds={"datasets": None, "models": None, "checkpoints": checkpoints})
    store = ws.storage
    kinds = {}
    for kind in ("datasets", "models"):
        sizes = store.sizes(kind)
        kinds[kind] = Usage(sum(sizes.values()), len(sizes))
    return Storage(url=store.url, measured=True, kinds={**kinds, "checkpoints": checkpoints})


def _add(a: Usage, b: Usage) -> Usage:
    return Usage(a.bytes + b.bytes, a.files + b.files)


def tree_usage(path: Path) -> Usage:
    """Bytes and files below `path` (0 when it does not exist); links are not followed."""
    total = files = 0
    stack = [str(path)]
    while stack:
        try:
            entries = os.scandir(stack.pop())
        except OSError:
            continue
        with entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
                else:
                    try:
                        total += entry.stat(follow_symlinks=False).st_size
                        files += 1
                    except OSError:
                        pass
    return Usage(total, files)
