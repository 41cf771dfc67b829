"""`brightrun dataset`: formats, validation with line + suggestion, stats, split, bad input, storage on S3."""

from __future__ import annotations

import json
import sqlite3
import uuid
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from brightrun_cli.services.dataset_formats import to_v4
from brightrun_cli.services.dataset_tokens import ApproxCounter
from brightrun_cli.services.dataset_validation import scan, split_fraction
from tests.conftest import run_brightrun


def conv(cid: str, *turns: tuple[str, str], **extra) -> dict:
    return {"conversation_id": cid, "turns": [{"role": r, "content": c} for r, c in turns], **extra}


def good_lines(n: int = 20) -> list[dict]:
    return [conv(f"c{i}", ("user", f"question {i}?"), ("assistant", f"answer number {i}.")) for i in range(n)]


def write_jsonl(path: Path, rows: list, *, newline: str = "\n") -> Path:
    path.write_text("".join(json.dumps(r) + newline for r in rows), encoding="utf-8")
    return path


def add(cli, path, *args: str):
    return cli("dataset", "add", str(path), *args)


def show_json(cli, ref: str) -> dict:
    result = cli("dataset", "show", ref, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def snapshot(home: Path) -> tuple:
    """Everything a failed command must leave untouched: every registry row and every stored file."""
    db = home / "registry.db"
    rows = {}
    if db.exists():
        conn = sqlite3.connect(db)
        for (table,) in conn.execute("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name"):
            rows[table] = sorted(map(repr, conn.execute(f"SELECT * FROM {table}")))
        conn.close()
    storage = home / "storage"
    files = sorted(str(p.relative_to(storage)) for p in storage.rglob("*")) if storage.exists() else []
    return rows, files


# ------------------------------------------------------------------------- the happy path


def test_add_v4_stores_normalised_data_split_stats_and_notification(cli, tmp_path, brightrun_home):
    path = write_jsonl(tmp_path / "support.jsonl", good_lines(40))
    result = add(cli, path, "--name", "support-v1", "--json")
    assert result.exit_code == 0, result.output
    ds = json.loads(result.stdout)
    assert ds["status"] == "ready" and ds["training_ready"] is True
    assert ds["total_conversations"] == 40
    assert ds["total_training_pairs"] + ds["total_validation_pairs"] == 40
    assert ds["stats"]["validation_conversations"] == ds["total_validation_pairs"] > 0
    assert ds["token_count_method"].startswith("approx:")
    assert ds["total_tokens"] > 0 and len(ds["sample_data"]) == 3
    assert ds["validation_errors"] == [] and ds["validation_error_count"] == 0
    root = brightrun_home / "storage" / "datasets" / ds["id"]
    assert ds["storage_path"] == f"datasets/{ds['id']}/data.jsonl"
    data = [json.loads(line) for line in (root / "data.jsonl").read_text().splitlines()]
    train = [json.loads(line) for line in (root / "train.jsonl").read_text().splitlines()]
    val = [json.loads(line) for line in (root / "validation.jsonl").read_text().splitlines()]
    assert len(data) == 40 and len(train) + len(val) == 40
    by_fraction = sorted((c["conversation_id"] for c in data), key=split_fraction)
    assert {c["conversation_id"] for c in val} == set(by_fraction[:4]), "10% of 40, the ids with the smallest split fractions"
    notes = sqlite3.connect(brightrun_home / "registry.db").execute("SELECT type, dataset_id, message FROM notifications").fetchall()
    assert notes == [("dataset_ready", ds["id"], f'Dataset "support-v1" is ready for training: 40 conversations, '
                                                  f'~{ds["total_tokens"]:,} tokens (approximated)')]


def test_split_is_deterministic_and_follows_val_split(cli, tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", good_lines(200))
    first = json.loads(add(cli, path, "--name", "a", "--val-split", "0.25", "--json").stdout)
    second = json.loads(add(cli, path, "--name", "b", "--val-split", "0.25", "--json").stdout)
    assert first["total_validation_pairs"] == second["total_validation_pairs"]
    assert 30 <= first["total_validation_pairs"] <= 70  # ~25% of 200
    none = json.loads(add(cli, path, "--name", "c", "--val-split", "0", "--json").stdout)
    assert none["total_validation_pairs"] == 0 and none["total_training_pairs"] == 200


def test_tiny_dataset_still_gets_a_validation_conversation(cli, tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", good_lines(3))
    ds = json.loads(add(cli, path, "--name", "tiny", "--json").stdout)
    assert ds["total_validation_pairs"] == 1 and ds["total_training_pairs"] == 2


@pytest.mark.parametrize(
    "fmt,row,expected_roles",
    [
        ("openai", {"messages": [{"role": "developer", "content": "sys"}, {"role": "user", "content": [{"type": "text", "text": "hi"}]}, {"role": "assistant", "content": "yo"}]}, ["system", "user", "assistant"]),
        ("sharegpt", {"id": "s1", "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]}, ["user", "assistant"]),
        ("alpaca", {"instruction": "Translate", "input": "chat", "output": "cat", "system": "sys"}, ["system", "user", "assistant"]),
        # ShareGPT-shaped files often hold OpenAI-style role/content messages under "conversations".
        ("sharegpt", {"id": "s1", "conversations": [{"role": "system", "content": "sys"}, {"role": "user", "content": "hi"},
                                                    {"from": "gpt", "value": "yo"}]}, ["system", "user", "assistant"]),
        # TRL's prompt-completion format, as text and as messages.
        ("prompt_completion", {"prompt": "Translate chat", "completion": "cat"}, ["user", "assistant"]),
        ("prompt_completion", {"prompt": [{"role": "system", "content": "sys"}, {"role": "user", "content": "hi"}],
                               "completion": [{"role": "assistant", "content": "yo"}]}, ["system", "user", "assistant"]),
    ],
)
def test_other_formats_are_detected_and_converted(cli, tmp_path, brightrun_home, fmt, row, expected_roles):
    path = write_jsonl(tmp_path / f"{fmt}.jsonl", [row, row | ({"id": "s2"} if fmt == "sharegpt" else {})])
    result = add(cli, path, "--name", fmt, "--json")
    assert result.exit_code == 0, result.output
    ds = json.loads(result.stdout)
    assert ds["format"] == fmt and ds["status"] == "ready"
    stored = json.loads((brightrun_home / "storage" / ds["storage_path"]).read_text().splitlines()[0])
    assert [t["role"] for t in stored["turns"]] == expected_roles
    assert set(stored) >= {"conversation_id", "turns"}
    if fmt == "alpaca":
        assert stored["turns"][1]["content"] == "Translate\n\nchat"
    if fmt == "prompt_completion":
        assert stored["turns"][-1]["content"] in ("cat", "yo")
    forced = add(cli, path, "--name", f"{fmt}-forced", "--format", fmt)
    assert forced.exit_code == 0, forced.output


def test_alpaca_history_becomes_the_earlier_turns_and_a_malformed_one_is_a_problem_on_its_line():
    """LLaMA-Factory's multi-turn alpaca: `history` holds the exchanges before the instruction."""
    from brightrun_cli.services.dataset_formats import to_v4

    row = {"system": "Be brief.", "instruction": "And in French?", "input": "", "output": "Chat.",
           "history": [["Translate cat to German.", "Katze."], ["And to Spanish?", "Gato."]]}
    record, problems = to_v4(row, "alpaca", 1)
    assert not problems
    assert [(t["role"], t["content"]) for t in record["turns"]] == [
        ("system", "Be brief."), ("user", "Translate cat to German."), ("assistant", "Katze."),
        ("user", "And to Spanish?"), ("assistant", "Gato."), ("user", "And in French?"), ("assistant", "Chat.")]
    assert to_v4({**row, "history": []}, "alpaca", 1)[0]["turns"][1]["content"] == "And in French?"
    for history, error in (({"q": "a"}, "'history' must be a list of [query, response] pairs (got an object)"),
                           ([["only a question"]], "history[0] is not a [query, response] pair of non-empty strings"),
                           ([["q", "a"], ["q", ""]], "history[1] is not a [query, response] pair of non-empty strings")):
        record, problems = to_v4({**row, "history": history}, "alpaca", 4)
        assert record is None and [(p.line, p.error) for p in problems] == [(4, error)]


def test_prompt_completion_problems_name_the_field_and_a_raw_text_file_is_told_what_it_lacks(cli, tmp_path, brightrun_home):
    rows = [{"prompt": "q", "completion": "a"}, {"prompt": "q", "completion": [{"role": "user", "content": "no"}]},
            {"prompt": "", "completion": 3}, {"prompt": [], "completion": "a"}]
    failed = add(cli, write_jsonl(tmp_path / "pc.jsonl", rows), "--name", "pc", "--json")
    assert failed.exit_code == 2
    errors = [(e["line"], e["error"]) for e in json.loads(failed.stdout)["validation_errors"]]
    assert errors == [(2, "completion[0] is a user message"), (3, "empty 'prompt'"),
                      (3, "'completion' must be a string or a list of messages (got a number)"), (4, "empty 'prompt'")]

    raw = add(cli, write_jsonl(tmp_path / "raw.jsonl", [{"text": "### Human: hi ### Assistant: hello"}]), "--name", "raw")
    assert raw.exit_code == 2 and "'text' holds raw text, not a conversation" in raw.stderr and "prompt/completion" in raw.stderr
    preference = add(cli, write_jsonl(tmp_path / "dpo.jsonl", [{"prompt": "Hi", "chosen": "Hello!", "rejected": "Go away."}]),
                     "--name", "dpo")
    assert preference.exit_code == 2 and "chosen/rejected pairs are preference data, for DPO" in preference.stderr
    assert "name them 'completion' beside the 'prompt'" in preference.stderr and len(preference.stderr.strip().splitlines()) == 1


def test_bom_and_crlf_are_accepted(cli, tmp_path):
    path = tmp_path / "win.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + "".join(json.dumps(r) + "\r\n" for r in good_lines(5)).encode())
    result = add(cli, path, "--name", "win", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["total_conversations"] == 5


def test_blank_lines_are_skipped_and_line_numbers_stay_true(cli, tmp_path):
    rows = [json.dumps(r) for r in good_lines(3)]
    path = tmp_path / "gaps.jsonl"
    path.write_text(f"{rows[0]}\n\n   \n{rows[1]}\n{json.dumps(conv('bad', ('user', 'x')))}\n")
    result = add(cli, path, "--name", "gaps", "--json")
    ds = json.loads(result.stdout)
    assert [e["line"] for e in ds["validation_errors"]] == [5]


def _alpaca(n: int) -> list[dict]:
    return [{"instruction": f"Add {i} and {i + 1}.", "input": "", "output": f"{2 * i + 1} ✓"} for i in range(n)]


def test_a_json_array_file_is_read_as_its_jsonl_would_be_with_problems_at_the_line_their_record_starts(cli, tmp_path, brightrun_home):
    """Alpaca's and many ShareGPT dumps are one JSON array in a .json file, pretty-printed."""
    rows = _alpaca(12)
    as_lines = add(cli, write_jsonl(tmp_path / "a.jsonl", rows), "--name", "lines", "--json")
    as_array = add(cli, _write(tmp_path / "a.json", "\ufeff" + json.dumps(rows, indent=2, ensure_ascii=False)), "--name", "array", "--json")
    assert as_lines.exit_code == as_array.exit_code == 0, as_array.output
    lines, array = json.loads(as_lines.stdout), json.loads(as_array.stdout)
    assert array["format"] == "alpaca" and array["total_conversations"] == 12
    stored = [[json.loads(line)["turns"] for line in (brightrun_home / "storage" / ds["storage_path"]).read_text().splitlines()]
              for ds in (lines, array)]
    assert stored[0] == stored[1]  # the same conversations (ids without one are named by their line: line-N)

    broken = [*rows[:4], "a string", rows[5] | {"output": ""}, *rows[6:]]
    text = json.dumps(broken, indent=2)
    starts = [n for n, line in enumerate(text.splitlines(), start=1) if line in ("  {", '  "a string",')]
    failed = add(cli, _write(tmp_path / "b.json", text), "--name", "broken", "--json")
    assert failed.exit_code == 2
    assert [e["line"] for e in json.loads(failed.stdout)["validation_errors"]] == [starts[4], starts[5]]
    kept = add(cli, tmp_path / "b.json", "--name", "broken", "--skip-invalid", "--json")
    assert kept.exit_code == 0 and json.loads(kept.stdout)["total_conversations"] == 10

    # Minified, every record on line 1: a record's "line" is its position in the array.
    failed = add(cli, _write(tmp_path / "c.json", json.dumps(broken)), "--name", "minified", "--json")
    assert [e["line"] for e in json.loads(failed.stdout)["validation_errors"]] == [5, 6]


@pytest.mark.parametrize("text,where", [
    ('[{"instruction": "a", "output": "b"},\n {"instruction": "c", "output": }]', "line 2, column 33"),
    ('[{"instruction": "a", "output": "b"}', "the array is not closed"),
    ('[\n{"instruction": "a", "output": "b"}\n]\n{}', "text after the array's closing ']' at line 4, column 1"),
    ('[{"instruction": "a", "output": "b"} {"instruction": "c", "output": "d"}]', "expected ',' or ']'"),
])
def test_a_json_array_that_does_not_parse_is_one_error_line_and_stores_nothing(cli, tmp_path, brightrun_home, text, where):
    result = add(cli, _write(tmp_path / "bad.json", text), "--name", "bad")
    assert result.exit_code == 2
    assert result.stderr.startswith("error: bad.json: the JSON array does not parse: ") and where in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "write it as JSONL" in result.stderr
    assert json.loads(cli("dataset", "list", "--json").stdout) == []
    assert not list((brightrun_home / "storage").glob("datasets/*"))


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# ----------------------------------------------------------------- content problems


def test_every_content_problem_is_reported_with_line_and_suggestion(cli, tmp_path, brightrun_home):
    lines = [
        json.dumps(conv("ok1", ("user", "a"), ("assistant", "b"))),
        '{"conversation_id": "p1", "turns": [',  # 2: JSON parse error (not the last line)
        json.dumps({"turns": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}),  # 3: missing id
        json.dumps(conv("e1")),  # 4: empty turns
        json.dumps(conv("r1", ("wizard", "a"), ("assistant", "b"))),  # 5: unknown role
        json.dumps(conv("n1", ("user", "a"), ("user", "b"))),  # 6: no assistant turn
        json.dumps({"conversation_id": "s1", "turns": [{"role": "user", "content": 5}, {"role": "assistant", "content": "b"}]}),  # 7
        json.dumps(conv("ok1", ("user", "a"), ("assistant", "b"))),  # 8: duplicate id
        json.dumps({"conversation_id": "t1"}),  # 9: missing turns
    ]
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    before_files = snapshot(brightrun_home)[1]
    result = add(cli, path, "--name", "bad", "--json")
    assert result.exit_code == 2
    ds = json.loads(result.stdout)
    assert result.stderr.count("\n") == 1 and "failed validation" in result.stderr and f"dataset show {ds['id']}" in result.stderr
    assert ds["status"] == "error" and ds["training_ready"] is False
    errors = {e["line"]: e for e in ds["validation_errors"]}
    assert sorted(errors) == [2, 3, 4, 5, 6, 7, 8, 9]
    assert ds["validation_error_count"] == 8
    assert "JSON parse error" in errors[2]["error"]
    assert "conversation_id" in errors[3]["error"]
    assert "empty" in errors[4]["error"]
    assert "unknown role" in errors[5]["error"]
    assert "no assistant turn" in errors[6]["error"]
    assert "not a string" in errors[7]["error"]
    assert "duplicate" in errors[8]["error"] and "line 1" in errors[8]["error"]
    assert "turns" in errors[9]["error"]
    assert all(e["suggestion"] for e in errors.values())
    assert snapshot(brightrun_home)[1] == before_files, "a dataset in error keeps no files"
    notes = sqlite3.connect(brightrun_home / "registry.db").execute("SELECT type FROM notifications").fetchall()
    assert notes == [("dataset_error",)]
    human = cli("dataset", "show", "bad")
    assert "Validation problems" in human.stdout and "unknown role" in human.stdout and "nothing stored" in human.stdout
    revalidate = cli("dataset", "validate", "bad")
    assert revalidate.exit_code == 2 and "no stored data" in revalidate.stderr and "add it again under the same name" in revalidate.stderr


def test_only_the_first_n_problems_are_stored_but_all_counted(cli, tmp_path, brightrun_home):
    (brightrun_home / "config.toml").write_text("max_stored_validation_errors = 5\n")
    path = tmp_path / "many.jsonl"
    path.write_text("".join(json.dumps(conv(f"c{i}", ("user", "only a question"))) + "\n" for i in range(30)))
    ds = json.loads(add(cli, path, "--name", "many", "--json").stdout)
    assert ds["validation_error_count"] == 30
    assert [e["line"] for e in ds["validation_errors"]] == [1, 2, 3, 4, 5]


# --------------------------------------------------------------------------- bad input


def _bad_inputs(tmp_path: Path) -> dict[str, tuple[list[str], str]]:
    good = write_jsonl(tmp_path / "good.jsonl", good_lines(3))
    (tmp_path / "empty.jsonl").write_bytes(b"")
    (tmp_path / "blank.jsonl").write_text("\n \n")
    (tmp_path / "binary.jsonl").write_bytes(bytes(range(256)) * 64)
    (tmp_path / "nul.jsonl").write_bytes(b'{"a": 1}\x00\x00\n')
    (tmp_path / "truncated.jsonl").write_text(json.dumps(good_lines(1)[0]) + '\n{"conversation_id": "c2", "tur')
    (tmp_path / "unknown.jsonl").write_text('{"foo": 1}\n')
    (tmp_path / "huge-line.jsonl").write_bytes(b'{"conversation_id": "x", "turns": [{"role": "user", "content": "' + b"a" * (50 * 1024 * 1024) + b'"}]}\n')
    (tmp_path / "a-dir").mkdir()
    return {
        "missing file": ([str(tmp_path / "nope.jsonl"), "--name", "x"], "no such file"),
        "directory": ([str(tmp_path / "a-dir"), "--name", "x"], "is a directory"),
        "empty file": ([str(tmp_path / "empty.jsonl"), "--name", "x"], "is empty"),
        "only blank lines": ([str(tmp_path / "blank.jsonl"), "--name", "x"], "no data lines"),
        # (a line that is not UTF-8 is a line problem: tests/test_datasets_ingest.py)
        "binary": ([str(tmp_path / "binary.jsonl"), "--name", "x"], "line 1"),
        "nul bytes": ([str(tmp_path / "nul.jsonl"), "--name", "x"], "binary"),
        "truncated last line": ([str(tmp_path / "truncated.jsonl"), "--name", "x"], "last line (2) is cut off"),
        "unknown format flag": ([str(good), "--name", "x", "--format", "csv"], "--format csv"),
        "undetectable format": ([str(tmp_path / "unknown.jsonl"), "--name", "x"], "cannot tell the format from line 1"),
        "50 MB single line": ([str(tmp_path / "huge-line.jsonl"), "--name", "x"], "line 1 is 50.0 MiB"),
        "bad val split": ([str(good), "--name", "x", "--val-split", "0.9"], "--val-split"),
        "empty name": ([str(good), "--name", "  "], "--name"),
        "duplicate name": ([str(good), "--name", "taken"], "already exists"),
        "unknown base model dir": ([str(good), "--name", "x", "--base-model", str(tmp_path / "no-model")], "--base-model"),
        "unloadable base model id": ([str(good), "--name", "x", "--base-model", "no-such-org/no-such-model"], "cannot load the tokenizer"),
    }


def test_bad_input_is_one_line_exit_2_and_changes_nothing(cli, tmp_path, brightrun_home):
    cases = _bad_inputs(tmp_path)
    assert add(cli, tmp_path / "good.jsonl", "--name", "taken").exit_code == 0
    for label, (args, expected) in cases.items():
        before = snapshot(brightrun_home)
        result = cli("dataset", "add", *args)
        assert result.exit_code == 2, (label, result.output)
        assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, (label, result.stderr)
        assert expected in result.stderr, (label, result.stderr)
        assert "Traceback" not in result.output
        assert snapshot(brightrun_home) == before, label
    assert list((brightrun_home / "cache").glob("dataset-*")) == [], "no temporary files left behind"


def test_file_over_the_size_limit_is_refused_before_copying(cli, tmp_path, brightrun_home):
    (brightrun_home / "config.toml").write_text("max_dataset_bytes = 1000\n")
    path = write_jsonl(tmp_path / "big.jsonl", good_lines(50))
    before = snapshot(brightrun_home)
    result = add(cli, path, "--name", "big")
    assert result.exit_code == 2 and "over the dataset size limit" in result.stderr and "max_dataset_bytes" in result.stderr
    assert snapshot(brightrun_home) == before


def test_unknown_and_ambiguous_references(cli, tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", good_lines(3))
    ids = [json.loads(add(cli, path, "--name", n, "--json").stdout)["id"] for n in ("one", "two")]
    common = 0
    while ids[0][common] == ids[1][common]:
        common += 1
    assert common >= 4, "ids made within a second share their time prefix"
    for command in (["show"], ["validate"], ["rm", "--yes"]):
        missing = cli("dataset", *command[:1], "nothing-like-this", *command[1:])
        assert missing.exit_code == 2 and "no dataset matches 'nothing-like-this'" in missing.stderr
        ambiguous = cli("dataset", *command[:1], ids[0][:common], *command[1:])
        assert ambiguous.exit_code == 2 and "ambiguous" in ambiguous.stderr
    assert show_json(cli, ids[0][: common + 3])["name"] in ("one", "two")
    assert show_json(cli, "two")["id"] == ids[1]


def test_unwritable_home_and_newer_registry(tmp_path, brightrun_home):
    path = write_jsonl(tmp_path / "d.jsonl", good_lines(3))
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = run_brightrun("--home", str(blocker / "home"), "dataset", "add", str(path), "--name", "x")
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "--home" in result.stderr
    assert run_brightrun("dataset", "list").returncode == 0
    conn = sqlite3.connect(brightrun_home / "registry.db")
    conn.execute("INSERT INTO schema_migrations VALUES (999, 'future', '2030-01-01')")
    conn.commit()
    conn.close()
    before = snapshot(brightrun_home)
    result = run_brightrun("dataset", "add", str(path), "--name", "x")
    assert result.returncode != 0 and "newer than this brightrun knows" in result.stderr
    assert result.stderr.count("\n") == 1
    assert snapshot(brightrun_home) == before


# ------------------------------------------------------------------ list / show / rm


def test_list_filters_and_json_fields_match_show(cli, tmp_path):
    write_jsonl(tmp_path / "good.jsonl", good_lines(5))
    write_jsonl(tmp_path / "bad.jsonl", [conv("x", ("user", "no answer"))])
    add(cli, tmp_path / "good.jsonl", "--name", "support-v1")
    add(cli, tmp_path / "good.jsonl", "--name", "sales")
    add(cli, tmp_path / "bad.jsonl", "--name", "support-broken")
    rows = json.loads(cli("dataset", "list", "--json").stdout)
    assert [r["name"] for r in rows] == ["support-broken", "sales", "support-v1"], "newest first"
    assert [r["name"] for r in json.loads(cli("dataset", "list", "--status", "error", "--json").stdout)] == ["support-broken"]
    assert [r["name"] for r in json.loads(cli("dataset", "list", "--search", "support", "--status", "ready", "--json").stdout)] == ["support-v1"]
    assert json.loads(cli("dataset", "list", "--search", "100%_", "--json").stdout) == []
    shown = show_json(cli, "sales")
    listed = next(r for r in rows if r["name"] == "sales")
    assert {k: shown[k] for k in listed} == listed, "list uses the same field names and values as show"
    # The listed JSON is kept by registry triggers: it follows every later change of the row.
    assert cli("dataset", "validate", "sales").exit_code == 0
    relisted = next(r for r in json.loads(cli("dataset", "list", "--json").stdout) if r["name"] == "sales")
    shown = show_json(cli, "sales")
    assert {k: shown[k] for k in relisted} == relisted and relisted["validated_at"] >= listed["validated_at"]
    bad_status = cli("dataset", "list", "--status", "done")
    assert bad_status.exit_code == 2 and "--status done" in bad_status.stderr
    human = cli("dataset", "list")
    assert "support-v1" in human.stdout and "error" in human.stdout


def test_rm_hard_deletes_files_and_soft_deletes_when_a_job_uses_it(cli, tmp_path, brightrun_home):
    path = write_jsonl(tmp_path / "d.jsonl", good_lines(5))
    kept = json.loads(add(cli, path, "--name", "kept", "--json").stdout)
    gone = json.loads(add(cli, path, "--name", "gone", "--json").stdout)
    conn = sqlite3.connect(brightrun_home / "registry.db")
    conn.execute(
        "INSERT INTO training_jobs (id, dataset_id, preset_id, base_model, hyperparameters, gpu_config, status, current_stage, progress,"
        " current_epoch, total_epochs, current_step, tokens_processed, queued_at, current_cost, estimated_total_cost, retry_count,"
        " resume_count, created_at, updated_at) VALUES ('job1', ?, 'fast', 'builtin:tiny', '{}', '{}', 'completed', 'done', 1, 1, 1, 1,"
        " 0, '2026-01-01 00:00:00', 0, 0, 0, 0, '2026-01-01 00:00:00', '2026-01-01 00:00:00')",
        (kept["id"],),
    )
    conn.commit()
    no_tty = cli("dataset", "rm", "gone")
    assert no_tty.exit_code == 2 and "--yes" in no_tty.stderr
    removed = cli("dataset", "rm", "gone", "--yes", "--json")
    assert removed.exit_code == 0 and json.loads(removed.stdout) == {
        "id": gone["id"], "name": "gone", "removed": True, "files_kept": False, "references": 0}
    assert conn.execute("SELECT COUNT(*) FROM datasets WHERE id = ?", (gone["id"],)).fetchone()[0] == 0
    assert not (brightrun_home / "storage" / "datasets" / gone["id"]).exists()
    result = cli("dataset", "rm", "kept", "--yes")
    assert result.exit_code == 0 and "files are kept because 1 job(s)" in result.stdout
    assert conn.execute("SELECT deleted_at IS NOT NULL FROM datasets WHERE id = ?", (kept["id"],)).fetchone()[0] == 1
    assert (brightrun_home / "storage" / kept["storage_path"]).exists()
    assert [r["name"] for r in json.loads(cli("dataset", "list", "--json").stdout)] == []
    assert add(cli, path, "--name", "kept").exit_code == 0, "the name of a deleted dataset is free again"


def test_validate_reruns_with_another_tokenizer_context(cli, tmp_path, brightrun_home, monkeypatch):
    from brightrun_cli.services import dataset_add as dataset_service

    path = write_jsonl(tmp_path / "d.jsonl", good_lines(5) + [conv("long", ("user", "word " * 400), ("assistant", "ok"))])
    ds = json.loads(add(cli, path, "--name", "d", "--json").stdout)
    assert ds["status"] == "ready"

    class ShortContext(ApproxCounter):
        method = "approx:test-short-context"
        context_length = 64

    monkeypatch.setattr(dataset_service, "load_counter", lambda model, chat_template="model": ShortContext())
    result = cli("dataset", "validate", "d", "--base-model", "short", "--json")
    assert result.exit_code == 2
    again = json.loads(result.stdout)
    assert again["status"] == "error"
    assert [e["line"] for e in again["validation_errors"]] == [6]
    assert "longer than the model's context of 64" in again["validation_errors"][0]["error"]
    assert (brightrun_home / "storage" / ds["storage_path"]).exists(), "re-validation keeps the stored data"
    monkeypatch.setattr(dataset_service, "load_counter", lambda model, chat_template="model": ApproxCounter())
    fixed = cli("dataset", "validate", "d", "--json")
    assert fixed.exit_code == 0 and json.loads(fixed.stdout)["status"] == "ready"


def test_split_paths_for_the_supervisor(tmp_path, cli):
    from brightrun_cli.services.datasets import get_dataset, split_paths
    from brightrun_cli.workspace import Workspace

    add(cli, write_jsonl(tmp_path / "d.jsonl", good_lines(30)), "--name", "d")
    ws = Workspace.open()
    train, validation = split_paths(ws, get_dataset(ws, "d"))
    assert len(train.read_text().splitlines()) + len(validation.read_text().splitlines()) == 30


# ------------------------------------------------------------------------------- S3


def test_add_from_s3_into_s3_storage(tmp_path, brightrun_home, s3_server, monkeypatch, cli):
    import s3fs

    bucket = f"bkt-{uuid.uuid4().hex[:12]}"
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_server})
    fs.mkdir(bucket)
    fs.pipe(f"{bucket}/in/support.jsonl", "".join(json.dumps(r) + "\n" for r in good_lines(20)).encode())
    (brightrun_home / "config.toml").write_text(
        f'storage_url = "s3://{bucket}/store"\n[storage_options.client_kwargs]\nendpoint_url = "{s3_server}"\n'
    )
    result = add(cli, f"s3://{bucket}/in/support.jsonl", "--name", "s3", "--json")
    assert result.exit_code == 0, result.output
    ds = json.loads(result.stdout)
    assert ds["source_uri"] == f"s3://{bucket}/in/support.jsonl" and ds["total_conversations"] == 20
    assert ds["storage_path"] == f"datasets/{ds['id']}/data.jsonl", "the registry stores keys, never URLs"
    assert sorted(fs.ls(f"{bucket}/store/datasets/{ds['id']}")) == [
        f"{bucket}/store/datasets/{ds['id']}/{n}" for n in ("data.jsonl", "train.jsonl", "validation.jsonl")
    ]
    from brightrun_cli.services.datasets import get_dataset, split_paths
    from brightrun_cli.workspace import Workspace

    ws = Workspace.open()
    train, validation = split_paths(ws, get_dataset(ws, "s3"))
    assert str(train).startswith(str(brightrun_home / "cache"))
    assert len(train.read_text().splitlines()) + len(validation.read_text().splitlines()) == 20
    missing = add(cli, f"s3://{bucket}/in/nope.jsonl", "--name", "nope")
    assert missing.exit_code == 2 and "no such file" in missing.stderr
    assert cli("dataset", "rm", "s3", "--yes").exit_code == 0
    assert not fs.exists(f"{bucket}/store/datasets/{ds['id']}/data.jsonl")


# ----------------------------------------------------------------- property-based


_line_text = st.one_of(
    st.text(max_size=80),
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=10),
        lambda children: st.lists(children, max_size=4) | st.dictionaries(st.sampled_from(["conversation_id", "turns", "role", "content", "messages", "x"]), children, max_size=4),
        max_leaves=12,
    ).map(json.dumps),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(_line_text, st.binary(max_size=40).map(lambda b: b.decode("utf-8", "replace"))), min_size=1, max_size=8))
def test_malformed_lines_never_crash_and_every_problem_has_a_line(lines):
    """Any input either is refused as a whole (UsageError naming a line or the file) or yields problems that each name a line."""
    import io

    from brightrun_cli.errors import UsageError

    good = json.dumps(conv("anchor", ("user", "q"), ("assistant", "a")))
    data = ("\n".join([good, *[line.replace("\n", " ") for line in lines]]) + "\n").encode("utf-8", "surrogatepass")
    try:
        result = scan(io.BytesIO(data), io.BytesIO(), file_name="f.jsonl", fmt="auto", val_split=0.1, counter=ApproxCounter(), keep_problems=100)
    except UsageError as exc:
        assert "f.jsonl" in str(exc) and "\n" not in str(exc)
        return
    assert result.problem_count == len(result.problems)
    for problem in result.problems:
        assert 2 <= problem.line <= len(lines) + 1 and problem.error and problem.suggestion


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(max_size=12), st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8), lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c, max_size=3), max_leaves=10), max_size=5), st.sampled_from(["brightrun_lora_v4", "openai", "sharegpt", "alpaca", "prompt_completion"]))
def test_to_v4_returns_a_conversation_xor_problems(obj, fmt):
    record, problems = to_v4(obj, fmt, 7)
    assert (record is None) == bool(problems)
    assert all(p.line == 7 for p in problems)
    if record is not None:
        assert record["turns"] and all(t["role"] in ("system", "user", "assistant") and isinstance(t["content"], str) for t in record["turns"])
        assert any(t["role"] == "assistant" for t in record["turns"])


