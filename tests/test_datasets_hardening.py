"""`dataset add|show|validate` on what a new user and an attacker fed it (issue 16, Datasets):
line problems instead of whole-file aborts or internal errors, a failed add that frees its
name, --skip-invalid, special files, warnings, bounded samples, missing blobs, the split."""

from __future__ import annotations

import io
import json
import os
import sqlite3

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from brightrun_cli.services.dataset_tokens import ApproxCounter
from brightrun_cli.services.dataset_validation import SAMPLE_TURNS, held_out_count, scan, split_fraction
from tests.conftest import run_brightrun
from tests.test_datasets import add, conv, good_lines, show_json, write_jsonl


def strict_json(line: str):
    """json.loads that refuses NaN/Infinity: what any other JSON reader accepts."""
    def refuse(name):
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(line, parse_constant=refuse)


def errors_by_line(ds: dict) -> dict[int, str]:
    return {e["line"]: e["error"] for e in ds["validation_errors"]}


# ------------------------------------------------------------ 1. not an object


def test_json_that_is_not_an_object_is_a_line_problem_and_every_other_one_is_reported_too(cli, tmp_path):
    lines = [
        "[1, 2]",  # 1: before the format is known
        json.dumps(conv("ok", ("user", "q"), ("assistant", "a"))),
        '"just a string"',  # 3
        "null",  # 4
        json.dumps(conv("n1", ("user", "q"))),  # 5: no assistant turn
        "42",  # 6
    ]
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(lines) + "\n")
    result = add(cli, path, "--name", "mixed", "--json")
    assert result.exit_code == 2
    errors = errors_by_line(json.loads(result.stdout))
    assert sorted(errors) == [1, 3, 4, 5, 6]
    assert "not an object (got list)" in errors[1] and "(got str)" in errors[3] and "(got null)" in errors[4]
    assert "no assistant turn" in errors[5]


# ------------------------------------------------------- 2. a failed add, --skip-invalid


def test_a_failed_add_keeps_its_report_but_not_its_name_so_the_same_command_runs_again(cli, tmp_path, brightrun_home):
    path = write_jsonl(tmp_path / "d.jsonl", good_lines(3) + [conv("bad", ("user", "no answer"))])
    failed = add(cli, path, "--name", "support", "--json")
    assert failed.exit_code == 2 and "run the same command again" in failed.stderr
    report = json.loads(failed.stdout)
    assert report["status"] == "error" and errors_by_line(report) == {4: "no assistant turn"}
    shown = cli("dataset", "show", "support")
    assert shown.exit_code == 0 and "no assistant turn" in shown.stdout and "name is free" in shown.stdout
    write_jsonl(path, good_lines(4))  # the file fixed in place, the command unchanged
    again = add(cli, path, "--name", "support", "--json")
    assert again.exit_code == 0, again.output
    fixed = json.loads(again.stdout)
    assert fixed["status"] == "ready" and fixed["id"] != report["id"]
    assert [r["id"] for r in json.loads(cli("dataset", "list", "--json").stdout)] == [fixed["id"]]
    assert cli("dataset", "show", report["id"]).exit_code == 2, "the failed add's row is gone"
    # A ready dataset keeps its name.
    taken = add(cli, path, "--name", "support")
    assert taken.exit_code == 2 and "already exists" in taken.stderr


def test_a_dataset_that_failed_revalidation_keeps_its_data_and_its_name(cli, tmp_path, monkeypatch):
    from brightrun_cli.services import dataset_add

    path = write_jsonl(tmp_path / "d.jsonl", good_lines(5) + [conv("long", ("user", "word " * 400), ("assistant", "ok"))])
    assert add(cli, path, "--name", "d").exit_code == 0

    class ShortContext(ApproxCounter):
        context_length = 64

    monkeypatch.setattr(dataset_add, "load_counter", lambda model, chat_template="model": ShortContext())
    failed = cli("dataset", "validate", "d")
    assert failed.exit_code == 2 and "validate again" in failed.stderr
    taken = add(cli, path, "--name", "d")
    assert taken.exit_code == 2 and "already exists" in taken.stderr


