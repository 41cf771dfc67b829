"""Conversations and the chat template they are rendered through: one definition for
the trainer (which learns from them) and the generation engine (which answers them).

A model is judged by what it answers to the prompts it was trained on, so prompts must
be rendered exactly as in training: the tokenizer's own chat template, or, when it has
none, `FALLBACK_CHAT_TEMPLATE`, which the trainer also saves with the tuned model.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, NamedTuple

from brightrun_cli.errors import UsageError

ROLES = ("system", "user", "assistant", "tool")


def chatml_template(end: str) -> str:
    """ChatML, with tools and reasoning: the functions a conversation may call (as JSON, in a
    `tools` turn first), an assistant turn's `reasoning_content` as `<think>\n...\n</think>\n\n`
    before its text, and each tool call as `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`
    after it. `end`: the Jinja expression that closes a turn. A conversation without tools
    or reasoning renders exactly as plain ChatML."""
    return (
        "{% if tools %}{{ '<|im_start|>tools\n' + (tools | tojson) + " + end + " + '\n' }}{% endif %}"
        "{% for message in messages %}"
        "{{ '<|im_start|>' + message['role'] + '\n' }}"
        "{% if message.reasoning_content is defined and message.reasoning_content %}"
        "{{ '<think>\n' + message.reasoning_content + '\n</think>\n\n' }}{% endif %}"
        "{{ message['content'] }}"
        "{% if message.tool_calls is defined and message.tool_calls %}{% for call in message.tool_calls %}"
        "{{ '<tool_call>' + (call['function'] | tojson) + '</tool_call>' }}"
        "{% endfor %}{% endif %}"
        "{{ " + end + " + '\n' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    )


# Used when a tokenizer has no chat template of its own. Turns end with the tokenizer's
# EOS so that generation stops after an answer without adding tokens to the vocabulary.
FALLBACK_CHAT_TEMPLATE = chatml_template("eos_token")


# What a stored turn may hold besides role and content (dataset_formats writes them).
_TURN_KEYS = ("role", "content", "reasoning_content", "tool_calls", "tool_call_id", "name", "weight")


class Conversation(NamedTuple):
    conversation_id: str
    turns: list[dict[str, Any]]  # [{"role", "content", ...}], roles from ROLES (dataset_formats: tool_calls, weight)
    tools: list[dict[str, Any]] | None = None  # the functions it may call (function schemas)


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
                if not isinstance(turn.get("tool_calls", []), list):
                    raise UsageError(f"{path.name} line {number}: 'tool_calls' must be a list")
                if not isinstance(turn.get("reasoning_content", ""), str):
                    raise UsageError(f"{path.name} line {number}: 'reasoning_content' must be a string")
            tools = record.get("tools")
            if tools is not None and not isinstance(tools, list):
                raise UsageError(f"{path.name} line {number}: 'tools' must be a list of function schemas")
            conversation_id = record.get("conversation_id")
            conversations.append(Conversation(
                str(conversation_id) if conversation_id not in (None, "") else f"line-{number}",
                [{key: t[key] for key in _TURN_KEYS if key in t} for t in turns],
                tools or None,
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


def template_turns(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Turns as a chat template reads them: a turn's reasoning as `reasoning_content` and, for
    gpt-oss's template, `thinking`."""
    if any("reasoning_content" in m for m in messages):
        return [{**m, "thinking": m["reasoning_content"]} if "reasoning_content" in m else m for m in messages]
    return messages


def render(tokenizer, messages: list[dict[str, Any]], generation_prompt: bool, tools: list[dict[str, Any]] | None = None) -> str:
    """The conversation as the chat template writes it (with the functions it may call, if any)."""
    messages = template_turns(messages)
    if tools:
        return tokenizer.apply_chat_template(messages, tools=tools, tokenize=False, add_generation_prompt=generation_prompt)
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def answer_text(tokenizer, messages: list[dict[str, Any]], index: int, tools: list[dict[str, Any]] | None = None) -> str:
    """What the template writes for the assistant turn `messages[index]` after its generation
    prompt (its text and tool calls), without the end-of-turn marker: the reference a generated
    answer is compared with when the turn calls tools."""
    prompt = render(tokenizer, messages[:index], True, tools)
    through = render(tokenizer, messages[: index + 1], False, tools).rstrip()
    text = through[len(prompt):] if through.startswith(prompt) else messages[index]["content"]
    end = end_of_turn(tokenizer)
    return (text[: -len(end)] if end and text.endswith(end) else text).strip()


