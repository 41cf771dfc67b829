"""Datasets (SPEC 3): add, list, show, validate, remove, and the split files for training.

`add_dataset` lifecycle, each step one transaction:
  1. refuse bad requests before anything is written (name, flags, missing/empty/over
     the size limit, tokenizer that cannot load);
  2. insert the row as `uploading` while holding a per-dataset lock file, flip it to
     `validating` and stream the source through validation into a local v4 file;
  3. the file cannot be read as JSONL (`UsageError`), or anything else fails: the row
     and any blobs are removed again, so the registry and storage are as before;
  4. conversations with problems: status `error` with the first N problems, the count
     and a `dataset_error` notification, no blobs;
  5. valid: `data.jsonl`, `train.jsonl`, `validation.jsonl` are written atomically to
     storage, then status `ready`, the stats and a `dataset_ready` notification.
A process killed mid-way leaves its row in `uploading`/`validating` with its lock
released by the kernel; the next dataset command marks such rows `error` with the reason
(`repair_interrupted`), so no row waits forever and no ready row lacks its files.

Module level imports stay light (no SQLModel): `list_datasets` is a hot path.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from brightrun_cli.errors import ConflictError, NotFoundError, OperationError, UsageError
from brightrun_cli.registry.ids import new_id
from brightrun_cli.registry.timeutil import utcnow

if TYPE_CHECKING:
    from sqlmodel import Session

    from brightrun_cli.registry.tables import Dataset
    from brightrun_cli.services.dataset_tokens import TokenCounter
    from brightrun_cli.services.dataset_validation import ScanResult
    from brightrun_cli.services.workspace import Workspace

STATUSES = ("uploading", "validating", "ready", "error")
MAX_NAME_LENGTH = 100
MAX_VAL_SPLIT = 0.5
# Columns `dataset list --json` shows (the large JSON ones, errors, samples and stats, are for
# `show`); registry triggers keep each row's JSON (migrations._DATASET_LIST_COLUMNS_V3).
LIST_COLUMNS = (
    "id", "name", "description", "format", "status", "storage_path", "file_name", "file_size", "source_uri",
    "content_sha256", "total_conversations", "total_training_pairs", "total_validation_pairs", "total_tokens",
    "avg_turns_per_conversation", "avg_tokens_per_turn", "token_count_method", "base_model", "val_split",
    "training_ready", "validated_at", "validation_error_count", "error_message", "created_at", "updated_at",
)

Progress = Callable[[int, int | None], None]  # (bytes read, total bytes or None)


def data_key(dataset_id: str) -> str:
    return f"datasets/{dataset_id}/data.jsonl"


def split_keys(dataset_id: str) -> tuple[str, str]:
    return f"datasets/{dataset_id}/train.jsonl", f"datasets/{dataset_id}/validation.jsonl"


# ----------------------------------------------------------------------------- add


def add_dataset(
    ws: "Workspace",
    source: str,
    *,
    name: str,
    format: str = "auto",
    val_split: float = 0.1,
    base_model: str | None = None,
    progress: Progress | None = None,
) -> "Dataset":
    """Copy, validate and describe a dataset. Returns the row (status `ready` or `error`)."""
    from brightrun_cli.services.dataset_formats import FORMATS
    from brightrun_cli.services.dataset_tokens import load_counter

    name = _check_name(name)
    if format != "auto" and format not in FORMATS:
        raise UsageError(f"--format {format}: unknown format", f"use auto or one of {', '.join(FORMATS)}")
    if not 0 <= val_split <= MAX_VAL_SPLIT:
        raise UsageError(f"--val-split {val_split}: must be between 0 and {MAX_VAL_SPLIT}", "pass a fraction such as 0.1")
    src = _Source.open(ws, source)
    if src.size > ws.config.max_dataset_bytes:
        raise UsageError(
            f"{src.display} is {_mb(src.size)}, over the dataset size limit of {_mb(ws.config.max_dataset_bytes)}",
            "split the file, or raise max_dataset_bytes in config.toml",
        )
    repair_interrupted(ws)
    _refuse_taken_name(ws, name)
    model = _model_name(base_model or ws.config.default_base_model)
    counter = load_counter(model)

    dataset_id = new_id()
    with _processing_lock(ws, dataset_id):
        row = _insert(ws, dataset_id, name=name, src=src, format=format, val_split=val_split, base_model=model)
        try:
            _set_status(ws, dataset_id, "validating")
            with src.stream() as lines:
                outcome = _ingest(ws, row, lines, fmt=format, counter=counter, progress=progress, total=src.size)
        except BaseException:
            _discard(ws, dataset_id)
            raise
    return outcome


@dataclass
class _Source:
    uri: str  # what the user gave (a path or URL), stored as source_uri
    display: str  # how messages name it
    file_name: str
    size: int
    opener: Callable[[], IO[bytes]]

    @classmethod
    def open(cls, ws: "Workspace", source: str) -> "_Source":
        if "://" in source:
            return cls._remote(ws, source)
        path = Path(source).expanduser()
        if not path.exists():
            raise UsageError(f"{source}: no such file", "check the path (or pass an fsspec URL such as s3://bucket/data.jsonl)")
        if path.is_dir():
            raise UsageError(f"{source} is a directory", "pass the JSONL file inside it")
        try:
            size = path.stat().st_size
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise UsageError(f"cannot read {source} ({exc.strerror})", "check the file's permissions") from exc
        if size == 0:
            raise UsageError(f"{source} is empty", "pass a JSONL file with one conversation per line")
        return cls(str(path.absolute()), source, path.name, size, lambda: open(path, "rb"))

    @classmethod
    def _remote(cls, ws: "Workspace", url: str) -> "_Source":
        import fsspec

        protocol = url.split("://", 1)[0]
        # A source on the same service as the blob store uses the store's options (endpoint, ...).
        storage_url = ws.config.storage_url or ""
        options = ws.config.storage_options if storage_url.startswith(f"{protocol}://") else {}
        try:
            fs, path = fsspec.core.url_to_fs(url, **options)
            info = fs.info(path)
        except FileNotFoundError:
            raise UsageError(f"{url}: no such file", "check the URL") from None
        except (ImportError, ValueError) as exc:
            raise UsageError(f"{url}: unsupported URL ({exc})", "use a local path or an fsspec URL whose backend is installed (e.g. s3fs for s3://)") from exc
        except Exception as exc:  # network and permission errors come in many classes
            raise OperationError(f"cannot read {url} ({type(exc).__name__}: {exc})", "check the URL, the credentials and the network") from exc
        if info.get("type") == "directory":
            raise UsageError(f"{url} is a directory", "pass the JSONL file inside it")
        size = int(info.get("size") or 0)
        if size == 0:
            raise UsageError(f"{url} is empty", "pass a JSONL file with one conversation per line")
        return cls(url, url, url.rstrip("/").rsplit("/", 1)[-1], size, lambda: fs.open(path, "rb"))

    @contextlib.contextmanager
    def stream(self) -> Iterator[Iterator[bytes]]:
        with self.opener() as handle:
            yield _limited_lines(handle, self.size, self.display)


def _limited_lines(handle: IO[bytes], size: int, display: str) -> Iterator[bytes]:
    """Lines of `handle`, refusing to read past the size measured up front (a file growing meanwhile)."""
    read = 0
    for raw in handle:
        read += len(raw)
        if read > size:
            raise UsageError(f"{display} grew while it was being read", "add it again once it is complete")
        yield raw


def _check_name(name: str) -> str:
    cleaned = name.strip()
    if not cleaned or len(cleaned) > MAX_NAME_LENGTH or any(ord(c) < 32 or ord(c) == 127 for c in cleaned):
        raise UsageError(f"--name {name!r}: names are 1-{MAX_NAME_LENGTH} printable characters", "pass e.g. --name support-v1")
    return cleaned


def _refuse_taken_name(ws: "Workspace", name: str) -> None:
    conn = ws.registry.connect()
    try:
        row = conn.execute("SELECT id, status FROM datasets WHERE name = ? AND deleted_at IS NULL", (name,)).fetchone()
    finally:
        conn.close()
    if row is not None:
        _raise_name_taken(name, row["id"], row["status"])


def _raise_name_taken(name: str, other_id: str, status: str) -> None:
    raise ConflictError(
        f"a dataset named '{name}' already exists ({other_id}, status {status})",
        f"pick another --name, or remove it first with 'brightrun dataset rm {name}'",
    )


def _model_name(name: str | None) -> str | None:
    """As the dataset records it: a local model directory by its absolute path, so that a
    later `train` from another directory (or its trainer, in the run dir) finds it."""
    from brightrun_cli.builtin import absolute_base_model

    return absolute_base_model(name) if name else name


def _insert(ws: "Workspace", dataset_id: str, *, name: str, src: _Source, format: str, val_split: float, base_model: str | None) -> "Dataset":
    from sqlalchemy.exc import IntegrityError

    from brightrun_cli.registry.tables import Dataset

    row = Dataset(
        id=dataset_id, name=name, format=format, status="uploading", storage_path=data_key(dataset_id),
        file_name=src.file_name, file_size=src.size, source_uri=src.uri, base_model=base_model, val_split=val_split,
    )
    try:
        with ws.registry.write() as session:
            session.add(row)
    except IntegrityError:
        # Another process took the name between our check and this insert.
        _raise_name_taken(name, "added meanwhile", "uploading")
    return row


def _set_status(ws: "Workspace", dataset_id: str, status: str) -> None:
    with ws.registry.write() as session:
        row = _get_row(session, dataset_id)
        row.status = status
        row.updated_at = utcnow()


def _discard(ws: "Workspace", dataset_id: str) -> None:
    """Undo an add that failed: the row goes, then its blobs (a row never outlives its files)."""
    from brightrun_cli.registry.tables import Dataset

    with contextlib.suppress(Exception):
        with ws.registry.write() as session:
            row = session.get(Dataset, dataset_id)
            if row is not None:
                session.delete(row)
        ws.storage.delete(f"datasets/{dataset_id}")


# ------------------------------------------------------------------ ingest / validate


def _ingest(
    ws: "Workspace", row: "Dataset", lines: Iterator[bytes], *, fmt: str, counter: "TokenCounter", progress: Progress | None, total: int | None
) -> "Dataset":
    """Validate `lines` into a local v4 file; store it and its split if valid; record the outcome."""
    from brightrun_cli.services.dataset_validation import scan

    tick = (lambda done: progress(done, total)) if progress is not None else None
    fd, tmp_name = tempfile.mkstemp(prefix=f"dataset-{row.id}-", suffix=".jsonl", dir=ws.cache_dir)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            result = scan(
                lines, out, file_name=row.file_name, fmt=fmt, val_split=row.val_split, counter=counter,
                keep_problems=ws.config.max_stored_validation_errors, progress=tick,
            )
        if result.problem_count:
            return _finish(ws, row.id, result, counter.method, sha256=None)
        sha256 = _store(ws, row.id, tmp, result.held_out)
        return _finish(ws, row.id, result, counter.method, sha256=sha256)
    finally:
        tmp.unlink(missing_ok=True)


def _store(ws: "Workspace", dataset_id: str, local: Path, held_out: bytearray) -> str:
    """Write data.jsonl and its train/validation split to storage, each atomically. Returns data's sha256."""
    digest = hashlib.sha256()
    train_key, validation_key = split_keys(dataset_id)
    with contextlib.ExitStack() as stack, open(local, "rb") as source:
        data = stack.enter_context(ws.storage.writer(data_key(dataset_id)))
        train = stack.enter_context(ws.storage.writer(train_key))
        validation = stack.enter_context(ws.storage.writer(validation_key))
        for index, line in enumerate(source):
            digest.update(line)
            data.write(line)
            (validation if held_out[index] else train).write(line)
    return digest.hexdigest()


