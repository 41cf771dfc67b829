"""Base vs tuned answers on held-out conversations, and gates on the result.

Samples. Each assistant turn of each held-out conversation (brightrun_lora_v4 JSONL) is
one sample: the prompt is the conversation up to that turn, rendered through the chat
template with the assistant's generation prompt (and the functions the conversation may
call); the reference is that turn's content. A turn that calls tools is answered by its
calls: its reference is what the model's template writes for the turn (text and calls),
as the model would write it (special tokens left out), so a right call scores exact_match
1. A turn with reasoning (`reasoning_content`) is likewise referenced by the template's
text for it; answers and references are scored without their reasoning block (metrics.py),
so a model that thinks first is judged by its answer. Order: conversations as in the
file, turns in order; `limit` keeps the first N. An assistant turn with no user turn
before it (a greeting) is not a question, and one with weight 0 is not trained on: both
are skipped.

Answers are greedy, batched (engine.ChatModel.answers), from the base model (adapter
off) and the tuned one (adapter on), each cut at the template's end of turn or at
max_new_tokens. Unless given, max_new_tokens is 1.5 x the longest reference in tokens
+ 16 (in [16, 1024]): room for any fair answer, without paying for a base model that
rambles on to a fixed large cap.

`eval.jsonl`, one JSON object per sample, in sample order:

    {"conversation_id": "support-0010", "turn": 2,
     "prompt": [{"role": "system", "content": "..."}, {"role": "user", "content": "..."}],
     "reference": "...",
     "base":  {"answer": "...", "stopped": true, "tokens": 31,
               "scores": {"exact_match": 0.0, "token_f1": 0.42, "rougeL": 0.38, "chrf": 0.51, "length_ratio": 1.2}},
     "tuned": {... as base ...}}

A conversation that offers tools adds `tools` and `calls` (the turn's calls, as
[{"name", "arguments"}], [] when it calls nothing) to its record and `calls` (those the
answer writes, metrics.calls_in) to each model's entry; a turn that calls tools is also
scored tool_name_match and tool_call_match (None elsewhere; their aggregates are means
over such turns, None when there are none).

`turn` indexes `turns` of the conversation; `stopped` is false when the answer ran into
max_new_tokens; `tokens` counts generated tokens including the end-of-turn marker.
`tuned` is null when the model has no adapter (a base model evaluated on its own).
Scores are defined in metrics.py.

`eval_summary.json`:

    {"format": 1, "status": "completed", "error": null,
     "samples": 50, "conversations": 41, "limit": 50, "max_new_tokens": 166,
     "base":  {"exact_match": 0.0, "token_f1": 0.21, "rougeL": 0.18, "chrf": 0.25,
               "length_ratio": 1.4, "stop_rate": 0.6, "cut_in_reasoning": 0, "tokens": 6120, "seconds": 4.1,
               "tokens_per_sec": 1492.7},
     "tuned": {... as base ...},
     "seconds": 9.3, "tokens_per_sec": 1260.2,
     "versions": {"python": "3.11.9", "torch": "...", "transformers": "...", ...},
     "created_at": "2026-12-03T10:00:00Z"}

`status` is "completed", "failed" (then `error` says why, and the aggregates are null)
or "skipped" (nothing to evaluate, `error` says why). `seconds` and `tokens_per_sec`
cover generation and scoring, not loading the model.

Gates: `parse_requirement("exact_match>=0.5")`, `parse_requirement("rougeL>base")`;
`check_requirements(summary, requirements)` compares the tuned model's aggregate (the
base model's when there is no tuned one) with a number or with the base model's.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from brightrun_cli.errors import OperationError, UsageError

from . import chat, metrics
from .chat import read_conversations

FORMAT = 1
EVAL_FILE = "eval.jsonl"
SUMMARY_FILE = "eval_summary.json"
DEFAULT_LIMIT = 50  # samples evaluated after training unless the spec says otherwise
MODELS = ("base", "tuned")
VERSIONED = ("brightrun-cli", "torch", "transformers", "peft", "tokenizers", "rouge-score", "sacrebleu")


@dataclass(frozen=True)
class Sample:
    conversation_id: str
    turn: int  # index of the assistant turn in the conversation's turns
    prompt: list[dict]
    reference: str  # the turn's content (see reference_for when it calls tools)
    tools: list[dict] | None = None  # the functions the conversation may call
    calls: list[dict] | None = None  # the turn's tool calls
    reasoning: str | None = None  # the turn's reasoning_content

    def reference_for(self, tokenizer) -> str:
        """The reference as a model with this tokenizer writes it: the content, or for a turn
        with tool calls or reasoning the template's text for the turn, decoded as answers are
        (scores leave the reasoning out, metrics.without_reasoning; it sizes max_new_tokens)."""
        if not self.calls and not self.reasoning:
            return self.reference
        turn = {"role": "assistant", "content": self.reference, **({"tool_calls": self.calls} if self.calls else {}),
                **({"reasoning_content": self.reasoning} if self.reasoning else {})}
        text = chat.answer_text(tokenizer, [*self.prompt, turn], len(self.prompt), self.tools)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if chat.uses_harmony(tokenizer):  # gpt-oss: read from its channels, as its answers are (ChatModel._decode)
            return chat.harmony_answer(tokenizer.decode(ids, skip_special_tokens=False))
        return tokenizer.decode(ids, skip_special_tokens=True).strip()

    def functions_called(self) -> list[dict]:
        """The turn's calls as [{"name", "arguments"}] ([] when it calls nothing)."""
        return [call.get("function", call) for call in self.calls or ()]