# ------------------------------------------------------------------- real tokenizer


CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def make_tokenizer_dir(path: Path, words: list[str], *, context: int) -> Path:
    """A small word-level HF tokenizer directory with a ChatML template and a known context."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["[UNK]", "<|im_start|>", "<|im_end|>", *sorted(set(words))])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", additional_special_tokens=["<|im_start|>", "<|im_end|>"], model_max_length=context)
    fast.chat_template = CHATML
    fast.save_pretrained(path)
    return path


def test_token_counts_are_exact_with_the_base_models_tokenizer(cli, tmp_path):
    from transformers import AutoTokenizer

    rows = good_lines(12) + [conv("long", ("user", "question " * 300), ("assistant", "answer"))]
    words = " ".join(t["content"] for r in rows for t in r["turns"]).split() + ["user", "assistant", "system"]
    model_dir = make_tokenizer_dir(tmp_path / "tok", words, context=256)
    path = write_jsonl(tmp_path / "d.jsonl", rows[:12])
    ds = json.loads(add(cli, path, "--name", "exact", "--base-model", str(model_dir), "--json").stdout)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    expected = [len(tokenizer.apply_chat_template(r["turns"], tokenize=True, return_dict=False)) for r in rows[:12]]
    assert ds["total_tokens"] == sum(expected)
    assert ds["token_count_method"] == f"tokenizer:{model_dir}"
    assert ds["stats"]["tokens_per_conversation"]["max"] == max(expected)
    assert ds["avg_tokens_per_turn"] == round(sum(expected) / 24, 3)
    long = write_jsonl(tmp_path / "long.jsonl", rows)
    result = add(cli, long, "--name", "long", "--base-model", str(model_dir), "--json")
    assert result.exit_code == 2
    errors = json.loads(result.stdout)["validation_errors"]
    assert [e["line"] for e in errors] == [13] and "context of 256" in errors[0]["error"]


def test_a_base_model_directory_given_relative_is_recorded_absolute(cli, tmp_path, monkeypatch):
    """A later `train` (or its trainer, in the run dir) runs elsewhere: the dataset keeps the
    model directory's absolute path, not the './tok' typed here."""
    rows = good_lines(12)
    make_tokenizer_dir(tmp_path / "tok", " ".join(t["content"] for r in rows for t in r["turns"]).split() + ["user", "assistant"], context=512)
    monkeypatch.chdir(tmp_path)
    ds = json.loads(add(cli, write_jsonl(tmp_path / "d.jsonl", rows), "--name", "rel", "--base-model", "./tok", "--json").stdout)
    assert ds["base_model"] == str(tmp_path / "tok") and ds["token_count_method"] == f"tokenizer:{tmp_path / 'tok'}"