def test_an_interrupted_add_frees_its_name_too(cli, tmp_path, brightrun_home):
    path = write_jsonl(tmp_path / "d.jsonl", good_lines(3))
    assert add(cli, path, "--name", "d").exit_code == 0
    conn = sqlite3.connect(brightrun_home / "registry.db")
    # What a SIGKILL during an add leaves: a row in `validating`, no stored data, no lock held.
    conn.execute("UPDATE datasets SET status = 'validating', content_sha256 = NULL, validated_at = NULL WHERE name = 'd'")
    conn.commit()
    assert cli("dataset", "list").exit_code == 0  # repairs it: status error, "interrupted"
    [note] = conn.execute("SELECT action_command FROM notifications WHERE title = 'Dataset interrupted'").fetchall()
    assert note[0] == f"brightrun dataset add {path} --name d"
    assert add(cli, path, "--name", "d").exit_code == 0


def test_skip_invalid_keeps_the_valid_conversations_and_lists_the_lines_it_left_out(cli, tmp_path, brightrun_home, monkeypatch):
    from brightrun_cli.services import dataset_add

    class ShortContext(ApproxCounter):
        context_length = 64

    rows = [json.dumps(r) for r in good_lines(10)]
    rows.insert(3, json.dumps(conv("bad", ("wizard", "x"), ("user", " "))))  # line 4: two problems, one line
    rows.insert(6, "{not json")  # line 7
    rows.append(json.dumps(conv("long", ("user", "word " * 400), ("assistant", "ok"))))  # 13: too long, found once counted
    rows.append(json.dumps(conv("c0", ("user", "again"), ("assistant", "dup"))))  # 14: duplicate id
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(rows) + "\n")
    monkeypatch.setattr(dataset_add, "load_counter", lambda model, chat_template="model": ShortContext())
    result = add(cli, path, "--name", "d", "--skip-invalid", "--json")
    assert result.exit_code == 0, result.output
    ds = json.loads(result.stdout)
    assert ds["status"] == "ready" and ds["training_ready"] is True
    assert ds["total_conversations"] == 10 and ds["skipped_lines"] == 4
    assert sorted({e["line"] for e in ds["validation_errors"]}) == [4, 7, 13, 14] and ds["validation_error_count"] == 5
    root = brightrun_home / "storage" / "datasets" / ds["id"]
    stored = [json.loads(line)["conversation_id"] for line in (root / "data.jsonl").read_text().splitlines()]
    assert stored == [f"c{i}" for i in range(10)]
    split = [line for name in ("train.jsonl", "validation.jsonl") for line in (root / name).read_text().splitlines()]
    assert len(split) == 10 and ds["stats"]["validation_conversations"] == 1
    assert ds["stats"]["turns"] == 20 and ds["total_training_pairs"] + ds["total_validation_pairs"] == 10
    assert ds["total_tokens"] == ds["stats"]["train_tokens"] + ds["stats"]["validation_tokens"]
    human = cli("dataset", "show", "d").stdout
    assert "4 line(s) with problems (--skip-invalid)" in human and "Lines left out" in human
    # A passing re-validation keeps the list of what the add left out.
    monkeypatch.setattr(dataset_add, "load_counter", lambda model, chat_template="model": ApproxCounter())
    again = json.loads(cli("dataset", "validate", "d", "--json").stdout)
    assert again["status"] == "ready" and again["skipped_lines"] == 4 and again["validation_error_count"] == 5
    # Nothing valid at all: still an error.
    nothing = add(cli, write_jsonl(tmp_path / "bad.jsonl", [conv("x", ("user", "q"))]), "--name", "bad", "--skip-invalid")
    assert nothing.exit_code == 2


# ----------------------------------------------------------------- 3. special files


def test_a_fifo_is_refused_at_once_instead_of_waiting_for_a_writer(tmp_path):
    fifo = tmp_path / "pipe.jsonl"
    os.mkfifo(fifo)
    result = run_brightrun("dataset", "add", str(fifo), "--name", "x", timeout=60)  # a hang fails the test here
    assert result.returncode == 2
    assert "is not a regular file (a FIFO)" in result.stderr and result.stderr.count("\n") == 1


