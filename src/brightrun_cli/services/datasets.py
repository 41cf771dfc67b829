"""Datasets (SPEC 3) once stored: list, show, remove, and the split files for training.

Adding and validating (the streaming ingest) is services/dataset_add.py. A command
working on a dataset holds its lock file (`processing_lock`); a row left in
`uploading`/`validating` by a process that died is marked `error` by the next dataset
command (`repair_interrupted`), so no row waits forever and no ready row lacks its files.

A dataset in `error` without stored data (an add that failed validation or was
interrupted) keeps its report for `show` but does not hold its name: the next add of
that name replaces it (`holds_name`), so a script reruns the same command once the file
is fixed. Files that disappeared from storage afterwards are found by `missing_files`.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

from brightrun_cli.errors import ConflictError, NotFoundError, OperationError, UsageError
from brightrun_cli.registry import datasets as dataset_rows
from brightrun_cli.registry import jobs as job_rows
from brightrun_cli.registry import models as model_rows
from brightrun_cli.registry.rows import DatasetRow
from brightrun_cli.registry.timeutil import utcnow
from brightrun_cli.services.notifications import notify

if TYPE_CHECKING:
    from brightrun_cli.registry.engine import Tx
    from brightrun_cli.workspace import Workspace

STATUSES = ("uploading", "validating", "ready", "error")


def data_key(dataset_id: str) -> str:
    return f"datasets/{dataset_id}/data.jsonl"


def split_keys(dataset_id: str) -> tuple[str, str]:
    return f"datasets/{dataset_id}/train.jsonl", f"datasets/{dataset_id}/validation.jsonl"


def add_again_command(row: DatasetRow) -> str:
    """The command that adds a dataset's source again under its name (shell-quoted)."""
    return shlex.join(["brightrun", "dataset", "add", *row.sources, "--name", row.name])


def holds_name(row: DatasetRow) -> bool:
    """Whether a live dataset keeps its name from a new add: every one but a failed add
    (status error, nothing stored), whose report is only there to be read."""
    return not (row.status == "error" and row.content_sha256 is None)


# ------------------------------------------------------------------ stored files


def local_store_root(ws: "Workspace") -> Path | None:
    """The blob store's directory when it is local, worked out without building the store
    (fsspec costs a read command ~0.2 s); None for a remote store."""
    url = ws.config.storage_url
    if not url:
        return ws.home / "storage"
    if url.startswith("file://"):
        return Path(url[len("file://"):])
    if "://" not in url:
        return Path(url).expanduser().absolute()
    return None


def missing_files(ws: "Workspace", row: DatasetRow) -> list[str]:
    """Storage keys of a dataset with stored data (its data file and split) that are gone."""
    if row.content_sha256 is None or row.status not in ("ready", "error"):
        return []
    keys = [row.storage_path, *split_keys(row.id)]
    root = local_store_root(ws)
    if root is not None:
        return [key for key in keys if not (root / key).is_file()]
    return [key for key in keys if not ws.storage.exists(key)]


def require_stored_files(ws: "Workspace", row: DatasetRow) -> None:
    """Refuse a dataset whose files left storage (a run would fail once it starts)."""
    missing = missing_files(ws, row)
    if missing:
        raise UsageError(
            f"dataset '{row.name}' is missing {', '.join(missing)} in storage",
            f"run 'brightrun dataset validate {row.id}' (it rewrites the split from the data file, or says what to do without it)",
        )


# --------------------------------------------------------------- interrupted commands


def _lock_path(ws: "Workspace", dataset_id: str) -> Path:
    locks = ws.cache_dir / "locks"
    locks.mkdir(mode=0o700, exist_ok=True)
    return locks / f"dataset-{dataset_id}.lock"


@contextlib.contextmanager
def processing_lock(ws: "Workspace", dataset_id: str) -> Iterator[None]:
    """Held (flock) for as long as this process works on the dataset; the kernel drops it if
    the process dies, which is how `repair_interrupted` tells a live command from a dead one."""
    path = _lock_path(ws, dataset_id)
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        path.unlink(missing_ok=True)
        os.close(fd)


