"""The five input formats and their conversion to the native `brightrun_lora_v4` form.

Tool use is kept, in the form Hugging Face chat templates render (and OpenAI's
fine-tuning files use): an assistant turn may carry `tool_calls`
(`[{"type": "function", "function": {"name", "arguments": {...}}, "id"?}]`, its
content then may be empty), a `tool` turn holds what a call returned (`tool_call_id`
and `name` optional), and a conversation may list the `tools` it could call (function
schemas). OpenAI's legacy `function_call` / `function` messages and `functions` list,
and ShareGPT's `function_call` / `observation` turns with a `tools` JSON string (as
LLaMA-Factory and Glaive ship them) become the same. An assistant turn with
`"weight": 0` (OpenAI's fine-tuning key) is context: shown to the model, not trained on.
An assistant turn's reasoning, given as `reasoning_content` (DeepSeek, vLLM, the Qwen3 /
SmolLM3 / DeepSeek-R1 chat templates), `reasoning` or `thinking` (gpt-oss), is kept as
`reasoning_content`, which templates that think render before the answer; reasoning
inline in the content (`<think>...</think>`) is left there, as those templates read it.

A record is checked and converted in one step: `to_v4` returns the v4 conversation
(or None) and the problems found, each with the line, what is wrong and how to fix it.
`conversation_warnings` then names what is allowed but probably a mistake. Messages
index a line's messages from 0 (`turns[0]` is the first), as jq and Python do; lines
and columns count from 1, as editors do.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

V4 = "brightrun_lora_v4"
FORMATS = (V4, "openai", "sharegpt", "alpaca", "prompt_completion")
ROLES = ("system", "user", "assistant", "tool")

# ShareGPT exports name the speakers in many ways; these are the ones seen in the wild.
_SHAREGPT_ROLES = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "bard": "assistant",
    "bing": "assistant",
    "model": "assistant",
    "function_call": "assistant",  # LLaMA-Factory / Glaive: the value is the call as JSON
    "observation": "tool",
    "tool": "tool",
}
# OpenAI's newer models call the system prompt "developer"; it plays the same part.
# "function" is the legacy name of a tool result.
_OPENAI_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant",
                 "tool": "tool", "function": "tool"}
_V4_ROLES = {r: r for r in ROLES}


@dataclass(frozen=True)
class Problem:
    """One validation finding, stored on the dataset as {line, error, suggestion} (a problem)
    or {line, warning, suggestion} (a warning: kept, and it does not block training), with
    the file it is in when the dataset came from several."""

    line: int
    error: str
    suggestion: str
    file: str = ""  # which file, when a dataset is added from several (shards)

    def to_json(self, kind: str = "error") -> dict[str, Any]:
        found = {"line": self.line, kind: self.error, "suggestion": self.suggestion}
        return {**found, "file": self.file} if self.file else found


def detect_format(obj: dict[str, Any]) -> str | None:
    """The format a JSON object is written in, judged by its keys; None when none fits."""
    if "turns" in obj:
        return V4
    if "messages" in obj:
        return "openai"
    if "conversations" in obj:
        return "sharegpt"
    if "instruction" in obj and "output" in obj:
        return "alpaca"
    if "prompt" in obj and "completion" in obj:
        return "prompt_completion"
    return None


def to_v4(obj: dict[str, Any], fmt: str, line: int, file: str = "") -> tuple[dict[str, Any] | None, list[Problem]]:
    """Check one record written in `fmt` and convert it to v4. Returns (conversation or None, problems).
    `file`: the record's file, when a dataset is read from several (it names records without
    an id of their own: `FILE:line-N`, where one file gives `line-N`)."""
    problems: list[Problem] = []
    if fmt == "alpaca":
        turns = _alpaca_turns(obj, line, problems)
    elif fmt == "prompt_completion":
        turns = _prompt_completion_turns(obj, line, problems)
    else:
        key = {V4: "turns", "openai": "messages", "sharegpt": "conversations"}[fmt]
        turns = _chat_turns(obj, key, fmt, line, problems)
        if turns is not None and fmt != V4:
            turns = _with_system_field(obj, turns, line, problems)
    cid = _conversation_id(obj, fmt, line, problems, file)
    tools = _tools(obj, fmt, line, problems)
    if turns is not None and not problems:
        if not any(t["role"] == "assistant" for t in turns):
            problems.append(Problem(line, "no assistant turn", "add at least one assistant turn: it is what the model learns to write"))
        elif all(t.get("weight") == 0 for t in turns if t["role"] == "assistant"):
            problems.append(Problem(line, "every assistant turn has weight 0: nothing to train on",
                                    "set \"weight\": 1 on the turns the model should learn, or remove the line"))
    if problems:
        return None, problems
    if fmt == V4:
        record = dict(obj)
        record["conversation_id"] = cid
        record["turns"] = turns
    else:
        record = {"conversation_id": cid, "turns": turns}
    record.pop("tools", None)
    if tools:
        record["tools"] = tools
    return record, problems


def conversation_warnings(record: dict[str, Any], line: int) -> list[Problem]:
    """What a valid conversation allows but a user probably did not mean."""
    turns = record["turns"]
    if not any(t["role"] == "user" for t in turns):
        return [Problem(line, "no user turn: the assistant answers no prompt",
                        "add the user message the assistant replies to (trained as is otherwise)")]
    for index, turn in enumerate(turns):
        if turn["role"] == "tool" and not any("tool_calls" in t for t in turns[:index]):
            return [Problem(line, f"turns[{index}] is a tool result with no tool call before it",
                            "put the assistant turn that made the call (its 'tool_calls') before the result")]
    return []


def turn_text(turn: dict[str, Any]) -> str:
    """A turn as a person reads it: its reasoning as <think>...</think>, its content, then
    each tool call as name({arguments})."""
    calls = "".join(f"{c['function']['name']}({json.dumps(c['function']['arguments'], ensure_ascii=False)})"
                    for c in turn.get("tool_calls", ()))
    reasoning = turn.get("reasoning_content")
    return " ".join(part for part in (f"<think>{reasoning}</think>" if reasoning else "", turn["content"], calls) if part)


def _conversation_id(obj: dict[str, Any], fmt: str, line: int, problems: list[Problem], file: str = "") -> str:
    if fmt != V4:
        # Other formats have no id of their own; a stable one keeps the split deterministic.
        given = obj.get("conversation_id", obj.get("id"))
        if isinstance(given, (str, int)) and not isinstance(given, bool) and str(given):
            return str(given)
        return f"{file}:line-{line}" if file else f"line-{line}"
    if "conversation_id" not in obj:
        problems.append(Problem(line, "missing field 'conversation_id'", 'give each line a unique "conversation_id" string'))
        return ""
    cid = obj["conversation_id"]
    if isinstance(cid, str) and not cid.strip():
        problems.append(Problem(line, "'conversation_id' is empty" if not cid else "'conversation_id' is only whitespace",
                                'use a unique non-empty string such as "conv-0001"'))
        return ""
    if isinstance(cid, bool) or not isinstance(cid, (str, int)):
        problems.append(Problem(line, f"'conversation_id' must be a non-empty string (got {_json_type(cid)})", 'use a unique string such as "conv-0001"'))
        return ""
    return str(cid)


def _chat_turns(obj: dict[str, Any], key: str, fmt: str, line: int, problems: list[Problem]) -> list[dict[str, str]] | None:
    if key not in obj:
        problems.append(Problem(line, f"missing field '{key}'", f"each line in {fmt} format needs a '{key}' list of messages" + _format_hint(obj, fmt)))
        return None
    items = obj[key]
    if not isinstance(items, list):
        problems.append(Problem(line, f"'{key}' must be a list (got {_json_type(items)})", f"write '{key}' as a JSON array of messages"))
        return None
    if not items:
        problems.append(Problem(line, f"empty '{key}'", "add the conversation's messages, or remove the line"))
        return None
    turns: list[dict[str, str]] = []
    for index, item in enumerate(items):
        turn = _chat_turn(item, fmt, f"{key}[{index}]", line, problems)
        if turn is not None:
            turns.append(turn)
    return turns if len(turns) == len(items) else None


def _chat_turn(item: Any, fmt: str, where: str, line: int, problems: list[Problem]) -> dict[str, Any] | None:
    if not isinstance(item, dict):
        problems.append(Problem(line, f"{where} is not an object (got {_json_type(item)})", 'write each message as {"role": ..., "content": ...}'))
        return None
    role_key, content_key, roles = {
        V4: ("role", "content", _V4_ROLES),
        "openai": ("role", "content", _OPENAI_ROLES),
        "sharegpt": ("from", "value", _SHAREGPT_ROLES),
    }[fmt]
    if fmt == "sharegpt" and "from" not in item and "role" in item:
        role_key, content_key, roles = "role", "content", _OPENAI_ROLES  # ShareGPT-shaped files often carry OpenAI-style messages
    ok = True
    raw_role = item.get(role_key)
    role = roles.get(raw_role.strip().lower()) if isinstance(raw_role, str) else None
    if raw_role is None:
        problems.append(Problem(line, f"{where} has no '{role_key}'", f"set '{role_key}' to one of {', '.join(sorted(set(roles)))}"))
        ok = False
    elif role is None:
        problems.append(Problem(line, f"{where} has unknown role {_short(raw_role)}", f"use one of {', '.join(sorted(set(roles)))}"))
        ok = False
    if ok and fmt == "sharegpt" and role_key == "from" and raw_role.strip().lower() == "function_call":
        return _sharegpt_call(item.get(content_key), where, line, problems)
    calls = _tool_calls(item, where, line, problems) if role == "assistant" else None
    content = item.get(content_key)
    if fmt != "sharegpt" and isinstance(content, list):
        content = _openai_parts(content, where, line, problems)
        if content is None:
            return None
    if calls is not None and content is None:
        content = ""  # a tool call without text: templates render the call alone
    elif content_key not in item:
        problems.append(Problem(line, f"{where} has no '{content_key}'", f"add the message text as '{content_key}'"))
        ok = False
    elif not isinstance(content, str):
        problems.append(Problem(line, f"{where} '{content_key}' is not a string (got {_json_type(item[content_key])})",
                                "write the message text as a JSON string" + (" (null content is for a turn with 'tool_calls')"
                                                                             if role == "assistant" and content is None else "")))
        ok = False
    elif not content.strip() and not calls and role != "tool":  # a tool may well return nothing
        problems.append(Problem(line, f"{where} has empty '{content_key}'", "write the message text, or remove the message"))
        ok = False
    if calls is False:
        ok = False
    reasoning = _reasoning(item, where, line, problems) if role == "assistant" else None
    if reasoning is False:
        ok = False
    if not ok:
        return None
    turn: dict[str, Any] = {"role": role, "content": content}
    if reasoning:
        turn["reasoning_content"] = reasoning
    if calls:
        turn["tool_calls"] = calls
    if role == "tool":
        for key in ("tool_call_id", "name"):
            if isinstance(item.get(key), str) and item[key]:
                turn[key] = item[key]
    if role == "assistant" and "weight" in item:
        weight = item["weight"]
        if weight not in (0, 1) or isinstance(weight, bool):
            problems.append(Problem(line, f"{where} 'weight' must be 0 or 1 (got {_short(weight)})",
                                    "use 0 for a turn that is only context, 1 (or no weight) for one to learn"))
            return None
        if weight == 0:
            turn["weight"] = 0
    return turn


def _tool_calls(item: dict[str, Any], where: str, line: int, problems: list[Problem]) -> list[dict[str, Any]] | None | bool:
    """An assistant message's calls as [{"type": "function", "function": {"name", "arguments": {...}}, "id"?}]:
    from `tool_calls`, or a legacy `function_call`. None: no calls; False: a problem was reported."""
    if item.get("tool_calls") is not None:
        raw, name = item["tool_calls"], "tool_calls"
        if not isinstance(raw, list):
            problems.append(Problem(line, f"{where} 'tool_calls' must be a list (got {_json_type(raw)})",
                                    'write it as [{"type": "function", "function": {"name": ..., "arguments": ...}}]'))
            return False
        if not raw:
            return None
    elif item.get("function_call") is not None:
        raw, name = [{"type": "function", "function": item["function_call"]}], "function_call"
    else:
        return None
    calls = []
    for index, call in enumerate(raw):
        at = f"{where} {name}[{index}]" if name == "tool_calls" else f"{where} function_call"
        function = call.get("function", call) if isinstance(call, dict) else None  # {"name", "arguments"} given bare, too
        normal = _function_call(function, at, line, problems)
        if normal is None:
            return False
        entry: dict[str, Any] = {"type": "function", "function": normal}
        if isinstance(call, dict) and isinstance(call.get("id"), str) and call["id"]:
            entry["id"] = call["id"]
        calls.append(entry)
    return calls


REASONING_KEYS = ("reasoning_content", "reasoning", "thinking")  # the names an assistant turn's reasoning goes by


def _reasoning(item: dict[str, Any], where: str, line: int, problems: list[Problem]) -> str | None | bool:
    """An assistant message's reasoning text (None: none; False: a problem was reported)."""
    key = next((k for k in REASONING_KEYS if item.get(k) is not None), None)
    if key is None:
        return None
    if not isinstance(item[key], str):
        problems.append(Problem(line, f"{where} '{key}' is not a string (got {_json_type(item[key])})",
                                "write the reasoning as a JSON string, or leave it out"))
        return False
    return item[key].strip() or None