@pytest.mark.parametrize("device", ["/dev/zero", "/dev/null"])
def test_a_character_device_is_refused(cli, device):
    if not os.path.exists(device):
        pytest.skip(f"no {device} here")
    result = cli("dataset", "add", device, "--name", "x")
    assert result.exit_code == 2 and "is not a regular file (a character device)" in result.stderr


# ----------------------------------------------- 4 and 5. what JSON cannot carry on


def test_text_and_numbers_json_cannot_carry_are_line_problems(cli, tmp_path, brightrun_home):
    ok = '{"conversation_id": "ok", "turns": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]'
    lines = [
        ok + "}",
        '{"conversation_id": "s1", "turns": [{"role": "user", "content": "x\\ud800"}, {"role": "assistant", "content": "a"}]}',  # 2
        '{"conversation_id": "s2", "\\udfff": 1, "turns": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}',  # 3: in a key
        '{"conversation_id": "s3", "meta": ["\\ud83d"], "turns": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}',  # 4
        '{"conversation_id": "big", "n": ' + "9" * 5000 + ', "turns": []}',  # 5
        '{"conversation_id": "nan", "score": NaN' + ok[len('{"conversation_id": "ok"'):] + "}",  # 6
        '{"conversation_id": "inf", "score": -Infinity' + ok[len('{"conversation_id": "ok"'):] + "}",  # 7
        '{"conversation_id": "huge", "score": 1e999' + ok[len('{"conversation_id": "ok"'):] + "}",  # 8
        '{"conversation_id": "emoji", "turns": [{"role": "user", "content": "\\ud83d\\ude00"}, {"role": "assistant", "content": "a"}]}',  # 9: a pair is fine
    ]
    path = tmp_path / "hostile.jsonl"
    path.write_text("\n".join(lines) + "\n")
    result = add(cli, path, "--name", "h", "--json")
    assert result.exit_code == 2 and "internal error" not in result.stderr
    errors = errors_by_line(json.loads(result.stdout))
    assert sorted(errors) == [2, 3, 4, 5, 6, 7, 8]
    column = lines[1].index("\\ud800") + 1
    assert f"unpaired UTF-16 surrogate escape \\ud800 at column {column}" in errors[2]
    assert "\\udfff" in errors[3] and "\\ud83d" in errors[4]
    assert "more than 4,300 digits" in errors[5]
    assert "NaN is not standard JSON" in errors[6] and "-Infinity is not standard JSON" in errors[7]
    assert "1e999 is out of range" in errors[8]
    kept = add(cli, path, "--name", "kept", "--skip-invalid", "--json")
    ds = json.loads(kept.stdout)
    stored = (brightrun_home / "storage" / ds["storage_path"]).read_text(encoding="utf-8").splitlines()
    assert [strict_json(line)["conversation_id"] for line in stored] == ["ok", "emoji"]
    assert strict_json(stored[1])["turns"][0]["content"] == "\N{GRINNING FACE}"


