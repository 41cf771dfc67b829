"""Model artifacts after creation: list, show, export, merge, remove."""

from __future__ import annotations

import os
import posixpath
import sys
from contextlib import contextmanager
from pathlib import Path

import msgspec

from brightrun_cli.builtin import resolve_base_model
from brightrun_cli.generation import gguf
from brightrun_cli.errors import ConflictError, OperationError, UsageError, quiet_library_logs
from brightrun_cli.registry import models as model_rows
from brightrun_cli.registry.rows import ModelRow
from brightrun_cli.services.output_files import check_parent, umask, user_path
from brightrun_cli.workspace import Workspace

SORTS = ("created", "score", "cost")


class Exported(msgspec.Struct):
    target: str  # the directory or URL written to
    files: list[str]  # relative paths written
    bytes: int


def list_models(ws: Workspace, sort: str = "created", limit: int | None = None) -> list[ModelRow]:
    """Live models: newest first (`created`), best score first (`score`) or cheapest first (`cost`)."""
    _check_sort(sort)
    with ws.registry.reading() as conn:
        return model_rows.live(conn, sort, limit)


def list_models_json(ws: Workspace, sort: str = "created", limit: int | None = None) -> bytes:
    """`list_models` as a JSON array rendered by SQLite (UTF-8)."""
    _check_sort(sort)
    with ws.registry.reading() as conn:
        return model_rows.live_json(conn, sort, limit)


def count_models(ws: Workspace) -> int:
    with ws.registry.reading() as conn:
        return model_rows.count_live(conn)


def _check_sort(sort: str) -> None:
    if sort not in SORTS:
        raise UsageError(f"unknown sort '{sort}'", f"use one of: {', '.join(SORTS)}")


def get_model(ws: Workspace, ref: str) -> ModelRow:
    """A live model by id, unique id prefix or name (NotFoundError otherwise)."""
    with ws.registry.reading() as conn:
        return model_rows.resolve(conn, ref)


def _file_entries(model: ModelRow) -> list[dict]:
    return model.artifacts.get("files", [])


def _open_target(target: str):
    import fsspec

    try:
        return fsspec.core.url_to_fs(target)
    except (ImportError, ValueError) as exc:
        raise UsageError(f"cannot write to '{target}': {exc}", "give a local directory or an fsspec URL such as s3://bucket/path") from exc


_CREDENTIAL_ERRORS = ("NoCredentialsError", "PartialCredentialsError", "CredentialRetrievalError", "DefaultCredentialsError")


@contextmanager
def _target_errors(target: str):
    """Trouble with a target the user named as one usage error: no credentials for a
    bucket, an unwritable or misplaced local path."""
    try:
        with user_path(target, "to"):
            yield
    except Exception as exc:
        if type(exc).__name__ in _CREDENTIAL_ERRORS:
            raise UsageError(
                f"cannot write to '{target}': no credentials for it ({type(exc).__name__})",
                "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE; the store's own variables for gs:// or az://) and export again",
            ) from exc
        raise


def _check_empty(fs, root: str, target: str, force: bool) -> None:
    if not fs.exists(root):
        return
    if not fs.isdir(root):
        raise ConflictError(f"'{target}' exists and is not a directory", "choose a directory path")
    if fs.ls(root, detail=False) and not force:
        raise ConflictError(f"'{target}' is not empty", "choose an empty or new directory, or pass --force to overwrite files there")


def export_model(ws: Workspace, ref: str, target: str, *, force: bool = False) -> Exported:
    """Copy the model's files (adapter, tokenizer, config, metrics, card) to a directory or fsspec URL.

    Every file is verified against its recorded sha256 while it is copied. Refuses a
    non-empty target unless `force` (then files of the same names are overwritten).
    """
    import hashlib  # hashlib, shutil, tempfile imported where used: `models list/show` need none of them

    model = get_model(ws, ref)
    _check_named(target, "TARGET")
    entries = _file_entries(model)
    fs, root = _open_target(target)
    root = root.rstrip("/") or "/"
    local = "://" not in target
    if local:
        check_parent(Path(target).expanduser().absolute(), "to")
    with _target_errors(target):
        _check_empty(fs, root, target, force)
    missing = [e["path"] for e in entries if not ws.storage.exists(f"{model.storage_path}/{e['path']}")]
    if missing:
        raise OperationError(
            f"model {model.id} is missing stored files ({', '.join(missing[:3])})",
            "the storage was changed outside brightrun; retrain or restore the files",
        )
    written, total = [], 0
    with _target_errors(target):
        fs.makedirs(root, exist_ok=True)
    for entry in entries:
        dest = posixpath.join(root, entry["path"])
        with _target_errors(target):
            fs.makedirs(posixpath.dirname(dest), exist_ok=True)
            out = fs.open(dest, "wb")
        digest = hashlib.sha256()
        with ws.storage.open(f"{model.storage_path}/{entry['path']}") as src, out, _target_errors(target):
            while chunk := src.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
        if digest.hexdigest() != entry["sha256"]:
            fs.rm(dest)
            raise OperationError(
                f"stored file {entry['path']} of model {model.id} does not match its checksum",
                "the stored artifact is damaged; retrain the job to recreate it",
            )
        written.append(entry["path"])
        total += entry["size"]
    return Exported(target=target, files=written, bytes=total)