def _finish(ws: "Workspace", dataset_id: str, result: "ScanResult", method: str, *, sha256: str | None) -> "Dataset":
    """Record the outcome and its notification in one transaction."""
    from brightrun_cli.services.notifications import notify

    now = utcnow()
    with ws.registry.write() as session:
        row = _get_row(session, dataset_id)
        row.format = result.format
        row.validated_at = now
        row.updated_at = now
        row.validation_error_count = result.problem_count
        row.validation_errors = [p.to_json() for p in result.problems]
        row.token_count_method = method
        if result.problem_count:
            first = result.problems[0]
            row.status = "error"
            row.training_ready = False
            row.error_message = f"{result.problem_count} validation problem(s); first on line {first.line}: {first.error}"
            notify(
                session, "dataset_error", "Dataset has problems",
                f'Dataset "{row.name}" has {result.problem_count} validation problem(s), first on line {first.line}: {first.error}',
                priority="high", action_command=f"brightrun dataset show {row.id}", dataset_id=row.id,
            )
        else:
            _apply_stats(row, result)
            row.content_sha256 = sha256
            row.status = "ready"
            row.training_ready = True
            row.error_message = None
            notify(
                session, "dataset_ready", "Dataset ready",
                f'Dataset "{row.name}" is ready for training: {row.total_conversations} conversations, {row.total_tokens} tokens',
                action_command=f"brightrun estimate --dataset {row.name}", dataset_id=row.id,
            )
    return row


