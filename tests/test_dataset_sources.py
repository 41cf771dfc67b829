"""`dataset add` on data as it ships: compressed JSONL, Parquet (the Hugging Face Hub's
format) and Arrow (`datasets.save_to_disk`), recognised by their bytes, not their names."""

from __future__ import annotations

import bz2
import datetime
import gzip
import io
import json
import lzma
import sys
import zipfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from brightrun_cli.errors import UsageError
from brightrun_cli.services.dataset_add import add_dataset
from brightrun_cli.workspace import Workspace
from tests.conftest import run_brightrun
from tests.test_datasets import add, conv, good_lines, show_json, snapshot, write_jsonl


def _openai_rows(n: int) -> list[dict]:
    return [{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": f"question {i}? ü"},
                          {"role": "assistant", "content": f"answer {i}."}]} for i in range(n)]


def _stored(home: Path, added: dict) -> list[dict]:
    return [json.loads(line) for line in (home / "storage" / added["storage_path"]).read_text().splitlines()]


def _added(result) -> dict:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.mark.parametrize("compress", [gzip.compress, bz2.compress, lzma.compress], ids=["gzip", "bzip2", "xz"])
def test_compressed_jsonl_or_json_array_is_stored_as_the_plain_file_would_be(cli, tmp_path, brightrun_home, compress):
    rows = _openai_rows(30)
    plain = _added(add(cli, write_jsonl(tmp_path / "chats.jsonl", rows), "--name", "plain", "--json"))
    # Named .jsonl on purpose: the bytes say what the file is.
    packed = tmp_path / "chats-packed.jsonl"
    packed.write_bytes(compress((tmp_path / "chats.jsonl").read_bytes()))
    unpacked = _added(add(cli, packed, "--name", "packed", "--json"))
    assert unpacked["content_sha256"] == plain["content_sha256"]
    assert (unpacked["format"], unpacked["total_conversations"], unpacked["file_size"]) == ("openai", 30, packed.stat().st_size)

    array = tmp_path / "alpaca.json.gz"
    array.write_bytes(compress(json.dumps([{"instruction": f"Say {i}.", "output": f"{i}"} for i in range(5)], indent=2).encode()))
    assert _added(add(cli, array, "--name", "array", "--json"))["total_conversations"] == 5


def _table_files(tmp_path: Path, rows: list[dict]) -> dict[str, Path]:
    table = pa.Table.from_pylist(rows)
    files = {"parquet": tmp_path / "train-00000-of-00001.parquet", "arrow": tmp_path / "data.arrow",
             "arrow-stream": tmp_path / "data-00000-of-00001.arrow"}
    pq.write_table(table, files["parquet"], row_group_size=7)  # several row groups
    with pa.ipc.new_file(files["arrow"], table.schema) as writer:
        writer.write_table(table, max_chunksize=5)
    with pa.ipc.new_stream(files["arrow-stream"], table.schema) as writer:  # what datasets' save_to_disk writes
        writer.write_table(table, max_chunksize=5)
    return files


@pytest.mark.parametrize("kind", ["parquet", "arrow", "arrow-stream"])
def test_parquet_and_arrow_rows_are_conversations_with_row_n_reported_as_line_n(cli, tmp_path, brightrun_home, kind):
    rows = _openai_rows(23)
    plain = _added(add(cli, write_jsonl(tmp_path / "chats.jsonl", rows), "--name", "plain", "--json"))
    table = _added(add(cli, _table_files(tmp_path, rows)[kind], "--name", kind, "--json"))
    assert table["format"] == "openai" and table["content_sha256"] == plain["content_sha256"]

    # A problem names its row: row 3 (counting from 1) has an empty answer, row 20 an unknown role.
    bad = [dict(r) for r in rows]
    bad[2] = {"messages": [*rows[2]["messages"][:2], {"role": "assistant", "content": ""}]}
    bad[19] = {"messages": [*rows[19]["messages"], {"role": "narrator", "content": "42"}]}
    (tmp_path / "bad").mkdir()
    before = snapshot(brightrun_home)
    failed = add(cli, _table_files(tmp_path / "bad", bad)[kind], "--name", "bad", "--json")
    assert failed.exit_code == 2
    assert [e["line"] for e in json.loads(failed.stdout)["validation_errors"]] == [3, 20]
    assert snapshot(brightrun_home)[1] == before[1]  # no blobs stored