_HOSTILE = st.sampled_from(['"\\ud800"', '"\\udc00x"', '"\\ud83d\\ude00"', "NaN", "Infinity", "-Infinity", "1e400", "9" * 4400, '"\\\\ud800"', "[]", '""', '"  "'])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["content", "role", "meta", "conversation_id", "\\ud800", "turns"]), _HOSTILE), max_size=3))
def test_hostile_values_anywhere_never_crash_and_only_standard_json_is_stored(replacements):
    """Whatever hostile value lands in whatever key, a line is kept or reported, and what is
    written is JSON any reader takes."""
    base = {"conversation_id": "c", "meta": 1, "turns": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    line = json.dumps(base)
    for key, value in replacements:
        if key in ("role", "content"):
            line = line.replace(f'"{key}": "a"', f'"{key}": {value}', 1)
        else:
            line = line[:-1] + f', "{key}": {value}' + "}"
    data = (json.dumps(conv("anchor", ("user", "q"), ("assistant", "a"))) + "\n" + line + "\n").encode("utf-8")
    out = io.BytesIO()
    result = scan(io.BytesIO(data), out, file_name="f.jsonl", fmt="auto", val_split=0.1, counter=ApproxCounter(), keep_problems=10)
    written = out.getvalue().decode("utf-8").splitlines()
    assert len(written) + (1 if result.problem_count else 0) == 2
    for stored in written:
        strict_json(stored)


def test_empty_content_is_an_error_in_every_chat_format(cli, tmp_path):
    cases = {
        "brightrun_lora_v4": conv("e", ("user", "q"), ("assistant", " \n\t ")),
        "openai": {"messages": [{"role": "user", "content": ""}, {"role": "assistant", "content": "a"}]},
        "sharegpt": {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "   "}]},
    }
    for fmt, row in cases.items():
        good = {"brightrun_lora_v4": conv("g", ("user", "q"), ("assistant", "a")),
                "openai": {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]},
                "sharegpt": {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}}[fmt]
        result = add(cli, write_jsonl(tmp_path / f"{fmt}.jsonl", [good, row]), "--name", fmt, "--json")
        assert result.exit_code == 2, (fmt, result.output)
        [error] = json.loads(result.stdout)["validation_errors"]
        assert error["line"] == 2 and "has empty" in error["error"], error


def test_a_conversation_without_a_user_turn_is_a_warning_that_show_lists_and_training_ignores(cli, tmp_path):
    rows = good_lines(4) + [conv("monologue", ("system", "be brief"), ("assistant", "hello"))]
    result = add(cli, write_jsonl(tmp_path / "d.jsonl", rows), "--name", "d", "--json")
    assert result.exit_code == 0, result.output
    ds = json.loads(result.stdout)
    assert ds["status"] == "ready" and ds["total_conversations"] == 5 and ds["validation_errors"] == []
    assert ds["validation_warning_count"] == 1
    [warning] = ds["validation_warnings"]
    assert warning["line"] == 5 and "no user turn" in warning["warning"] and warning["suggestion"]
    assert show_json(cli, "d")["validation_warnings"] == [warning]
    human = cli("dataset", "show", "d").stdout
    assert "1 (they do not block training)" in human and "no user turn" in human
    plan = cli("train", "--dataset", "d", "--preset", "tiny", "--dry-run", "--json")
    assert plan.exit_code == 0, plan.output


# ----------------------------------------------------------------- 6. bounded samples


def test_samples_of_a_conversation_with_many_turns_are_stored_and_shown_cut(cli, tmp_path, brightrun_home):
    turns = [("user" if i % 2 == 0 else "assistant", f"turn {i} " + "x" * (3000 if i < 4 else 20)) for i in range(20_000)]
    path = write_jsonl(tmp_path / "long.jsonl", [conv("long", *turns), *good_lines(2)])
    ds = json.loads(add(cli, path, "--name", "long", "--json").stdout)
    sample = next(s for s in ds["sample_data"] if s["conversation_id"] == "long")
    assert len(sample["turns"]) == SAMPLE_TURNS and sample["turn_count"] == 20_000 and sample["truncated"] is True
    assert all(len(t["content"]) <= 1000 for t in sample["turns"])
    assert len(json.dumps(ds["sample_data"])) < 30_000
    shown = cli("dataset", "show", "long").stdout
    assert "19,994 more turn(s)" in shown and len(shown.splitlines()) < 60
    # A row stored before samples were cut: rendering cuts it before any work on its text.
    conn = sqlite3.connect(brightrun_home / "registry.db")
    whole = {"conversation_id": "old", "turns": [{"role": "user", "content": "y" * 50}] * 200_000}
    conn.execute("UPDATE datasets SET sample_data = ? WHERE name = 'long'", (json.dumps([whole]),))
    conn.commit()
    shown = cli("dataset", "show", "long").stdout
    assert "199,994 more turn(s)" in shown and len(shown.splitlines()) < 50


# ------------------------------------------------------- 7. source format, missing blobs


