"""Where a dataset comes from, read as JSON lines whatever it is stored as.

A source is a local path or an fsspec URL. What it holds is recognised by its first
bytes, not by its name (a `.jsonl` that is really gzip is read as gzip):
- text: JSONL, or one JSON array (`dataset_validation.json_lines` tells them apart);
- gzip, bzip2 or xz (and zstd where the `zstandard` package is installed): the text,
  decompressed as it streams;
- Parquet, how the Hugging Face Hub stores datasets, and Arrow IPC, what
  `datasets.Dataset.save_to_disk` writes: read a batch of rows at a time, each row one
  JSON object on its own line, so row N is "line N" in every report (counting from 1).
A zip archive is refused: it may hold any number of files, and which one is meant is the
user's to say. `-` is standard input (saved to a private file first, then read as a file).

The size limit holds twice: for the file as stored (checked before reading) and for
the text it turns into, counted as it streams (a 1 MB gzip file may unpack to 10 GB).
Progress is reported in stored bytes, so a bar's total is the file's size.
"""

from __future__ import annotations

import contextlib
import io
import os
import stat
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from brightrun_cli.config import CONFIG_FILE, DEFAULT_MAX_DATASET_BYTES
from brightrun_cli.errors import OperationError, UsageError

if TYPE_CHECKING:
    from brightrun_cli.workspace import Workspace

READ_BUFFER = 1 << 20
STDIN = "-"
ROW_BATCH = 512
# First bytes of each container format; a UTF-8 text file can start with none of them
# (0x1f and 0x28 are not JSON's first byte, and 0xfd / 0xff are never UTF-8).
_MAGIC = (
    (b"\x1f\x8b", "gzip"),
    (b"BZh", "bzip2"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
    (b"PAR1", "parquet"),
    (b"ARROW1", "arrow"),
    (b"\xff\xff\xff\xff", "arrow-stream"),
    (b"PK\x03\x04", "zip"),
)
CONTAINERS = ("gzip", "bzip2", "xz", "zstd", "parquet", "arrow", "arrow-stream")


@dataclass
class Source:
    """A dataset file to read: what the user gave, how to name it, and how to open it."""

    uri: str  # what the user gave (a path or URL), stored as source_uri
    display: str  # how messages name it
    file_name: str
    size: int  # bytes as stored
    opener: Callable[[], IO[bytes]]
    spooled: Path | None = None  # standard input, saved to a private file first (removed by `close`)

    @classmethod
    def open(cls, ws: "Workspace", source: str) -> "Source":
        if source == STDIN:
            return cls._stdin(ws)
        if "://" in source:
            return cls._remote(ws, source)
        path = Path(source).expanduser()
        size = _regular_file_size(path, source)
        if size == 0:
            raise UsageError(f"{source} is empty", "pass a JSONL file with one conversation per line")
        return cls(str(path.absolute()), source, path.name, size, lambda: open(path, "rb", buffering=0))

    @classmethod
    def _stdin(cls, ws: "Workspace") -> "Source":
        """`-`: the data piped in, saved to a private file in the cache first, so that it is
        read as any file is (its size known, a Parquet file seekable), up to the size limit."""
        if sys.stdin is None or sys.stdin.isatty():
            raise UsageError("'-' reads the data from standard input, which is a terminal", "pipe the data in, e.g. jq -c ... | brightrun dataset add - --name NAME")
        limit = ws.config.max_dataset_bytes
        ws.cache_dir.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix="stdin-", suffix=".data", dir=ws.cache_dir)
        path = Path(name)
        size = 0
        try:
            with os.fdopen(fd, "wb") as out:
                source = sys.stdin.buffer
                while chunk := source.read(READ_BUFFER):
                    size += len(chunk)
                    if size > limit:
                        raise over_size_limit(ws, "standard input holds more than")
                    out.write(chunk)
            if size == 0:
                raise UsageError("standard input is empty", "pipe a JSONL file with one conversation per line into it")
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return cls(STDIN, "standard input", "stdin", size, lambda: open(path, "rb", buffering=0), spooled=path)

    def close(self) -> None:
        if self.spooled is not None:
            self.spooled.unlink(missing_ok=True)

    @classmethod
    def _remote(cls, ws: "Workspace", url: str) -> "Source":
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
            raise UsageError(f"{url} is a directory", f"pass the data file inside it, or all its shards (e.g. {url.rstrip('/')}/train-*)")
        size = int(info.get("size") or 0)
        if size == 0:
            raise UsageError(f"{url} is empty", "pass a JSONL file with one conversation per line")
        return cls(url, url, url.rstrip("/").rsplit("/", 1)[-1], size, lambda: fs.open(path, "rb"))

    @contextlib.contextmanager
    def stream(self, *, max_text_bytes: int, over_limit: Callable[[], UsageError]) -> Iterator["Stream"]:
        """The source's lines of JSON text. `max_text_bytes`: what a compressed or columnar
        source may turn into before `over_limit()` is raised."""
        with self.opener() as handle:
            counted = _Counted(handle)
            buffered = io.BufferedReader(counted, READ_BUFFER)
            kind = _container(buffered.peek(8)[:8])
            stream = Stream(counted, kind)
            if kind is None:
                stream.lines = stream.limited(buffered, self.size, lambda: UsageError(
                    f"{self.display} grew while it was being read", "add it again once it is complete"))
            else:
                stream.lines = stream.limited(_decoded(kind, buffered, self.display), max_text_bytes, over_limit)
            yield stream


