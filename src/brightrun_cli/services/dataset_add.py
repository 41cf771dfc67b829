"""Adding and re-validating a dataset: the source streamed through validation into storage.

`add_dataset` lifecycle, each step one transaction:
  1. refuse bad requests before anything is written (name, flags, a source that is
     missing, not a regular file, empty or over the size limit, a tokenizer that cannot
     load);
  2. insert the row as `uploading` while holding a per-dataset lock file (replacing a
     failed add of the same name: it does not hold the name, `datasets.holds_name`),
     flip it to `validating` and stream the source through validation into a local v4
     file;
  3. the file cannot be read as JSONL (`UsageError`), or anything else fails: the row
     and any blobs are removed again, so the registry and storage are as before;
  4. lines with problems: status `error` with the first N problems, the count and a
     `dataset_error` notification, no blobs; with `skip_invalid`, those lines are left
     out instead (listed the same way, counted in `skipped_lines`) and step 5 follows
     when any conversation is valid;
  5. valid: `data.jsonl`, `train.jsonl`, `validation.jsonl` are written atomically to
     storage, then status `ready`, the stats and a `dataset_ready` notification.
A process killed mid-way leaves its row in `uploading`/`validating` with its lock
released by the kernel: `datasets.repair_interrupted` deals with it.

`validate_dataset` re-reads the stored data file. A data file storage does not have (or
cannot be reached for) is not a finding about the data: the dataset is left as it was
and the message points at storage_url, since a typo or an outage looks the same as a
lost file; once storage is back, validating again makes it ready. A dataset that an
older brightrun marked lost (error, nothing recorded as stored) whose data file is back
in storage is validated again too.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from brightrun_cli.builtin import absolute_base_model
from brightrun_cli.errors import ConflictError, OperationError, UsageError
from brightrun_cli.registry import datasets as dataset_rows
from brightrun_cli.registry.engine import DuplicateRow
from brightrun_cli.registry.ids import check_name, new_id
from brightrun_cli.registry.rows import DatasetRow
from brightrun_cli.registry.timeutil import utcnow
from brightrun_cli.services.base_model import local_base_model
from brightrun_cli.services.dataset_formats import FORMATS
from brightrun_cli.services.dataset_sources import Source, Stream, over_size_limit
from brightrun_cli.services.dataset_sources import size_text as _size
from brightrun_cli.services.dataset_tokens import TokenCounter, load_counter
from brightrun_cli.services.dataset_validation import ScanResult, scan_files
from brightrun_cli.services.datasets import (
    Removal,
    add_again_command,
    data_key,
    drop_files,
    get_dataset,
    holds_name,
    processing_lock,
    remove_in,
    repair_interrupted,
    require_row,
    split_keys,
)
from brightrun_cli.services.notifications import notify

if TYPE_CHECKING:
    from brightrun_cli.registry.engine import Tx
    from brightrun_cli.workspace import Workspace

MAX_NAME_LENGTH = 100
MAX_VAL_SPLIT = 0.5
Progress = Callable[[int, int | None], None]  # (bytes read, total bytes or None)


def add_dataset(
    ws: "Workspace",
    source: str | Sequence[str],
    *,
    name: str,
    format: str = "auto",
    val_split: float = 0.1,
    base_model: str | None = None,
    chat_template: str = "model",
    skip_invalid: bool = False,
    progress: Progress | None = None,
) -> DatasetRow:
    """Copy, validate and describe a dataset. Returns the row (status `ready` or `error`).
    `source`: a path or URL, or several (shards, read in order as one dataset).
    `chat_template`: count tokens as the base model's own template ("model") or brightrun's
    ChatML ("chatml") writes the conversations, as a run with that hyperparameter will.
    `skip_invalid`: store the valid conversations of a file whose other lines have problems."""
    name = _check_name(name)
    if format != "auto" and format not in FORMATS:
        raise UsageError(f"--format {format}: unknown format", f"use auto or one of {', '.join(FORMATS)}")
    if not 0 <= val_split <= MAX_VAL_SPLIT:
        raise UsageError(f"--val-split {val_split}: must be between 0 and {MAX_VAL_SPLIT}", "pass a fraction such as 0.1")
    sources = _Sources.open(ws, [source] if isinstance(source, str) else list(source))
    try:
        return _add(ws, sources, name=name, format=format, val_split=val_split, base_model=base_model,
                    chat_template=chat_template, skip_invalid=skip_invalid, progress=progress)
    finally:
        sources.close()


def _add(ws: "Workspace", sources: "_Sources", *, name: str, format: str, val_split: float, base_model: str | None,
         chat_template: str, skip_invalid: bool, progress: Progress | None) -> DatasetRow:
    repair_interrupted(ws)
    _refuse_taken_name(ws, name)
    model = _model_name(local_base_model(ws, base_model or ws.config.default_base_model))
    counter = load_counter(model, chat_template)

    dataset_id = new_id()
    with processing_lock(ws, dataset_id):
        row = _insert(ws, dataset_id, name=name, sources=sources, format=format, val_split=val_split, base_model=model)
        try:
            _set_status(ws, dataset_id, "validating")
            with contextlib.closing(sources.read(ws)) as files:
                # Progress in stored bytes: the bar's total is the files' size, whatever they unpack to.
                tick = (lambda _text_bytes: progress(sources.consumed, sources.size)) if progress is not None else None
                outcome = _ingest(ws, row, files, several=len(sources.items) > 1, fmt=format, counter=counter,
                                  progress=tick, skip_invalid=skip_invalid)
        except BaseException:
            _discard(ws, dataset_id)
            raise
    return outcome


@dataclass
class _Sources:
    """The files a dataset is added from, read one after another; each is named in findings
    by its file name (by the path given, when two share a name)."""

    items: list[Source]
    labels: list[str]
    done: int = 0  # stored bytes of the files read to the end
    current: Stream | None = None

    @classmethod
    def open(cls, ws: "Workspace", given: list[str]) -> "_Sources":
        if not given:
            raise UsageError("no source given", "pass the data file (or several shards) to add")
        repeated = sorted({s for s in given if given.count(s) > 1})
        if repeated:
            raise UsageError(f"{repeated[0]} is given more than once", "pass each file once")
        items: list[Source] = []
        try:
            for one in given:
                items.append(Source.open(ws, one))
        except BaseException:
            cls(items, []).close()
            raise
        names = [item.file_name for item in items]
        labels = [item.file_name if names.count(item.file_name) == 1 else item.display for item in items]
        sources = cls(items, labels)
        if sources.size > ws.config.max_dataset_bytes:
            what = items[0].display if len(items) == 1 else f"the {len(items)} files"
            raise over_size_limit(ws, f"{what} {'is' if len(items) == 1 else 'are'} {_size(sources.size)}{'' if len(items) == 1 else ' together'}, over")
        return sources

    def close(self) -> None:
        for item in self.items:
            item.close()

    @property
    def size(self) -> int:
        return sum(item.size for item in self.items)

    @property
    def consumed(self) -> int:
        return self.done + (self.current.consumed if self.current is not None else 0)

    @property
    def file_name(self) -> str:
        first = self.items[0].file_name
        return first if len(self.items) == 1 else f"{first} (+{len(self.items) - 1} more)"

    @property
    def uri(self) -> str:
        """As stored in source_uri: the one path or URL, or a JSON list of them (DatasetRow.sources)."""
        return self.items[0].uri if len(self.items) == 1 else json.dumps([item.uri for item in self.items])

    def read(self, ws: "Workspace") -> Iterator[tuple[str, Iterator[bytes]]]:
        """(label, lines) per file, each open only while it is read; what compressed or
        columnar files unpack to is held to the size limit together."""
        limit = ws.config.max_dataset_bytes
        used = 0
        for item, label in zip(self.items, self.labels):
            what = f"{item.display} unpacks to more than" if len(self.items) == 1 else f"the {len(self.items)} files unpack to more than"
            with item.stream(max_text_bytes=limit - used, over_limit=lambda what=what: over_size_limit(ws, what)) as stream:
                self.current = stream
                yield label, stream.lines
                used += stream.text_bytes
            self.current = None
            self.done += item.size


def _check_name(name: str) -> str:
    cleaned = name.strip()
    if not cleaned or len(cleaned) > MAX_NAME_LENGTH or any(ord(c) < 32 or ord(c) == 127 for c in cleaned):
        raise UsageError(f"--name {name!r}: names are 1-{MAX_NAME_LENGTH} printable characters", "pass e.g. --name support-v1")
    check_name(cleaned, "dataset")  # nothing a later lookup would misread (an id prefix, an option)
    return cleaned


def _refuse_taken_name(ws: "Workspace", name: str) -> None:
    with ws.registry.reading() as conn:
        row = dataset_rows.live_by_name(conn, name)
    if row is not None and holds_name(row):
        _raise_name_taken(name, row.id, row.status)


def _raise_name_taken(name: str, other_id: str, status: str) -> None:
    raise ConflictError(
        f"a dataset named '{name}' already exists ({other_id}, status {status})",
        f"pick another --name, or remove it first with 'brightrun dataset rm {other_id}'",
    )


def _model_name(name: str | None) -> str | None:
    """As the dataset records it: a local model directory by its absolute path, so that a
    later `train` from another directory (or its trainer, in the run dir) finds it."""
    return absolute_base_model(name) if name else name


def _insert(ws: "Workspace", dataset_id: str, *, name: str, sources: _Sources, format: str, val_split: float, base_model: str | None) -> DatasetRow:
    try:
        with ws.registry.write() as tx:
            replaced = _replace_failed_add(tx, name)
            row = dataset_rows.insert(
                tx, id=dataset_id, name=name, format=format, status="uploading", storage_path=data_key(dataset_id),
                file_name=sources.file_name, file_size=sources.size, source_uri=sources.uri, base_model=base_model, val_split=val_split,
            )
    except DuplicateRow:
        # Another process took the name between our check and this insert.
        _raise_name_taken(name, "added meanwhile", "uploading")
    if replaced is not None:
        with contextlib.suppress(Exception):
            drop_files(ws, replaced)
    return row


def _replace_failed_add(tx: "Tx", name: str) -> Removal | None:
    """Remove the failed add that has `name` (its report was for reading; the name is free):
    in the transaction that inserts the new row, so two adds cannot both take it."""
    current = dataset_rows.live_by_name_in(tx, name)
    if current is None:
        return None
    if holds_name(current):
        _raise_name_taken(name, current.id, current.status)
    return remove_in(tx, current)


def _set_status(ws: "Workspace", dataset_id: str, status: str) -> None:
    with ws.registry.write() as tx:
        require_row(dataset_rows.update(tx, dataset_id, status=status), dataset_id)


def _discard(ws: "Workspace", dataset_id: str) -> None:
    """Undo an add that failed: the row goes, then its blobs (a row never outlives its files)."""
    with contextlib.suppress(Exception):
        with ws.registry.write() as tx:
            dataset_rows.delete(tx, dataset_id)
        ws.storage.delete(f"datasets/{dataset_id}")


# ------------------------------------------------------------------ ingest / validate


def _ingest(
    ws: "Workspace", row: DatasetRow, files: Iterable[tuple[str, Iterable[bytes]]], *, fmt: str, counter: TokenCounter,
    progress: Callable[[int], None] | None, skip_invalid: bool = False, several: bool = False,
) -> DatasetRow:
    """Validate the (file name, lines) of `files` into a local v4 file; store it and its
    split if valid (or, with `skip_invalid`, its valid part); record the outcome."""
    fd, tmp_name = tempfile.mkstemp(prefix=f"dataset-{row.id}-", suffix=".jsonl", dir=ws.cache_dir)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            result = scan_files(
                files, out, fmt=fmt, val_split=row.val_split, counter=counter,
                keep_problems=ws.config.max_stored_validation_errors, progress=progress, several=several,
            )
        if result.problem_count and not (skip_invalid and result.conversations):
            return _finish(ws, row, result, counter.method, sha256=None, skipped=0)
        sha256 = _store(ws, row.id, tmp, result)
        skipped = result.data_lines - result.conversations
        return _finish(ws, row, result, counter.method, sha256=sha256, skipped=skipped)
    finally:
        tmp.unlink(missing_ok=True)


def _store(ws: "Workspace", dataset_id: str, local: Path, result: ScanResult) -> str:
    """Write data.jsonl and its train/validation split to storage, each atomically; only the
    conversations `result` kept. Returns data's sha256."""
    digest = hashlib.sha256()
    train_key, validation_key = split_keys(dataset_id)
    with contextlib.ExitStack() as stack, open(local, "rb") as source:
        data = stack.enter_context(ws.storage.writer(data_key(dataset_id)))
        train = stack.enter_context(ws.storage.writer(train_key))
        validation = stack.enter_context(ws.storage.writer(validation_key))
        for index, line in enumerate(source):
            if not result.kept[index]:
                continue
            digest.update(line)
            data.write(line)
            (validation if result.held_out[index] else train).write(line)
    return digest.hexdigest()