def test_validate_keeps_the_source_format(cli, tmp_path):
    row = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    ds = json.loads(add(cli, write_jsonl(tmp_path / "o.jsonl", [row, row]), "--name", "o", "--json").stdout)
    assert ds["format"] == "openai"
    again = json.loads(cli("dataset", "validate", "o", "--json").stdout)
    assert again["format"] == "openai" and again["status"] == "ready"


def test_files_gone_from_storage_are_shown_refused_by_train_and_handled_by_validate(cli, tmp_path, brightrun_home):
    path = write_jsonl(tmp_path / "d.jsonl", good_lines(10))
    ds = json.loads(add(cli, path, "--name", "d", "--json").stdout)
    root = brightrun_home / "storage" / "datasets" / ds["id"]
    assert show_json(cli, "d")["missing_files"] == []
    (root / "train.jsonl").unlink()
    key = f"datasets/{ds['id']}/train.jsonl"
    assert show_json(cli, "d")["missing_files"] == [key]
    assert key in cli("dataset", "show", "d").stdout
    refused = cli("train", "--dataset", "d", "--preset", "tiny", "--dry-run")
    assert refused.exit_code == 2 and f"is missing {key} in storage" in refused.stderr and "dataset validate" in refused.stderr
    assert refused.stderr.count("\n") == 1
    repaired = cli("dataset", "validate", "d", "--json")
    assert repaired.exit_code == 0 and (root / "train.jsonl").exists() and show_json(cli, "d")["missing_files"] == []
    # The data file itself gone: validate says so and how to go on, and leaves the dataset as it was
    # (a storage_url typo or an outage looks the same); with the file back, validate works again.
    data = (root / "data.jsonl").read_bytes()
    (root / "data.jsonl").unlink()
    lost = cli("dataset", "validate", "d")
    assert lost.exit_code == 1 and "is not in storage" in lost.stderr and "storage_url" in lost.stderr
    assert f"brightrun dataset rm {ds['id']}" in lost.stderr and f"brightrun dataset add {path} --name d" in lost.stderr
    assert lost.stderr.count("\n") == 1 and "Traceback" not in lost.output
    assert show_json(cli, "d")["status"] == "ready"
    (root / "data.jsonl").write_bytes(data)
    assert cli("dataset", "validate", "d").exit_code == 0 and show_json(cli, "d")["missing_files"] == []


def test_missing_files_of_a_remote_store_are_found_too(tmp_path, brightrun_home, s3_server, cli):
    import uuid

    import s3fs

    bucket = f"bkt-{uuid.uuid4().hex[:12]}"
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_server})
    fs.mkdir(bucket)
    (brightrun_home / "config.toml").write_text(
        f'storage_url = "s3://{bucket}/store"\n[storage_options.client_kwargs]\nendpoint_url = "{s3_server}"\n'
    )
    ds = json.loads(add(cli, write_jsonl(tmp_path / "d.jsonl", good_lines(5)), "--name", "d", "--json").stdout)
    fs.rm(f"{bucket}/store/datasets/{ds['id']}/validation.jsonl")
    assert show_json(cli, "d")["missing_files"] == [f"datasets/{ds['id']}/validation.jsonl"]


# ------------------------------------------------------------------------- 8. split


@pytest.mark.parametrize("conversations,fraction,held", [
    (40, 0.1, 4), (2, 0.1, 1), (3, 0.5, 1), (3, 0.1, 1), (5, 0.5, 2), (25, 0.1, 2), (35, 0.1, 3), (36, 0.1, 4), (45, 0.1, 4), (200, 0.25, 50),
    (1, 0.1, 0), (10, 0.0, 0),
])
def test_the_split_holds_out_the_fraction_rounded_with_one_on_each_side(conversations, fraction, held):
    assert held_out_count(conversations, fraction) == held


