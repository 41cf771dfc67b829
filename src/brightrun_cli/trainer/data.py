"""Conversations -> token ids with a loss mask -> micro-batches (packed or padded).

The loss mask comes from the chat template itself: for each assistant turn, the text
the template renders for the conversation up to that turn with a generation prompt is
a prefix of the text up to and including the turn, and the difference is exactly what
the model must produce: the answer plus the template's end-of-turn marker (so the tuned
model learns to stop). A template that writes a turn differently once others follow it
(Qwen3 puts an empty reasoning block only into the last turn) breaks that prefix; the
turn is then found in the whole conversation by rendering it again with placeholders
for the turn's text and calls (`_turn_in_context`). Character spans map to tokens
through the fast tokenizer's offsets, which works for any template and any tokenizer.

Tool calls are answers like any other (the call's text is what the model must write);
tool results, like user turns, are context. An assistant turn with weight 0 is context
too. Conversations listing tools are rendered with them, as the model will be prompted.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from brightrun_cli.errors import UsageError
from brightrun_cli.generation import chat
from brightrun_cli.generation.chat import FALLBACK_CHAT_TEMPLATE  # noqa: F401  (the template the trainer trains with)

from .spec import SpecError

IGNORE = -100


@dataclass
class Example:
    input_ids: list[int]
    targets: list[int]  # targets[t] = token to predict at position t, or IGNORE

    @property
    def loss_tokens(self) -> int:
        return sum(t != IGNORE for t in self.targets)


def read_conversations(path: Path) -> list[chat.Conversation]:
    """Read brightrun_lora_v4 JSONL; a malformed line is a SpecError naming the line."""
    try:
        return chat.read_conversations(path)
    except UsageError as exc:
        raise SpecError(exc.message) from None


def ensure_chat_template(tokenizer) -> None:
    """The tokenizer's chat template, or the fallback one the generation engine also uses."""
    try:
        chat.ensure_chat_template(tokenizer)
    except UsageError as exc:
        raise SpecError(exc.message) from None