def test_table_columns_json_has_no_type_for_are_kept_as_text_or_null(cli, tmp_path, brightrun_home):
    """A native-format table keeps its extra columns, as a JSONL line keeps its extra keys."""
    rows = [conv(f"c{i}", ("user", f"q{i}"), ("assistant", f"a{i}"), created=datetime.datetime(2024, 5, 1, 12, i),
                 score=float("nan") if i == 0 else 0.5, raw=b"\x00\x01") for i in range(3)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "native.parquet")
    added = _added(add(cli, tmp_path / "native.parquet", "--name", "native", "--json"))
    first = _stored(brightrun_home, added)[0]
    assert first["conversation_id"] == "c0" and first["turns"][1] == {"role": "assistant", "content": "a0"}
    assert (first["created"], first["score"], first["raw"]) == ("2024-05-01T12:00:00", None, "AAE=")


@pytest.mark.parametrize("damage,expected", [
    (lambda data: gzip.compress(data)[:-40], "cannot decompress it as gzip"),
    (lambda data: b"BZh9" + b"garbage" * 20, "cannot decompress it as bzip2"),
    ("parquet-cut", "cannot read it as Parquet"),
    ("zip", "is a zip archive; unzip it"),
])
def test_a_damaged_or_archived_file_is_one_error_line_and_stores_nothing(cli, tmp_path, brightrun_home, damage, expected):
    source = write_jsonl(tmp_path / "chats.jsonl", good_lines(200))
    target = tmp_path / "data.bin"
    if damage == "parquet-cut":
        pq.write_table(pa.Table.from_pylist(good_lines(200)), tmp_path / "whole.parquet")
        whole = (tmp_path / "whole.parquet").read_bytes()
        target.write_bytes(whole[: len(whole) // 2])
    elif damage == "zip":
        with zipfile.ZipFile(target, "w") as archive:
            archive.write(source, "chats.jsonl")
    else:
        target.write_bytes(damage(source.read_bytes()))
    result = add(cli, target, "--name", "damaged")
    assert result.exit_code == 2 and expected in result.stderr, result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert json.loads(cli("dataset", "list", "--json").stdout) == []
    assert not list((brightrun_home / "storage").glob("datasets/*"))


def test_what_a_file_unpacks_to_is_held_to_the_size_limit(cli, tmp_path, brightrun_home):
    """A 1 MB gzip file can unpack to gigabytes: the limit counts the text, not only the file."""
    text = "".join(json.dumps(r) + "\n" for r in good_lines(3000))  # ~240 KB of text, a few KB packed
    bomb = tmp_path / "chats.jsonl.gz"
    bomb.write_bytes(gzip.compress(text.encode()))
    (brightrun_home / "config.toml").write_text(f"max_dataset_bytes = {len(text) // 2}\n")
    assert bomb.stat().st_size < len(text) // 2
    result = add(cli, bomb, "--name", "bomb")
    assert result.exit_code == 2
    assert "chats.jsonl.gz unpacks to more than the dataset size limit" in result.stderr and "max_dataset_bytes" in result.stderr
    assert json.loads(cli("dataset", "list", "--json").stdout) == []
    assert not list((brightrun_home / "storage").glob("datasets/*"))


def test_zstd_without_its_package_says_how_to_proceed(cli, tmp_path, brightrun_home, monkeypatch):
    monkeypatch.setitem(sys.modules, "zstandard", None)  # import fails, as where it is not installed
    (tmp_path / "chats.jsonl.zst").write_bytes(b"\x28\xb5\x2f\xfd" + b"\x00" * 32)
    result = add(cli, tmp_path / "chats.jsonl.zst", "--name", "z")
    assert result.exit_code == 2
    assert "zstd-compressed, and the zstandard package is not installed; pip install zstandard, or decompress it first" in result.stderr


def test_progress_counts_stored_bytes_up_to_the_file_size(tmp_path, brightrun_home):
    """The bar's total is the file's size: progress must reach it, not the size of the text inside."""
    source = tmp_path / "chats.jsonl.gz"
    source.write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in good_lines(40_000)).encode()))
    seen: list[tuple[int, int | None]] = []
    row = add_dataset(Workspace.open(brightrun_home), str(source), name="big", progress=lambda done, total: seen.append((done, total)))
    assert row.status == "ready" and len(seen) > 2
    assert {total for _, total in seen} == {source.stat().st_size}
    assert [done for done, _ in seen] == sorted(done for done, _ in seen) and seen[-1][0] == source.stat().st_size


