"""The cascade, measured before it is built: low-confidence prompts rescored by MiniLM + LR.

The linear classifier answers every prompt in microseconds; MiniLM + logistic regression costs
milliseconds but reads prompts differently. A cascade sends only the prompts whose best calibrated
score is below a threshold to the slow model. Whether that is worth building depends on two numbers
this module computes from probabilities that `make eval-router` already has: the accuracy gained
and the fraction of prompts that pay MiniLM's latency.

The threshold and the way the two answers combine are chosen on the validation split only (both
models fitted without it), then applied unchanged to the MMLU held-out split and the external set.
Plain numpy; nothing here loads a model.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: "replace": the slow model's probabilities; "average": the mean of both probability vectors.
COMBINATIONS = ("replace", "average")
#: Thresholds tried on the validation split (a prompt is cascaded when its best score is below).
THRESHOLDS = tuple(round(t, 2) for t in np.arange(0.30, 0.96, 0.05))
#: At most this fraction of validation prompts may be cascaded: beyond it the cascade is simply
#: the slow model with extra steps, and the cost is paid on most prompts.
MAX_CASCADED_FRACTION = 0.30
#: The rule, fixed before the measurement, for building the cascade into the router: at least this
#: many points gained on the external set, and none lost on the MMLU held-out split. Below it the
#: milliseconds per cascaded prompt buy too little.
MIN_EXTERNAL_GAIN_POINTS = 1.0


@dataclass(frozen=True)
class CascadeChoice:
    combination: str
    threshold: float
    #: validation accuracy of the cascade, of the fast model alone, and the fraction cascaded
    validation_accuracy: float
    validation_accuracy_fast: float
    validation_fraction: float
    #: every (combination, threshold, accuracy, fraction) tried, for the report
    rows: tuple[tuple[str, float, float, float], ...]


def cascade(fast: np.ndarray, slow: np.ndarray, threshold: float, combination: str) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities, cascaded mask): rows of ``fast`` whose max is below ``threshold`` rescored.

    ``slow`` is only read on the cascaded rows, as a deployment would compute it only there.
    """
    fast, slow = np.asarray(fast, dtype=np.float64), np.asarray(slow, dtype=np.float64)
    if fast.shape != slow.shape or fast.ndim != 2:
        raise ValueError(f"need two [n, k] probability arrays of one shape, got {fast.shape} and {slow.shape}")
    if combination not in COMBINATIONS:
        raise ValueError(f"combination must be one of {COMBINATIONS}, got {combination!r}")
    cascaded = fast.max(axis=1) < threshold
    result = fast.copy()
    if combination == "replace":
        result[cascaded] = slow[cascaded]
    else:
        result[cascaded] = (fast[cascaded] + slow[cascaded]) / 2.0
    return result, cascaded


def choose_cascade(fast: np.ndarray, slow: np.ndarray, y_true: Sequence[int], *,
                   thresholds: Sequence[float] = THRESHOLDS, combinations: Sequence[str] = COMBINATIONS,
                   max_fraction: float = MAX_CASCADED_FRACTION) -> CascadeChoice:
    """The (combination, threshold) with the best validation accuracy among those cascading at most
    ``max_fraction`` of the prompts; ties go to the smaller fraction (the cheaper cascade)."""
    true = np.asarray(y_true)
    fast_accuracy = float((np.asarray(fast).argmax(axis=1) == true).mean())
    rows = []
    for combination in combinations:
        for threshold in thresholds:
            probabilities, cascaded = cascade(fast, slow, threshold, combination)
            rows.append((combination, float(threshold), float((probabilities.argmax(axis=1) == true).mean()),
                         float(cascaded.mean())))
    eligible = [r for r in rows if r[3] <= max_fraction + 1e-12]
    if not eligible:
        raise ValueError(f"no threshold cascades at most {max_fraction:.0%} of the validation prompts")
    best = max(eligible, key=lambda r: (round(r[2], 6), -r[3]))
    return CascadeChoice(combination=best[0], threshold=best[1], validation_accuracy=best[2],
                         validation_accuracy_fast=fast_accuracy, validation_fraction=best[3], rows=tuple(rows))


@dataclass(frozen=True)
class CascadeResult:
    """The chosen cascade on one evaluation set, beside the fast model alone."""

    set_name: str
    accuracy_fast: float
    accuracy: float
    fraction: float
    #: source -> (fast accuracy, cascade accuracy, fraction cascaded, prompts)
    by_source: dict[str, tuple[float, float, float, int]]


def evaluate_cascade(set_name: str, fast: np.ndarray, slow: np.ndarray, y_true: Sequence[int],
                     sources: Sequence[str], choice: CascadeChoice) -> CascadeResult:
    true, source_array = np.asarray(y_true), np.asarray(sources)
    probabilities, cascaded = cascade(fast, slow, choice.threshold, choice.combination)
    fast_correct = np.asarray(fast).argmax(axis=1) == true
    correct = probabilities.argmax(axis=1) == true
    by_source = {}
    for name in dict.fromkeys(sources):
        members = source_array == name
        by_source[name] = (float(fast_correct[members].mean()), float(correct[members].mean()),
                           float(cascaded[members].mean()), int(members.sum()))
    return CascadeResult(set_name=set_name, accuracy_fast=float(fast_correct.mean()),
                         accuracy=float(correct.mean()), fraction=float(cascaded.mean()), by_source=by_source)