def _finish(ws: "Workspace", row: DatasetRow, result: ScanResult, method: str, *, sha256: str | None, skipped: int) -> DatasetRow:
    """Record the outcome and its notification in one transaction.

    The source's format stays what the add found (a re-validation reads the stored v4 copy).
    A re-validation of a dataset added with --skip-invalid that passes keeps the add's list
    of the lines it left out: the stored data cannot say which they were."""
    now = utcnow()
    revalidated = row.validated_at is not None
    values: dict[str, Any] = dict(
        format=row.format if revalidated else result.format,
        validated_at=now, updated_at=now, token_count_method=method,
        validation_error_count=result.problem_count, validation_errors=[p.to_json() for p in result.problems],
        validation_warning_count=result.warning_count, validation_warnings=[w.to_json("warning") for w in result.warnings],
    )
    with ws.registry.write() as tx:
        if sha256 is None:
            first = result.problems[0]
            where = f"{first.file} line {first.line}" if first.file else f"line {first.line}"
            values.update(status="error", training_ready=False,
                          error_message=f"{result.problem_count} validation problem(s); first on {where}: {first.error}")
            row = require_row(dataset_rows.update(tx, row.id, **values), row.id)
            notify(
                tx, "dataset_error", "Dataset has problems",
                f'Dataset "{row.name}" has {result.problem_count} validation problem(s), first on {where}: {first.error}',
                priority="high", action_command=f"brightrun dataset show {row.id}", dataset_id=row.id,
            )
            return row
        if revalidated and row.status == "ready" and row.skipped_lines:
            values.update(validation_error_count=row.validation_error_count, validation_errors=row.validation_errors)
        elif not revalidated:
            values.update(skipped_lines=skipped)
        values.update(_stats(result), content_sha256=sha256, status="ready", training_ready=True, error_message=None)
        row = require_row(dataset_rows.update(tx, row.id, **values), row.id)
        left_out = f" ({row.skipped_lines} line(s) with problems left out)" if row.skipped_lines else ""
        tokens = f"{row.total_tokens:,} tokens" if row.tokens_counted else f"~{row.total_tokens:,} tokens (approximated)"
        notify(
            tx, "dataset_ready", "Dataset ready",
            f'Dataset "{row.name}" is ready for training: {row.total_conversations:,} conversations, {tokens}{left_out}',
            action_command=f"brightrun estimate --dataset {row.id}", dataset_id=row.id,
        )
    return row