def test_a_text_file_starting_like_no_container_is_read_as_text(cli, tmp_path, brightrun_home):
    """Plain JSONL stays on the text path: its first bytes match no container's."""
    added = _added(add(cli, write_jsonl(tmp_path / "chats.jsonl.gz", good_lines(5)), "--name", "named-gz", "--json"))
    assert added["total_conversations"] == 5 and show_json(cli, "named-gz")["status"] == "ready"


# ------------------------------------------------------------------ several files (shards)


def _shards(tmp_path: Path, rows: list[dict], cuts: list[int]) -> list[Path]:
    """`rows` split at `cuts` into Parquet shards named as the Hub names them."""
    bounds = [0, *cuts, len(rows)]
    paths = []
    for index, (start, end) in enumerate(zip(bounds, bounds[1:])):
        path = tmp_path / f"train-{index:05d}-of-{len(bounds) - 1:05d}.parquet"
        pq.write_table(pa.Table.from_pylist(rows[start:end]), path)
        paths.append(path)
    return paths


def test_shards_added_together_are_one_dataset_in_the_order_given(cli, tmp_path, brightrun_home):
    rows = [conv(f"c{i}", ("user", f"q{i}"), ("assistant", f"a{i}")) for i in range(50)]
    whole = _added(add(cli, write_jsonl(tmp_path / "all.jsonl", rows), "--name", "whole", "--json"))
    shards = _shards(tmp_path, rows, [20, 35])
    added = _added(cli("dataset", "add", *map(str, shards), "--name", "shards", "--json"))
    assert added["content_sha256"] == whole["content_sha256"]  # same conversations, same order, same split
    assert added["file_size"] == sum(p.stat().st_size for p in shards)
    assert added["file_name"] == "train-00000-of-00003.parquet (+2 more)"
    assert json.loads(added["source_uri"]) == [str(p) for p in shards]

    # Records without ids of their own are told apart by file: line 1 of each shard is no duplicate.
    (tmp_path / "unnamed").mkdir()
    unnamed = _shards(tmp_path / "unnamed", _openai_rows(30), [10])
    ids = [c["conversation_id"] for c in _stored(brightrun_home, _added(cli("dataset", "add", *map(str, unnamed), "--name", "unnamed", "--json")))]
    assert len(ids) == 30 and "train-00001-of-00002.parquet:line-1" in ids


def test_a_problem_in_a_shard_names_its_file_and_line(cli, tmp_path, brightrun_home):
    rows = [conv(f"c{i}", ("user", f"q{i}"), ("assistant", f"a{i}")) for i in range(30)]
    rows[24] = conv("c3", ("user", "again"), ("assistant", "a duplicate id"))  # c3 is in the first shard
    rows[27] = conv("c27", ("user", "no answer"))
    shards = _shards(tmp_path, rows, [20])
    failed = cli("dataset", "add", *map(str, shards), "--name", "shards", "--json")
    assert failed.exit_code == 2
    found = json.loads(failed.stdout)
    assert [(e["file"], e["line"], e["error"]) for e in found["validation_errors"]] == [
        ("train-00001-of-00002.parquet", 5, "duplicate conversation_id 'c3' (first on train-00000-of-00002.parquet line 4)"),
        ("train-00001-of-00002.parquet", 8, "no assistant turn"),
    ]
    assert found["error_message"] == "2 validation problem(s); first on train-00001-of-00002.parquet line 5: " + found["validation_errors"][0]["error"]
    shown = cli("dataset", "show", found["id"]).stdout
    assert "train-00001-of-00002.parquet:8" in shown.replace("\n", "").replace(" ", "")
    # One file keeps the findings as they always were: no "file" key.
    single = json.loads(add(cli, shards[1], "--name", "one", "--json").stdout)
    assert single["validation_errors"] == [{"line": 8, "error": "no assistant turn", "suggestion": found["validation_errors"][1]["suggestion"]}]


