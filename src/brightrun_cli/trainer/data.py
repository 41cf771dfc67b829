"""Conversations -> token ids with a loss mask -> micro-batches (packed or padded).

The loss mask comes from the chat template itself: for each assistant turn, the text
the template renders for the conversation up to that turn with a generation prompt is
a prefix of the text up to and including the turn, and the difference is exactly what
the model must produce: the answer plus the template's end-of-turn marker (so the tuned
model learns to stop). Character spans map to tokens through the fast tokenizer's
offsets, which works for any template and any tokenizer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .spec import SpecError

IGNORE = -100
ROLES = ("system", "user", "assistant")
# Used when a tokenizer has no chat template of its own. Turns end with the tokenizer's
# EOS so that generation stops after an answer without adding tokens to the vocabulary.
FALLBACK_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + eos_token + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@dataclass
class Example:
    input_ids: list[int]
    targets: list[int]  # targets[t] = token to predict at position t, or IGNORE

    @property
    def loss_tokens(self) -> int:
        return sum(t != IGNORE for t in self.targets)


def read_conversations(path: Path) -> list[list[dict[str, str]]]:
    """Read brightrun_lora_v4 JSONL; a malformed line is a SpecError naming the line."""
    conversations = []
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise SpecError(f"{path.name} line {number}: not valid JSON ({exc.msg})") from None
            turns = record.get("turns") if isinstance(record, dict) else None
            if not isinstance(turns, list) or not turns:
                raise SpecError(f"{path.name} line {number}: expected {{\"conversation_id\", \"turns\": [...]}}")
            for turn in turns:
                if not isinstance(turn, dict) or turn.get("role") not in ROLES or not isinstance(turn.get("content"), str):
                    raise SpecError(
                        f"{path.name} line {number}: each turn needs a role ({', '.join(ROLES)}) and string content"
                    )
            conversations.append([{"role": t["role"], "content": t["content"]} for t in turns])
    if not conversations:
        raise SpecError(f"{path.name} holds no conversations")
    return conversations


def ensure_chat_template(tokenizer) -> None:
    if tokenizer.eos_token is None:
        raise SpecError("the base model's tokenizer has no EOS token, so a tuned model could not learn to stop")
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = FALLBACK_CHAT_TEMPLATE
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token


def _render(tokenizer, messages, generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def assistant_spans(tokenizer, messages: list[dict[str, str]]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans the model is trained to produce."""
    text = _render(tokenizer, messages, False)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = _render(tokenizer, messages[:i], True)
        through = _render(tokenizer, messages[: i + 1], False)
        if text.startswith(through) and through.startswith(prompt):
            start, end = len(prompt), len(through.rstrip())
        else:
            # A template that rewrites earlier turns (e.g. drops reasoning): find the answer itself.
            start = text.find(message["content"], spans[-1][1] if spans else 0)
            if start < 0:
                continue
            end = start + len(message["content"])
            eos = tokenizer.eos_token or ""
            if eos and text.startswith(eos, end):
                end += len(eos)
        if end > start:
            spans.append((start, end))
    return text, spans


def tokenize(tokenizer, messages, max_length: int, assistant_only: bool) -> Example:
    text, spans = assistant_spans(tokenizer, messages)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"][:max_length], enc["offset_mapping"][:max_length]
    if assistant_only:
        in_span = [any(s < e_tok and b_tok < e for s, e in spans) for b_tok, e_tok in offsets]
    else:
        in_span = [True] * len(ids)
    # Position t predicts token t+1; the first token is never a target.
    targets = [ids[t + 1] if in_span[t + 1] else IGNORE for t in range(len(ids) - 1)] + [IGNORE]
    return Example(ids, targets)


def tokenize_file(tokenizer, path: Path, max_length: int, assistant_only: bool) -> tuple[list[Example], int]:
    """Tokenized conversations with at least one loss token, and how many were truncated."""
    examples, truncated = [], 0
    for messages in read_conversations(path):
        example = tokenize(tokenizer, messages, max_length, assistant_only)
        truncated += len(example.input_ids) == max_length
        if example.loss_tokens:
            examples.append(example)
    if not examples:
        raise SpecError(
            f"{path.name}: no assistant tokens to train on (the chat template yields no assistant turns, "
            "or every answer lies beyond max_seq_length); add assistant turns or raise max_seq_length"
        )
    return examples, truncated


@dataclass
class Batch:
    """One micro-batch as model inputs. Packed: one row, positions restart per conversation."""

    input_ids: "object"  # torch.LongTensor (rows, length)
    targets: "object"
    attention_mask: "object | None"
    position_ids: "object | None"
    cu_seq_lens: "object | None"  # packed only: conversation boundaries in the row
    max_length: int
    real_tokens: int
    padded_tokens: int

    def model_inputs(self) -> dict:
        # Logits only at the columns where some row has a target. A 1-D index tensor is the
        # form every supported transformers release takes (a 2-D boolean mask needs >= 5.2x).
        columns = (self.targets != IGNORE).any(0).nonzero().squeeze(1)
        inputs = {"input_ids": self.input_ids, "logits_to_keep": columns}
        if self.cu_seq_lens is not None:
            inputs.update(position_ids=self.position_ids, cu_seq_lens_q=self.cu_seq_lens, cu_seq_lens_k=self.cu_seq_lens,
                          max_length_q=self.max_length, max_length_k=self.max_length)
        else:
            inputs["attention_mask"] = self.attention_mask
        return inputs

    def target_logits(self, logits):
        """(target tokens, vocab) from the logits of `model_inputs()`, in the order of
        `targets[targets != IGNORE]`."""
        keep = self.targets != IGNORE
        return logits[keep[:, keep.any(0)].to(logits.device)]


def collate(examples: list[Example], packed: bool, pad_id: int) -> Batch:
    import torch

    lengths = [len(e.input_ids) for e in examples]
    if packed:
        ids = torch.tensor([[t for e in examples for t in e.input_ids]])
        targets = torch.tensor([[t for e in examples for t in e.targets]])
        positions = torch.tensor([[p for n in lengths for p in range(n)]])
        cu = torch.tensor([0] + lengths, dtype=torch.int32).cumsum(0, dtype=torch.int32)
        return Batch(ids, targets, None, positions, cu, max(lengths), sum(lengths), sum(lengths))
    width = max(lengths)
    ids = torch.full((len(examples), width), pad_id)
    targets = torch.full((len(examples), width), IGNORE)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, e in enumerate(examples):
        ids[row, : len(e.input_ids)] = torch.tensor(e.input_ids)
        targets[row, : len(e.targets)] = torch.tensor(e.targets)
        mask[row, : len(e.input_ids)] = 1
    return Batch(ids, targets, mask, None, None, width, sum(lengths), width * len(examples))