def worth_building(held_out: CascadeResult, external: CascadeResult) -> bool:
    """The decision rule: ``MIN_EXTERNAL_GAIN_POINTS`` on the external set, no loss on held-out."""
    return (100 * (external.accuracy - external.accuracy_fast) >= MIN_EXTERNAL_GAIN_POINTS - 1e-9
            and held_out.accuracy >= held_out.accuracy_fast)


def render_cascade(choice: CascadeChoice, results: Sequence[CascadeResult], *, slow_latency_ms: float,
                   fast_latency_us: float, fast_name: str, exported: str | None = None) -> list[str]:
    """Markdown: how the cascade was chosen, its gain per set and source, its cost, the verdict.

    ``results``: the MMLU held-out split first, the external set last. ``exported``: the cascade
    model directory (and version) whose onnxruntime probabilities were scored, or None when the
    slow model's probabilities are torch's, in memory.
    """
    if exported is None:
        lines = [
            "### Cascade: low-confidence prompts rescored by MiniLM + LR (measured, now a router option)",
            "",
            (f"A prompt whose best score from {fast_name} is below a threshold is sent to MiniLM + LR; "
             "its answer either replaces ours or is averaged with it. Combination and threshold were chosen "
             "on the validation split (both models fitted without it; ours with the artifact's own "
             f"hyperparameters and temperature): the best validation accuracy among settings cascading at "
             f"most {MAX_CASCADED_FRACTION:.0%} of the prompts (`router_svc/training/cascade.py`), then "
             "applied unchanged to the packaged models' scores on the two test sets."),
            "",
        ]
        runtime, slow_name = "torch", "MiniLM + LR's"
    else:
        lines = [
            f"### Cascade: low-confidence prompts rescored by the exported cascade model {exported}",
            "",
            (f"A prompt whose best score from {fast_name} is below the threshold recorded in the cascade "
             "model's cascade.json is rescored by that model's ONNX graph (onnxruntime and `tokenizers`, as "
             "the router's `--cascade-model` runs it); its answer replaces ours or is averaged with it as "
             "recorded. `expert-router train-cascade` chose combination and threshold on the validation "
             f"split (both models fitted without it): the best validation accuracy among settings cascading "
             f"at most {MAX_CASCADED_FRACTION:.0%} of the prompts; nothing was chosen on the two test sets."),
            "",
        ]
        runtime, slow_name = "onnxruntime, tokenization included", "the cascade model's"
    lines += [
        (f"Chosen: **{choice.combination}** below **{choice.threshold:.2f}**: validation accuracy "
         f"{choice.validation_accuracy_fast:.4f} → {choice.validation_accuracy:.4f}, "
         f"{choice.validation_fraction:.1%} of validation prompts cascaded."),
        "",
        "| set | ours alone | cascade | gain (points) | cascaded | per source: ours → cascade (cascaded) |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for r in results:
        per_source = "; ".join(f"{name} {fa:.3f} → {ca:.3f} ({fr:.0%})"
                               for name, (fa, ca, fr, _) in r.by_source.items())
        lines.append(f"| {r.set_name} | {r.accuracy_fast:.4f} | {r.accuracy:.4f} | "
                     f"{100 * (r.accuracy - r.accuracy_fast):+.1f} | {r.fraction:.1%} | {per_source} |")
    lines += [
        "",
        (f"Cost: each cascaded prompt adds {slow_name} measured batch-1 latency (median "
         f"{slow_latency_ms:.1f} ms on one CPU thread, {runtime}) to ours ({fast_latency_us:.1f} µs); "
         "on average per prompt that is the fraction cascaded times that latency: "
         + ", ".join(f"{r.set_name} {r.fraction * slow_latency_ms:.2f} ms" for r in results) + "."),
        "",
        (f"Rule for building the cascade into the router (an ONNX export and a router option), fixed "
         f"before the first such measurement: at least {MIN_EXTERNAL_GAIN_POINTS:g} point gained on the "
         f"external set without losing on the MMLU held-out split. "
         + ("**Met**: worth building." if worth_building(results[0], results[-1]) else
            f"**Not met** ({100 * (results[-1].accuracy - results[-1].accuracy_fast):+.1f} points on the "
            "external set): with this classifier the router's cascade option is not worth its cost.")),
        "",
        ("Built as the router's optional cascade, off by default: `--cascade-model DIR` reads a cascade "
         "model directory (`model.onnx`, `tokenizer.json`, `cascade.json` with its threshold and "
         "combination; `make train-cascade` writes one), rescores the prompts below the threshold in a "
         "thread of its own, and leaves the fast answer when more than `--cascade-max-pending` prompts "
         "wait for it or when it fails (docs/configuration.md, \"Optional cascade\"). Its cost per routing "
         "decision, with and without it over the same prompts: `benchmarks/cascade_cost.py --cascade-model "
         "DIR` (docs/benchmarks.md)."),
        "",
        "Validation rows tried (combination, threshold: accuracy, fraction cascaded):",
        "",
        "| threshold | " + " | ".join(f"{c}: accuracy | {c}: cascaded" for c in COMBINATIONS
                                      if any(row[0] == c for row in choice.rows)) + " |",
    ]
    combos = [c for c in COMBINATIONS if any(row[0] == c for row in choice.rows)]
    lines.append("|---:|" + "---:|---:|" * len(combos))
    for threshold in sorted({row[1] for row in choice.rows}):
        cells = []
        for c in combos:
            match = [row for row in choice.rows if row[0] == c and row[1] == threshold]
            cells += [f"{match[0][2]:.4f}", f"{match[0][3]:.3f}"] if match else ["", ""]
        lines.append(f"| {threshold:.2f} | " + " | ".join(cells) + " |")
    lines.append("")
    return lines
