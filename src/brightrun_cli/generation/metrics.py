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
- stop_rate (aggregate only): the share of answers that ended at the chat template's
  end of turn rather than running into max_new_tokens.

Word tokens are Unicode word characters, lowercased (rouge-score's default tokenizer
keeps only ASCII letters and digits, which would score every non-English answer 0).
An empty answer to an empty reference scores 1.0 everywhere (the libraries give 0).
Aggregates are means over samples, skipping None.
"""

from __future__ import annotations

import functools
import re

METRICS = ("exact_match", "token_f1", "rougeL", "chrf", "length_ratio", "stop_rate")
SAMPLE_METRICS = METRICS[:-1]  # stop_rate is aggregated from each sample's `stopped` flag
_WORD = re.compile(r"\w+", re.UNICODE)


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


def score_sample(answer: str, reference: str) -> dict[str, float | None]:
    """The per-sample metrics (SAMPLE_METRICS) of one answer against its reference."""
    answer, reference = answer.strip(), reference.strip()
    if not answer and not reference:
        return {"exact_match": 1.0, "token_f1": 1.0, "rougeL": 1.0, "chrf": 1.0, "length_ratio": None}
    rouge = _rouge().score(reference, answer)
    return {
        "exact_match": 1.0 if normalise(answer) == normalise(reference) else 0.0,
        "token_f1": round(rouge["rouge1"].fmeasure, 4),
        "rougeL": round(rouge["rougeL"].fmeasure, 4),
        "chrf": round(_chrf().sentence_score(answer, [reference]).score / 100, 4),
        "length_ratio": round(len(answer) / len(reference), 4) if reference else None,
    }


def aggregate(scores: list[dict[str, float | None]], stopped: list[bool]) -> dict[str, float | None]:
    """Means of each metric over the samples (None values skipped) plus stop_rate."""
    means: dict[str, float | None] = {}
    for metric in SAMPLE_METRICS:
        values = [s[metric] for s in scores if s.get(metric) is not None]
        means[metric] = round(sum(values) / len(values), 4) if values else None
    means["stop_rate"] = round(sum(stopped) / len(stopped), 4) if stopped else None
    return means