def test_the_split_is_exact_and_deterministic_by_conversation_id(cli, tmp_path, brightrun_home):
    rows = good_lines(40)
    first = json.loads(add(cli, write_jsonl(tmp_path / "a.jsonl", rows), "--name", "a", "--json").stdout)
    second = json.loads(add(cli, write_jsonl(tmp_path / "b.jsonl", rows[::-1]), "--name", "b", "--json").stdout)
    for ds in (first, second):
        assert ds["stats"]["validation_conversations"] == 4 and ds["stats"]["train_conversations"] == 36
    held = [{json.loads(line)["conversation_id"] for line in (brightrun_home / "storage" / "datasets" / ds["id"] / "validation.jsonl").read_text().splitlines()}
            for ds in (first, second)]
    assert held[0] == held[1] == set(sorted((r["conversation_id"] for r in rows), key=split_fraction)[:4])
    small = json.loads(add(cli, write_jsonl(tmp_path / "c.jsonl", good_lines(3)), "--name", "c", "--val-split", "0.5", "--json").stdout)
    assert (small["stats"]["train_conversations"], small["stats"]["validation_conversations"]) == (2, 1)


def test_estimate_and_train_warn_when_nothing_is_held_out(cli, tmp_path):
    add(cli, write_jsonl(tmp_path / "one.jsonl", good_lines(1)), "--name", "one")
    add(cli, write_jsonl(tmp_path / "none.jsonl", good_lines(10)), "--name", "none", "--val-split", "0")
    add(cli, write_jsonl(tmp_path / "fine.jsonl", good_lines(10)), "--name", "fine")
    for name, warned in (("one", True), ("none", True), ("fine", False)):
        estimate = json.loads(cli("estimate", "--dataset", name, "--preset", "tiny", "--json").stdout)
        assert any(w["code"] == "no_validation" and "holds out no conversation" in w["message"] for w in estimate["warnings"]) is warned, name
        plan = json.loads(cli("train", "--dataset", name, "--preset", "tiny", "--dry-run", "--json").stdout)
        assert any("holds out no conversation" in w["message"] for w in plan["estimate"]["warnings"]) is warned, name
    human = cli("estimate", "--dataset", "one", "--preset", "tiny")
    assert "quality (held-out loss) cannot be measured" in " ".join(human.stdout.split())


# --------------------------------------------------------------- 20. wording of findings


def test_a_parse_error_names_the_column_where_the_line_stops_and_turns_count_from_zero(cli, tmp_path):
    cut = '{"conversation_id": "c", "turns": [1, 2'
    bad_turn = json.dumps({"conversation_id": "t", "turns": [{"role": "user"}, {"role": "assistant", "content": "a"}]})
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join([json.dumps(good_lines(1)[0]), cut, bad_turn]) + "\n")
    errors = errors_by_line(json.loads(add(cli, path, "--name", "d", "--json").stdout))
    assert errors[2] == f"JSON parse error: Expecting ',' delimiter at column {len(cut) + 1} (the end of the line)"
    assert errors[3] == "turns[0] has no 'content'"


def test_a_version_3_registry_migrates_its_datasets_to_the_new_columns(tmp_path):
    """Migration 4 gives existing rows no warnings and nothing skipped."""
    from brightrun_cli.registry import datasets as dataset_rows
    from brightrun_cli.registry.engine import DB_FILE, open_registry
    from brightrun_cli.registry.migrations import MIGRATIONS

    conn = sqlite3.connect(tmp_path / DB_FILE)
    conn.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)")
    for number, name, apply in MIGRATIONS[:3]:
        apply(conn)
        conn.execute("INSERT INTO schema_migrations VALUES (?, ?, '2026-01-01')", (number, name))
    conn.execute(
        "INSERT INTO datasets (id, name, format, status, storage_path, file_name, file_size, val_split, training_ready,"
        " validation_error_count, created_at, updated_at) VALUES ('d1', 'old', 'openai', 'ready', 'datasets/d1/data.jsonl',"
        " 'd.jsonl', 1, 0.1, 1, 0, '2026-01-01 00:00:00', '2026-01-01 00:00:00')"
    )
    conn.commit()
    conn.close()
    reg = open_registry(tmp_path)
    with reg.reading() as read:
        row = dataset_rows.get(read, "d1")
    assert (row.format, row.validation_warnings, row.validation_warning_count, row.skipped_lines) == ("openai", None, 0, 0)
