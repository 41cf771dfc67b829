"""Convergence classes and the score rule on synthetic curves (one per class)."""

from __future__ import annotations

import math

import pytest

from brightrun_cli.services.quality import answer_gain, classify_convergence, loss_change, quality_metrics, score


def curve(values, start=1):
    return [(start + i, float(v)) for i, v in enumerate(values)]


def decay(start, end, n=40):
    return [end + (start - end) * math.exp(-5 * i / (n - 1)) for i in range(n)]


CASES = {
    # smooth fall to less than half, flat end
    "excellent": (curve(decay(3.0, 1.0)), [(0, 3.1), (20, 1.6), (40, 1.2)]),
    # ~30% fall
    "good": (curve(decay(3.0, 2.1)), [(0, 3.1), (20, 2.5), (40, 2.3)]),
    # ~10% fall
    "fair": (curve(decay(3.0, 2.7)), [(0, 3.1), (20, 2.9), (40, 2.85)]),
    # barely moved
    "poor": (curve(decay(3.0, 2.95)), [(0, 3.1), (40, 3.05)]),
    # ends well above where it started
    "diverged": (curve([2.0 + 0.1 * i for i in range(40)]), [(0, 2.1), (40, 5.0)]),
    # training keeps falling, validation bottoms out at step 20 then climbs
    "overfitting": (curve(decay(3.0, 0.5)), [(0, 3.1), (20, 1.5), (40, 1.9)]),
}


@pytest.mark.parametrize("expected", sorted(CASES))
def test_each_convergence_class_from_synthetic_curves(expected):
    train, validation = CASES[expected]
    assert classify_convergence(train, validation) == expected


def test_nan_loss_is_diverged():
    train = curve([2.0, 1.5, float("nan"), 1.0])
    assert classify_convergence(train, [(0, 2.0)]) == "diverged"
    metrics = quality_metrics(train, [(0, 2.0), (4, float("nan"))])
    assert metrics["overall_score"] == 1
    assert metrics["perplexity"] is None and metrics["final_validation_loss"] is None


def test_noisy_end_is_not_excellent():
    values = decay(3.0, 1.0)
    noisy = values[:32] + [1.0 + (0.5 if i % 2 else -0.3) for i in range(8)]
    assert classify_convergence(curve(noisy), [(0, 3.0), (40, 1.2)]) == "good"


GOOD_ANSWERS = {"status": "completed", "base": {"rougeL": 0.1, "exact_match": 0.0}, "tuned": {"rougeL": 0.5, "exact_match": 0.4}}
SAME_ANSWERS = {"status": "completed", "base": {"rougeL": 0.3, "exact_match": 0.0}, "tuned": {"rougeL": 0.29, "exact_match": 0.0}}
SLIGHTLY_BETTER = {"status": "completed", "base": {"rougeL": 0.3, "exact_match": 0.0}, "tuned": {"rougeL": 0.35, "exact_match": 0.0}}


@pytest.mark.parametrize(
    ("improvement", "convergence", "answers", "expected"),
    [
        (0.45, "excellent", GOOD_ANSWERS, 5),
        (0.45, "excellent", None, 4),  # no answer eval: the loss alone never earns a 5
        (0.44, "excellent", SAME_ANSWERS, 2),  # issue 15: loss 44% lower, answers no better
        (0.45, "excellent", SLIGHTLY_BETTER, 4),
        (0.45, "excellent", {"status": "failed", "base": None, "tuned": None}, 4),
        (0.20, "good", GOOD_ANSWERS, 4),
        (0.10, "good", GOOD_ANSWERS, 3),
        (0.01, "fair", GOOD_ANSWERS, 2),
        (0.0, "fair", GOOD_ANSWERS, 1),
        (-0.2, "good", GOOD_ANSWERS, 1),
        (0.45, "overfitting", GOOD_ANSWERS, 3),
        (0.45, "poor", GOOD_ANSWERS, 2),
        (0.45, "diverged", GOOD_ANSWERS, 1),
        (None, "excellent", None, 4),
        (None, "poor", None, 1),
    ],
)
def test_score_rule(improvement, convergence, answers, expected):
    value, reason = score(improvement, convergence, answers)
    assert value == expected
    assert reason


def test_a_loss_decrease_reads_as_a_decrease():
    value, reason = score(0.44, "excellent", SAME_ANSWERS)
    assert "44% lower" in reason and "+44" not in reason
    assert "answers no better than the base model's" in reason
    assert loss_change(-0.12) == "12% higher"


def test_quality_metrics_measures_against_the_base_point():
    train, validation = CASES["excellent"]
    metrics = quality_metrics(train, validation, answers=GOOD_ANSWERS)
    assert metrics["base_validation_loss"] == 3.1
    assert metrics["final_validation_loss"] == 1.2
    assert metrics["best_validation_loss"] == 1.2
    assert metrics["validation_loss_improvement"] == pytest.approx((3.1 - 1.2) / 3.1)
    assert metrics["perplexity"] == pytest.approx(math.exp(1.2))
    assert metrics["overall_score"] == 5
    assert metrics["convergence_quality"] == "excellent"
    assert metrics["answer_gain"] == 0.4
    assert ">=30% lower -> 5" in metrics["score_rule"]


def test_explicit_result_values_win_over_curve_ends():
    train, validation = CASES["good"]
    metrics = quality_metrics(train, validation, base_validation_loss=4.0, final_validation_loss=2.0, final_training_loss=1.9)
    assert metrics["validation_loss_improvement"] == pytest.approx(0.5)
    assert metrics["final_training_loss"] == 1.9


def test_without_base_measurement_convergence_decides():
    train, _ = CASES["good"]
    metrics = quality_metrics(train, [(40, 2.3)])
    assert metrics["base_validation_loss"] is None
    assert metrics["validation_loss_improvement"] is None
    assert metrics["overall_score"] == 3


def test_a_tool_calling_fine_tune_earns_its_5_by_the_calls_it_gets_right():
    """Call turns' text barely moves ROUGE-L when the answer is a call; the calls are the gain."""
    calls = {"status": "completed", "base": {"rougeL": 0.30, "exact_match": 0.0, "tool_call_match": 0.0},
             "tuned": {"rougeL": 0.33, "exact_match": 0.02, "tool_call_match": 0.8}}
    assert answer_gain(calls) == 0.8
    assert score(0.44, "excellent", calls)[0] == 5
    words = {"status": "completed", "base": {"rougeL": 0.30, "exact_match": 0.0, "tool_call_match": None},
             "tuned": {"rougeL": 0.33, "exact_match": 0.02, "tool_call_match": None}}
    assert answer_gain(words) == 0.03 and score(0.44, "excellent", words)[0] == 4
