"""The cascade model directory as `expert-router train-cascade` writes it, without torch.

A cascade model is a directory of three files (model.onnx, tokenizer.json, cascade.json) that the
router loads to rescore its low-confidence prompts. This module holds what writing and checking
that directory needs and torch does not: the metadata and its digests, the class order of the
exported head, the comparison that must pass before anything is written, the rules that choose the
tokenizer's max_length and whether the INT8 graph ships, and the onnxruntime scoring of a directory.
Keeping them here lets the tests run them on a machine without the `train` extra; the export itself
(torch) is in ``cascade_export``.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

# The format, file names and graph interface are the router's loader's (router_svc/cascade.py): one
# definition of the contract for the side that writes it and the side that reads it.
from router_svc.cascade import FORMAT, INPUT_NAMES, MODEL_FILE, OUTPUT_NAME, TOKENIZER_FILE  # noqa: F401 (cascade_export)
from router_svc.cascade import MANIFEST_FILE as METADATA_FILE
from router_svc.training.cascade import COMBINATIONS, CascadeChoice

ONNX_OPSET = 17
#: Largest difference allowed between the exported graph (onnxruntime + `tokenizers`) and the
#: model it was exported from (sentence-transformers + scikit-learn) on the same texts. Float32
#: kernels differ in summation order only; anything above this is a wrong export, not rounding.
VERIFY_TOLERANCE = 1e-4
#: max_length candidates: sentence-transformers truncates all-MiniLM-L6-v2 at 256 tokens
#: (sentence_bert_config.json's max_seq_length); 128 halves the worst-case sequence.
MAX_LENGTH_CANDIDATES = (128, 256)

#: Rule for shipping onnxruntime's dynamic INT8 quantization instead of the float32 graph, fixed
#: before it was measured: the cascade's validation accuracy (chosen by choose_cascade on the INT8
#: graph's own probabilities) may fall by at most this many points ...
INT8_MAX_ACCURACY_LOSS_POINTS = 0.3
#: ... and the median batch-1 latency on one thread must fall by at least this fraction.
INT8_MIN_LATENCY_GAIN = 0.25


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in chunks (model.onnx is ~90 MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def build_metadata(directory: Path, *, labels: Sequence[str], max_length: int, pad_id: int, combination: str,
                   threshold: float, description: str, version_prefix: str = "minilm-lr",
                   extra: Mapping[str, Any] | None = None, today: _dt.date | None = None) -> dict[str, Any]:
    """cascade.json's content for the model.onnx and tokenizer.json already in ``directory``.

    Checks every field against the contract, so a writer cannot produce a directory its reader
    refuses; ``extra`` keys (validation numbers, measurements) are added after the contract's.
    """
    if combination not in COMBINATIONS:
        raise ValueError(f"combination must be one of {COMBINATIONS}, got {combination!r}")
    if not (0.0 < threshold <= 1.0):
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    if not (8 <= max_length <= 512):
        raise ValueError(f"max_length must be in 8..512, got {max_length}")
    if len(set(labels)) != len(labels) or not labels:
        raise ValueError(f"labels must be distinct and non-empty, got {list(labels)}")
    files = {name: file_sha256(Path(directory) / name) for name in (MODEL_FILE, TOKENIZER_FILE)}
    day = (today or _dt.datetime.now(_dt.UTC).date()).strftime("%Y%m%d")
    metadata: dict[str, Any] = {
        "format": FORMAT,
        "version": f"{version_prefix}-{day}-{files[MODEL_FILE][:8]}",
        "labels": list(labels),
        "max_length": int(max_length),
        "pad_id": int(pad_id),
        "combination": combination,
        "threshold": float(threshold),
        "files": files,
        "description": description,
    }
    for key, value in (extra or {}).items():
        if key in metadata:
            raise ValueError(f"extra key {key!r} would overwrite a contract key")
        metadata[key] = value
    return metadata


def write_metadata(directory: Path, metadata: Mapping[str, Any]) -> Path:
    path = Path(directory) / METADATA_FILE
    path.write_text(json.dumps(metadata, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def read_metadata(directory: Path) -> dict[str, Any]:
    """cascade.json of ``directory``, its format and file digests checked (ValueError naming the file).

    The evaluation reads a directory through this; the router has its own, stricter loader.
    """
    directory = Path(directory)
    path = directory / METADATA_FILE
    try:
        metadata = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: cannot read it as JSON: {exc}") from exc
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
        raise ValueError(f"{path}: format is not {FORMAT!r}")
    files = metadata.get("files")
    if not isinstance(files, dict) or set(files) != {MODEL_FILE, TOKENIZER_FILE}:
        raise ValueError(f"{path}: 'files' must give the sha256 of {MODEL_FILE} and {TOKENIZER_FILE}")
    for name, expected in files.items():
        if not (directory / name).is_file():
            raise ValueError(f"{directory / name}: missing")
        actual = file_sha256(directory / name)
        if actual != expected:
            raise ValueError(f"{directory / name}: sha256 {actual} differs from {expected} in {METADATA_FILE}")
    return metadata


def head_in_label_order(coef: np.ndarray, intercept: np.ndarray, classes: Sequence[int],
                        class_names: Sequence[str], labels: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """The logistic regression's rows reordered to ``labels`` (the router's order).

    scikit-learn orders rows by ``classes`` (indices into ``class_names``); the graph's output
    columns must follow the router's labels, whatever order training used.
    """
    if set(labels) != {class_names[c] for c in classes} or len(labels) != len(classes):
        raise ValueError(f"the head's classes {[class_names[c] for c in classes]} are not the labels {list(labels)}")
    rows = [list(classes).index(class_names.index(label)) for label in labels]
    return (np.asarray(coef, dtype=np.float32)[rows], np.asarray(intercept, dtype=np.float32)[rows])


def columns_in_label_order(probabilities: np.ndarray, class_names: Sequence[str],
                           labels: Sequence[str]) -> np.ndarray:
    """[n, k] probabilities whose columns follow ``class_names`` reordered to ``labels``."""
    return np.asarray(probabilities)[:, [list(class_names).index(label) for label in labels]]


@dataclass(frozen=True)
class Comparison:
    """The exported graph's probabilities against the reference model's on the same texts."""

    rows: int
    max_abs_diff: float
    argmax_agreement: float
    tolerance: float

    @property
    def ok(self) -> bool:
        return self.rows > 0 and math.isfinite(self.max_abs_diff) and self.max_abs_diff <= self.tolerance

    def describe(self) -> str:
        return (f"{self.rows} texts: max |difference| {self.max_abs_diff:.2e} (tolerance {self.tolerance:.0e}), "
                f"same answer on {self.argmax_agreement:.2%}")


def compare_probabilities(reference: np.ndarray, candidate: np.ndarray,
                          tolerance: float = VERIFY_TOLERANCE) -> Comparison:
    """Max absolute difference and argmax agreement; NaN or a shape mismatch never passes."""
    reference, candidate = np.asarray(reference, dtype=np.float64), np.asarray(candidate, dtype=np.float64)
    if reference.shape != candidate.shape or reference.ndim != 2 or reference.shape[0] == 0:
        return Comparison(rows=0, max_abs_diff=float("inf"), argmax_agreement=0.0, tolerance=tolerance)
    difference = np.abs(reference - candidate)
    worst = float(difference.max()) if np.isfinite(difference).all() else float("nan")
    agreement = float((reference.argmax(axis=1) == candidate.argmax(axis=1)).mean())
    return Comparison(rows=reference.shape[0], max_abs_diff=worst, argmax_agreement=agreement, tolerance=tolerance)


def pad_batch(token_ids: Sequence[Sequence[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """(input_ids, attention_mask), int64 [batch, longest]: right-padded with ``pad_id``, mask 1 on tokens."""
    if not token_ids:
        raise ValueError("need at least one token sequence")
    longest = max(len(ids) for ids in token_ids)
    input_ids = np.full((len(token_ids), longest), pad_id, dtype=np.int64)
    attention_mask = np.zeros((len(token_ids), longest), dtype=np.int64)
    for row, ids in enumerate(token_ids):
        input_ids[row, :len(ids)] = ids
        attention_mask[row, :len(ids)] = 1
    return input_ids, attention_mask


def load_onnx_scorer(model_path: Path, tokenizer_path: Path, *, max_length: int, pad_id: int,
                     threads: int = 1, batch_size: int = 32) -> Callable[[Sequence[str]], np.ndarray]:
    """texts -> [n, num_labels] probabilities from a cascade model's graph and tokenizer.

    What the router does with a cascade directory: `tokenizers` truncates to ``max_length``
    (special tokens included), batches are padded with ``pad_id``, onnxruntime runs the graph on
    ``threads`` threads. Used to verify an export and to measure it; the router has its own loader.
    """
    import onnxruntime as ort
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_path))
    tokenizer.no_padding()  # the file's own padding/truncation settings are not the contract's
    tokenizer.enable_truncation(max_length)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    session = ort.InferenceSession(str(model_path), sess_options=options, providers=["CPUExecutionProvider"])

    def score(texts: Sequence[str]) -> np.ndarray:
        outputs = []
        for start in range(0, len(texts), batch_size):
            encodings = tokenizer.encode_batch(list(texts[start:start + batch_size]))
            input_ids, attention_mask = pad_batch([e.ids for e in encodings], pad_id)
            outputs.append(session.run([OUTPUT_NAME], {"input_ids": input_ids,
                                                       "attention_mask": attention_mask})[0])
        if not outputs:
            return np.zeros((0, session.get_outputs()[0].shape[1]), dtype=np.float32)
        return np.concatenate(outputs, axis=0)

    return score


#: The INT8 graph cannot match float32 within VERIFY_TOLERANCE (its weights are rounded); written
#: instead, it must give finite probabilities summing to 1 and the float32 graph's answer on at least
#: this share of the verification texts (the validation measurement saw ~96%): a guard against a
#: broken quantization, its accuracy being judged by the INT8 rule.
INT8_MIN_AGREEMENT = 0.9


def check_quantized(float_probabilities: np.ndarray, int8_probabilities: np.ndarray) -> tuple[bool, str]:
    """(ok, description) of the INT8 graph's probabilities against the float32 graph's on the same texts."""
    reference, candidate = np.asarray(float_probabilities), np.asarray(int8_probabilities)
    if reference.shape != candidate.shape or reference.ndim != 2 or reference.shape[0] == 0:
        return False, f"shapes differ: {reference.shape} and {candidate.shape}"
    if not np.isfinite(candidate).all():
        return False, "the INT8 graph returned non-finite probabilities"
    worst_sum = float(np.abs(candidate.sum(axis=1) - 1.0).max())
    agreement = float((reference.argmax(axis=1) == candidate.argmax(axis=1)).mean())
    description = (f"{reference.shape[0]} texts: same answer as float32 on {agreement:.2%} (at least "
                   f"{INT8_MIN_AGREEMENT:.0%} needed), rows sum to 1 within {worst_sum:.1e}")
    return worst_sum <= VERIFY_TOLERANCE and agreement >= INT8_MIN_AGREEMENT, description


def choose_max_length(cascade_accuracy: Mapping[int, float]) -> int:
    """The max_length whose cascade is most accurate on validation; a tie goes to the shorter (cheaper)."""
    if not cascade_accuracy:
        raise ValueError("no max_length was measured")
    return min(cascade_accuracy, key=lambda length: (-round(cascade_accuracy[length], 6), length))


def adopt_int8(float_accuracy: float, int8_accuracy: float, float_latency_ms: float, int8_latency_ms: float) -> bool:
    """The INT8 rule: accuracy loss within ``INT8_MAX_ACCURACY_LOSS_POINTS`` and latency gain at least
    ``INT8_MIN_LATENCY_GAIN`` (both measured on the validation split)."""
    accuracy_ok = 100 * (float_accuracy - int8_accuracy) <= INT8_MAX_ACCURACY_LOSS_POINTS + 1e-9
    latency_ok = int8_latency_ms <= (1.0 - INT8_MIN_LATENCY_GAIN) * float_latency_ms + 1e-12
    return accuracy_ok and latency_ok


def choice_from_metadata(metadata: Mapping[str, Any]) -> CascadeChoice:
    """The cascade recorded in cascade.json as the evaluation's CascadeChoice (validation rows too)."""
    validation = metadata.get("validation", {})
    rows = tuple((str(r[0]), float(r[1]), float(r[2]), float(r[3])) for r in validation.get("rows", ()))
    return CascadeChoice(combination=metadata["combination"], threshold=float(metadata["threshold"]),
                         validation_accuracy=float(validation.get("cascade_accuracy", float("nan"))),
                         validation_accuracy_fast=float(validation.get("router_accuracy", float("nan"))),
                         validation_fraction=float(validation.get("fraction_cascaded", float("nan"))),
                         rows=rows)


@dataclass(frozen=True)
class Latency:
    median_ms: float
    p90_ms: float
    prompts: int


def time_batch_of_one(scorers: Mapping[str, Callable[[Sequence[str]], np.ndarray]], texts: Sequence[str], *,
                      warmup: int = 20) -> dict[str, Latency]:
    """Tokenize + run one prompt at a time (the cascade's case: one low-confidence request).

    Several scorers are timed interleaved, text by text, so that load from other processes on a
    shared machine falls on all of them alike and their ratio stays meaningful.
    """
    import statistics
    import time

    if not texts:
        raise ValueError("need at least one text to time")
    for text in texts[:warmup]:
        for score in scorers.values():
            score([text])
    times: dict[str, list[float]] = {name: [] for name in scorers}
    for text in texts:
        for name, score in scorers.items():
            started = time.perf_counter()
            score([text])
            times[name].append((time.perf_counter() - started) * 1000.0)
    result = {}
    for name, values in times.items():
        values.sort()
        result[name] = Latency(median_ms=statistics.median(values), p90_ms=values[int(0.9 * (len(values) - 1))],
                               prompts=len(values))
    return result
