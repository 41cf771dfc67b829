"""`brightrun dataset add|show|validate|list` as a new user meets them: storage outages,
hostile text, encodings, other formats, multimodal parts, duplicates, context-only turns,
the token approximation and small wording."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from brightrun_cli.services.dataset_formats import to_v4
from brightrun_cli.services.dataset_tokens import APPROX_METHOD, ApproxCounter
from tests.test_datasets import add, conv, good_lines, show_json, snapshot, write_jsonl


def one_line_error(result, expected: str) -> None:
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert expected in result.stderr, result.stderr
    assert "Traceback" not in result.output


# ------------------------------------------------------------ 1. storage briefly wrong


def test_validate_with_storage_wrong_leaves_the_dataset_and_recovers_once_storage_is_back(cli, tmp_path, brightrun_home):
    ds = json.loads(add(cli, write_jsonl(tmp_path / "d.jsonl", good_lines(10)), "--name", "d", "--json").stdout)
    config = brightrun_home / "config.toml"
    config.write_text(f'storage_url = "{tmp_path / "storage-typo"}"\n')
    failed = cli("dataset", "validate", "d")
    assert failed.exit_code == 1 and failed.stderr.count("\n") == 1 and "Traceback" not in failed.output
    assert "is not in storage" in failed.stderr and "storage_url" in failed.stderr
    assert show_json(cli, "d")["status"] == "ready"  # not marked error: nothing is wrong with the data
    config.unlink()
    again = cli("dataset", "validate", "d", "--json")
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["status"] == "ready"
    # A dataset an older brightrun marked lost (error, nothing stored) whose file is back recovers too.
    conn = sqlite3.connect(brightrun_home / "registry.db")
    with conn:
        conn.execute("UPDATE datasets SET status='error', content_sha256=NULL, error_message='its data file is missing' WHERE id=?", (ds["id"],))
    conn.close()
    recovered = cli("dataset", "validate", "d", "--json")
    assert recovered.exit_code == 0, recovered.output
    assert show_json(cli, "d")["status"] == "ready" and show_json(cli, "d")["content_sha256"]


# ------------------------------------------------------------ 2. terminal escapes


def test_control_characters_in_samples_are_shown_escaped(cli, tmp_path):
    hostile = "hi \x1b[31mRED\x1b[0m \x1b]0;pwned\x07 [bold]x[/bold]"
    path = write_jsonl(tmp_path / "d.jsonl", [conv("c\x1b[2J", ("user", hostile), ("assistant", "ok"))] + good_lines(3))
    added = add(cli, path, "--name", "d")
    shown = cli("dataset", "show", "d")
    for result in (added, shown):
        assert result.exit_code == 0, result.output
        assert "\x1b" not in result.stdout and "\x07" not in result.stdout
        assert "\\x1b[31mRED\\x1b[0m" in result.stdout and "\\x07" in result.stdout
        assert "[bold]x[/bold]" in result.stdout


# ------------------------------------------------------------ 3./4. encodings


def latin1_file(tmp_path: Path) -> Path:
    lines = [json.dumps(conv(f"c{i}", ("user", f"q{i}"), ("assistant", f"a{i}"))).encode() for i in range(6)]
    lines[3] = '{"conversation_id": "caf\xe9", "turns": []}'.encode("latin-1")
    lines[5] = '{"conversation_id": "na\xefve", "turns": []}'.encode("latin-1")
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def test_lines_that_are_not_utf8_are_all_reported_and_skip_invalid_leaves_them_out(cli, tmp_path):
    path = latin1_file(tmp_path)
    refused = add(cli, path, "--name", "strict", "--json")
    assert refused.exit_code == 2
    errors = {e["line"]: e["error"] for e in json.loads(refused.stdout)["validation_errors"]}
    assert set(errors) == {4, 6} and all("not valid UTF-8 (byte 0x" in e for e in errors.values())
    skipped = add(cli, path, "--name", "lenient", "--skip-invalid", "--json")
    assert skipped.exit_code == 0, skipped.output
    ds = json.loads(skipped.stdout)
    assert ds["status"] == "ready" and ds["total_conversations"] == 4 and ds["skipped_lines"] == 2
    assert [e["line"] for e in ds["validation_errors"]] == [4, 6]


def test_a_byte_order_mark_at_the_start_of_any_line_is_ignored(cli, tmp_path):
    a = "".join(json.dumps(r) + "\n" for r in good_lines(5)).encode()
    b = b"\xef\xbb\xbf" + "".join(json.dumps(conv(f"b{i}", ("user", "q"), ("assistant", "a"))) + "\n" for i in range(3)).encode()
    path = tmp_path / "cat.jsonl"
    path.write_bytes(a + b)
    result = add(cli, path, "--name", "d", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["total_conversations"] == 8


# ------------------------------------------------------------ 5. other formats


def test_other_formats_are_named_once_and_nothing_is_recorded(cli, tmp_path, brightrun_home):
    chats = good_lines(4)
    (tmp_path / "data.csv").write_text("prompt,response\nhi,hello\nbye,ciao\n")
    (tmp_path / "csvish.txt").write_text("instruction\toutput\nhi\thello\n")
    (tmp_path / "pretty.jsonl").write_text("".join(json.dumps(r, indent=2) + "\n" for r in chats))
    (tmp_path / "utf16.jsonl").write_bytes("".join(json.dumps(r) + "\n" for r in chats).encode("utf-16"))
    (tmp_path / "utf16be.jsonl").write_bytes("".join(json.dumps(r) + "\n" for r in chats).encode("utf-16-be"))
    cases = {
        "data.csv": "CSV is not a supported format",
        "csvish.txt": "CSV is not a supported format",
        "pretty.jsonl": "one JSON object per line (e.g. jq -c . FILE > FILE.jsonl), or pass a .json file holding an array",
        "utf16.jsonl": "UTF-16",
        "utf16be.jsonl": "re-save it as UTF-8",
    }
    assert cli("dataset", "list").exit_code == 0  # the registry exists before the first snapshot
    for name, expected in cases.items():
        before = snapshot(brightrun_home)
        one_line_error(add(cli, tmp_path / name, "--name", "x"), expected)
        assert snapshot(brightrun_home) == before, name
    assert "convert it to JSONL with messages" in add(cli, tmp_path / "data.csv", "--name", "x").stderr


def test_objects_run_together_on_one_line_are_named_as_such_not_as_truncation(cli, tmp_path):
    path = tmp_path / "joined.jsonl"
    path.write_text("".join(json.dumps(r) for r in good_lines(3)))  # no newlines at all
    result = add(cli, path, "--name", "d", "--json")
    assert result.exit_code == 2 and "truncated" not in result.stderr
    errors = json.loads(result.stdout)["validation_errors"]
    assert len(errors) == 1 and errors[0]["error"].startswith("several JSON objects on one line")


# ------------------------------------------------------------ 6. multimodal parts


def test_an_image_content_part_is_named_as_unsupported():
    record = {"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "image_url", "image_url": {"url": "x"}}]},
                           {"role": "assistant", "content": "hello"}]}
    converted, problems = to_v4(record, "openai", 1)
    assert converted is None and len(problems) == 1
    assert problems[0].error == ("messages[0] content part 2 has type 'image_url': only text parts are supported "
                                 "(this is a text-only LoRA trainer)")
    record["messages"][0]["content"].pop()
    converted, problems = to_v4(record, "openai", 1)
    assert problems == [] and converted["turns"][0]["content"] == "hi"


# ------------------------------------------------------------ 7. duplicates


def test_duplicates_stay_on_one_side_of_the_split_and_are_counted(cli, tmp_path):
    same = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    path = write_jsonl(tmp_path / "same.jsonl", [same] * 10)
    result = add(cli, path, "--name", "same", "--json")
    assert result.exit_code == 0, result.output
    ds = json.loads(result.stdout)
    assert ds["stats"]["duplicate_conversations"] == 9
    assert {ds["stats"]["train_conversations"], ds["stats"]["validation_conversations"]} == {10, 0}
    assert "9 exact duplicate conversation(s)" in cli("dataset", "show", "same").stdout

    unique = [{"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]} for i in range(40)]
    rows = unique + [unique[i] for i in range(8) for _ in range(3)]  # 8 conversations with 3 more copies each
    mixed = json.loads(add(cli, write_jsonl(tmp_path / "mixed.jsonl", rows), "--name", "mixed", "--json", "--val-split", "0.2").stdout)
    assert mixed["stats"]["duplicate_conversations"] == 24
    assert abs(mixed["stats"]["validation_conversations"] - 0.2 * 64) <= 3


def test_duplicate_copies_land_in_the_same_split_file(cli, tmp_path, brightrun_home):
    unique = [{"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]} for i in range(30)]
    rows = unique + unique[:10]
    ds = json.loads(add(cli, write_jsonl(tmp_path / "d.jsonl", rows), "--name", "d", "--json", "--val-split", "0.3").stdout)
    folder = brightrun_home / "storage" / "datasets" / ds["id"]
    texts = {}
    for side in ("train", "validation"):
        for line in (folder / f"{side}.jsonl").read_text().splitlines():
            turns = json.dumps(json.loads(line)["turns"], sort_keys=True)
            texts.setdefault(turns, set()).add(side)
    assert all(len(sides) == 1 for sides in texts.values())
    assert ds["stats"]["validation_conversations"] > 0 and ds["stats"]["train_conversations"] > 0


# ------------------------------------------------------------ 8. weight 0


def test_context_only_turns_are_not_training_pairs(cli, tmp_path):
    rows = [{"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"ctx{i}", "weight": 0},
                          {"role": "user", "content": "more"}, {"role": "assistant", "content": f"learn{i}"}]} for i in range(12)]
    ds = json.loads(add(cli, write_jsonl(tmp_path / "w.jsonl", rows), "--name", "w", "--json").stdout)
    assert ds["total_training_pairs"] + ds["total_validation_pairs"] == 12
    assert ds["stats"]["context_only_turns"] == 12
    shown = cli("dataset", "show", "w").stdout
    assert f"training pairs   {ds['total_training_pairs']} assistant turns (+{ds['total_validation_pairs']} held out)" in shown
    assert "12 more are context only (weight 0)" in shown


# ------------------------------------------------------------ 9. token approximation


def test_the_approximation_counts_the_template_and_other_scripts():
    counter = ApproxCounter()
    assert counter.method == APPROX_METHOD != "approx:chars/4"
    short = {"turns": [{"role": "user", "content": "hi 0"}, {"role": "assistant", "content": "hello 0"}]}
    assert counter.count([short])[0] >= 12  # characters / 4 alone gave 3
    cjk = {"turns": [{"role": "user", "content": "你好世界今天天气"}, {"role": "assistant", "content": "很好谢谢你的问候"}]}
    assert counter.count([cjk])[0] >= 16 + 10  # a token a character, plus the template
    emoji = {"turns": [{"role": "user", "content": "🎉" * 10}, {"role": "assistant", "content": "ok"}]}
    assert counter.count([emoji])[0] >= 20 + 10
    english = {"turns": [{"role": "user", "content": "word " * 400}, {"role": "assistant", "content": "ok"}]}
    assert 500 <= counter.count([english])[0] <= 520  # long English text stays near characters / 4


# ------------------------------------------------------------ 10. wording


def test_small_wording(cli, tmp_path):
    rows = [conv(f"c{i}", ("user", "q"), ("assistant", f"a{i}")) for i in range(1200)]
    assert add(cli, write_jsonl(tmp_path / "big.jsonl", rows), "--name", "big").exit_code == 0
    assert "conversations    1,200 (1,080 train / 120 validation" in cli("dataset", "show", "big").stdout

    _, problems = to_v4({"conversation_id": "", "turns": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}, "brightrun_lora_v4", 1)
    assert problems[0].error == "'conversation_id' is empty"
    _, problems = to_v4({"instruction": "do it", "output": " "}, "alpaca", 1)
    assert problems[0].error == "empty 'output'" and "fill in 'output'" in problems[0].suggestion

    listed = cli("dataset", "list", "--search", "%")
    assert listed.exit_code == 0 and "No datasets match the search '%'" in listed.stdout and "Add one" not in listed.stdout


def test_a_large_duplicate_group_is_not_held_out_to_fill_a_small_split(cli, tmp_path):
    same = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    rows = [same] * 10 + [{"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "a"}]} for i in range(2)]
    ds = json.loads(add(cli, write_jsonl(tmp_path / "d.jsonl", rows), "--name", "d", "--json").stdout)
    assert (ds["stats"]["train_conversations"], ds["stats"]["validation_conversations"]) == (11, 1)


def test_a_template_that_adds_its_own_system_message_is_found_and_shown(cli, tmp_path):
    """SmolLM2's template writes "You are a helpful AI assistant named SmolLM, ..." into every
    conversation without a system message: trained on as context, so dataset show says so."""
    import shutil

    from transformers import AutoTokenizer

    from brightrun_cli.builtin import resolve_base_model
    from brightrun_cli.services.dataset_tokens import TokenizerCounter

    model = tmp_path / "model"
    shutil.copytree(resolve_base_model("builtin:tiny"), model)
    tokenizer = AutoTokenizer.from_pretrained(model)
    assert TokenizerCounter(tokenizer, "tiny", None).default_system is None  # its ChatML adds nothing
    tokenizer.chat_template = (
        "{% if messages[0]['role'] != 'system' %}<|im_start|>system\nYou are Bob, a helpful bot.<|im_end|>\n{% endif %}"
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}")
    assert TokenizerCounter(tokenizer, "bob", None).default_system == "You are Bob, a helpful bot."
    tokenizer.save_pretrained(model)
    data = tmp_path / "d.jsonl"
    data.write_text('{"messages":[{"role":"user","content":"hi"},{"role":"assistant","content":"hello"}]}\n' * 1
                    + '{"messages":[{"role":"user","content":"yo"},{"role":"assistant","content":"hey"}]}\n')
    added = cli("dataset", "add", str(data), "--name", "nosys", "--val-split", "0", "--base-model", str(model))
    assert added.exit_code == 0, added.stderr
    shown = " ".join(cli("dataset", "show", "nosys").stdout.split())
    assert "get the base model's default" in shown and '"You are Bob, a helpful bot."' in shown
    stats = json.loads(cli("dataset", "show", "nosys", "--json").stdout)["stats"]
    assert stats["template_default_system"] == "You are Bob, a helpful bot."