@dataclass
class Stream:
    _counted: "_Counted"
    container: str | None  # None: plain text
    lines: Iterator[bytes] = field(default_factory=lambda: iter(()))
    text_bytes: int = 0  # of the lines read so far

    def limited(self, lines: Iterable[bytes], limit: int, over: Callable[[], UsageError]) -> Iterator[bytes]:
        """`lines`, counted, refusing to go on past `limit` bytes of them."""
        for raw in lines:
            self.text_bytes += len(raw)
            if self.text_bytes > limit:
                raise over()
            yield raw

    @property
    def consumed(self) -> int:
        """Bytes of the stored file read so far."""
        return self._counted.consumed


class _Counted(io.RawIOBase):
    """A binary file that counts the bytes read through it (for progress in stored bytes)."""

    def __init__(self, handle: IO[bytes]):
        self._handle = handle
        self.consumed = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return bool(getattr(self._handle, "seekable", lambda: False)())

    def readinto(self, buffer: Any) -> int:
        data = self._handle.read(len(buffer))
        size = len(data)
        buffer[:size] = data
        self.consumed += size
        return size

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._handle.seek(offset, whence)

    def tell(self) -> int:
        return self._handle.tell()


def _container(head: bytes) -> str | None:
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            return kind
    return None


def _decoded(kind: str, handle: io.BufferedReader, display: str) -> Iterator[bytes]:
    if kind == "zip":
        raise UsageError(f"{display} is a zip archive", "unzip it and add the JSONL (or Parquet) file inside")
    if kind in ("parquet", "arrow", "arrow-stream"):
        yield from _rows(kind, handle, display)
        return
    text, errors = _decompressor(kind, handle, display)
    try:
        yield from text
    except errors as exc:  # cut off, or not the format its first bytes claim
        raise UsageError(f"{display}: cannot decompress it as {kind} ({_reason(exc)})",
                         "copy the file again in full, or decompress it yourself and add the result") from None


def _decompressor(kind: str, handle: io.BufferedReader, display: str) -> tuple[IO[bytes], tuple[type[BaseException], ...]]:
    """A reader of the decompressed bytes, and the errors that say the data is damaged."""
    import lzma
    import zlib

    errors: tuple[type[BaseException], ...] = (EOFError, OSError, zlib.error, lzma.LZMAError)
    if kind == "gzip":
        import gzip

        return gzip.GzipFile(fileobj=handle, mode="rb"), errors
    if kind == "bzip2":
        import bz2

        return bz2.BZ2File(handle, "rb"), errors
    if kind == "xz":
        return lzma.LZMAFile(handle, "rb"), errors
    try:
        import zstandard
    except ImportError:
        raise UsageError(f"{display} is zstd-compressed, and the zstandard package is not installed",
                         "pip install zstandard, or decompress it first (zstd -d FILE)") from None
    reader = zstandard.ZstdDecompressor().stream_reader(handle, read_across_frames=True)
    return io.BufferedReader(reader, READ_BUFFER), (*errors, zstandard.ZstdError)