def test_a_listed_dataset_reads_as_its_show_json_in_every_field_it_lists(cli, tmp_path):
    """`dataset list --json` comes from the JSON rows registry triggers keep; `show --json` from
    the typed row. Every listed field must agree (times, booleans and numbers alike)."""
    add(cli, write_jsonl(tmp_path / "good.jsonl", good_lines(3)), "--name", "agree")
    listed = json.loads(cli("dataset", "list", "--json").stdout)[0]
    shown = json.loads(cli("dataset", "show", "agree", "--json").stdout)
    assert listed == {key: shown[key] for key in listed}
    assert "validation_errors" not in listed and "sample_data" not in listed  # the large fields are for show


def test_list_json_follows_inserts_updates_and_deletes_made_in_sql(cli, tmp_path):
    from brightrun_cli.workspace import Workspace

    write_jsonl(tmp_path / "good.jsonl", good_lines(3))
    add(cli, tmp_path / "good.jsonl", "--name", "a")
    ws = Workspace.open()
    conn = ws.registry.connect()
    conn.execute("UPDATE datasets SET description = 'edited', training_ready = 0 WHERE name = 'a'")
    conn.commit()
    [row] = json.loads(cli("dataset", "list", "--json").stdout)
    assert row["description"] == "edited" and row["training_ready"] is False
    conn.execute("DELETE FROM datasets WHERE name = 'a'")
    conn.commit()
    assert conn.execute("SELECT COUNT(*) FROM dataset_list_json").fetchone()[0] == 0
    conn.close()


