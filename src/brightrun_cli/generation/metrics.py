"""How close an answer is to the reference answer, per sample and over an eval set.

Every score lies in [0, 1] (length_ratio excepted), higher is better:

- exact_match: 1.0 when answer and reference are equal after normalising case and
  whitespace (`normalise`), else 0.0.
- token_f1: F1 of the word tokens the two share, counted with multiplicity (SQuAD's
  token F1 without its English article stripping), from rouge-score's ROUGE-1.
- rougeL: ROUGE-L F-measure (longest common subsequence of word tokens), rouge-score.
- chrf: chrF (character n-grams up to 6, beta 2), sacrebleu's sentence score / 100.
- length_ratio: answer characters / reference characters (1.0 = as long; None when
  the reference is empty).
- tool_name_match, tool_call_match: only for a turn that calls tools (None otherwise).
  The calls written in the answer (`calls_in`) against the turn's own: tool_name_match
  is 1.0 when the same functions are called (as a multiset, order free), tool_call_match
  when, besides, each call's arguments are equal as JSON values (2 and 2.0 alike). A
  turn that answers in words is judged by the text metrics, where a stray call scores low.
- stop_rate (aggregate only): the share of answers that ended at the chat template's
  end of turn rather than running into max_new_tokens.

Answers and references are scored on what a reader sees: a reasoning block
(`<think>...</think>`, `[THINK]...[/THINK]`) is left out (`without_reasoning`).

Word tokens are Unicode word characters, lowercased (rouge-score's default tokenizer
keeps only ASCII letters and digits, which would score every non-English answer 0).
An empty answer to an empty reference scores 1.0 everywhere (the libraries give 0).
Aggregates are means over samples, skipping None.
"""

from __future__ import annotations

import functools
import json
import re
from typing import Any

TOOL_METRICS = ("tool_name_match", "tool_call_match")  # None unless the turn calls tools
METRICS = ("exact_match", "token_f1", "rougeL", "chrf", "length_ratio", *TOOL_METRICS, "stop_rate")
SAMPLE_METRICS = METRICS[:-1]  # stop_rate is aggregated from each sample's `stopped` flag
_WORD = re.compile(r"\w+", re.UNICODE)


def without_reasoning(text: str) -> str:
    """An answer as its reader sees it: what follows the reasoning block (`<think>...</think>`,
    or Magistral's `[THINK]...[/THINK]`), surrounding whitespace stripped. An answer still
    inside its reasoning (it ran into max_new_tokens there) has no visible part."""
    for opening, closing in (("<think>", "</think>"), ("[THINK]", "[/THINK]")):
        if closing in text:
            return text.rsplit(closing, 1)[1].strip()
        if text.lstrip().startswith(opening):
            return ""
    return text.strip()


def normalise(text: str) -> str:
    """Lowercase, whitespace runs collapsed to one space, ends stripped."""
    return " ".join(text.lower().split())


class _WordTokenizer:
    """rouge-score's tokenizer interface: Unicode word tokens, lowercased."""

    def tokenize(self, text: str) -> list[str]:
        return _WORD.findall(text.lower())


@functools.cache
def _rouge():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rouge1", "rougeL"], tokenizer=_WordTokenizer())


@functools.cache
def _chrf():
    from sacrebleu.metrics import CHRF

    return CHRF()


def score_sample(answer: str, reference: str, calls: list[dict[str, Any]] | None = None) -> dict[str, float | None]:
    """The per-sample metrics (SAMPLE_METRICS) of one answer against its reference.

    `calls`: the turn's tool calls as [{"name", "arguments"}]; the tool metrics are None
    without them."""
    tool_scores = _tool_scores(answer, calls)
    answer, reference = without_reasoning(answer), without_reasoning(reference)
    if not answer and not reference:
        return {"exact_match": 1.0, "token_f1": 1.0, "rougeL": 1.0, "chrf": 1.0, "length_ratio": None, **tool_scores}
    rouge = _rouge().score(reference, answer)
    return {
        "exact_match": 1.0 if normalise(answer) == normalise(reference) else 0.0,
        "token_f1": round(rouge["rouge1"].fmeasure, 4),
        "rougeL": round(rouge["rougeL"].fmeasure, 4),
        "chrf": round(_chrf().sentence_score(answer, [reference]).score / 100, 4),
        "length_ratio": round(len(answer) / len(reference), 4) if reference else None,
        **tool_scores,
    }


