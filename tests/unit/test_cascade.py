"""The cascade measurement: which prompts are rescored, how answers combine, how the threshold is chosen."""
from __future__ import annotations

import numpy as np
import pytest

from router_svc.training.cascade import (
    CascadeResult,
    cascade,
    choose_cascade,
    evaluate_cascade,
    render_cascade,
    worth_building,
)

FAST = np.array([
    [0.90, 0.05, 0.05],  # confident, right
    [0.40, 0.35, 0.25],  # unsure, wrong (truth 1)
    [0.45, 0.30, 0.25],  # unsure, right
    [0.20, 0.70, 0.10],  # fairly sure, wrong (truth 2)
])
SLOW = np.array([
    [0.10, 0.80, 0.10],  # would be wrong, but is never asked
    [0.10, 0.85, 0.05],
    [0.30, 0.60, 0.10],  # overrides a right answer when it replaces
    [0.10, 0.10, 0.80],
])
TRUTH = [0, 1, 0, 2]


def test_only_rows_below_the_threshold_are_rescored() -> None:
    probabilities, cascaded = cascade(FAST, SLOW, 0.5, "replace")
    assert cascaded.tolist() == [False, True, True, False]
    np.testing.assert_array_equal(probabilities[[0, 3]], FAST[[0, 3]])
    np.testing.assert_array_equal(probabilities[[1, 2]], SLOW[[1, 2]])


def test_average_is_the_mean_of_both_vectors_on_cascaded_rows() -> None:
    probabilities, _ = cascade(FAST, SLOW, 0.5, "average")
    np.testing.assert_allclose(probabilities[1], (FAST[1] + SLOW[1]) / 2)
    # row 2: (0.375, 0.45, 0.175) -> the slow model's class wins the average
    assert probabilities[2].argmax() == 1
    np.testing.assert_array_equal(probabilities[0], FAST[0])


def test_bad_shapes_and_combinations_are_refused() -> None:
    with pytest.raises(ValueError, match="one shape"):
        cascade(FAST, SLOW[:3], 0.5, "replace")
    with pytest.raises(ValueError, match="combination"):
        cascade(FAST, SLOW, 0.5, "vote")


def test_choice_maximises_accuracy_under_the_fraction_cap() -> None:
    # Threshold 0.42 rescores row 1 only (fixes it): 3/4. 0.8 also rescores rows 2 and 3:
    # "replace" breaks row 2 and fixes row 3 (3/4, at 75% cascaded), so the cheaper 0.42 wins.
    choice = choose_cascade(FAST, SLOW, TRUTH, thresholds=(0.3, 0.42, 0.8), max_fraction=1.0,
                            combinations=("replace",))
    assert (choice.threshold, choice.validation_accuracy, choice.validation_fraction) == (0.42, 0.75, 0.25)
    assert choice.validation_accuracy_fast == 0.5
    assert len(choice.rows) == 3
    # The cap excludes every threshold that cascades more than a quarter of the prompts.
    capped = choose_cascade(FAST, SLOW, TRUTH, thresholds=(0.3, 0.8), max_fraction=0.25)
    assert capped.threshold == 0.3 and capped.validation_fraction == 0.0
    with pytest.raises(ValueError, match="at most"):
        choose_cascade(FAST, SLOW, TRUTH, thresholds=(0.8,), max_fraction=0.25)


def test_evaluation_reports_per_source_gain_and_fraction() -> None:
    choice = choose_cascade(FAST, SLOW, TRUTH, thresholds=(0.42,), combinations=("replace",), max_fraction=1.0)
    result = evaluate_cascade("set", FAST, SLOW, TRUTH, ["a", "a", "b", "b"], choice)
    assert (result.accuracy_fast, result.accuracy, result.fraction) == (0.5, 0.75, 0.25)
    assert result.by_source == {"a": (0.5, 1.0, 0.5, 2), "b": (0.5, 0.5, 0.0, 2)}
    text = "\n".join(render_cascade(choice, [result], slow_latency_ms=8.0, fast_latency_us=30.0, fast_name="ours"))
    assert "| set | 0.5000 | 0.7500 | +25.0 | 25.0% |" in text
    assert "set 2.00 ms" in text  # a quarter of prompts times 8 ms
    assert "**Met**" in text  # +25 points on the (only, so also external) set, no loss


def _result(fast: float, cascaded: float) -> CascadeResult:
    return CascadeResult(set_name="s", accuracy_fast=fast, accuracy=cascaded, fraction=0.3, by_source={})


def test_building_needs_a_point_outside_and_no_loss_on_the_exam_split() -> None:
    assert worth_building(_result(0.85, 0.86), _result(0.78, 0.79))
    assert not worth_building(_result(0.85, 0.86), _result(0.78, 0.786))  # +0.6 points outside
    assert not worth_building(_result(0.85, 0.849), _result(0.78, 0.80))  # loses on the exam split
