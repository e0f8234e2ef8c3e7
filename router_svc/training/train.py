"""Trains the linear n-gram classifier and writes the ONNX artifact.

The model is multinomial logistic regression over the featurizer's hashed n-grams: scikit-learn
fits it on a sparse matrix built from exactly the ids and weights the router computes at run
time, so training and serving cannot disagree. Hyperparameters (C, class weights) are chosen on a
validation split carved from the training split; the test split is never looked at here.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from core import FeaturizerConfig
from router_svc.training.data import Example, stratified_split
from router_svc.training.export import build_model, linear_probabilities
from router_svc.training.subjects import EXPERTS

#: Chosen on the validation split (see docs/classifier.md): 2^18 buckets stored as float16 tie with
#: 2^17 stored as float32 at the same 3 MB and collide less; char 2..5/2..6/3..6, no word bigrams
#: and training on question+choices copies were all within noise or worse.
DEFAULT_FEATURIZER = FeaturizerConfig(num_buckets=1 << 18)
VALIDATION_SEED = 7
VALIDATION_FRACTION = 0.2


@dataclass(frozen=True)
class TrainSettings:
    featurizer: FeaturizerConfig = DEFAULT_FEATURIZER
    #: "question": the prompt a user would type; see data.Example.prompt.
    text_format: str = "question"
    #: also train on "question+choices" copies of MMLU items (more vocabulary per subject)
    augment_with_choices: bool = False
    C_grid: tuple[float, ...] = (10.0, 30.0)
    class_weight_grid: tuple[str | None, ...] = (None, "balanced")
    table_dtype: str = "float16"
    seed: int = 0
    validation_fraction: float = VALIDATION_FRACTION
    validation_seed: int = VALIDATION_SEED
    max_iter: int = 200
    tol: float = 1e-4

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["featurizer"] = self.featurizer.to_dict()
        data["C_grid"] = list(self.C_grid)
        data["class_weight_grid"] = list(self.class_weight_grid)
        return data


@dataclass
class TrainedModel:
    labels: tuple[str, ...]
    featurizer: FeaturizerConfig
    table: np.ndarray  # [num_buckets, K], float32 or float16 as stored
    bias: np.ndarray  # [K] float32
    C: float
    class_weight: str | None
    validation: list[dict[str, Any]] = field(default_factory=list)
    fit_seconds: float = 0.0
    #: scikit-learn's own predict_proba (float64 weights) for CHECK_PROMPTS
    sklearn_check: np.ndarray | None = None


def feature_matrix(featurizer, texts: Sequence[str], num_buckets: int):
    """CSR [len(texts), num_buckets] of the featurizer's weights (repeated ids add up)."""
    import scipy.sparse as sp

    ids, weights, segments = featurizer.transform_batch(list(texts))
    matrix = sp.csr_matrix((weights.astype(np.float64), (segments, ids)),
                           shape=(len(texts), num_buckets))
    matrix.sum_duplicates()
    return matrix


def _training_texts(examples: Sequence[Example], settings: TrainSettings) -> tuple[list[str], list[str]]:
    texts = [e.prompt(settings.text_format) for e in examples]
    labels = [e.label for e in examples]
    if settings.augment_with_choices:
        extra = [e for e in examples if e.choices]
        texts += [e.prompt("question+choices") for e in extra]
        labels += [e.label for e in extra]
    return texts, labels


class _Fitter:
    """Fits logistic regression on the columns the training data uses, then scatters back.

    Most of the 2^18 hash buckets never occur in training; dropping them from the optimisation
    makes each fit several times faster, and their weights are exactly 0 either way (L2 penalty,
    no data), so the result is the same model.
    """

    def __init__(self, matrix, labels: Sequence[str], label_order: tuple[str, ...]) -> None:
        self.columns = np.unique(matrix.indices)
        self.matrix = matrix[:, self.columns]
        self.y = np.array([label_order.index(label) for label in labels])
        self.num_buckets = matrix.shape[1]
        self.num_classes = len(label_order)

    def fit(self, C: float, class_weight: str | None, settings: TrainSettings):
        from sklearn.linear_model import LogisticRegression

        present = np.unique(self.y)
        if len(present) < 2:
            raise ValueError("training needs examples of at least two labels")
        model = LogisticRegression(C=C, class_weight=class_weight, max_iter=settings.max_iter,
                                   tol=settings.tol, random_state=settings.seed)
        model.fit(self.matrix, self.y)
        # Labels absent from the training data get a very negative bias: never predicted.
        table = np.zeros((self.num_buckets, self.num_classes), dtype=np.float64)
        bias = np.full(self.num_classes, -30.0)
        coef = model.coef_ if len(present) > 2 else np.vstack([-model.coef_[0] / 2, model.coef_[0] / 2])
        intercept = (model.intercept_ if len(present) > 2
                     else np.array([-model.intercept_[0] / 2, model.intercept_[0] / 2]))
        table[np.ix_(self.columns, present)] = coef.T
        bias[present] = intercept
        return model, table, bias


