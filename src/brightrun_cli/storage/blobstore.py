"""A blob store rooted at an fsspec URL (default `<home>/storage`).

Keys are relative POSIX paths (`datasets/<id>/data.jsonl`); the registry stores keys,
never URLs or absolute paths, so the root can move. Writes are atomic: data goes to a
temporary key first and is moved into place, so a reader (or a crash) never sees half
a file under a real key. A temporary key names the key it is for (`.tmp/datasets+<id>+
data.jsonl.<uuid>`), so deleting a prefix also removes what a killed writer left for it.
"""

from __future__ import annotations

import os
import posixpath
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from brightrun_cli.errors import UsageError

TMP_PREFIX = ".tmp"


def check_key(key: str) -> str:
    """Reject keys that could escape the root: absolute, `..`, backslashes, empty parts."""
    parts = key.split("/")
    if not key or key.startswith("/") or "\\" in key or any(p in ("", ".", "..") for p in parts):
        raise UsageError(f"invalid storage key '{key}'", "keys are relative paths without '..'")
    return key


def _tmp_stem(key: str) -> str:
    """The flat name a key's temporary blobs start with: its path with '/' as '+'."""
    return check_key(key).replace("/", "+")


class BlobStore:
    def __init__(self, url: str, options: dict[str, Any] | None = None):
        self.url = url.rstrip("/")
        self.fs, root = fsspec.core.url_to_fs(self.url, **(options or {}))
        self.root = root.rstrip("/")
        self.is_local = isinstance(self.fs, LocalFileSystem)
        if self.is_local:
            Path(self.root).mkdir(parents=True, exist_ok=True, mode=0o700)

    def path(self, key: str) -> str:
        """Full path of `key` in the underlying filesystem (not a URL)."""
        return posixpath.join(self.root, check_key(key))

    def uri(self, key: str) -> str:
        """URL of `key`, for messages and for handing to other fsspec users."""
        return f"{self.url}/{check_key(key)}"

    def local_path(self, key: str) -> Path | None:
        """A filesystem path when the store is local, else None (use `fetch`)."""
        return Path(self.path(key)) if self.is_local else None

    def exists(self, key: str) -> bool:
        return self.fs.exists(self.path(key))

    def size(self, key: str) -> int:
        return int(self.fs.size(self.path(key)))

    def open(self, key: str, mode: str = "rb") -> IO:
        if "r" not in mode:
            raise ValueError("use writer() or put_file() to write: they are atomic")
        return self.fs.open(self.path(key), mode)

    def _tmp_key(self, key: str) -> str:
        return f"{TMP_PREFIX}/{_tmp_stem(key)}.{uuid.uuid4().hex}"

    def _commit(self, tmp: str, key: str) -> None:
        target = self.path(key)
        if self.is_local:
            Path(target).parent.mkdir(parents=True, exist_ok=True)
            os.replace(self.path(tmp), target)
        else:
            self.fs.mv(self.path(tmp), target)

    @contextmanager
    def writer(self, key: str) -> Iterator[IO[bytes]]:
        """Write `key` as a stream; it appears only if the block finishes without error."""
        tmp = self._tmp_key(key)
        if self.is_local:
            Path(self.path(tmp)).parent.mkdir(parents=True, exist_ok=True)
        try:
            with self.fs.open(self.path(tmp), "wb") as handle:
                yield handle
            self._commit(tmp, key)
        finally:
            if self.fs.exists(self.path(tmp)):
                self.fs.rm(self.path(tmp))

    def put_file(self, local: str | os.PathLike[str], key: str) -> None:
        tmp = self._tmp_key(key)
        try:
            if self.is_local:
                Path(self.path(tmp)).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(local, self.path(tmp))
            else:
                self.fs.put_file(os.fspath(local), self.path(tmp))
            self._commit(tmp, key)
        finally:
            if self.fs.exists(self.path(tmp)):
                self.fs.rm(self.path(tmp))

    def put_dir(self, local_dir: str | os.PathLike[str], prefix: str) -> list[str]:
        """Copy every file under `local_dir` to `prefix/...`, each atomically. Returns the keys."""
        keys = []
        base = Path(local_dir)
        for file in sorted(p for p in base.rglob("*") if p.is_file()):
            key = f"{check_key(prefix)}/{file.relative_to(base).as_posix()}"
            self.put_file(file, key)
            keys.append(key)
        return keys

    def fetch(self, key: str, local: str | os.PathLike[str]) -> Path:
        """Copy `key` to a local file path and return it."""
        target = Path(local)
        target.parent.mkdir(parents=True, exist_ok=True)
        self.fs.get_file(self.path(key), os.fspath(target))
        return target

    def fetch_dir(self, prefix: str, local_dir: str | os.PathLike[str]) -> Path:
        target = Path(local_dir)
        for key in self.list(prefix):
            self.fetch(key, target / posixpath.relpath(key, prefix))
        return target

    def list(self, prefix: str) -> list[str]:
        """Keys of all files under `prefix` (recursively), sorted."""
        base = self.path(prefix)
        if not self.fs.exists(base):
            return []
        found = self.fs.find(base)
        root = self.root + "/"
        return sorted(p[len(root):] if p.startswith(root) else p for p in found)

    def sizes(self, prefix: str) -> dict[str, int]:
        """Key -> size in bytes of every file under `prefix`, from one listing."""
        base = self.path(prefix)
        if not self.fs.exists(base):
            return {}
        root = self.root + "/"
        return {p[len(root):] if p.startswith(root) else p: int(info.get("size") or 0)
                for p, info in sorted(self.fs.find(base, detail=True).items())}

    def delete(self, key_or_prefix: str) -> None:
        """Remove a key or everything under a prefix, with any temporary blobs left for them."""
        path = self.path(key_or_prefix)
        if self.fs.exists(path):
            self.fs.rm(path, recursive=True)
        stem = posixpath.join(self.root, TMP_PREFIX, _tmp_stem(key_or_prefix))
        for leftover in [*self.fs.glob(f"{stem}.*"), *self.fs.glob(f"{stem}+*")]:
            self.fs.rm(leftover)