def _tool_scores(answer: str, calls: list[dict[str, Any]] | None) -> dict[str, float | None]:
    if not calls:
        return dict.fromkeys(TOOL_METRICS)
    wanted = [_call_key(call) for call in calls]
    written = [_call_key(call) for call in calls_in(answer)]
    return {
        "tool_name_match": 1.0 if sorted(n for n, _ in written) == sorted(n for n, _ in wanted) else 0.0,
        "tool_call_match": 1.0 if sorted(written) == sorted(wanted) else 0.0,
    }


def _call_key(function: dict[str, Any]) -> tuple[str, str]:
    """(name, arguments as canonical JSON): equal keys are the same call."""
    return str(function.get("name", "")), json.dumps(_canonical(function.get("arguments", {})), sort_keys=True, ensure_ascii=False)


def _canonical(value: Any) -> Any:
    """A JSON value with whole floats as integers (2.0 and 2 are the same argument)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _canonical(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_canonical(v) for v in value]
    return value


def calls_in(text: str) -> list[dict[str, Any]]:
    """The tool calls an answer writes, as [{"name", "arguments": {...}}], in order.

    Templates write calls in their own wrappers around the same JSON: Hermes/Qwen and
    brightrun's ChatML `<tool_call>{"name", "arguments"}</tool_call>`, Llama 3.1
    `{"name", "parameters"}`, Mistral `[TOOL_CALLS][{...}, ...]`, OpenAI-shaped
    `{"type": "function", "function": {...}}`; arguments may be an object or the JSON text
    of one. So: every JSON object or list in the text after its reasoning, read where it
    starts, and each object in it (or it) with a string `name` and object
    `arguments`/`parameters`."""
    text = without_reasoning(text)
    decoder = json.JSONDecoder()
    found: list[dict[str, Any]] = []
    at = 0
    while (start := _next_json_start(text, at)) >= 0:
        try:
            value, end = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            at = start + 1
            continue
        for item in value if isinstance(value, list) else [value]:
            call = _as_call(item)
            if call is not None:
                found.append(call)
        at = end
    return found


def _next_json_start(text: str, at: int) -> int:
    starts = [i for i in (text.find("{", at), text.find("[", at)) if i >= 0]
    return min(starts) if starts else -1


def _as_call(item: Any) -> dict[str, Any] | None:
    if not isinstance(item, dict):
        return None
    if isinstance(item.get("function"), dict):
        item = item["function"]
    name = item.get("name")
    arguments = item.get("arguments", item.get("parameters"))
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError:
            return None
    if not isinstance(name, str) or not name or not isinstance(arguments, dict):
        return None
    return {"name": name, "arguments": arguments}


def matched(scores: dict | None) -> bool:
    """Whether a scored answer is right: the calls of a turn that calls tools (tool_call_match),
    else the text (exact_match). The "match" column of sample tables."""
    scores = scores or {}
    right = scores.get("tool_call_match")
    return (right if right is not None else scores.get("exact_match")) == 1.0


def shown(aggregates: list[dict | None]) -> tuple[str, ...]:
    """The metrics a table of these aggregates shows: all but the tool metrics where no
    sample called tools."""
    measured = any(a.get(m) is not None for a in aggregates if a for m in TOOL_METRICS)
    return tuple(m for m in METRICS if measured or m not in TOOL_METRICS)


def aggregate(scores: list[dict[str, float | None]], stopped: list[bool], answers: list[str] | None = None) -> dict[str, float | None]:
    """Means of each metric over the samples (None values skipped) plus stop_rate; with the
    answers, `cut_in_reasoning`: how many ran into max_new_tokens inside their reasoning
    block (no visible answer: scored as empty, and a sign the budget is too small)."""
    means: dict[str, float | None] = {}
    for metric in SAMPLE_METRICS:
        values = [s[metric] for s in scores if s.get(metric) is not None]
        means[metric] = round(sum(values) / len(values), 4) if values else None
    means["stop_rate"] = round(sum(stopped) / len(stopped), 4) if stopped else None
    if answers is not None:
        means["cut_in_reasoning"] = sum(1 for text, done in zip(answers, stopped)
                                        if not done and text.strip() and not without_reasoning(text))
    return means


def reasoning_cut_hint(aggregates: dict[str, dict | None]) -> str | None:
    """One line when answers ran out of tokens inside their reasoning (`aggregate`), naming
    the models and how many; None when none did."""
    cut = {name: a["cut_in_reasoning"] for name, a in aggregates.items() if a and a.get("cut_in_reasoning")}
    if not cut:
        return None
    return ("answers ran out of max_new_tokens inside their reasoning (" + ", ".join(f"{name} {n}" for name, n in cut.items())
            + "), so they have no answer to score: give them room with --max-new-tokens")
