"""gpt-oss's harmony format, with gpt-oss's own chat template (as TRL ships it) on the
built-in byte-level tokenizer plus harmony's special tokens: what the trainer learns from a
conversation, what the template probes say, and how an eval reads references."""

from __future__ import annotations

import importlib.resources

import pytest

from brightrun_cli.builtin import resolve_base_model
from brightrun_cli.generation import chat, evaluate, metrics

GET_ORDER = {"type": "function", "function": {"name": "get_order", "description": "Look up an order",
                                              "parameters": {"type": "object", "properties": {"id": {"type": "string"}}}}}
CALL = {"type": "function", "function": {"name": "get_order", "arguments": {"id": "1"}}}


@pytest.fixture(scope="module")
def gpt_oss():
    from transformers import AutoTokenizer

    template = importlib.resources.files("trl") / "chat_templates" / "gptoss.jinja"
    if not template.is_file():
        pytest.skip("this trl release ships no gpt-oss chat template")
    tokenizer = AutoTokenizer.from_pretrained(resolve_base_model("builtin:tiny"))
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|start|>", "<|channel|>", "<|message|>", "<|end|>",
                                                                "<|return|>", "<|call|>", "<|constrain|>"]})
    tokenizer.chat_template = template.read_text()
    return tokenizer


def learned(tokenizer, example) -> list[str]:
    from brightrun_cli.trainer.data import IGNORE

    spans, current = [], []
    for target in example.targets + [IGNORE]:
        if target != IGNORE:
            current.append(target)
        elif current:
            spans.append(tokenizer.decode(current))
            current = []
    return spans


def test_each_answer_is_learned_through_its_own_end_and_no_user_turn_is(gpt_oss):
    """A message in the middle of a harmony conversation ends with <|end|>, the last with
    <|return|>: the first turn's span used to run on through the user's next message."""
    from brightrun_cli.trainer.data import tokenize

    turns = [{"role": "user", "content": "Where is order 1?"},
             {"role": "assistant", "content": "It shipped.", "reasoning_content": "Look it up."},
             {"role": "user", "content": "Thanks"},
             {"role": "assistant", "content": "Welcome!", "reasoning_content": "Be polite."}]
    assert chat.end_of_turn(gpt_oss) == "<|return|>" and chat.end_of_turn_between(gpt_oss) == "<|end|>"
    assert learned(gpt_oss, tokenize(gpt_oss, turns, 2048, True)) == [
        "It shipped.<|end|>",  # the template keeps no earlier reasoning
        "<|channel|>analysis<|message|>Be polite.<|end|><|start|>assistant<|channel|>final<|message|>Welcome!<|return|>",
    ]


def test_a_call_is_learned_with_its_recipient_and_the_template_counts_as_writing_calls(gpt_oss):
    from brightrun_cli.trainer.data import tokenize

    assert chat.renders_tool_calls(gpt_oss) and chat.renders_reasoning(gpt_oss)  # its tools need a description
    turns = [{"role": "user", "content": "Where is order 1?"}, {"role": "assistant", "content": "", "tool_calls": [CALL]},
             {"role": "tool", "content": '{"status": "shipped"}'}, {"role": "assistant", "content": "It shipped."}]
    spans = learned(gpt_oss, tokenize(gpt_oss, turns, 4096, True, [GET_ORDER]))
    assert spans[0] == ' to=functions.get_order<|channel|>commentary json<|message|>{"id": "1"}<|call|>'
    assert spans[1].endswith("<|channel|>final<|message|>It shipped.<|return|>") and len(spans) == 2


def test_references_are_read_from_their_channels_as_answers_are(gpt_oss):
    prompt = [{"role": "user", "content": "Where is order 1?"}]
    reasoned = evaluate.Sample("c1", 1, prompt, "It shipped.", reasoning="Look it up.").reference_for(gpt_oss)
    assert reasoned == "<think>\nLook it up.\n</think>\n\nIt shipped."
    assert metrics.without_reasoning(reasoned) == "It shipped."
    calling = evaluate.Sample("c2", 1, prompt, "", tools=[GET_ORDER], calls=[CALL])
    assert metrics.calls_in(calling.reference_for(gpt_oss)) == calling.functions_called()


def test_an_earlier_turns_analysis_is_learned_from_a_copy_ending_with_it(gpt_oss, tmp_path):
    import json

    from brightrun_cli.trainer.data import tokenize_file

    turns = [{"role": "user", "content": "Where is order 1?"},
             {"role": "assistant", "content": "It shipped.", "reasoning_content": "Look it up."},
             {"role": "user", "content": "Thanks"},
             {"role": "assistant", "content": "Welcome!", "reasoning_content": "Be polite."}]
    assert chat.drops_earlier_reasoning(gpt_oss)
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps({"conversation_id": "c", "turns": turns}) + "\n")
    examples, _ = tokenize_file(gpt_oss, path, 2048, True)
    assert [learned(gpt_oss, e) for e in examples] == [
        ["<|channel|>analysis<|message|>Look it up.<|end|><|start|>assistant<|channel|>final<|message|>It shipped.<|return|>"],
        ["<|channel|>analysis<|message|>Be polite.<|end|><|start|>assistant<|channel|>final<|message|>Welcome!<|return|>"],
    ]
