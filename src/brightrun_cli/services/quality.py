"""Measured quality of an adapter: losses, perplexity, improvement over the base model,
the convergence class read from the curves, and a 1-5 score whose rule is stated.

The reference scored a model from its final loss alone. Here the base model's
validation loss on the *same* held-out split (the trainer's step-0 validation point)
is the yardstick: the score says how much the adapter beat the model it started from.
Pure functions over numbers, no heavy imports: `models show` and tests use them as is.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

CONVERGENCE_CLASSES = ("excellent", "good", "fair", "poor", "diverged", "overfitting")

# Relative fall of the (smoothed) training loss from its start to its end.
EXCELLENT_DROP = 0.40
GOOD_DROP = 0.20
FAIR_DROP = 0.05
# An end of the training curve noisier than this (std / mean of its last fifth) is not "excellent".
STABLE_NOISE = 0.10
# Training loss ending this much above where it started: the run went the wrong way.
DIVERGED_RISE = 0.05
# Validation loss this far above its best, at the end, while training loss kept falling.
OVERFIT_RISE = 0.02

# Relative validation improvement over the base model -> score (first threshold met wins).
SCORE_STEPS = ((0.30, 5), (0.15, 4), (0.05, 3))
# Answers (the held-out answer eval, generation/evaluate.py): the tuned model's gain over the
# base model in ROUGE-L, exact match or (on turns that call tools) tool-call match, whichever
# is larger. A lower loss can come from
# learning the style of the answers and none of their content (issue 15: held-out loss 44%
# lower, not one of 5 support questions answered right), so the loss alone never earns a 5.
ANSWER_GAIN_FOR_5 = 0.10
SCORE_RULE = (
    "score from the relative validation-loss decrease against the base model on the same split: "
    ">=30% lower -> 5, >=15% -> 4, >=5% -> 3, any decrease -> 2, none -> 1; "
    "then the held-out answers (gain of ROUGE-L, exact match or tool-call match over the base model's): "
    "no gain caps the score at 2, a gain under 0.10 at 4, and without an answer eval it is capped at 4; "
    "diverged -> 1; overfitting caps the score at 3 and poor convergence at 2; "
    "without a base measurement the convergence class decides (excellent 4, good 3, fair 2, otherwise 1)"
)
_SCORE_WITHOUT_BASE = {"excellent": 4, "good": 3, "fair": 2}

Curve = Sequence[tuple[int, float]]  # (step, loss), in step order


def _window(values: list[float]) -> int:
    return max(1, len(values) // 5)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def classify_convergence(train: Curve, validation: Curve) -> str:
    """One of CONVERGENCE_CLASSES from the training curve and the validation points.

    `validation` includes the step-0 (base model) point when there is one. Order of
    checks: a non-finite loss or a training loss that ends above its start is
    `diverged`; validation rising from its best to the end while training loss still
    fell is `overfitting`; otherwise the relative fall of the smoothed training loss
    (mean of the first and last fifth of the points) gives excellent/good/fair/poor.
    """
    losses = [loss for _, loss in train]
    if not losses:
        return "poor"
    if any(not math.isfinite(v) for v in losses) or any(not math.isfinite(v) for _, v in validation):
        return "diverged"
    k = _window(losses)
    start, end = _mean(losses[:k]), _mean(losses[-k:])
    if end > start * (1 + DIVERGED_RISE):
        return "diverged"
    if _overfitting(train, validation):
        return "overfitting"
    drop = (start - end) / start if start > 0 else 0.0
    tail = losses[-k:] if k > 1 else losses[-min(len(losses), 3):]
    noise = _std(tail) / _mean(tail) if _mean(tail) > 0 else 0.0
    if drop >= EXCELLENT_DROP and noise <= STABLE_NOISE:
        return "excellent"
    if drop >= GOOD_DROP:
        return "good"
    if drop >= FAIR_DROP:
        return "fair"
    return "poor"


def _std(values: list[float]) -> float:
    mean = _mean(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))


def _overfitting(train: Curve, validation: Curve) -> bool:
    points = list(validation)
    if len(points) < 3:  # base point, then at least two measurements of the adapter
        return False
    best_index = min(range(len(points)), key=lambda i: points[i][1])
    best_step, best = points[best_index]
    last_step, last = points[-1]
    if best_index == len(points) - 1 or last <= best * (1 + OVERFIT_RISE):
        return False
    at_best = _train_loss_near(train, best_step)
    at_end = _train_loss_near(train, last_step)
    return at_best is not None and at_end is not None and at_end < at_best


def _train_loss_near(train: Curve, step: int) -> float | None:
    """Mean training loss over the few points up to `step` (smooths single-batch noise)."""
    before = [loss for s, loss in train if s <= step]
    if not before:
        return None
    return _mean(before[-3:])


def loss_change(improvement: float | None) -> str:
    """A relative validation-loss improvement as people read it: "44% lower", "12% higher"."""
    if improvement is None:
        return "n/a"
    if round(improvement, 3) == 0:
        return "unchanged"
    return f"{abs(improvement):.0%} {'lower' if improvement > 0 else 'higher'}"


def answer_gain(answers: dict | None) -> float | None:
    """The tuned model's gain over the base model on held-out answers: the largest of the
    ROUGE-L, exact-match and tool-call-match differences (the last only where turns call
    tools). None without a completed eval of both."""
    if not answers or answers.get("status", "completed") != "completed":
        return None
    base, tuned = answers.get("base") or {}, answers.get("tuned") or {}
    gains = [tuned[m] - base[m] for m in ("rougeL", "exact_match", "tool_call_match") if tuned.get(m) is not None and base.get(m) is not None]
    return round(max(gains), 4) if gains else None


def score(improvement: float | None, convergence: str, answers: dict | None = None) -> tuple[int, str]:
    """(overall score 1-5, why) following SCORE_RULE. `answers`: the answer eval's summary
    (eval_summary.json: `base` and `tuned` aggregates), None when there was none."""
    if convergence == "diverged":
        return 1, "training diverged"
    if improvement is None:
        value = _SCORE_WITHOUT_BASE.get(convergence, 1)
        return value, f"no base-model measurement; convergence {convergence}"
    value = next((s for threshold, s in SCORE_STEPS if improvement >= threshold), 2 if improvement > 0 else 1)
    reason = f"validation loss {loss_change(improvement)} than the base model's"
    gain = answer_gain(answers)
    if gain is None:
        cap, why = 4, "no answer eval"
    elif gain <= 0:
        cap, why = 2, f"answers no better than the base model's (gain {gain:+.2f})"
    elif gain < ANSWER_GAIN_FOR_5:
        cap, why = 4, f"answers only slightly better than the base model's (gain {gain:+.2f})"
    else:
        cap, why = 5, None
        reason += f"; answers better than the base model's (gain {gain:+.2f})"
    caps = {"overfitting": 3, "poor": 2}
    if convergence in caps and caps[convergence] < cap:
        cap, why = caps[convergence], f"{convergence} convergence"
    if value > cap:
        value = cap
        reason += f", capped at {value} ({why})"
    return value, reason


def _finite(value: float | None) -> float | None:
    """NaN/inf become null: they are not JSON, and "diverged" already says what happened."""
    return value if value is not None and math.isfinite(value) else None


def _perplexity(loss: float | None) -> float | None:
    if loss is None or not math.isfinite(loss):
        return None
    return math.exp(min(loss, 700.0))  # exp overflows a float above ~709


def quality_metrics(
    train: Curve,
    validation: Curve,
    *,
    base_validation_loss: float | None = None,
    final_validation_loss: float | None = None,
    final_training_loss: float | None = None,
    answers: dict | None = None,
) -> dict:
    """The `quality_metrics` JSON of a model (reference names plus brightrun's measurements).

    `validation` is the validation curve including the step-0 base point; explicit
    `base_validation_loss` / `final_*` values (the trainer's result.json) win over
    the curve ends when given. `answers` is the job's answer eval summary
    (final/eval_summary.json), when it ran.
    """
    tuned = [(s, v) for s, v in validation if s > 0]
    base_points = [v for s, v in validation if s == 0]
    base = base_validation_loss if base_validation_loss is not None else (base_points[0] if base_points else None)
    final_val = final_validation_loss if final_validation_loss is not None else (tuned[-1][1] if tuned else None)
    final_train = final_training_loss if final_training_loss is not None else (train[-1][1] if train else None)
    improvement = None
    if base is not None and final_val is not None and math.isfinite(base) and math.isfinite(final_val) and base > 0:
        improvement = (base - final_val) / base
    convergence = classify_convergence(train, validation)
    overall, reason = score(improvement, convergence, answers)
    return {
        "overall_score": overall,
        "convergence_quality": convergence,
        "final_training_loss": _finite(final_train),
        "final_validation_loss": _finite(final_val),
        "perplexity": _perplexity(final_val),
        "best_validation_loss": _finite(min((v for _, v in tuned), default=None)),
        "base_validation_loss": _finite(base),
        "base_perplexity": _perplexity(base),
        "validation_loss_improvement": improvement,
        "answer_gain": answer_gain(answers),
        "score_reason": reason,
        "score_rule": SCORE_RULE,
    }