def _rows(kind: str, handle: io.BufferedReader, display: str) -> Iterator[bytes]:
    """Each row of a Parquet or Arrow file as one line of JSON. Values JSON has no type
    for keep their meaning: timestamps and dates as ISO 8601 text, decimals as text, bytes
    as base64, NaN and infinities as null (msgspec's encoding)."""
    import msgspec
    import pyarrow as pa

    encode = msgspec.json.Encoder(enc_hook=str).encode  # a type msgspec has no encoding for: its text
    what = {"parquet": "Parquet", "arrow": "Arrow", "arrow-stream": "Arrow stream"}[kind]
    try:
        if kind == "parquet":
            import pyarrow.parquet as pq

            batches = pq.ParquetFile(handle).iter_batches(batch_size=ROW_BATCH)
        elif kind == "arrow":
            reader = pa.ipc.open_file(handle)
            batches = (reader.get_batch(i) for i in range(reader.num_record_batches))
        else:
            batches = iter(pa.ipc.open_stream(handle))
        for batch in batches:
            for row in batch.to_pylist():
                yield encode(row) + b"\n"
    except (pa.ArrowException, OSError) as exc:  # a damaged or cut-off file
        raise UsageError(f"{display}: cannot read it as {what} ({_reason(exc)})",
                         "copy the file again in full, or export the data as JSONL") from None


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


def _regular_file_size(path: Path, source: str) -> int:
    """The size of a readable regular file. Opened without blocking and checked on the open
    descriptor: opening a FIFO for reading would wait for a writer forever, and a device
    such as /dev/zero never ends."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise UsageError(f"{source}: no such file", "check the path (or pass an fsspec URL such as s3://bucket/data.jsonl)") from None
    except OSError as exc:
        raise UsageError(f"cannot read {source} ({exc.strerror})", "check the file's permissions") from exc
    try:
        info = os.fstat(fd)
    finally:
        os.close(fd)
    if stat.S_ISDIR(info.st_mode):
        raise UsageError(f"{source} is a directory", f"pass the data file inside it, or all its shards (e.g. {source.rstrip('/')}/train-*)")
    if not stat.S_ISREG(info.st_mode):
        kind = ("a FIFO" if stat.S_ISFIFO(info.st_mode) else "a character device" if stat.S_ISCHR(info.st_mode)
                else "a block device" if stat.S_ISBLK(info.st_mode) else "a socket" if stat.S_ISSOCK(info.st_mode) else "a special file")
        raise UsageError(f"{source} is not a regular file ({kind})", "pipe it in instead: cat SOURCE | brightrun dataset add - --name NAME")
    return info.st_size


def over_size_limit(ws: "Workspace", what: str) -> UsageError:
    config_file = ws.home / CONFIG_FILE
    limit = ws.config.max_dataset_bytes
    origin = "brightrun's default" if limit == DEFAULT_MAX_DATASET_BYTES else f"max_dataset_bytes = {limit} in {config_file}"
    return UsageError(f"{what} the dataset size limit of {size_text(limit)} ({origin})",
                      f"split the file, or raise max_dataset_bytes (bytes) in {config_file}")


def size_text(size: int) -> str:
    """A size as people read it: "20 bytes", "4.2 KB", "312.5 MB", "1.3 GB" (a small limit is not "0.0 MB")."""
    if size < 1000:
        return f"{size} byte{'s' if size != 1 else ''}"
    for unit in ("KB", "MB", "GB"):
        size /= 1000
        if size < 1000 or unit == "GB":
            break
    return f"{size:.1f} {unit}"