def _function_call(function: Any, at: str, line: int, problems: list[Problem]) -> dict[str, Any] | None:
    """{"name", "arguments"} with the arguments as an object (given as one, or as the JSON text of one)."""
    if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not function["name"].strip():
        problems.append(Problem(line, f"{at} has no function name", 'write each call as {"name": "...", "arguments": {...}}'))
        return None
    arguments = function.get("arguments", function.get("parameters", {}))
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError as exc:
            problems.append(Problem(line, f"{at} arguments are not valid JSON ({exc.msg} at column {exc.colno})",
                                    "write the arguments as a JSON object, or as the text of one"))
            return None
    if not isinstance(arguments, dict):
        problems.append(Problem(line, f"{at} arguments must be an object (got {_json_type(arguments)})",
                                'write them as {"name_of_parameter": value, ...}'))
        return None
    return {"name": function["name"], "arguments": arguments}


def _sharegpt_call(value: Any, where: str, line: int, problems: list[Problem]) -> dict[str, Any] | None:
    """A ShareGPT `function_call` turn: its value is the JSON of one call or of a list of calls."""
    try:
        parsed = json.loads(value) if isinstance(value, str) else None
    except json.JSONDecodeError as exc:
        problems.append(Problem(line, f"{where} function_call value is not valid JSON ({exc.msg} at column {exc.colno})",
                                'write the call as the JSON text of {"name": ..., "arguments": {...}}'))
        return None
    if parsed is None:
        problems.append(Problem(line, f"{where} function_call value must be a JSON string (got {_json_type(value)})",
                                'write the call as the JSON text of {"name": ..., "arguments": {...}}'))
        return None
    calls = []
    for index, function in enumerate(parsed if isinstance(parsed, list) else [parsed]):
        normal = _function_call(function, f"{where} call {index}", line, problems)
        if normal is None:
            return None
        calls.append({"type": "function", "function": normal})
    if not calls:
        problems.append(Problem(line, f"{where} function_call holds no call", "write at least one call, or remove the turn"))
        return None
    return {"role": "assistant", "content": "", "tool_calls": calls}