def _apply_stats(row: "Dataset", result: "ScanResult") -> None:
    tokens = result.tokens
    held = result.held_out
    row.total_conversations = result.conversations
    row.total_training_pairs = sum(a for a, h in zip(result.assistant_turns, held) if not h)
    row.total_validation_pairs = sum(a for a, h in zip(result.assistant_turns, held) if h)
    row.total_tokens = sum(tokens)
    row.avg_turns_per_conversation = round(result.turns / result.conversations, 3)
    row.avg_tokens_per_turn = round(row.total_tokens / result.turns, 3)
    row.sample_data = result.samples
    validation_conversations = sum(held)
    row.stats = {
        "train_conversations": result.conversations - validation_conversations,
        "validation_conversations": validation_conversations,
        "train_tokens": sum(t for t, h in zip(tokens, held) if not h),
        "validation_tokens": sum(t for t, h in zip(tokens, held) if h),
        "turns": result.turns,
        "turns_by_role": result.roles,
        "tokens_per_conversation": _distribution(tokens),
        "length_histogram": _histogram(tokens),
    }


def _distribution(values: Any) -> dict[str, float]:
    ordered = sorted(values)
    n = len(ordered)

    def pct(q: float) -> int:
        return ordered[min(n - 1, int(q * n))]

    return {"min": ordered[0], "p50": pct(0.5), "p90": pct(0.9), "p99": pct(0.99), "max": ordered[-1], "mean": round(sum(ordered) / n, 1)}