def test_hints_name_a_dataset_by_id_so_a_hostile_name_is_never_pasted_into_a_shell(cli, tmp_path):
    hostile = "x $(touch pwned) `id`; rm -rf ~"
    path = write_jsonl(tmp_path / "good.jsonl", good_lines())
    first = json.loads(add(cli, path, "--name", hostile, "--json").stdout)
    taken = add(cli, path, "--name", hostile)
    assert taken.exit_code == 2 and f"'brightrun dataset rm {first['id']}'" in taken.stderr
    assert "$(" not in taken.stderr.split(";", 1)[1]  # the hint holds only the id, never the name


def test_findings_quote_the_data_as_written_not_as_terminal_markup(cli, tmp_path):
    rows = [{"messages": [{"role": "[bot]", "content": "hi"}, {"role": "assistant", "content": "yo"}]}]
    assert add(cli, write_jsonl(tmp_path / "bad.jsonl", rows), "--name", "brackets").exit_code == 2
    shown = cli("dataset", "show", "brackets")
    assert "messages[0] has unknown role '[bot]'" in " ".join(shown.stdout.split())


@pytest.mark.parametrize("fmt,row", [
    ("sharegpt", {"system": "Be brief.", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello."}]}),
    ("openai", {"system": "Be brief.", "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]}),
])
def test_a_record_level_system_prompt_becomes_the_first_turn(fmt, row):
    """LLaMA-Factory's ShareGPT files carry the system prompt beside the messages."""
    from brightrun_cli.services.dataset_formats import to_v4

    record, problems = to_v4(row, fmt, 1)
    assert not problems and record["turns"][0] == {"role": "system", "content": "Be brief."} and len(record["turns"]) == 3
    key = "conversations" if fmt == "sharegpt" else "messages"
    first = {"from": "system", "value": "Be brief."} if fmt == "sharegpt" else {"role": "system", "content": "Be brief."}
    same, problems = to_v4({**row, key: [first, *row[key]]}, fmt, 1)
    assert not problems and len(same["turns"]) == 3  # the same prompt twice is one
    other = {**first, ("value" if fmt == "sharegpt" else "content"): "Be long."}
    record, problems = to_v4({**row, key: [other, *row[key]]}, fmt, 5)
    assert record is None and [(p.line, p.error) for p in problems] == [(5, "both a 'system' field and a different system message")]
    record, problems = to_v4({**row, "system": 3}, fmt, 2)
    assert record is None and problems[0].error == "'system' is not a string (got a number)"