def parse_tools(value: Any) -> tuple[list[dict[str, Any]] | None, list[Problem]]:
    """A list of function schemas given on its own (`models try --tools FILE`): the tools
    as a conversation's `tools` are normalised, or the problems found."""
    problems: list[Problem] = []
    return _tools({"tools": value}, "openai", 1, problems), problems


def _tools(obj: dict[str, Any], fmt: str, line: int, problems: list[Problem]) -> list[dict[str, Any]] | None:
    """The functions a conversation may call, as [{"type": "function", "function": {"name", ...}}]:
    `tools` (a list, or its JSON text as ShareGPT files store it) or OpenAI's legacy `functions`."""
    key = "tools" if obj.get("tools") is not None else "functions" if fmt == "openai" and obj.get("functions") is not None else None
    if key is None:
        return None
    raw = obj[key]
    if isinstance(raw, str):
        if not raw.strip():
            return None
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as exc:
            problems.append(Problem(line, f"'{key}' is not valid JSON ({exc.msg} at column {exc.colno})", f"write '{key}' as a list of function schemas"))
            return None
    if not isinstance(raw, list):
        problems.append(Problem(line, f"'{key}' must be a list (got {_json_type(raw)})", f"write '{key}' as a list of function schemas"))
        return None
    tools = []
    for index, tool in enumerate(raw):
        function = tool.get("function", tool) if isinstance(tool, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not function["name"].strip():
            problems.append(Problem(line, f"{key}[{index}] has no function name",
                                    'write each tool as {"type": "function", "function": {"name": ..., "description": ..., "parameters": {...}}}'))
            return None
        tools.append({"type": "function", "function": function})
    return tools or None


def _openai_parts(parts: list[Any], where: str, line: int, problems: list[Problem]) -> str | None:
    """OpenAI content given as parts: text parts are joined; any other part (an image, audio)
    is a problem, named by its number (from 1) and type (None: a problem was reported)."""
    texts = []
    for number, part in enumerate(parts, start=1):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
            continue
        if isinstance(kind, str) and kind != "text":
            error = f"{where} content part {number} has type {_short(kind)}: only text parts are supported (this is a text-only LoRA trainer)"
        else:
            error = f"{where} content part {number} is not a text part (got {_json_type(part)})"
        problems.append(Problem(line, error, 'keep only {"type": "text", "text": ...} parts (drop the others, or the line)'))
        return None
    return "".join(texts)


def _alpaca_turns(obj: dict[str, Any], line: int, problems: list[Problem]) -> list[dict[str, str]] | None:
    fields = {}
    for key, required in (("instruction", True), ("input", False), ("output", True), ("system", False)):
        value = obj.get(key)
        if value is None:
            if required:
                problems.append(Problem(line, f"missing field '{key}'", f"each alpaca line needs '{key}' as a string"))
            continue
        if not isinstance(value, str):
            problems.append(Problem(line, f"'{key}' is not a string (got {_json_type(value)})", f"write '{key}' as a JSON string"))
            continue
        fields[key] = value
    if problems:
        return None
    empty = [key for key in ("instruction", "output") if not fields[key].strip()]
    if empty:
        problems.append(Problem(line, f"empty {' and '.join(repr(k) for k in empty)}",
                                f"fill in {'both' if len(empty) == 2 else repr(empty[0])}, or remove the line"))
        return None
    history = _alpaca_history(obj.get("history"), line, problems)
    if history is None:
        return None
    prompt = fields["instruction"] + (f"\n\n{fields['input']}" if fields.get("input", "").strip() else "")
    turns = [{"role": "system", "content": fields["system"]}] if fields.get("system", "").strip() else []
    turns += history + [{"role": "user", "content": prompt}, {"role": "assistant", "content": fields["output"]}]
    return turns


def _with_system_field(obj: dict[str, Any], turns: list[dict[str, Any]], line: int, problems: list[Problem]) -> list[dict[str, Any]] | None:
    """A record-level `system` prompt (LLaMA-Factory's ShareGPT and OpenAI-style files) as the
    conversation's first turn; None: a problem was reported."""
    system = obj.get("system")
    if system is None or (isinstance(system, str) and not system.strip()):
        return turns
    if not isinstance(system, str):
        problems.append(Problem(line, f"'system' is not a string (got {_json_type(system)})", "write the system prompt as a JSON string"))
        return None
    if turns and turns[0]["role"] == "system":
        if turns[0]["content"].strip() == system.strip():
            return turns
        problems.append(Problem(line, "both a 'system' field and a different system message",
                                "keep one system prompt: the field or the first message"))
        return None
    return [{"role": "system", "content": system}, *turns]


def _alpaca_history(value: Any, line: int, problems: list[Problem]) -> list[dict[str, str]] | None:
    """LLaMA-Factory's alpaca `history`: the earlier exchanges, [[query, response], ...],
    as user and assistant turns before the instruction (None: a problem was reported)."""
    if value is None:
        return []
    how = 'write it as [["earlier question", "earlier answer"], ...]'
    if not isinstance(value, list):
        problems.append(Problem(line, f"'history' must be a list of [query, response] pairs (got {_json_type(value)})", how))
        return None
    turns = []
    for index, pair in enumerate(value):
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(t, str) and t.strip() for t in pair)):
            problems.append(Problem(line, f"history[{index}] is not a [query, response] pair of non-empty strings", how))
            return None
        turns += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
    return turns