def local_artifact_dir(ws: Workspace, model: ModelRow, scratch: Path) -> Path:
    local = ws.storage.local_path(model.storage_path)
    if local is not None:
        return local
    return ws.storage.fetch_dir(model.storage_path, scratch / "adapter")


def _resolve_base(base_model: str | None) -> str:
    if not base_model:
        raise UsageError("the model does not record its base model", "merge it by hand with peft's merge_and_unload")
    try:
        path = resolve_base_model(base_model)
    except ValueError as exc:  # a builtin this installation does not ship
        raise UsageError(f"the base model is unavailable: {exc}", "install the brightrun version that trained it") from exc
    gguf.check_local_base(path)
    return path


def merge_model(ws: Workspace, ref: str, out_dir: Path | str, *, force: bool = False) -> Path:
    """Merge base + adapter (peft merge_and_unload) into a standard HF model directory (safetensors).

    Nothing is written unless the merge succeeds: the model is saved to a temporary
    directory beside `out_dir` and moved into place at the end.
    """
    import shutil
    import tempfile

    model = get_model(ws, ref)
    _check_named(str(out_dir), "OUT_DIR")
    out_dir = Path(out_dir).expanduser()
    check_parent(out_dir.absolute(), "to")
    with user_path(out_dir, "to"):
        _check_empty(*_open_target(str(out_dir)), str(out_dir), force)
    base = _resolve_base(model.base_model)

    import torch

    from brightrun_cli.generation.quantization import keep_bitsandbytes_out

    quiet_library_logs()
    keep_bitsandbytes_out()  # the adapter is merged onto the unquantised base
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    if not sys.stderr.isatty():  # transformers' shard progress bars: for a person at a terminal, not a log
        hf_logging.disable_progress_bar()
    with tempfile.TemporaryDirectory(dir=ws.cache_dir, prefix="merge-") as scratch_name:
        scratch = Path(scratch_name)
        try:
            base_model = AutoModelForCausalLM.from_pretrained(base)
        except (OSError, ValueError) as exc:
            raise UsageError(
                f"the base model '{model.base_model}' of model {model.id} is unavailable ({_first_line(exc)})",
                "make it available locally (download it, or point HF_HOME at its cache) and merge again",
            ) from exc
        adapter_dir = local_artifact_dir(ws, model, scratch)
        with torch.no_grad():
            merged = PeftModel.from_pretrained(base_model, str(adapter_dir)).merge_and_unload()
        with user_path(out_dir, "to"):
            staged = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.merge-"))
        staged.chmod(0o777 & ~umask())  # mkdtemp's 0700 is for the scratch phase, not the user's result
        try:
            merged.save_pretrained(staged)
            AutoTokenizer.from_pretrained(str(adapter_dir)).save_pretrained(staged)
            _user_modes(staged)
            with user_path(out_dir, "to"):
                _move_into(staged, out_dir)
        finally:
            shutil.rmtree(staged, ignore_errors=True)
    return out_dir


def _check_named(target: str, what: str) -> None:
    """An empty target would mean the current directory, which nobody types on purpose."""
    if not str(target).strip():
        raise UsageError(f"{what} is empty", "name the directory to write to, e.g. ./my-model (or . for this one)")


def _user_modes(root: Path) -> None:
    """The modes the user's umask gives new files: the weights file safetensors writes is 0600
    whatever the umask, which a server running as another user cannot read."""
    mask = umask()
    for path in root.rglob("*"):
        path.chmod((0o777 if path.is_dir() else 0o666) & ~mask)


def _move_into(staged: Path, out_dir: Path) -> None:
    import shutil

    if not out_dir.exists():
        os.replace(staged, out_dir)
        return
    for item in staged.iterdir():
        dest = out_dir / item.name
        if dest.is_dir() and not dest.is_symlink():
            shutil.rmtree(dest)
        os.replace(item, dest)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def remove_model(ws: Workspace, ref: str) -> ModelRow:
    """Soft-delete the row, then delete the stored files. Refuses while another model derives from it."""
    model = get_model(ws, ref)
    with ws.registry.write() as tx:
        children = model_rows.live_children(tx, model.id)
        if children:
            raise ConflictError(f"model {model.id} is the parent of {', '.join(children)}", "remove those models first")
        model_rows.soft_delete(tx, model.id)
    if model.storage_path:
        ws.storage.delete(model.storage_path)
    return model
