"""`dataset render`: what a run trains on, through the base model's template, trained text marked."""

from __future__ import annotations

import json

import pytest

from tests.test_datasets import conv, write_jsonl

SUPPORT = conv("t1", ("user", "Reset my password?"), ("assistant", "Go to Settings > Security and click Reset."),
               ("user", "Thanks [bold]x[/bold]\x1b[31m"), ("assistant", "You're welcome!"))


@pytest.fixture
def dataset(cli, brightrun_home):
    rows = [SUPPORT, conv("quiet", ("user", "Say nothing"), ("assistant", "(a bad answer)"), ("user", "Now say hi"), ("assistant", "hi"))]
    rows[1]["turns"][1]["weight"] = 0
    rows += [conv(f"x{i}", ("user", f"question {i}"), ("assistant", f"answer {i}")) for i in range(10)]
    added = cli("dataset", "add", str(write_jsonl(brightrun_home / "d.jsonl", rows)), "--name", "d", "--base-model", "builtin:tiny",
                "--val-split", "0.1")
    assert added.exit_code == 0, added.stderr
    return "d"


def _render(cli, *args: str) -> dict:
    result = cli("dataset", "render", *args, "--json")
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def _trained(shown: dict) -> list[str]:
    return [shown["text"][s:e] for s, e in shown["trained"]]


def test_the_answers_and_their_end_of_turn_are_marked_and_nothing_else(cli, dataset):
    rendering = _render(cli, dataset, "-c", "t1", "-c", "quiet")
    assert (rendering["base_model"], rendering["max_seq_length"], rendering["assistant_only_loss"]) == ("builtin:tiny", 2048, True)
    first, quiet = rendering["conversations"]
    assert first["text"].startswith("<|im_start|>user\nReset my password?<|im_end|>")
    assert _trained(first) == ["Go to Settings > Security and click Reset.<|im_end|>", "You're welcome!<|im_end|>"]
    assert 0 < first["trained_tokens"] < first["tokens"] and first["cut_at"] is None
    assert _trained(quiet) == ["hi<|im_end|>"]  # a weight-0 answer is context, as the trainer treats it


def test_a_person_reads_the_trained_text_between_marks_with_the_data_shown_safely(cli, dataset):
    result = cli("dataset", "render", dataset, "-c", "t1")
    assert result.exit_code == 0, result.stderr
    out = result.stdout
    assert "⟦Go to Settings > Security and click Reset.<|im_end|>⟧" in out and "⟦You're welcome!<|im_end|>⟧" in out
    assert "Thanks [bold]x[/bold]\\x1b[31m<|im_end|>" in out and "\x1b" not in out  # no markup read, no escape sent
    assert "conversation t1: " in out and " trained (" in out


def test_max_seq_length_shows_where_the_trainer_stops_reading(cli, dataset):
    whole = _render(cli, dataset, "-c", "t1")["conversations"][0]
    cut = _render(cli, dataset, "-c", "t1", "--set", "max_seq_length=64")["conversations"][0]
    assert cut["tokens"] == whole["tokens"] > 64 and cut["cut_at"] is not None
    assert cut["trained_tokens"] < whole["trained_tokens"]  # the second answer lies past the cut
    text = cli("dataset", "render", dataset, "-c", "t1", "--set", "max_seq_length=64").stdout
    assert "cut at max_seq_length 64" in text and "✂ max_seq_length" in text


def test_without_assistant_only_loss_everything_is_trained(cli, dataset):
    shown = _render(cli, dataset, "-c", "t1", "--set", "assistant_only_loss=false")["conversations"][0]
    assert _trained(shown) == [shown["text"]]


def test_conversations_come_in_the_order_asked_and_the_json_names_the_model_as_people_do(cli, dataset):
    rendering = _render(cli, dataset, "-c", "quiet", "-c", "t1")
    assert [c["conversation_id"] for c in rendering["conversations"]] == ["quiet", "t1"]
    assert rendering["base_model_name"] == "builtin:tiny"


def test_tool_calls_the_template_would_drop_are_refused_as_train_refuses_them(cli, brightrun_home, monkeypatch):
    from brightrun_cli.generation import chat

    monkeypatch.setattr(chat, "renders_tool_calls", lambda tokenizer: False)  # a template that writes text only (SmolLM2's)
    calling = conv("call", ("user", "Weather in Oslo?"), ("assistant", ""))
    calling["turns"][1]["tool_calls"] = [{"type": "function", "function": {"name": "weather", "arguments": {"city": "Oslo"}}}]
    rows = [calling, *(conv(f"x{i}", ("user", f"q {i}"), ("assistant", f"a {i}")) for i in range(6))]
    assert cli("dataset", "add", str(write_jsonl(brightrun_home / "t.jsonl", rows)), "--name", "tools", "--base-model",
               "builtin:tiny", "--val-split", "0").exit_code == 0
    result = cli("dataset", "render", "tools", "-c", "x1")
    assert result.exit_code == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "conversation 'call' calls tools" in result.stderr and "a run would refuse it" in result.stderr
    assert "chat_template=chatml" in result.stderr
    empty = cli("dataset", "render", "tools", "--split", "validation")  # added with --val-split 0
    assert empty.exit_code == 2 and "has no held-out split to render" in empty.stderr and "--val-split 0.1" in empty.stderr


def test_the_first_conversations_of_a_split_by_default(cli, dataset):
    train = _render(cli, dataset, "--limit", "3")["conversations"]
    validation = _render(cli, dataset, "--split", "validation")["conversations"]
    assert len(train) == 3 and len(validation) == 1
    assert validation[0]["conversation_id"] not in {c["conversation_id"] for c in _render(cli, dataset, "--limit", "100")["conversations"]}


@pytest.mark.parametrize(("args", "message"), [
    (("-c", "nope"), "no conversation 'nope' in the train split"),
    (("--split", "test"), "--split test: unknown"),
    (("--set", "max_seq_length=8"), "max_seq_length must be in 32.."),
    (("--limit", "0"), "--limit"),
])
def test_bad_input_is_one_line_and_exit_2(cli, dataset, args, message):
    result = cli("dataset", "render", dataset, *args)
    assert result.exit_code == 2 and message in result.stderr and result.stderr.count("\n") == 1, result.stderr


def test_a_dataset_counted_without_a_model_asks_for_one(cli, brightrun_home):
    rows = [SUPPORT, *(conv(f"x{i}", ("user", f"q {i}"), ("assistant", f"a {i}")) for i in range(3))]
    added = cli("dataset", "add", str(write_jsonl(brightrun_home / "a.jsonl", rows)), "--name", "approx")
    assert added.exit_code == 0, added.stderr
    result = cli("dataset", "render", "approx")
    assert result.exit_code == 2 and "no base model" in result.stderr and "--base-model" in result.stderr
    assert _trained(_render(cli, "approx", "--base-model", "builtin:tiny")["conversations"][0])[-1] == "You're welcome!<|im_end|>"