# What to do about data with tool calls and a base model whose template drops them.
DROPPED_CALLS_HINT = ("train with --set chat_template=chatml (ChatML with tools), or use a base model whose template "
                      "writes them (Qwen2.5/3, Llama 3.1+, Mistral, Hermes)")

# A whole function schema: templates read its description and parameters (gpt-oss's raises without them).
_PROBE_TOOL = {"type": "function", "function": {
    "name": "brightrun_probe_function", "description": "A probe of the chat template.",
    "parameters": {"type": "object", "properties": {"brightrun_probe_argument": {"type": "integer"}}}}}
_PROBE_CALL = {"type": "function", "function": {"name": "brightrun_probe_function", "arguments": {"brightrun_probe_argument": 1}}}


def renders_tool_calls(tokenizer) -> bool:
    """Whether the chat template writes an assistant's tool calls (function name and
    arguments) into the text: many older templates print only `content`, and would train a
    model on empty answers where the data holds calls."""
    messages = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "", "tool_calls": [_PROBE_CALL]}]
    return _writes(tokenizer, messages, [_PROBE_TOOL], "brightrun_probe_function", "brightrun_probe_argument")


def renders_reasoning(tokenizer) -> bool:
    """Whether the chat template writes an assistant turn's `reasoning_content` (Qwen3's,
    SmolLM3's, DeepSeek-R1's and brightrun's ChatML do; most others print only `content`)."""
    messages = [{"role": "user", "content": "hello"},
                {"role": "assistant", "content": "hi", "reasoning_content": "brightrun-probe-reasoning"}]
    return _writes(tokenizer, messages, None, "brightrun-probe-reasoning")


def drops_earlier_reasoning(tokenizer) -> bool:
    """Whether the template writes an assistant turn's reasoning only while it is the last
    turn (Qwen3 and gpt-oss leave it out of the history, as their models never see their
    earlier reasoning when answering). Cached on the tokenizer."""
    cached = getattr(tokenizer, "_brightrun_drops_earlier_reasoning", None)
    if cached is None:
        messages = [{"role": "user", "content": "hello"},
                    {"role": "assistant", "content": "hi", "reasoning_content": "brightrun-probe-reasoning"},
                    {"role": "user", "content": "again"}, {"role": "assistant", "content": "ok"}]
        cached = renders_reasoning(tokenizer) and not _writes(tokenizer, messages, None, "brightrun-probe-reasoning")
        tokenizer._brightrun_drops_earlier_reasoning = cached
    return cached


def reasoning_in_history(messages: list[dict[str, Any]]) -> list[int]:
    """Indices of the assistant turns (learned, weight not 0) that carry reasoning and have
    another assistant turn after them: the ones such a template writes without it."""
    assistants = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    return [i for i in assistants[:-1] if messages[i].get("weight") != 0 and (messages[i].get("reasoning_content") or "").strip()]


def training_views(tokenizer, messages: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """The conversations the trainer learns `messages` from. Where the template keeps a turn's
    reasoning only while it is the last turn (drops_earlier_reasoning), each earlier turn with
    reasoning is learned as the last turn of its own copy of the conversation up to it (the
    turns before it context only), as the model will produce it: reasoning first. The whole
    conversation then teaches the other turns. Otherwise the conversation as it is."""
    earlier = reasoning_in_history(messages)
    if not earlier or not drops_earlier_reasoning(tokenizer):
        return [messages]
    views = [[{**m, "weight": 0} if m["role"] == "assistant" and j != i else m for j, m in enumerate(messages[: i + 1])]
             for i in earlier]
    whole = [{**m, "weight": 0} if j in earlier else m for j, m in enumerate(messages)]
    return views + [whole]


def _writes(tokenizer, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None, *probes: str) -> bool:
    """Whether the template renders `messages` with every probe string in the text (a template
    that raises on them does not write them)."""
    try:
        text = render(tokenizer, messages, False, tools)
    except Exception:
        return False
    return all(probe in text for probe in probes)


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


def end_of_turn_between(tokenizer) -> str:
    """The token a template writes right after an assistant's answer when another turn
    follows it, where that differs from `end_of_turn` (gpt-oss closes a message in the
    middle of a conversation with <|end|>, the last one with <|return|>); "" when the
    template refuses the probe or writes nothing there."""
    sentinel = "brightrun-answer-sentinel"
    messages = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": sentinel},
                {"role": "user", "content": "again"}]
    try:
        text = render(tokenizer, messages, False)
    except Exception:
        return ""
    at = text.find(sentinel)
    if at < 0:
        return ""
    after = text[at + len(sentinel):]
    last = end_of_turn(tokenizer)
    if last and after.startswith(last):
        return last
    tag = _TAG.match(after)  # a marker tag whole, also where the tokenizer splits it into pieces
    if tag:
        return tag.group(0)
    ids = tokenizer(after, add_special_tokens=False)["input_ids"]
    return tokenizer.decode(ids[:1]) if ids else ""