def _histogram(values: Any) -> list[dict[str, int]]:
    """Conversations per token-length bucket, buckets doubling from 128: easy to read against max_seq_length."""
    counts: dict[int, int] = {}
    for value in values:
        bound = 128
        while value > bound:
            bound *= 2
        counts[bound] = counts.get(bound, 0) + 1
    return [{"max_tokens": bound, "conversations": counts[bound]} for bound in sorted(counts)]


def validate_dataset(ws: "Workspace", ref: str, *, base_model: str | None = None) -> "Dataset":
    """Re-run validation and stats on the stored data (optionally with another base model's tokenizer)."""
    from brightrun_cli.services.dataset_tokens import load_counter

    row = get_dataset(ws, ref)
    if row.status in ("uploading", "validating"):
        raise ConflictError(f"dataset '{row.name}' is being {row.status[:-3]}ed by another command", "wait for it to finish")
    if not ws.storage.exists(row.storage_path):
        raise UsageError(
            f"dataset '{row.name}' has no stored data (it was refused at add: {row.error_message})",
            f"fix the source file, then 'brightrun dataset rm {row.name}' and add it again",
        )
    model = _model_name(base_model or row.base_model or ws.config.default_base_model)
    counter = load_counter(model)
    with _processing_lock(ws, row.id):
        with ws.registry.write() as session:
            current = _get_row(session, row.id)
            if current.status in ("uploading", "validating") or current.deleted_at is not None:
                raise ConflictError(f"dataset '{row.name}' changed meanwhile (status {current.status})", "run the command again")
            current.status = "validating"
            current.base_model = model
            current.updated_at = utcnow()
        try:
            with ws.storage.open(row.storage_path) as handle:
                return _ingest(ws, row, iter(handle), fmt="brightrun_lora_v4", counter=counter, progress=None, total=None)
        except BaseException as exc:
            _mark_error(ws, row.id, f"validation failed: {exc}")
            raise


