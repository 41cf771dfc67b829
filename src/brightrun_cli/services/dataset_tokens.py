"""Token counting for dataset stats: the base model's real tokenizer, or a stated approximation.

A conversation's count is the length of what the trainer feeds the model: the
conversation rendered with the tokenizer's chat template, then tokenized without
extra special tokens (the template adds them), which is exactly what
`apply_chat_template(tokenize=True)` returns. Conversations are rendered and
tokenized in batches through the Rust tokenizer (`encode_batch_fast`, no offsets),
which is where the speed over a per-example `datasets.map` comes from.

Without a tokenizer (no base model) the count is an approximation, `APPROX_METHOD`,
built to be near what a BPE tokenizer and a ChatML-like template give:
- text: ASCII at 4 characters a token; CJK characters (Han, kana, Hangul) 1 token
  each; emoji and other characters outside the Basic Multilingual Plane 3 each
  (byte-level BPE splits their 4 UTF-8 bytes); any other non-ASCII character
  (accented Latin, Cyrillic, Arabic, ...) half a token;
- template: `TEMPLATE_TOKENS_PER_MESSAGE` per turn (`<|im_start|>role\n ... <|im_end|>\n`)
  and `TEMPLATE_TOKENS_PER_CONVERSATION` per conversation.
Rows counted before this rule carry the method `approx:chars/4` (characters / 4 only).
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from brightrun_cli.errors import UsageError
from brightrun_cli.services.base_model import cached_file, require_hub
from brightrun_cli.services.dataset_formats import turn_text
from brightrun_cli.trainer.spec import CHAT_TEMPLATES

# Approximation used when no tokenizer is available (see the module docstring): ~4
# characters per token is the usual figure for English text with BPE vocabularies of
# 32k-100k entries; other scripts and the chat template cost more.
CHARS_PER_TOKEN = 4
CJK_TOKENS_PER_CHAR = 1.0
ASTRAL_TOKENS_PER_CHAR = 3.0  # emoji and other characters beyond U+FFFF
OTHER_TOKENS_PER_CHAR = 0.5  # other non-ASCII characters
TEMPLATE_TOKENS_PER_MESSAGE = 5
TEMPLATE_TOKENS_PER_CONVERSATION = 3
APPROX_METHOD = "approx:chars+template"


class TokenCounter(Protocol):
    method: str  # stored as datasets.token_count_method
    context_length: int | None  # the model's context, None when unknown
    writes_tool_calls: bool  # whether the counted text holds tool calls (a chat template may drop them)
    writes_reasoning: bool  # whether it holds an assistant turn's reasoning_content (likewise)
    drops_earlier_reasoning: bool  # whether the template writes reasoning only into the last turn (Qwen3, gpt-oss)
    chat_template: str  # "model" (the tokenizer's own template) or "chatml" (brightrun's)

    def count(self, conversations: Sequence[dict[str, Any]]) -> list[int]:
        """Tokens of each brightrun_lora_v4 conversation ({"turns", "tools"?})."""

    def count_views(self, conversations: Sequence[dict[str, Any]]) -> list[tuple[int, int, int]]:
        """(tokens, longest example, examples) per conversation: TokenizerCounter.count_views."""


class ApproxCounter:
    """No tokenizer: the approximation of the module docstring, clearly labelled as such; context unknown."""

    method = APPROX_METHOD
    context_length = None
    writes_tool_calls = True  # turn_text counts every call
    writes_reasoning = True  # and every turn's reasoning
    drops_earlier_reasoning = False
    chat_template = "model"

    def count(self, conversations: Sequence[dict[str, Any]]) -> list[int]:
        return [max(1, round(approx_tokens(c))) for c in conversations]

    def count_views(self, conversations: Sequence[dict[str, Any]]) -> list[tuple[int, int, int]]:
        return [(n, n, 1) for n in self.count(conversations)]


class TokenizerCounter:
    """Exact counts with a Hugging Face tokenizer (chat template applied when it has one)."""

    def __init__(self, tokenizer: Any, name: str, context_length: int | None, chat_template: str = "model"):
        self.tokenizer = tokenizer
        self.context_length = context_length
        self.chat_template = chat_template  # "model": the tokenizer's own; "chatml": brightrun's, as a run with it writes
        if chat_template == "chatml":
            from brightrun_cli.generation.chat import FALLBACK_CHAT_TEMPLATE

            tokenizer.chat_template = FALLBACK_CHAT_TEMPLATE  # as trainer/loop.py sets it for chat_template=chatml
        self.has_template = bool(getattr(tokenizer, "chat_template", None))
        suffix = (" (chat_template=chatml)" if chat_template == "chatml"
                  else "" if self.has_template else " (turn contents only: the tokenizer has no chat template)")
        self.method = f"tokenizer:{name}{suffix}"
        self._backend = getattr(tokenizer, "backend_tokenizer", None)

    @functools.cached_property
    def writes_tool_calls(self) -> bool:
        """Whether the chat template writes tool calls (generation.chat.renders_tool_calls):
        the trainer refuses data with calls for a base model whose template drops them.
        Without a template the trainer's ChatML fallback writes them."""
        from brightrun_cli.generation.chat import renders_tool_calls

        return not self.has_template or renders_tool_calls(self.tokenizer)

    @functools.cached_property
    def default_system(self) -> str | None:
        """The system message the chat template writes into a conversation that has none
        (SmolLM2's "You are a helpful AI assistant named SmolLM, ..."): trained on as context,
        and in every eval and `models try` prompt, so `dataset show` says so. Found by
        rendering one user turn with and without a system message of its own."""
        if not self.has_template:
            return None
        user, system = "\u2063user-probe\u2063", "\u2063system-probe\u2063"
        try:
            bare = self.tokenizer.apply_chat_template([{"role": "user", "content": user}], tokenize=False)
            given = self.tokenizer.apply_chat_template([{"role": "system", "content": system}, {"role": "user", "content": user}],
                                                       tokenize=False)
        except Exception:  # a template that needs more than this (tools, alternation): nothing to say
            return None
        if not isinstance(bare, str) or not isinstance(given, str) or user not in bare or system not in given:
            return None
        bare_prefix, given_prefix = bare[:bare.index(user)], given[:given.index(user)]
        before, after = given_prefix.split(system, 1)
        if not (bare_prefix.startswith(before) and bare_prefix.endswith(after)) or len(bare_prefix) < len(before) + len(after):
            return None
        text = bare_prefix[len(before):len(bare_prefix) - len(after)].strip()
        return text or None

    @functools.cached_property
    def writes_reasoning(self) -> bool:
        """Whether the chat template writes an assistant turn's reasoning_content
        (generation.chat.renders_reasoning); without a template the fallback does."""
        from brightrun_cli.generation.chat import renders_reasoning

        return not self.has_template or renders_reasoning(self.tokenizer)

    @functools.cached_property
    def drops_earlier_reasoning(self) -> bool:
        """Whether the template writes reasoning only into the last assistant turn
        (generation.chat.drops_earlier_reasoning): a run learns each earlier turn with
        reasoning from a copy of the conversation ending with it (chat.training_views)."""
        from brightrun_cli.generation.chat import drops_earlier_reasoning

        return self.has_template and drops_earlier_reasoning(self.tokenizer)

    def count(self, conversations: Sequence[dict[str, Any]]) -> list[int]:
        return [total for total, _, _ in self.count_views(conversations)]

    def count_views(self, conversations: Sequence[dict[str, Any]]) -> list[tuple[int, int, int]]:
        """Per conversation: the tokens a run learns it from, the longest example among them,
        and how many examples. One, unless the template writes reasoning only into the last
        turn: then each earlier turn with reasoning is a copy of the conversation ending with
        it (generation.chat.training_views), whose tokens a run trains on too."""
        from brightrun_cli.generation.chat import template_turns, training_views

        if not conversations:
            return []
        views = ([training_views(self.tokenizer, c["turns"]) for c in conversations] if self.drops_earlier_reasoning
                 else [[c["turns"]] for c in conversations])
        flat = [(c.get("tools") or None, turns) for c, ones in zip(conversations, views) for turns in ones]
        if not self.has_template:
            texts = ["".join(turn_text(t) for t in turns) for _, turns in flat]
        elif not any(tools for tools, _ in flat):
            texts = self.tokenizer.apply_chat_template([template_turns(turns) for _, turns in flat], tokenize=False)
        else:  # the functions a conversation may call are its own: rendered one by one
            texts = [self.tokenizer.apply_chat_template(template_turns(turns), tools=tools, tokenize=False) for tools, turns in flat]
        if self._backend is not None:
            lengths = [len(e) for e in self._backend.encode_batch_fast(texts, add_special_tokens=False)]
        else:
            lengths = [len(ids) for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"]]
        out, at = [], 0
        for ones in views:
            chunk = lengths[at:at + len(ones)]
            at += len(ones)
            out.append((sum(chunk), max(chunk), len(ones)))
        return out


def approx_tokens(conversation: dict[str, Any]) -> float:
    """The approximate tokens of a conversation written with a ChatML-like template."""
    tools = conversation.get("tools")
    turns = conversation["turns"]
    text = sum(text_tokens(turn_text(t)) for t in turns) + (text_tokens(json.dumps(tools, ensure_ascii=False)) if tools else 0)
    return text + TEMPLATE_TOKENS_PER_MESSAGE * len(turns) + TEMPLATE_TOKENS_PER_CONVERSATION


def text_tokens(text: str) -> float:
    """Approximate tokens of `text`: ASCII by characters / 4, other scripts per character."""
    if text.isascii():
        return len(text) / CHARS_PER_TOKEN
    ascii_chars = 0
    other = 0.0
    for char in text:
        code = ord(char)
        if code < 0x80:
            ascii_chars += 1
        elif code > 0xFFFF:
            other += ASTRAL_TOKENS_PER_CHAR
        elif 0x2E80 <= code <= 0x9FFF or 0xAC00 <= code <= 0xD7AF or 0xF900 <= code <= 0xFAFF or 0xFF00 <= code <= 0xFFEF:
            other += CJK_TOKENS_PER_CHAR
        else:
            other += OTHER_TOKENS_PER_CHAR
    return ascii_chars / CHARS_PER_TOKEN + other


def resolve_model_path(base_model: str) -> str:
    """`builtin:<name>` -> its shipped directory; anything else (HF id, local dir) as given."""
    if base_model.startswith("builtin:"):
        try:
            from brightrun_cli.builtin import resolve_base_model
        except ImportError as exc:
            raise UsageError(f"built-in base model '{base_model}' is not available in this install", "pass --base-model an HF id or a local directory") from exc
        try:
            return resolve_base_model(base_model)
        except ValueError as exc:
            raise UsageError(f"--base-model {base_model}: {exc}", "pass a known builtin name, an HF id or a local directory") from exc
    return os.path.expanduser(base_model) if base_model.startswith(("~", ".", "/")) else base_model


def load_counter(base_model: str | None, chat_template: str = "model") -> TokenCounter:
    """The counter for `base_model` (None: the approximation), writing conversations with its
    own chat template or, for "chatml", brightrun's (as a run with --set chat_template=chatml).
    Loads offline from a local directory or the HF cache first; downloads only when the hub
    is reachable and allowed."""
    if chat_template not in CHAT_TEMPLATES:
        raise UsageError(f"--chat-template {chat_template}: unknown", f"use one of {', '.join(CHAT_TEMPLATES)}")
    if not base_model:
        return ApproxCounter()
    path = resolve_model_path(base_model)
    if path.startswith(("/", ".")) and not Path(path).is_dir():
        raise UsageError(f"--base-model {base_model}: {path} is not a directory", "pass an existing model directory or a Hugging Face model id")
    tokenizer = _load(path, base_model)
    return TokenizerCounter(tokenizer, base_model, _context_length(path, tokenizer), chat_template)


def _load(path: str, base_model: str) -> Any:
    subject = f"cannot load the tokenizer of --base-model {base_model}"
    directory = Path(path).is_dir()
    if not directory and cached_file(path, "tokenizer_config.json") is None:
        require_hub(subject, base_model)  # one line at once, before transformers is even imported
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path, local_files_only=True)
    except Exception as exc:  # transformers raises OSError/ValueError/... depending on what is missing
        if directory:
            raise UsageError(f"{subject} ({_first_line(exc)})", "pass a model directory that has its tokenizer files, or a Hugging Face id") from exc
    require_hub(subject, base_model)
    try:
        return AutoTokenizer.from_pretrained(path)
    except Exception as exc:
        raise UsageError(f"cannot load the tokenizer of --base-model {base_model} ({_first_line(exc)})", "check the model id, or pass a local model directory") from exc


def _context_length(path: str, tokenizer: Any) -> int | None:
    """The model's context: max_position_embeddings (or n_positions) from its config; else a sane
    tokenizer.model_max_length (tokenizers without one report a huge sentinel)."""
    try:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(path, local_files_only=True)
        for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
            value = getattr(config, key, None)
            if isinstance(value, int) and value > 0:
                return value
    except Exception:  # a tokenizer-only directory has no config: fall back to the tokenizer
        pass
    value = getattr(tokenizer, "model_max_length", None)
    return value if isinstance(value, int) and 0 < value < 10_000_000 else None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