def held_out_samples(path: Path, limit: int | None = None) -> list[Sample]:
    """The samples of a held-out file (see the module docstring), the first `limit` of them."""
    if limit is not None and limit < 1:
        raise UsageError(f"limit must be at least 1, got {limit}")
    samples = []
    for conversation in read_conversations(Path(path)):
        for i, turn in enumerate(conversation.turns):
            if (turn["role"] == "assistant" and turn.get("weight") != 0
                    and any(t["role"] == "user" for t in conversation.turns[:i])):
                samples.append(Sample(conversation.conversation_id, i, conversation.turns[:i], turn["content"],
                                      conversation.tools, turn.get("tool_calls"), turn.get("reasoning_content")))
                if limit is not None and len(samples) == limit:
                    return samples
    if not samples:
        raise UsageError(f"{Path(path).name} has no assistant turn answering a user turn: nothing to evaluate")
    return samples


def default_max_new_tokens(tokenizer, references: list[str]) -> int:
    """1.5 x the longest reference (Sample.reference_for) in tokens + 16, in [16, 1024]."""
    longest = max(len(tokenizer(reference, add_special_tokens=False)["input_ids"]) for reference in references)
    return min(1024, max(16, math.ceil(1.5 * longest) + 16))


def evaluate(chat_model, samples: list[Sample], *, max_new_tokens: int | None = None,
             log: Callable[[str], None] | None = None) -> tuple[list[dict], dict]:
    """Answer every sample with the base model and (when there is an adapter) the tuned one;
    score them. Returns (eval.jsonl records, summary), in the formats of the module docstring."""
    if not samples:
        raise UsageError("no samples to evaluate")
    references = [s.reference_for(chat_model.tokenizer) for s in samples]
    if max_new_tokens is None:
        max_new_tokens = default_max_new_tokens(chat_model.tokenizer, references)
    say = log or (lambda message: None)
    prompts = [s.prompt for s in samples]
    started = time.perf_counter()
    records = [{"conversation_id": s.conversation_id, "turn": s.turn, "prompt": s.prompt, "reference": reference,
                **({"tools": s.tools, "calls": s.functions_called()} if s.tools else {}), "base": None, "tuned": None}
               for s, reference in zip(samples, references)]
    aggregates: dict[str, dict | None] = {"base": None, "tuned": None}
    for name in MODELS if chat_model.has_adapter else MODELS[:1]:
        say(f"eval: {name} model answering {len(samples)} held-out prompts (max_new_tokens {max_new_tokens})")
        pass_started = time.perf_counter()
        answers = chat_model.answers(prompts, base=name == "base", max_new_tokens=max_new_tokens,
                                     progress=lambda done, total, name=name: say(f"eval: {name} {done}/{total}"),
                                     tools=[s.tools for s in samples])
        scores = [metrics.score_sample(a.text, reference, s.functions_called())
                  for a, reference, s in zip(answers, references, samples)]
        for record, answer, score, sample in zip(records, answers, scores, samples):
            record[name] = {"answer": answer.text, "stopped": answer.stopped, "tokens": answer.tokens,
                            **({"calls": metrics.calls_in(answer.text)} if sample.tools else {}), "scores": score}
        seconds = time.perf_counter() - pass_started
        tokens = sum(a.tokens for a in answers)
        aggregates[name] = {**metrics.aggregate(scores, [a.stopped for a in answers], [a.text for a in answers]), "tokens": tokens,
                            "seconds": round(seconds, 3), "tokens_per_sec": round(tokens / max(seconds, 1e-9), 1)}
        say(f"eval: {name} " + ", ".join(f"{m} {aggregates[name][m]}" for m in metrics.shown([aggregates[name]])))
    hint = metrics.reasoning_cut_hint(aggregates)
    if hint:
        say(f"eval: {hint}")
    seconds = time.perf_counter() - started
    tokens = sum(a["tokens"] for a in aggregates.values() if a)
    summary = _summary("completed", None, samples=len(samples), limit=None, max_new_tokens=max_new_tokens)
    summary.update(conversations=len({s.conversation_id for s in samples}), **aggregates,
                   seconds=round(seconds, 3), tokens_per_sec=round(tokens / max(seconds, 1e-9), 1))
    return records, summary


