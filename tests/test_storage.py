"""The blob store against the local default and a real S3-compatible server (moto on loopback)."""

from __future__ import annotations

import uuid

import pytest

from brightrun_cli.errors import UsageError
from brightrun_cli.storage import BlobStore


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        return BlobStore(str(tmp_path / "storage"))
    endpoint = request.getfixturevalue("s3_server")
    bucket = f"bkt-{uuid.uuid4().hex[:12]}"
    options = {"client_kwargs": {"endpoint_url": endpoint}}
    import s3fs

    s3fs.S3FileSystem(**options).mkdir(bucket)
    return BlobStore(f"s3://{bucket}/prefix", options)


def test_writer_is_atomic_and_readable(store):
    with store.writer("datasets/a/data.jsonl") as out:
        out.write(b'{"x": 1}\n')
        assert not store.exists("datasets/a/data.jsonl"), "a half-written blob must not be visible under its key"
    assert store.exists("datasets/a/data.jsonl")
    with store.open("datasets/a/data.jsonl") as handle:
        assert handle.read() == b'{"x": 1}\n'
    assert store.size("datasets/a/data.jsonl") == 9


def test_failed_write_leaves_nothing(store):
    with pytest.raises(RuntimeError):
        with store.writer("datasets/b/data.jsonl") as out:
            out.write(b"partial")
            raise RuntimeError("boom")
    assert not store.exists("datasets/b/data.jsonl")
    assert store.list(".tmp") == [], "the temporary blob must be cleaned up"


def test_delete_removes_what_a_killed_writer_left_for_that_prefix_only(store):
    # What a process killed mid-copy leaves: temporary blobs named after their keys.
    store.fs.makedirs(store.path(".tmp"), exist_ok=True)
    for key in ("datasets/k/data.jsonl", "datasets/k/train.jsonl", "datasets/k2/data.jsonl"):
        store.fs.pipe(store.path(store._tmp_key(key)), b"partial")
    store.delete("datasets/k")
    assert [k.split("/")[1].rsplit(".", 1)[0] for k in store.list(".tmp")] == ["datasets+k2+data.jsonl"]


def test_list_fetch_delete(store, tmp_path):
    for name in ("train.jsonl", "validation.jsonl"):
        with store.writer(f"datasets/c/{name}") as out:
            out.write(name.encode())
    assert store.list("datasets/c") == ["datasets/c/train.jsonl", "datasets/c/validation.jsonl"]
    local = store.fetch("datasets/c/train.jsonl", tmp_path / "cache" / "train.jsonl")
    assert local.read_bytes() == b"train.jsonl"
    store.delete("datasets/c")
    assert store.list("datasets/c") == []
    assert not store.exists("datasets/c/train.jsonl")


@pytest.mark.parametrize("key", ["", "/abs", "../up", "a/../b", "a//b", "a\\b", "."])
def test_keys_cannot_escape_the_root(tmp_path, key):
    store = BlobStore(str(tmp_path / "storage"))
    with pytest.raises(UsageError):
        store.path(key)