def train_model(examples: Sequence[Example], settings: TrainSettings = TrainSettings(),
                labels: tuple[str, ...] = EXPERTS, log=print) -> TrainedModel:
    """Chooses C and class weights on a validation split of ``examples``, then refits on all of them.

    ``examples`` are the training split; they may be any in-memory examples (tests use a tiny
    synthetic set).
    """
    from sklearn.metrics import accuracy_score, f1_score

    unknown = {e.label for e in examples} - set(labels)
    if unknown:
        raise ValueError(f"examples carry labels that are not classifier labels: {sorted(unknown)}")
    featurizer = settings.featurizer.build()
    fit_part, validation = stratified_split(examples, test_fraction=settings.validation_fraction,
                                            seed=settings.validation_seed)
    fit_texts, fit_labels = _training_texts(fit_part, settings)
    fitter = _Fitter(feature_matrix(featurizer, fit_texts, settings.featurizer.num_buckets),
                     fit_labels, labels)
    val_x = feature_matrix(featurizer, [e.prompt(settings.text_format) for e in validation],
                           settings.featurizer.num_buckets)
    val_y = np.array([labels.index(e.label) for e in validation])
    results = []
    for C in settings.C_grid:
        for class_weight in settings.class_weight_grid:
            started = time.perf_counter()
            _, table, bias = fitter.fit(C, class_weight, settings)
            table = _stored(table, settings.table_dtype)
            # Score with the weights as they will be stored, so float16 rounding is accounted for.
            predictions = (val_x @ table.astype(np.float64) + bias).argmax(axis=1)
            row = {"C": C, "class_weight": class_weight,
                   "accuracy": float(accuracy_score(val_y, predictions)),
                   "macro_f1": float(f1_score(val_y, predictions, average="macro",
                                              labels=range(len(labels)), zero_division=0)),
                   "seconds": round(time.perf_counter() - started, 2)}
            results.append(row)
            log(f"  validation C={C:g} class_weight={class_weight}: accuracy {row['accuracy']:.4f} "
                f"macro-F1 {row['macro_f1']:.4f} ({row['seconds']:.1f}s)")
    # Accuracy decides; macro-F1 breaks ties (and favours the small experts).
    best = max(results, key=lambda r: (round(r["accuracy"], 4), r["macro_f1"]))
    started = time.perf_counter()
    all_texts, all_labels = _training_texts(examples, settings)
    fitter = _Fitter(feature_matrix(featurizer, all_texts, settings.featurizer.num_buckets),
                     all_labels, labels)
    sk_model, table, bias = fitter.fit(best["C"], best["class_weight"], settings)
    check_x = feature_matrix(featurizer, CHECK_PROMPTS, settings.featurizer.num_buckets)[:, fitter.columns]
    sklearn_check = np.zeros((len(CHECK_PROMPTS), len(labels)))
    sklearn_check[:, sk_model.classes_] = sk_model.predict_proba(check_x)
    log(f"  refit on all {len(all_texts)} training texts with C={best['C']:g} "
        f"class_weight={best['class_weight']} ({time.perf_counter() - started:.1f}s)")
    return TrainedModel(labels=tuple(labels), featurizer=settings.featurizer,
                        table=_stored(table, settings.table_dtype), bias=bias.astype(np.float32),
                        C=best["C"], class_weight=best["class_weight"], validation=results,
                        fit_seconds=time.perf_counter() - started, sklearn_check=sklearn_check)


