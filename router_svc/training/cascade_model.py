"""The cascade model directory as `expert-router train-cascade` writes it, without torch.

A cascade model is a directory of three files (model.onnx, tokenizer.json, cascade.json) that the
router loads to rescore its low-confidence prompts. This module holds what writing and checking
that directory needs and torch does not: the metadata and its digests, the class order of the
exported head, the comparison that must pass before anything is written, the rules that choose the
tokenizer's max_length and whether the INT8 graph ships, the onnxruntime scoring of a directory, and
the INT8 measurement (``measure_int8``; ``quantize_by_rule`` applies it to a written directory).
Keeping them here lets the tests run them on a machine without the `train` extra; the export itself
(torch) is in ``cascade_export``.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

# The format, file names and graph interface are the router's loader's (router_svc/cascade.py): one
# definition of the contract for the side that writes it and the side that reads it.
from router_svc.cascade import FORMAT, INPUT_NAMES, MANIFEST_KEYS, MODEL_FILE, OUTPUT_NAME, TOKENIZER_FILE  # noqa: F401 (cascade_export)
from router_svc.cascade import MANIFEST_FILE as METADATA_FILE
from router_svc.training.cascade import COMBINATIONS, CascadeChoice, choose_cascade

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


@dataclass(frozen=True)
class ValidationData:
    """The validation split as the cascade is chosen on it: texts, the router's probabilities, labels."""

    texts: list[str]
    #: the router's out-of-sample validation probabilities (its refit without this split)
    ours: np.ndarray
    truth: np.ndarray


@dataclass(frozen=True)
class Int8Measurement:
    """A float32 graph and its dynamic INT8 quantization, measured side by side on validation."""

    #: cascade.json's "int8" entry: the rule, per graph its size, accuracy, cascade and latency
    report: dict[str, Any]
    #: the cascade chosen on each graph's own validation probabilities ("float32", "int8")
    choices: dict[str, Any]
    probabilities: dict[str, np.ndarray]
    adopted: bool