def run_eval(chat_model, validation_file: Path, out_dir: Path, *, limit: int | None = DEFAULT_LIMIT,
             max_new_tokens: int | None = None, log: Callable[[str], None] | None = None) -> dict:
    """Evaluate the held-out samples of `validation_file` and write eval.jsonl and
    eval_summary.json into `out_dir`. Returns the summary."""
    samples = held_out_samples(validation_file, limit)
    records, summary = evaluate(chat_model, samples, max_new_tokens=max_new_tokens, log=log)
    summary["limit"] = limit
    write_eval(out_dir, records, summary)
    return summary


def unfinished_summary(status: str, error: str, *, limit: int | None, max_new_tokens: int | None) -> dict:
    """eval_summary.json of an eval that failed or had nothing to evaluate (status "failed"/"skipped")."""
    return _summary(status, error, samples=0, limit=limit, max_new_tokens=max_new_tokens)


def _summary(status: str, error: str | None, *, samples: int, limit: int | None, max_new_tokens: int | None) -> dict:
    return {
        "format": FORMAT, "status": status, "error": error, "samples": samples, "conversations": 0,
        "limit": limit, "max_new_tokens": max_new_tokens, "base": None, "tuned": None, "seconds": None,
        "tokens_per_sec": None, "versions": package_versions(VERSIONED),
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def write_eval(out_dir: Path, records: list[dict] | None, summary: dict) -> None:
    """Write eval.jsonl (when there are records) and eval_summary.json, each atomically
    (temp file + rename), the summary last: a summary on disk means its samples are too."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if records is not None:
        _write_atomic(out_dir / EVAL_FILE, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    _write_atomic(out_dir / SUMMARY_FILE, json.dumps(summary, indent=2, ensure_ascii=False) + "\n")


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def package_versions(packages: Iterable[str]) -> dict[str, str]:
    """Python's version and each installed package's (absent ones left out)."""
    from importlib.metadata import PackageNotFoundError, version

    versions = {"python": sys.version.split()[0]}
    for name in packages:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            continue
    return versions


# ---------------------------------------------------------------- gates

OPERATORS = {
    ">=": lambda a, b: a >= b, ">": lambda a, b: a > b, "<=": lambda a, b: a <= b,
    "<": lambda a, b: a < b, "==": lambda a, b: a == b,
}
_REQUIREMENT = re.compile(r"^\s*([A-Za-z_]+)\s*(>=|<=|==|>|<)\s*([^\s<>=]\S*)\s*$")
_HOW = "write METRIC OP VALUE, e.g. \"exact_match>=0.5\" or \"rougeL>base\""


class Requirement(NamedTuple):
    metric: str  # one of metrics.METRICS
    op: str  # one of OPERATORS
    value: float | None  # None: the base model's value of the metric
    text: str  # as the user wrote it


class Check(NamedTuple):
    requirement: Requirement
    holds: bool
    actual: float | None  # the judged model's aggregate (None: not measured)
    wanted: float | None  # the number compared with (the base model's value for "base")


def parse_requirement(text: str) -> Requirement:
    """"exact_match>=0.5", "rougeL>base": METRIC OP (NUMBER | base). Malformed -> UsageError."""
    match = _REQUIREMENT.match(text)
    if not match:
        raise UsageError(f"requirement {text!r} is not of the form METRIC OP VALUE (OP one of {', '.join(OPERATORS)})", _HOW)
    metric, op, value = match.groups()
    if metric not in metrics.METRICS:
        raise UsageError(f"requirement {text!r} names unknown metric {metric!r} (known: {', '.join(metrics.METRICS)})", _HOW)
    if value == "base":
        return Requirement(metric, op, None, text)
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not math.isfinite(number):
        raise UsageError(f"requirement {text!r} compares with {value!r}, which is neither a number nor \"base\"", _HOW)
    top = math.inf if metric == "length_ratio" else 1.0  # a ratio of lengths; every other metric is a fraction
    if not 0 <= number <= top:
        limits = "0 or more" if top == math.inf else "between 0 and 1"
        raise UsageError(f"requirement {text!r}: {metric} is {limits}, so a gate on {value} never means what it says", _HOW)
    return Requirement(metric, op, number, text)


def check_requirements(summary: dict, requirements: list[Requirement]) -> list[Check]:
    """Each requirement against an eval summary: the tuned model's aggregates (the base
    model's when it was evaluated alone). A metric that was not measured (e.g. a length
    ratio without references) fails its requirement."""
    if summary.get("status") != "completed":
        raise OperationError(f"the eval did not complete ({summary.get('status')}: {summary.get('error')}), "
                             "so no requirement can be checked", "run the eval again")
    judged = summary.get("tuned") or summary.get("base") or {}
    base = summary.get("base") or {}
    checks = []
    for requirement in requirements:
        if requirement.value is None and not summary.get("tuned"):
            raise UsageError(f"requirement {requirement.text!r} compares with the base model, but this eval has no "
                             "tuned model", "compare with a number, or evaluate a tuned model")
        actual = judged.get(requirement.metric)
        wanted = base.get(requirement.metric) if requirement.value is None else requirement.value
        holds = actual is not None and wanted is not None and OPERATORS[requirement.op](actual, wanted)
        checks.append(Check(requirement, holds, actual, wanted))
    return checks