def test_shards_are_held_to_the_size_limit_together_and_each_is_given_once(cli, tmp_path, brightrun_home):
    a = write_jsonl(tmp_path / "a.jsonl", good_lines(20))
    b = write_jsonl(tmp_path / "b.jsonl", good_lines(20))
    twice = cli("dataset", "add", str(a), str(a), "--name", "twice")
    assert twice.exit_code == 2 and "is given more than once" in twice.stderr
    (brightrun_home / "config.toml").write_text(f"max_dataset_bytes = {a.stat().st_size + b.stat().st_size - 1}\n")
    over = cli("dataset", "add", str(a), str(b), "--name", "over")
    assert over.exit_code == 2 and "the 2 files are" in over.stderr and "together, over the dataset size limit" in over.stderr
    # What compressed shards unpack to counts together too.
    (tmp_path / "a.jsonl.gz").write_bytes(gzip.compress(a.read_bytes()))
    (tmp_path / "b.jsonl.gz").write_bytes(gzip.compress(b.read_bytes()))
    packed = cli("dataset", "add", str(tmp_path / "a.jsonl.gz"), str(tmp_path / "b.jsonl.gz"), "--name", "packed")
    assert packed.exit_code == 2 and "the 2 files unpack to more than the dataset size limit" in packed.stderr
    assert json.loads(cli("dataset", "list", "--json").stdout) == []


def test_shards_progress_counts_every_file_and_the_again_command_names_them_all(tmp_path, brightrun_home):
    from brightrun_cli.services.datasets import add_again_command

    shards = []
    for index in range(2):
        path = tmp_path / f"part {index}.jsonl.gz"  # a space: the command must quote it
        path.write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in good_lines(20_000)).replace('"conversation_id": "c', f'"conversation_id": "s{index}-c').encode()))
        shards.append(path)
    seen: list[tuple[int, int | None]] = []
    row = add_dataset(Workspace.open(brightrun_home), [str(p) for p in shards], name="parts",
                      progress=lambda done, total: seen.append((done, total)))
    total = sum(p.stat().st_size for p in shards)
    assert row.status == "ready" and row.total_conversations == 40_000
    assert {t for _, t in seen} == {total} and seen[-1][0] == total
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    assert add_again_command(row) == f"brightrun dataset add '{shards[0]}' '{shards[1]}' --name parts"


# ------------------------------------------------------------------ standard input


def _pipe(brightrun_home: Path, data: bytes, *args: str):
    import os
    import subprocess

    from tests.conftest import REPO

    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    return subprocess.run([sys.executable, "-m", "brightrun_cli", "dataset", "add", "-", *args], input=data, env=env,
                          capture_output=True, timeout=120)


def test_dash_reads_standard_input_compressed_or_not_and_leaves_no_spool(tmp_path, brightrun_home):
    text = "".join(json.dumps(r) + "\n" for r in good_lines(25)).encode()
    piped = _pipe(brightrun_home, gzip.compress(text), "--name", "piped", "--json")
    assert piped.returncode == 0, piped.stderr
    added = json.loads(piped.stdout)
    assert (added["source_uri"], added["file_name"], added["total_conversations"]) == ("-", "stdin", 25)
    assert _stored(brightrun_home, added) == [json.loads(line) for line in text.splitlines()]
    assert not list((brightrun_home / "cache").glob("stdin-*"))

    (brightrun_home / "config.toml").write_text("max_dataset_bytes = 500\n")
    over = _pipe(brightrun_home, text, "--name", "over")
    assert over.returncode == 2 and b"standard input holds more than the dataset size limit of 500 bytes" in over.stderr
    empty = _pipe(brightrun_home, b"", "--name", "empty")
    assert empty.returncode == 2 and b"standard input is empty" in empty.stderr
    assert not list((brightrun_home / "cache").glob("stdin-*"))
    assert [d["name"] for d in json.loads(run_brightrun("dataset", "list", "--json").stdout)] == ["piped"]


def test_dash_on_a_terminal_says_to_pipe_the_data_in(brightrun_home, monkeypatch):
    class Terminal(io.BytesIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(Terminal()))
    with pytest.raises(UsageError, match="standard input, which is a terminal"):
        add_dataset(Workspace.open(brightrun_home), "-", name="tty")
