"""Conversations and the chat template they are rendered through: one definition for
the trainer (which learns from them) and the generation engine (which answers them).

A model is judged by what it answers to the prompts it was trained on, so prompts must
be rendered exactly as in training: the tokenizer's own chat template, or, when it has
none, `FALLBACK_CHAT_TEMPLATE`, which the trainer also saves with the tuned model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

from brightrun_cli.errors import UsageError

ROLES = ("system", "user", "assistant")
# Used when a tokenizer has no chat template of its own. Turns end with the tokenizer's
# EOS so that generation stops after an answer without adding tokens to the vocabulary.
FALLBACK_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + eos_token + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


class Conversation(NamedTuple):
    conversation_id: str
    turns: list[dict[str, str]]  # [{"role", "content"}], roles from ROLES


def read_conversations(path: Path) -> list[Conversation]:
    """Read brightrun_lora_v4 JSONL. A malformed line is a UsageError naming the file and line;
    a line without a conversation_id gets its line number as id."""
    conversations = []
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise UsageError(f"{path.name} line {number}: not valid JSON ({exc.msg})") from None
            turns = record.get("turns") if isinstance(record, dict) else None
            if not isinstance(turns, list) or not turns:
                raise UsageError(f"{path.name} line {number}: expected {{\"conversation_id\", \"turns\": [...]}}")
            for turn in turns:
                if not isinstance(turn, dict) or turn.get("role") not in ROLES or not isinstance(turn.get("content"), str):
                    raise UsageError(
                        f"{path.name} line {number}: each turn needs a role ({', '.join(ROLES)}) and string content"
                    )
            conversation_id = record.get("conversation_id")
            conversations.append(Conversation(
                str(conversation_id) if conversation_id not in (None, "") else f"line-{number}",
                [{"role": t["role"], "content": t["content"]} for t in turns],
            ))
    if not conversations:
        raise UsageError(f"{path.name} holds no conversations")
    return conversations


def ensure_chat_template(tokenizer) -> None:
    """Give a tokenizer without a chat template the fallback one, and a pad token (its EOS).

    Raises UsageError when it has no EOS token: a model could neither learn nor be seen to stop."""
    if tokenizer.eos_token is None:
        raise UsageError("the base model's tokenizer has no EOS token, so a tuned model could not learn to stop")
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = FALLBACK_CHAT_TEMPLATE
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token


def render(tokenizer, messages: list[dict[str, str]], generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def end_of_turn(tokenizer) -> str:
    """The text the template puts right after an assistant's answer (e.g. "<|im_end|>",
    "<|eot_id|>", or the EOS for the fallback template), trailing whitespace dropped: what
    the trainer teaches the model to produce after each answer (trainer/data.py), so what
    generation stops at. Empty when the template appends nothing after an answer."""
    sentinel = "brightrun-answer-sentinel"
    messages = [{"role": "user", "content": "hello"}]
    prompt = render(tokenizer, messages, True)
    through = render(tokenizer, messages + [{"role": "assistant", "content": sentinel}], False).rstrip()
    # A template may rewrite the answer's surroundings (e.g. an empty reasoning block): find the answer itself.
    at = through.find(sentinel, len(prompt) if through.startswith(prompt) else 0)
    return through[at + len(sentinel):] if at >= 0 else ""