def measure_int8(float_path: Path, int8_path: Path, *, tokenizer_path: Path, max_length: int, pad_id: int,
                 validation: ValidationData, reference: np.ndarray | None = None, reference_name: str = "",
                 extra_scorers: dict[str, Callable[[Sequence[str]], np.ndarray]] | None = None,
                 log: Callable[[str], None] = print) -> Int8Measurement:
    """Quantizes ``float_path`` to ``int8_path`` and applies the INT8 rule (cascade_model.adopt_int8).

    Both graphs score the validation texts as the router runs them; each gets its own cascade by
    ``choose_cascade``; their batch-1 latency on one thread is timed interleaved, text by text, with
    ``extra_scorers`` (for example the model they were exported from) in the same run. ``reference``
    (the probabilities of the model the graph came from) is compared with each graph's.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(float_path), str(int8_path), weight_type=QuantType.QInt8)
    graphs = {"float32": Path(float_path), "int8": Path(int8_path)}
    report: dict[str, Any] = {"rule": (f"ship INT8 if the cascade's validation accuracy falls by at most "
                                       f"{INT8_MAX_ACCURACY_LOSS_POINTS} point and the batch-1 median "
                                       f"latency falls by at least {INT8_MIN_LATENCY_GAIN:.0%}")}
    if reference is not None:
        report["reference"] = reference_name
    choices, probabilities = {}, {}
    for name, path in graphs.items():
        t0 = time.perf_counter()
        probabilities[name] = load_onnx_scorer(path, tokenizer_path, max_length=max_length, pad_id=pad_id,
                                                  threads=2)(validation.texts)
        choices[name] = choose_cascade(validation.ours, probabilities[name], validation.truth)
        report[name] = {
            "bytes": path.stat().st_size,
            "minilm_accuracy": round(float((probabilities[name].argmax(axis=1) == validation.truth).mean()), 4),
            "cascade_accuracy": round(choices[name].validation_accuracy, 4),
            "combination": choices[name].combination, "threshold": choices[name].threshold}
        if reference is not None:
            versus = compare_probabilities(reference, probabilities[name])
            report[name].update(max_abs_diff_vs_reference=float(versus.max_abs_diff),
                                same_answer_as_reference=round(versus.argmax_agreement, 4))
        log(f"{name} graph on {len(validation.texts)} validation texts ({time.perf_counter() - t0:.0f}s): "
            f"{report[name]}")
    scorers = {name: load_onnx_scorer(path, tokenizer_path, max_length=max_length, pad_id=pad_id, threads=1)
               for name, path in graphs.items()}
    scorers.update(extra_scorers or {})
    latency = time_batch_of_one(scorers, validation.texts)
    for name, measured in latency.items():
        report.setdefault(name, {})
        report[name].update(latency_ms_median=round(measured.median_ms, 3), latency_ms_p90=round(measured.p90_ms, 3))
        log(f"{name}: batch-1 latency on one thread over {measured.prompts} validation texts: "
            f"median {measured.median_ms:.2f} ms, p90 {measured.p90_ms:.2f} ms")
    adopted = adopt_int8(choices["float32"].validation_accuracy, choices["int8"].validation_accuracy,
                            latency["float32"].median_ms, latency["int8"].median_ms)
    report["adopted"] = adopted
    log(f"INT8 {'adopted' if adopted else 'not adopted'} by the rule")
    return Int8Measurement(report=report, choices=choices, probabilities=probabilities, adopted=adopted)


def quantize_by_rule(directory: Path, validation: ValidationData, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Applies the INT8 rule to a written float32 cascade directory whose model was trained without
    the validation split (the fine-tuned model); returns its cascade.json, rewritten.

    If the rule adopts INT8, the quantized graph (checked with ``check_quantized`` against the float32
    graph on every validation text) replaces model.onnx and the cascade is the one chosen on its own
    validation probabilities; either way the measurement is recorded under "int8". The directory is
    rewritten beside itself and swapped in, so a failure leaves it as it was.
    """
    directory = Path(directory)
    metadata = read_metadata(directory)
    if metadata.get("quantized"):
        raise ValueError(f"{directory}: already quantized")
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}-", dir=directory.parent))
    scratch = Path(tempfile.mkdtemp(prefix=".cascade-scratch-", dir=directory.parent))
    try:
        int8 = measure_int8(directory / MODEL_FILE, scratch / "model.int8.onnx",
                            tokenizer_path=directory / TOKENIZER_FILE, max_length=int(metadata["max_length"]),
                            pad_id=int(metadata["pad_id"]), validation=validation, log=log)
        report = dict(int8.report)
        shutil.copyfile(directory / TOKENIZER_FILE, staging / TOKENIZER_FILE)
        if int8.adopted:
            ok, described = check_quantized(int8.probabilities["float32"], int8.probabilities["int8"])
            log(f"INT8 graph written instead of float32: {described}")
            if not ok:
                raise RuntimeError(f"the INT8 graph fails its check ({described}); {directory} was left as it was")
            report["written_check"] = described
            shutil.move(str(scratch / "model.int8.onnx"), str(staging / MODEL_FILE))
        else:
            shutil.copyfile(directory / MODEL_FILE, staging / MODEL_FILE)
        name = "int8" if int8.adopted else "float32"
        choice = int8.choices[name]
        extra = {key: value for key, value in metadata.items() if key not in MANIFEST_KEYS}
        extra["validation"] = {
            **metadata.get("validation", {}), "router_accuracy": round(choice.validation_accuracy_fast, 4),
            "minilm_accuracy": report[name]["minilm_accuracy"],
            "cascade_accuracy": round(choice.validation_accuracy, 4),
            "fraction_cascaded": round(choice.validation_fraction, 4), "rows": [list(r) for r in choice.rows]}
        extra.update(int8=report, quantized=int8.adopted)
        rewritten = build_metadata(
            staging, labels=metadata["labels"], max_length=int(metadata["max_length"]),
            pad_id=int(metadata["pad_id"]), combination=choice.combination, threshold=choice.threshold,
            description=metadata["description"] + ("; INT8 weights (onnxruntime dynamic quantization)"
                                                   if int8.adopted else ""),
            version_prefix=str(metadata["version"]).rsplit("-", 2)[0], extra=extra)
        write_metadata(staging, rewritten)
        previous = Path(tempfile.mkdtemp(prefix=f".{directory.name}-previous-", dir=directory.parent))
        previous.rmdir()
        directory.rename(previous)
        try:
            staging.rename(directory)
        except OSError:
            previous.rename(directory)
            raise
        shutil.rmtree(previous, ignore_errors=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    log(f"wrote {directory} ({'INT8' if int8.adopted else 'float32'}, model.onnx "
        f"{(directory / MODEL_FILE).stat().st_size / 1e6:.1f} MB), version {rewritten['version']}")
    return rewritten