def _prompt_completion_turns(obj: dict[str, Any], line: int, problems: list[Problem]) -> list[dict[str, str]] | None:
    """TRL's prompt-completion format: `prompt` and `completion` as text (a user turn and the
    assistant's answer) or as lists of messages (conversational: the completion's are the
    assistant's)."""
    turns: list[dict[str, str]] = []
    for key, role in (("prompt", "user"), ("completion", "assistant")):
        value = obj.get(key)
        if value is None:
            problems.append(Problem(line, f"missing field '{key}'", f"each prompt_completion line needs '{key}' as a string or a list of messages"))
        elif isinstance(value, str):
            if value.strip():
                turns.append({"role": role, "content": value})
            else:
                problems.append(Problem(line, f"empty '{key}'", "fill it in, or remove the line"))
        elif isinstance(value, list) and value:
            for index, item in enumerate(value):
                turn = _chat_turn(item, "openai", f"{key}[{index}]", line, problems)
                if turn is None:
                    continue
                if key == "completion" and turn["role"] != "assistant":
                    problems.append(Problem(line, f"{key}[{index}] is a {turn['role']} message",
                                            "a completion holds the assistant's answer: move other messages into 'prompt'"))
                turns.append(turn)
        elif isinstance(value, list):
            problems.append(Problem(line, f"empty '{key}'", "add its messages, or remove the line"))
        else:
            problems.append(Problem(line, f"'{key}' must be a string or a list of messages (got {_json_type(value)})",
                                    f"write '{key}' as a JSON string, or as a list of {{\"role\", \"content\"}} messages"))
    return None if problems else turns


def _format_hint(obj: dict[str, Any], fmt: str) -> str:
    other = detect_format(obj)
    if other and other != fmt:
        return f" (this line looks like {other}: the whole file must use one format)"
    return ""


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "a list", dict: "an object"}.get(type(value), type(value).__name__)


def _short(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