def assistant_spans(tokenizer, messages: list[dict], tools: list[dict] | None = None) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans the model is trained to produce."""
    text = chat.render(tokenizer, messages, False, tools)
    spans: list[tuple[int, int]] = []
    end_markers = None
    for i, message in enumerate(messages):
        if message["role"] != "assistant" or message.get("weight") == 0:
            continue
        prompt = chat.render(tokenizer, messages[:i], True, tools)
        through = chat.render(tokenizer, messages[: i + 1], False, tools)
        if text.startswith(through) and through.startswith(prompt):
            start, end = len(prompt), len(through.rstrip())
        else:
            # A template that writes a turn differently once others follow it (Qwen3 writes an
            # empty reasoning block only into the last one, drops earlier reasoning): find
            # what it writes for this turn in the whole conversation.
            if end_markers is None:  # how a turn ends last, and with others after it (gpt-oss: <|return|>, <|end|>)
                last = chat.end_of_turn(tokenizer) or tokenizer.eos_token or ""
                end_markers = [m for m in dict.fromkeys([last, chat.end_of_turn_between(tokenizer)]) if m.strip()]
            span = _turn_in_context(tokenizer, messages, i, tools, text, end_markers, spans[-1][1] if spans else 0)
            if span is None:
                continue
            start, end = span
            end += next((len(m) for m in end_markers if text.startswith(m, end)), 0)
        if end > start:
            spans.append((start, end))
    return text, spans


def _turn_in_context(tokenizer, messages: list[dict], index: int, tools: list[dict] | None, text: str,
                     end_markers: list[str], after: int) -> tuple[int, int] | None:
    """The characters of `text` (the whole conversation rendered) that messages[index] (an
    assistant turn) puts there: its text and tool calls, up to its end of turn (the first
    of `end_markers` after it).
    Found by rendering the conversation again with placeholders for the turn's text and its
    calls' names (arguments emptied, ids kept, so templates that check calls still render
    it): the turn is what the two renderings do not share before the first placeholder,
    through the end of turn after the last one."""
    from jinja2 import TemplateError

    placeholder = "brightrun-answer-placeholder"
    message = messages[index]
    stand_in = {"role": "assistant", "content": placeholder}
    if message.get("tool_calls"):
        stand_in["tool_calls"] = [{**call, "function": {"name": placeholder, "arguments": {}}} for call in message["tool_calls"]]
    try:
        other = chat.render(tokenizer, [*messages[:index], stand_in, *messages[index + 1:]], False, tools)
    except TemplateError:
        other = ""
    first, last = other.find(placeholder), other.rfind(placeholder)
    if first < 0:  # the template refused or hid the stand-in: look for the turn's text alone
        content = message["content"]
        start = text.find(content, after) if content else -1
        return (start, start + len(content)) if start >= 0 else None
    start = min(len(os.path.commonprefix([text, other])), first)
    turn_end = min((at for at in (other.find(m, last) for m in end_markers) if at >= 0), default=-1)
    after_turn = len(other) - (turn_end if turn_end >= 0 else last + len(placeholder))  # what follows the turn
    shared_end = len(os.path.commonprefix([text[::-1], other[::-1]]))
    end = len(text) - min(shared_end, after_turn)
    return (start, end) if end > start else None


def tokenize(tokenizer, messages, max_length: int, assistant_only: bool, tools: list[dict] | None = None) -> Example:
    text, spans = assistant_spans(tokenizer, messages, tools)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"][:max_length], enc["offset_mapping"][:max_length]
    if assistant_only:
        in_span = [any(s < e_tok and b_tok < e for s, e in spans) for b_tok, e_tok in offsets]
    else:
        in_span = [True] * len(ids)
    # Position t predicts token t+1; the first token is never a target.
    targets = [ids[t + 1] if in_span[t + 1] else IGNORE for t in range(len(ids) - 1)] + [IGNORE]
    return Example(ids, targets)


def tokenize_file(tokenizer, path: Path, max_length: int, assistant_only: bool,
                  counts: dict[str, int] | None = None) -> tuple[list[Example], int]:
    """Tokenized conversations with at least one loss token, and how many were truncated.
    counts, when given, gets "conversations" and "reasoning_copies" (chat.training_views)."""
    from jinja2 import TemplateError

    examples, truncated = [], 0
    conversations = read_conversations(path)
    check_tool_calls(tokenizer, conversations, path)
    for conversation in conversations:
        # A template that writes reasoning only into the last turn: earlier turns with reasoning
        # are each learned from a copy of the conversation that ends with them (chat.training_views).
        views = chat.training_views(tokenizer, conversation.turns) if assistant_only else [conversation.turns]
        if counts is not None:
            counts["conversations"] = counts.get("conversations", 0) + 1
            counts["reasoning_copies"] = counts.get("reasoning_copies", 0) + len(views) - 1
        for turns in views:
            try:
                example = tokenize(tokenizer, turns, max_length, assistant_only, conversation.tools)
            except TemplateError as exc:  # a template's own refusal (roles must alternate, one tool call at a time, ...)
                raise SpecError(f"{path.name}: conversation {conversation.conversation_id!r}: the chat template refused it ({exc})") from None
            truncated += len(example.input_ids) == max_length
            if example.loss_tokens:
                examples.append(example)
    if not examples:
        raise SpecError(
            f"{path.name}: no assistant tokens to train on (the chat template yields no assistant turns, "
            "or every answer lies beyond max_seq_length); add assistant turns or raise max_seq_length"
        )
    return examples, truncated


def check_tool_calls(tokenizer, conversations: list[chat.Conversation], path: Path) -> None:
    """Data with tool calls needs a template that writes them: one that prints only the text
    would train the model on empty answers."""
    calling = next((c for c in conversations if any("tool_calls" in t for t in c.turns)), None)
    if calling is not None and not chat.renders_tool_calls(tokenizer):
        raise SpecError(
            f"{path.name}: conversation {calling.conversation_id!r} calls tools, and the base model's chat template does "
            f"not write tool calls; {chat.DROPPED_CALLS_HINT}"
        )


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