def _stats(result: ScanResult) -> dict[str, Any]:
    tokens = list(result.kept_values(result.tokens))
    train_tokens = sum(result.kept_values(result.tokens, held_out=False))
    validation_tokens = sum(result.kept_values(result.tokens, held_out=True))
    conversations, turns = result.conversations, result.turns
    validation_conversations = sum(result.held_out)
    train_examples = sum(result.kept_values(result.examples, held_out=False))
    return {
        "total_conversations": conversations,
        # Pairs a run learns: assistant turns with weight 0 are context (stats: context_only_turns).
        "total_training_pairs": sum(result.kept_values(result.learned_turns, held_out=False)),
        "total_validation_pairs": sum(result.kept_values(result.learned_turns, held_out=True)),
        "total_tokens": train_tokens + validation_tokens,
        "avg_turns_per_conversation": round(turns / conversations, 3),
        "avg_tokens_per_turn": round((train_tokens + validation_tokens) / turns, 3),
        "sample_data": result.samples,
        "stats": {
            "train_conversations": conversations - validation_conversations,
            "validation_conversations": validation_conversations,
            "train_tokens": train_tokens,
            "validation_tokens": validation_tokens,
            "turns": turns,
            "chat_template": result.chat_template,  # what the token counts were written with (DatasetRow.counted_chat_template)
            "turns_by_role": result.roles,
            "tool_call_turns": result.tool_call_turns,
            "context_only_turns": result.context_turns,  # assistant turns with weight 0: not training pairs
            "duplicate_conversations": result.duplicates,  # exact copies of an earlier one (same split side)
            # Counted with a chat template that drops those calls: training with it is refused
            # (services.run_checks.check_tool_call_template), and the counts leave the calls out.
            "template_drops_tool_calls": result.template_drops_calls,
            # The base model's template writes this system message into conversations without one.
            **({"template_default_system": result.default_system}
               if result.default_system and result.roles["system"] < conversations else {}),
            # A run learns some conversations from several examples (dataset_tokens.count_views).
            **({"train_examples": train_examples} if train_examples != conversations - validation_conversations else {}),
            "tokens_per_conversation": _distribution(tokens),
            "length_histogram": _histogram(tokens),
        },
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


def validate_dataset(ws: "Workspace", ref: str, *, base_model: str | None = None, chat_template: str | None = None) -> DatasetRow:
    """Re-run validation and stats on the stored data (optionally with another base model's
    tokenizer, or another chat template: unless given, the one it was counted with). A
    dataset whose data file is not in storage is left as it was (module docstring)."""
    row = get_dataset(ws, ref)
    if row.status in ("uploading", "validating"):
        raise ConflictError(f"dataset '{row.name}' is being {row.status[:-3]}ed by another command", "wait for it to finish")
    stored = _data_in_storage(ws, row)
    if row.content_sha256 is None and not (row.validated_at is not None and stored):
        raise UsageError(
            f"dataset '{row.name}' has no stored data ({row.error_message})",
            f"fix the source file, then add it again under the same name: {add_again_command(row)}",
        )
    if not stored:
        raise OperationError(
            f"dataset '{row.name}': its data file {row.storage_path} is not in storage at {_storage_place(ws)} "
            f"(status left {row.status})",
            f"check storage_url in the config and that the store is reachable, then validate again; if the file is "
            f"really gone, remove the dataset ('brightrun dataset rm {row.id}') and add the source again: {add_again_command(row)}",
        )
    model = _model_name(local_base_model(ws, base_model or row.base_model or ws.config.default_base_model))
    counter = load_counter(model, chat_template or row.counted_chat_template)
    with processing_lock(ws, row.id):
        with ws.registry.write() as tx:
            current = require_row(dataset_rows.get_in(tx, row.id), row.id)
            if current.status in ("uploading", "validating") or current.deleted_at is not None:
                raise ConflictError(f"dataset '{row.name}' changed meanwhile (status {current.status})", "run the command again")
            dataset_rows.update(tx, row.id, status="validating", base_model=model)
        try:
            with ws.storage.open(row.storage_path) as handle:
                return _ingest(ws, current, [(row.file_name, iter(handle))], fmt="brightrun_lora_v4", counter=counter, progress=None)
        except OSError as exc:  # storage went away meanwhile: not a finding about the data
            with contextlib.suppress(Exception), ws.registry.write() as tx:
                dataset_rows.update(tx, row.id, status=current.status)
            raise OperationError(
                f"dataset '{row.name}': cannot read {row.storage_path} from storage at {_storage_place(ws)} ({_first_line(exc)}); "
                f"status left {current.status}",
                "check storage_url in the config and that the store is reachable, then validate again",
            ) from None
        except BaseException as exc:
            _mark_error(ws, row.id, f"validation failed: {exc}")
            raise


def _data_in_storage(ws: "Workspace", row: DatasetRow) -> bool:
    """Whether the dataset's data file is in storage; a store that cannot be reached is an OperationError."""
    try:
        return ws.storage.exists(row.storage_path)
    except Exception as exc:
        raise OperationError(
            f"cannot reach storage at {_storage_place(ws)} to read dataset '{row.name}' ({_first_line(exc)}); nothing was changed",
            "check storage_url in the config and that the store is reachable, then validate again",
        ) from None


def _storage_place(ws: "Workspace") -> str:
    return ws.config.storage_url or str(ws.home / "storage")


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _mark_error(ws: "Workspace", dataset_id: str, reason: str, *, lost: bool = False) -> None:
    """Status error with `reason`; `lost`: its stored data is gone, so it holds no name either."""
    lost_data = {"content_sha256": None} if lost else {}
    with contextlib.suppress(Exception):
        with ws.registry.write() as tx:
            row = require_row(dataset_rows.update(tx, dataset_id, status="error", training_ready=False, error_message=reason, **lost_data), dataset_id)
            notify(tx, "dataset_error", "Dataset failed", f'Dataset "{row.name}": {reason}', priority="high",
                   action_command=f"brightrun dataset show {row.id}", dataset_id=row.id)