def _stored(table: np.ndarray, dtype: str) -> np.ndarray:
    if dtype not in ("float32", "float16"):
        raise ValueError(f"table_dtype must be float32 or float16, got {dtype!r}")
    return table.astype(dtype)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_artifact(model: TrainedModel, out_dir: Path, *, settings: TrainSettings,
                   data_digests: dict[str, str], extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Exports ONNX, checks onnxruntime reproduces the linear model, writes metadata.json."""
    import onnxruntime as ort

    onnx_model = build_model(model.table, model.bias, labels=model.labels,
                             doc="Expert Router prompt classifier: hashed n-gram embedding bag + softmax.")
    onnx_bytes = onnx_model.SerializeToString()
    digest = sha256_hex(onnx_bytes)
    numpy_difference = check_export(onnx_bytes, model)
    sklearn_difference = check_against_sklearn(onnx_bytes, model)
    data_digest = sha256_hex(json.dumps(data_digests, sort_keys=True).encode())
    today = _dt.datetime.now(_dt.UTC).strftime("%Y%m%d")
    metadata: dict[str, Any] = {
        "version": f"ngram-lr-{today}-{digest[:8]}",
        "labels": list(model.labels),
        "featurizer": model.featurizer.to_dict(),
        "onnx_sha256": digest,
        "onnx_opset": onnx_model.opset_import[0].version,
        "onnxruntime_checked": ort.__version__,
        "table_dtype": str(model.table.dtype),
        # max |onnxruntime - reference| on CHECK_PROMPTS: the stored linear model in numpy, and
        # scikit-learn's predict_proba with its float64 weights (differs by the float16 rounding)
        "export_check": {"max_abs_diff_numpy": numpy_difference, "max_abs_diff_sklearn": sklearn_difference},
        "training_data_sha256": dict(sorted(data_digests.items())),
        "training_data_digest": data_digest,
        "training": {**settings.to_dict(), "chosen_C": model.C, "chosen_class_weight": model.class_weight,
                     "validation": model.validation},
    }
    metadata.update(extra or {})
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "model.onnx").write_bytes(onnx_bytes)
    (out_dir / "metadata.json").write_text(json.dumps(metadata, indent=2) + "\n", encoding="utf-8")
    return metadata


CHECK_PROMPTS = (
    "Write a Python function that returns the n-th Fibonacci number.",
    "Evaluate the integral of x^2 from 0 to 3.",
    "",
    "What is the maximum daily dose of acetaminophen for an adult?",
    "A buyer sued the seller for breach of contract after the goods arrived late.",
    "Why is the sky blue? Explain Rayleigh scattering. \u00e9\u00e8 \u4f60\u597d \U0001f600",
)


def _run_onnx(onnx_bytes: bytes, featurizer_config: FeaturizerConfig, prompts: Sequence[str]) -> np.ndarray:
    import onnxruntime as ort

    ids, weights, segments = featurizer_config.build().transform_batch(list(prompts))
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    return session.run(None, {"feature_ids": ids, "feature_weights": weights, "segment_ids": segments,
                              "prompt_count": np.array([len(prompts)], dtype=np.int64)})[0]


def check_against_sklearn(onnx_bytes: bytes, model: TrainedModel) -> float | None:
    """Max difference between onnxruntime and scikit-learn's predict_proba on CHECK_PROMPTS.

    With a float32 table it must be below 1e-5; with float16 it is reported, not enforced.
    """
    if model.sklearn_check is None:
        return None
    got = _run_onnx(onnx_bytes, model.featurizer, CHECK_PROMPTS)
    difference = float(np.abs(got - model.sklearn_check).max())
    if model.table.dtype == np.float32 and difference > 1e-5:
        raise RuntimeError(f"onnxruntime differs from scikit-learn's predict_proba by {difference:g}")
    return difference


def check_export(onnx_bytes: bytes, model: TrainedModel, prompts: Sequence[str] = CHECK_PROMPTS,
                 atol: float = 1e-5) -> float:
    """Runs the ONNX graph in onnxruntime and compares it with numpy; returns the max difference."""
    got = _run_onnx(onnx_bytes, model.featurizer, prompts)
    ids, weights, segments = model.featurizer.build().transform_batch(list(prompts))
    want = linear_probabilities(model.table, model.bias, ids, weights, segments, len(prompts))
    difference = float(np.abs(got - want).max())
    if got.shape != want.shape or difference > atol:
        raise RuntimeError(f"onnxruntime output differs from the linear model by {difference:g} (> {atol})")
    return difference
