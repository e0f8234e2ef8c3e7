"""The compiled routing decision: best expert, confidence threshold, fallback."""
from __future__ import annotations

import numpy as np
import pytest

from core import decide, rank

LABELS = ("code", "math", "science", "medicine", "law", "general")


def scores(*values: float) -> np.ndarray:
    return np.asarray(values, dtype=np.float32)


def test_best_expert_wins_above_threshold() -> None:
    decision = decide(LABELS, scores(0.1, 0.6, 0.1, 0.1, 0.05, 0.05), 0.4, "general")
    assert (decision.expert, decision.fallback) == ("math", False)
    assert decision.score == pytest.approx(0.6)


def test_low_confidence_goes_to_fallback_with_its_score() -> None:
    decision = decide(LABELS, scores(0.3, 0.25, 0.2, 0.1, 0.05, 0.1), 0.4, "general")
    assert (decision.expert, decision.fallback) == ("general", True)
    assert decision.score == pytest.approx(0.1)


def test_unavailable_best_expert_goes_to_fallback() -> None:
    decision = decide(LABELS, scores(0.9, 0.02, 0.02, 0.02, 0.02, 0.02), 0.1, "general",
                      frozenset({"math", "general"}))
    assert (decision.expert, decision.fallback) == ("general", True)


def test_fallback_unknown_to_classifier_scores_zero() -> None:
    decision = decide(LABELS, scores(0.2, 0.2, 0.2, 0.2, 0.1, 0.1), 0.5, "chitchat")
    assert (decision.expert, decision.score) == ("chitchat", 0.0)


def test_ranked_is_sorted_highest_first_and_stable() -> None:
    ranked = rank(("a", "b", "c"), scores(0.25, 0.5, 0.25))
    assert [label for label, _ in ranked] == ["b", "a", "c"]
    decision = decide(("a", "b", "c"), scores(0.25, 0.5, 0.25), 0.0, "a")
    assert decision.ranked == ranked


def test_mismatched_or_empty_input_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="labels"):
        decide(LABELS, scores(0.5, 0.5), 0.1, "general")
    with pytest.raises(ValueError, match="no scores"):
        decide((), scores(), 0.1, "general")


def test_ranked_matches_a_stable_descending_sort_and_puts_nan_last() -> None:
    rng = np.random.default_rng(7)
    for n in (1, 2, 6, 16, 17, 40):  # 17 and 40 take the heap buffer
        values = rng.choice(np.asarray([0.0, 0.125, 0.25, 0.5], dtype=np.float32), size=n)
        labels = tuple(f"l{i}" for i in range(n))
        expected = sorted(range(n), key=lambda i: -values[i])
        assert [label for label, _ in rank(labels, values)] == [labels[i] for i in expected]
    ranked = rank(("a", "b", "c", "d"), scores(0.25, float("nan"), 0.5, 0.25))
    assert [label for label, _ in ranked] == ["c", "a", "d", "b"]