def _mark_error(ws: "Workspace", dataset_id: str, reason: str) -> None:
    from brightrun_cli.services.notifications import notify

    with contextlib.suppress(Exception):
        with ws.registry.write() as session:
            row = _get_row(session, dataset_id)
            row.status = "error"
            row.training_ready = False
            row.error_message = reason
            row.updated_at = utcnow()
            notify(session, "dataset_error", "Dataset failed", f'Dataset "{row.name}": {reason}', priority="high",
                   action_command=f"brightrun dataset show {row.id}", dataset_id=row.id)


# --------------------------------------------------------------- interrupted commands


def _lock_path(ws: "Workspace", dataset_id: str) -> Path:
    locks = ws.cache_dir / "locks"
    locks.mkdir(mode=0o700, exist_ok=True)
    return locks / f"dataset-{dataset_id}.lock"


@contextlib.contextmanager
def _processing_lock(ws: "Workspace", dataset_id: str) -> Iterator[None]:
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
    conn = ws.registry.connect()
    try:
        stuck = [r["id"] for r in conn.execute("SELECT id FROM datasets WHERE status IN ('uploading', 'validating')")]
    finally:
        conn.close()
    candidates = [i for i in stuck if not _is_being_processed(ws, i)]
    if not candidates:
        return []
    from brightrun_cli.services.notifications import notify

    repaired: list[tuple[str, bool]] = []
    with ws.registry.write() as session:
        for dataset_id in candidates:
            row = _get_row(session, dataset_id)
            # Re-checked under the write lock: the owner may have finished meanwhile.
            if row.status not in ("uploading", "validating") or _is_being_processed(ws, dataset_id):
                continue
            revalidation = row.validated_at is not None
            what = "re-validation" if revalidation else "add"
            row.error_message = f"interrupted while {row.status} (the {what} command stopped before finishing)"
            row.status = "error"
            row.training_ready = False
            row.updated_at = utcnow()
            todo = f"brightrun dataset validate {row.id}" if revalidation else f"brightrun dataset rm {row.id}, then add the file again"
            notify(session, "dataset_error", "Dataset interrupted", f'Dataset "{row.name}" was {row.error_message}; run {todo}',
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


def list_datasets(ws: "Workspace", status: str | None = None, search: str | None = None) -> list[dict[str, Any]]:
    """Live datasets, newest first, as dicts with the registry's field names and JSON types."""
    return json.loads(list_datasets_json(ws, status=status, search=search))


def list_datasets_json(ws: "Workspace", status: str | None = None, search: str | None = None) -> str:
    """`list_datasets` as a JSON array text, from the JSON that triggers keep for each row
    (registry migration 3; timestamps as ISO 8601 UTC, like `show --json`), so `list
    --json` over 10,000 datasets needs neither SQLAlchemy nor a Python round trip through
    dicts, nor SQLite building every row's JSON again."""
    if status is not None and status not in STATUSES:
        raise UsageError(f"--status {status}: unknown status", f"use one of {', '.join(STATUSES)}")
    repair_interrupted(ws)
    sql = "SELECT j.json FROM datasets d JOIN dataset_list_json j ON j.id = d.id WHERE d.deleted_at IS NULL"
    params: list[Any] = []
    if status:
        sql += " AND d.status = ?"
        params.append(status)
    if search:
        pattern = "%" + search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        sql += " AND (d.name LIKE ? ESCAPE '\\' OR d.description LIKE ? ESCAPE '\\' OR d.file_name LIKE ? ESCAPE '\\')"
        params += [pattern, pattern, pattern]
    sql += " ORDER BY d.created_at DESC, d.id DESC"
    conn = ws.registry.connect()
    conn.row_factory = None
    try:
        return "[" + ",".join(r[0] for r in conn.execute(sql, params)) + "]"
    finally:
        conn.close()


def get_dataset(ws: "Workspace", ref: str) -> "Dataset":
    """A live dataset by id, unique id prefix or name."""
    from brightrun_cli.registry.queries import resolve
    from brightrun_cli.registry.tables import Dataset

    repair_interrupted(ws)
    with ws.registry.session() as session:
        return resolve(session, Dataset, ref, "dataset", by_name=True)


def _get_row(session: "Session", dataset_id: str) -> "Dataset":
    from brightrun_cli.registry.tables import Dataset

    row = session.get(Dataset, dataset_id)
    if row is None:
        raise NotFoundError(f"dataset {dataset_id} disappeared meanwhile", "run 'brightrun dataset list'")
    return row


@dataclass
class Removal:
    dataset: "Dataset"
    soft: bool  # kept (deleted_at set) because jobs or models refer to it
    references: int


def remove_dataset(ws: "Workspace", ref: str) -> Removal:
    """Delete a dataset: its row and files, or only mark it deleted when a job or model uses it."""
    from sqlmodel import func, select

    from brightrun_cli.registry.tables import ModelArtifact, TrainingJob

    row = get_dataset(ws, ref)
    if row.status in ("uploading", "validating"):
        raise ConflictError(f"dataset '{row.name}' is being {row.status[:-3]}ed by another command", "wait for it to finish, then remove it")
    with ws.registry.write() as session:
        current = _get_row(session, row.id)
        if current.status in ("uploading", "validating"):
            raise ConflictError(f"dataset '{row.name}' is being {current.status[:-3]}ed by another command", "wait for it to finish, then remove it")
        references = sum(
            session.exec(select(func.count()).select_from(table).where(table.dataset_id == row.id)).one()
            for table in (TrainingJob, ModelArtifact)
        )
        if references:
            current.deleted_at = utcnow()
            current.updated_at = current.deleted_at
        else:
            session.delete(current)
    if not references:
        # After the row is gone: a crash here leaves orphan blobs, never a row without files.
        ws.storage.delete(f"datasets/{row.id}")
    return Removal(dataset=current, soft=bool(references), references=references)


def split_paths(ws: "Workspace", dataset: "Dataset") -> tuple[Path, Path]:
    """Local paths of the dataset's train and validation JSONL (fetched into the cache from a remote store)."""
    if dataset.status != "ready":
        raise UsageError(f"dataset '{dataset.name}' is not ready (status {dataset.status})", f"see 'brightrun dataset show {dataset.name}'")
    keys = split_keys(dataset.id)
    paths = []
    for key in keys:
        local = ws.storage.local_path(key)
        if local is None:
            local = ws.cache_dir / key
            if not local.exists() or local.stat().st_size != ws.storage.size(key):
                ws.storage.fetch(key, local)
        elif not local.exists():
            raise OperationError(f"the file {key} of dataset '{dataset.name}' is missing from storage", f"run 'brightrun dataset validate {dataset.name}'")
        paths.append(local)
    return paths[0], paths[1]


def _mb(size: int) -> str:
    return f"{size / 1_000_000:.1f} MB"