_TAG = re.compile(r"<\|?/?[A-Za-z_][\w.-]*\|?>")


# OpenAI's harmony format (gpt-oss): an answer is a run of messages, each
# `<|channel|>NAME<|message|>TEXT` ended by <|end|>, <|return|> or (a tool call) <|call|>, the
# next one opened by `<|start|>assistant`. Decoded without its special tokens it reads
# "analysisREASONING...assistantfinalANSWER", so it is parsed from the tokens instead.
HARMONY_MARKERS = ("<|channel|>", "<|message|>")
_HARMONY_END = re.compile(r"<\|(?:end|return|call)\|>")
_HARMONY_CHANNEL = re.compile(r"<\|channel\|>\s*([A-Za-z_]+)")
_HARMONY_RECIPIENT = re.compile(r"to=functions\.([^\s<]+)")
_HARMONY_TOKEN = re.compile(r"<\|[a-z_]+\|>")
_HARMONY_PARTIAL = re.compile(r"<(\|[a-z_]*\|?)?$")


def uses_harmony(tokenizer) -> bool:
    """Whether the tokenizer has harmony's channel and message tokens (gpt-oss)."""
    added = tokenizer.get_added_vocab() if hasattr(tokenizer, "get_added_vocab") else {}
    return all(marker in added for marker in HARMONY_MARKERS)


def harmony_answer(raw: str, *, streaming: bool = False) -> str:
    """A harmony answer (decoded with its special tokens) in the form the rest of brightrun
    reads: the `analysis` channel as a `<think>...</think>` block first (left open when the
    answer ends inside it), the user-visible text (`final`, and `commentary` preambles), and
    each function call (`to=functions.NAME`, its message the JSON arguments) as a
    `<tool_call>{"name", "arguments"}</tool_call>`. Text with no harmony message in it is
    returned with its special tokens removed. streaming (the text so far of an answer still
    being generated): nothing before the first message starts, no call before its message
    ends (its arguments are not JSON yet), and no marker cut in half at the end."""
    reasoning: list[str] = []
    visible: list[str] = []
    open_reasoning = False
    at = 0
    while (start := raw.find("<|message|>", at)) >= 0:
        header = raw[at:start]
        end = _HARMONY_END.search(raw, start)
        body = raw[start + len("<|message|>"):end.start() if end else len(raw)]
        if end is None and streaming:
            body = _HARMONY_PARTIAL.sub("", body)
        at = end.end() if end else len(raw)
        channel = _HARMONY_CHANNEL.search(header)
        recipient = _HARMONY_RECIPIENT.search(header)
        if recipient:
            if end is None and streaming:
                continue
            try:
                arguments: Any = json.loads(body)
            except ValueError:
                arguments = body.strip()
            visible.append("<tool_call>" + json.dumps({"name": recipient.group(1), "arguments": arguments}) + "</tool_call>")
        elif channel and channel.group(1) == "analysis":
            reasoning.append(body.strip())
            open_reasoning = end is None
        else:
            visible.append(body.strip())
    if not at:
        return "" if streaming else _HARMONY_TOKEN.sub("", raw).strip()
    think = ""
    if reasoning:
        think = "<think>\n" + "\n".join(reasoning) + ("" if open_reasoning else "\n</think>\n\n")
    return (think + "\n".join(v for v in visible if v)).strip()
