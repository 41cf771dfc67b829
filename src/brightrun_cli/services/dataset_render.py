"""`dataset render`: conversations as the trainer sees them, through the base model's chat
template, with the characters it trains on marked.

What a run learns is not the JSONL: it is the template's text (a default system message the
data never had, role headers, the end-of-turn marker the model must learn to write) with a
loss only on the assistant turns. This shows exactly that, computed by the trainer's own
code (trainer/data.py: assistant_spans and tokenize), so what is shown is what is trained.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from brightrun_cli.errors import NotFoundError, UsageError
from brightrun_cli.services.base_model import display_name
from brightrun_cli.services.dataset_tokens import load_counter
from brightrun_cli.services.datasets import get_dataset, split_paths
from brightrun_cli.services.evals import check_held_out

if TYPE_CHECKING:
    from brightrun_cli.workspace import Workspace

MAX_RENDERED = 100  # --limit's ceiling: this is a view for reading, not an export


class Rendered(msgspec.Struct):
    """One conversation (or one of its reasoning copies) as the trainer tokenizes it."""

    conversation_id: str
    text: str  # the chat template's rendering of the whole conversation
    trained: list[tuple[int, int]]  # character spans of `text` with a loss (answers, their end of turn)
    tokens: int
    trained_tokens: int  # loss tokens within max_seq_length, as the trainer counts them
    cut_at: int | None  # the character where max_seq_length cuts the text (nothing after it is seen); None when it all fits
    copy: int = 0  # >0: a copy that ends with an earlier turn (a template that keeps reasoning only in the last turn)


class Rendering(msgspec.Struct):
    dataset_id: str
    dataset_name: str
    split: str
    base_model: str  # as the run records it (a converted .gguf: its directory in the cache)
    base_model_name: str  # as people name it (a converted .gguf: the file's name)
    chat_template: str  # "model" (the tokenizer's own) or "chatml" (brightrun's)
    max_seq_length: int
    assistant_only_loss: bool
    conversations: list[Rendered]

    def to_json(self) -> dict[str, Any]:
        return msgspec.to_builtins(self)


def render_dataset(ws: "Workspace", ref: str, *, split: str = "train", limit: int = 1, conversation_ids: list[str] | None = None,
                   preset: str | None = None, overrides: Iterable[str] = (), config_file: Path | None = None,
                   base_model: str | None = None) -> Rendering:
    """The first `limit` conversations of the split (or those named by id), rendered and marked
    as a run with these settings (preset, --set, --config, --base-model, as `train` takes them)
    would tokenize them: its base model's template, max_seq_length and assistant_only_loss."""
    from jinja2 import TemplateError

    from brightrun_cli.generation import chat
    from brightrun_cli.services.presets import require_base_model, resolve_config
    from brightrun_cli.trainer import data
    from brightrun_cli.trainer.spec import SpecError

    if split not in ("train", "validation"):
        raise UsageError(f"--split {split}: unknown", "use train or validation")
    if not 1 <= limit <= MAX_RENDERED:
        raise UsageError(f"--limit {limit}: must be between 1 and {MAX_RENDERED}", "pass a smaller number, or --conversation ID")
    row = get_dataset(ws, ref)
    config = resolve_config(ws, preset, overrides, config_file, base_model=base_model, dataset_base_model=row.base_model).config
    model = require_base_model(config)
    counter = load_counter(model, config.chat_template)
    tokenizer = getattr(counter, "tokenizer", None)
    if tokenizer is None:  # the approximation: no tokenizer behind it
        raise UsageError(f"no tokenizer for base model {model}", "pass --base-model a model directory, .gguf file or Hugging Face id")
    chat.ensure_chat_template(tokenizer)  # a tokenizer without one trains with brightrun's ChatML, as the trainer does
    if split == "validation":
        check_held_out(row, "to render")
    train_path, validation_path = split_paths(ws, row)
    conversations = chat.read_conversations(train_path if split == "train" else validation_path)
    if conversation_ids:
        wanted = dict.fromkeys(conversation_ids)
        by_id = {c.conversation_id: c for c in conversations}
        chosen = [by_id[c] for c in wanted if c in by_id]  # in the order asked for
        found = {c.conversation_id for c in chosen}
        missing = [c for c in wanted if c not in found]
        if missing:
            other = "validation" if split == "train" else "train"
            raise NotFoundError(f"no conversation {missing[0]!r} in the {split} split of dataset '{row.name}'",
                                f"try --split {other}, or see the ids with 'brightrun dataset render {row.name} --limit {MAX_RENDERED} --json'")
    else:
        chosen = conversations[:limit]
    try:  # the trainer's refusal of tool calls its template would drop: the run would not start
        data.check_tool_calls(tokenizer, conversations, Path(f"{split}.jsonl"))
    except SpecError as exc:  # "<file>: conversation 'x' calls tools, ...; <what to do>", as `train` says it
        message, _, hint = str(exc).split(": ", 1)[1].partition("; ")
        raise UsageError(f"dataset '{row.name}': {message}: a run would refuse it", hint or None) from None
    rendered = []
    for conversation in chosen:
        views = chat.training_views(tokenizer, conversation.turns) if config.assistant_only_loss else [conversation.turns]
        for copy, turns in enumerate(views):
            try:
                rendered.append(_render(tokenizer, conversation.conversation_id, turns, conversation.tools,
                                        config.max_seq_length, config.assistant_only_loss, copy if len(views) > 1 else 0))
            except TemplateError as exc:
                raise UsageError(f"conversation {conversation.conversation_id!r}: the chat template refused it ({exc})",
                                 "a run would fail the same way: fix the conversation, or train with --set chat_template=chatml") from None
    return Rendering(dataset_id=row.id, dataset_name=row.name, split=split, base_model=model,
                     base_model_name=display_name(model, short=True), chat_template=config.chat_template,
                     max_seq_length=config.max_seq_length, assistant_only_loss=config.assistant_only_loss, conversations=rendered)


def _render(tokenizer: Any, conversation_id: str, turns: list[dict], tools: list[dict] | None, max_seq_length: int,
            assistant_only: bool, copy: int) -> Rendered:
    from brightrun_cli.trainer import data

    text, spans = data.assistant_spans(tokenizer, turns, tools)
    if not assistant_only:  # the loss covers every token the model predicts: all but the first
        spans = [(0, len(text))] if text else []
    offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    example = data.tokenize(tokenizer, turns, max_seq_length, assistant_only, tools)  # the trainer's loss tokens, after its cut
    cut_at = offsets[max_seq_length - 1][1] if len(offsets) > max_seq_length else None
    return Rendered(conversation_id=conversation_id, text=text, trained=spans, tokens=len(offsets),
                    trained_tokens=example.loss_tokens, cut_at=cut_at, copy=copy)