def _is_being_processed(ws: "Workspace", dataset_id: str) -> bool:
    try:
        fd = os.open(_lock_path(ws, dataset_id), os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops the lock if we took it
    return False


def repair_interrupted(ws: "Workspace") -> list[str]:
    """Mark rows left in uploading/validating by a dead process as `error`, with the reason.

    Returns the ids repaired. Cheap when there is nothing to do (one indexed query)."""
    with ws.registry.reading() as conn:
        stuck = dataset_rows.ids_in(conn, ("uploading", "validating"))
    candidates = [i for i in stuck if not _is_being_processed(ws, i)]
    if not candidates:
        return []
    repaired: list[tuple[str, bool]] = []
    with ws.registry.write() as tx:
        for dataset_id in candidates:
            row = require_row(dataset_rows.get_in(tx, dataset_id), dataset_id)
            # Re-checked under the write lock: the owner may have finished meanwhile.
            if row.status not in ("uploading", "validating") or _is_being_processed(ws, dataset_id):
                continue
            revalidation = row.validated_at is not None
            what = "re-validation" if revalidation else "add"
            message = f"interrupted while {row.status} (the {what} command stopped before finishing)"
            dataset_rows.update(tx, dataset_id, status="error", training_ready=False, error_message=message)
            todo = f"brightrun dataset validate {row.id}" if revalidation else add_again_command(row)
            notify(tx, "dataset_error", "Dataset interrupted", f'Dataset "{row.name}" was {message}; run {todo}',
                   priority="high", action_command=todo, dataset_id=row.id)
            repaired.append((dataset_id, revalidation))
    for dataset_id, keep_files in repaired:
        # What the dead process left: its local v4 file, its lock file, and (an add) partial blobs.
        for leftover in [*ws.cache_dir.glob(f"dataset-{dataset_id}-*"), _lock_path(ws, dataset_id)]:
            leftover.unlink(missing_ok=True)
        if not keep_files:
            with contextlib.suppress(Exception):
                ws.storage.delete(f"datasets/{dataset_id}")
    return [i for i, _ in repaired]


# ------------------------------------------------------------------- list / show / rm


def list_datasets(ws: "Workspace", status: str | None = None, search: str | None = None, limit: int | None = None) -> list[DatasetRow]:
    """Live datasets, newest first."""
    _check_status(status)
    repair_interrupted(ws)
    with ws.registry.reading() as conn:
        return dataset_rows.list_live(conn, status, search, limit)


def list_datasets_json(ws: "Workspace", status: str | None = None, search: str | None = None, limit: int | None = None) -> bytes:
    """`list_datasets` as a JSON array text (timestamps ISO 8601 UTC, like `show --json`)."""
    _check_status(status)
    repair_interrupted(ws)
    with ws.registry.reading() as conn:
        return dataset_rows.list_json(conn, status, search, limit)


def count_datasets(ws: "Workspace", status: str | None = None, search: str | None = None) -> int:
    with ws.registry.reading() as conn:
        return dataset_rows.count_live(conn, status, search)


def _check_status(status: str | None) -> None:
    if status is not None and status not in STATUSES:
        raise UsageError(f"--status {status}: unknown status", f"use one of {', '.join(STATUSES)}")


def get_dataset(ws: "Workspace", ref: str) -> DatasetRow:
    """A live dataset by id, unique id prefix or name."""
    repair_interrupted(ws)
    with ws.registry.reading() as conn:
        return dataset_rows.resolve(conn, ref)


class DatasetDetails(msgspec.Struct):
    """What `dataset show` prints: the row, and the files of it that left storage."""

    dataset: DatasetRow
    missing_files: list[str]

    def to_json(self) -> dict:
        return {**self.dataset.to_json(), "missing_files": self.missing_files}


def show_dataset(ws: "Workspace", ref: str) -> DatasetDetails:
    row = get_dataset(ws, ref)
    return DatasetDetails(row, missing_files(ws, row))


def require_row(row: DatasetRow | None, dataset_id: str) -> DatasetRow:
    if row is None:
        raise NotFoundError(f"dataset {dataset_id} disappeared meanwhile", "run 'brightrun dataset list'")
    return row


class Removal(msgspec.Struct):
    dataset: DatasetRow
    soft: bool  # kept (deleted_at set) because jobs or models refer to it
    references: int


def remove_dataset(ws: "Workspace", ref: str) -> Removal:
    """Delete a dataset: its row and files, or only mark it deleted when a job or model uses it."""
    row = get_dataset(ws, ref)
    if row.status in ("uploading", "validating"):
        raise ConflictError(f"dataset '{row.name}' is being {row.status[:-3]}ed by another command", "wait for it to finish, then remove it")
    with ws.registry.write() as tx:
        current = require_row(dataset_rows.get_in(tx, row.id), row.id)
        if current.status in ("uploading", "validating"):
            raise ConflictError(f"dataset '{row.name}' is being {current.status[:-3]}ed by another command", "wait for it to finish, then remove it")
        removal = remove_in(tx, current)
    drop_files(ws, removal)
    return removal


def remove_in(tx: "Tx", row: DatasetRow) -> Removal:
    """Remove a dataset inside a write transaction: the row goes, or it is only marked deleted
    when jobs or models refer to it. Its files go afterwards (`drop_files`)."""
    references = job_rows.count_for_dataset(tx, row.id) + model_rows.count_for_dataset(tx, row.id)
    if references:
        now = utcnow()
        row = require_row(dataset_rows.update(tx, row.id, deleted_at=now, updated_at=now), row.id)
    else:
        dataset_rows.delete(tx, row.id)
    return Removal(dataset=row, soft=bool(references), references=references)


def drop_files(ws: "Workspace", removal: Removal) -> None:
    """After the row is gone: a crash here leaves orphan blobs, never a row without files."""
    if not removal.soft:
        ws.storage.delete(f"datasets/{removal.dataset.id}")


def split_paths(ws: "Workspace", dataset: DatasetRow) -> tuple[Path, Path]:
    """Local paths of the dataset's train and validation JSONL (fetched into the cache from a remote store)."""
    if dataset.status != "ready":
        raise UsageError(f"dataset '{dataset.name}' is not ready (status {dataset.status})", f"see 'brightrun dataset show {dataset.id}'")
    keys = split_keys(dataset.id)
    paths = []
    for key in keys:
        local = ws.storage.local_path(key)
        if local is None:
            local = ws.cache_dir / key
            if not local.exists() or local.stat().st_size != ws.storage.size(key):
                ws.storage.fetch(key, local)
        elif not local.exists():
            raise OperationError(f"the file {key} of dataset '{dataset.name}' is missing from storage", f"run 'brightrun dataset validate {dataset.id}'")
        paths.append(local)
    return paths[0], paths[1]
