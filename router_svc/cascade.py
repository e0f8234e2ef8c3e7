"""The optional cascade: prompts the fast classifier is unsure of, rescored by a slower transformer model.

The fast classifier (router_svc.classifier) answers in microseconds; a MiniLM + logistic regression
model exported to ONNX reads prompts differently and, averaged with it on the prompts whose best
fast score is low, routes more of them right (docs/classifier.md, "Cascade"). It costs tens of
milliseconds of CPU per prompt, so it is off by default and, when on, bounded: it runs in its own
thread, never on the event loop, and when ``max_pending`` prompts are already waiting for it the
fast answer stands.

A cascade model is a directory whose format both sides agree on (its producer is ``make
train-cascade``): ``model.onnx`` (inputs ``input_ids`` and ``attention_mask``, int64 [batch,
sequence]; output ``probabilities``, float32 [batch, labels], softmax applied), ``tokenizer.json``
(Hugging Face ``tokenizers``) and ``cascade.json`` (format, version, labels in the router's order,
max_length, pad_id, combination, threshold, the sha256 of the two other files, a description).
``CascadeModel.load`` refuses, at start or at a reload, every directory that does not follow it,
with a ``CascadeError`` naming the file and what is wrong; a refused reload keeps the running state.

``CascadeScorer`` is the run-time side: the bound, the thread, the metrics, and the rule that a
failure of the cascade never fails a request (the fast answer stands, the error is logged once
per run of failures and counted).
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import re
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from router_svc.classifier import _choose_providers, import_onnxruntime

if TYPE_CHECKING:
    from router_svc.metrics import RouterMetrics

log = logging.getLogger("router_svc.cascade")

FORMAT = "expert-router-cascade/1"
MANIFEST_FILE = "cascade.json"
MODEL_FILE = "model.onnx"
TOKENIZER_FILE = "tokenizer.json"
#: The keys every cascade.json has; a writer may add others (its measurements), which the router ignores.
MANIFEST_KEYS = ("format", "version", "labels", "max_length", "pad_id", "combination", "threshold", "files",
                 "description")
INPUT_NAMES = ("input_ids", "attention_mask")
OUTPUT_NAME = "probabilities"
COMBINATIONS = ("average", "replace")
MAX_LENGTH_RANGE = (8, 512)
# How far a probability row's sum may be from 1 (float32 softmax over a handful of labels is far closer).
SUM_TOLERANCE = 1e-3
# The texts run once at load: a short prompt (the contract's probe), and one longer than any
# max_length, so a graph that cannot take max_length tokens is refused at start, not at the first
# long prompt.
PROBE_TEXT = "What is the capital of France?"
LONG_PROBE_TEXT = " ".join(["a long prompt to check truncation"] * 200)
_SHA256 = re.compile(r"[0-9a-f]{64}")
_ONNX_TYPES = {"input_ids": "tensor(int64)", "attention_mask": "tensor(int64)", OUTPUT_NAME: "tensor(float)"}


class CascadeError(ValueError):
    """A cascade model directory that the router refuses; the message names the file and what is wrong.

    A ValueError, as the classifier's refusals are: start-up reports it and exits, a reload logs it
    and keeps the running state.
    """


@dataclass(frozen=True)
class CascadeManifest:
    """cascade.json, checked: every key of the contract with its type (extra keys are ignored)."""

    version: str
    labels: tuple[str, ...]
    max_length: int
    pad_id: int
    combination: str
    threshold: float
    files: Mapping[str, str]
    description: str

    @classmethod
    def parse(cls, data: Any, where: str) -> CascadeManifest:
        """Raises CascadeError (prefixed with ``where``) for a missing, ill-typed or out-of-range key."""

        def refuse(what: str) -> CascadeError:
            return CascadeError(f"{where}: {what}")

        if not isinstance(data, Mapping):
            raise refuse(f"must be a JSON object, got {type(data).__name__}")
        missing = [key for key in MANIFEST_KEYS if key not in data]
        if missing:
            raise refuse(f"missing key(s) {', '.join(missing)}")
        if data["format"] != FORMAT:
            raise refuse(f"unknown format {data['format']!r}; this router reads {FORMAT!r}")
        version = data["version"]
        if not isinstance(version, str) or not version.strip():
            raise refuse(f"'version' must be a non-empty string, got {version!r}")
        labels = data["labels"]
        if (not isinstance(labels, list) or not labels
                or not all(isinstance(label, str) and label for label in labels)):
            raise refuse(f"'labels' must be a non-empty list of non-empty strings, got {labels!r}")
        if len(set(labels)) != len(labels):
            raise refuse(f"'labels' has duplicates: {labels}")
        max_length = data["max_length"]
        low, high = MAX_LENGTH_RANGE
        if not _is_int(max_length) or not low <= max_length <= high:
            raise refuse(f"'max_length' must be an integer in [{low}, {high}], got {max_length!r}")
        pad_id = data["pad_id"]
        if not _is_int(pad_id) or pad_id < 0:
            raise refuse(f"'pad_id' must be an integer >= 0, got {pad_id!r}")
        combination = data["combination"]
        if combination not in COMBINATIONS:
            raise refuse(f"'combination' must be one of {', '.join(COMBINATIONS)}, got {combination!r}")
        threshold = data["threshold"]
        if (isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not math.isfinite(threshold)
                or not 0.0 < threshold <= 1.0):
            raise refuse(f"'threshold' must be a number in (0, 1], got {threshold!r}")
        files = data["files"]
        if not isinstance(files, Mapping):
            raise refuse(f"'files' must be an object of file name to sha256, got {type(files).__name__}")
        for name in (MODEL_FILE, TOKENIZER_FILE):
            digest = files.get(name)
            if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
                raise refuse(f"'files' must give {name}'s sha256 as 64 lowercase hex digits, got {digest!r}")
        description = data["description"]
        if not isinstance(description, str):
            raise refuse(f"'description' must be a string, got {type(description).__name__}")
        return cls(version=version, labels=tuple(labels), max_length=max_length, pad_id=pad_id,
                   combination=combination, threshold=float(threshold), files=dict(files), description=description)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class CascadeModel:
    """A loaded, checked cascade model: tokenizer + ONNX session. ``predict_batch`` is thread-safe
    (the tokenizer's settings are fixed at load, ``InferenceSession.run`` may be called from many threads)."""

    def __init__(self, directory: Path, manifest: CascadeManifest, tokenizer: Any, session: Any) -> None:
        self.directory = directory
        self.manifest = manifest
        self._tokenizer = tokenizer
        self._session = session
        self._run = session.run
        self._output_names = [OUTPUT_NAME]
        self._num_labels = len(manifest.labels)
        self.provider: str = session.get_providers()[0]

    @classmethod
    def load(cls, directory: Path | str, *, labels: Sequence[str], threads: int = 1,
             providers: Sequence[str] | None = None) -> CascadeModel:
        """Loads and checks ``directory`` against the contract; ``labels``: the router classifier's.

        ``threads``: onnxruntime's intra-op threads for one run. Raises CascadeError for anything
        that does not follow the contract, each message naming the file.
        """
        directory = Path(directory)
        where = f"cascade model {directory}"
        if not directory.is_dir():
            raise CascadeError(f"{where}: not a directory")
        manifest_path = directory / MANIFEST_FILE
        manifest = cls._read_manifest(manifest_path, where)
        if tuple(manifest.labels) != tuple(labels):
            same_set = sorted(manifest.labels) == sorted(labels)
            raise CascadeError(
                f"{where}: {MANIFEST_FILE}: labels {list(manifest.labels)} differ from the router classifier's "
                f"{list(labels)} ({'same labels in another order' if same_set else 'not the same labels'}): "
                "the cascade's probability columns must be the classifier's, in its order")
        contents = {}
        for name in (MODEL_FILE, TOKENIZER_FILE):
            path = directory / name
            if not path.is_file():
                raise CascadeError(f"{where}: {name}: missing")
            contents[name] = path.read_bytes()
            digest = hashlib.sha256(contents[name]).hexdigest()
            if digest != manifest.files[name]:
                raise CascadeError(f"{where}: {name}: sha256 {digest} differs from {manifest.files[name]} in "
                                   f"{MANIFEST_FILE}: the files do not belong together (or one is damaged)")
        tokenizer = cls._tokenizer(contents[TOKENIZER_FILE], manifest, where)
        session = cls._session(contents[MODEL_FILE], threads, providers, where)
        model = cls(directory, manifest, tokenizer, session)
        model._probe(where)
        return model

    @staticmethod
    def _read_manifest(path: Path, where: str) -> CascadeManifest:
        if not path.is_file():
            raise CascadeError(f"{where}: {MANIFEST_FILE}: missing")
        try:
            data = json.loads(path.read_bytes().decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CascadeError(f"{where}: {MANIFEST_FILE}: not valid UTF-8 JSON (malformed or truncated): "
                               f"{exc}") from None
        return CascadeManifest.parse(data, f"{where}: {MANIFEST_FILE}")

    @staticmethod
    def _tokenizer(content: bytes, manifest: CascadeManifest, where: str) -> Any:
        try:
            from tokenizers import Tokenizer
        except ImportError:  # a base dependency: only a broken install lacks it
            raise CascadeError(f"{where}: the cascade needs the 'tokenizers' package, which is not "
                               "installed (pip install 'tokenizers>=0.22,<0.23')") from None
        try:
            tokenizer = Tokenizer.from_str(content.decode("utf-8"))
        except Exception as exc:  # noqa: BLE001 - tokenizers raises its own Exception subclass for every parse error
            raise CascadeError(f"{where}: {TOKENIZER_FILE}: not a Hugging Face tokenizers file: {exc}") from None
        vocabulary = tokenizer.get_vocab_size(with_added_tokens=True)
        if manifest.pad_id >= vocabulary:
            raise CascadeError(f"{where}: {MANIFEST_FILE}: pad_id {manifest.pad_id} is outside "
                               f"{TOKENIZER_FILE}'s vocabulary of {vocabulary} tokens")
        # The contract: the router truncates (special tokens included) and pads itself, whatever the
        # file says, so that one prompt's tokens never depend on how the file was saved.
        tokenizer.no_padding()
        tokenizer.enable_truncation(max_length=manifest.max_length)
        return tokenizer

    @staticmethod
    def _session(content: bytes, threads: int, providers: Sequence[str] | None, where: str) -> Any:
        try:
            ort = import_onnxruntime()
        except ValueError as exc:
            raise CascadeError(f"{where}: {exc}") from None
        options = ort.SessionOptions()
        # One prompt at a time in one thread of its own (CascadeScorer); intra-op threads are the
        # operator's choice (--cascade-threads): spare cores make one run faster.
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        chosen = list(providers) if providers is not None else _choose_providers(ort.get_available_providers())
        try:
            session = ort.InferenceSession(content, sess_options=options, providers=chosen)
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
            raise CascadeError(f"{where}: {MODEL_FILE}: cannot be loaded by onnxruntime (corrupt or truncated?): "
                               f"{exc}") from None
        inputs = {i.name: i.type for i in session.get_inputs()}
        outputs = {o.name: o.type for o in session.get_outputs()}
        expected_inputs = {name: _ONNX_TYPES[name] for name in INPUT_NAMES}
        expected_outputs = {OUTPUT_NAME: _ONNX_TYPES[OUTPUT_NAME]}
        if inputs != expected_inputs or outputs != expected_outputs:
            raise CascadeError(f"{where}: {MODEL_FILE}: has inputs {inputs} and outputs {outputs}; a cascade "
                               f"model has inputs {expected_inputs} and outputs {expected_outputs}")
        return session

    def _probe(self, where: str) -> None:
        """Runs the short probe and the over-long one; refuses what is not [1, labels] probabilities."""
        quiet = import_onnxruntime().RunOptions()
        quiet.log_severity_level = 4  # the failure is reported in the refusal; do not log it twice
        for text, what in ((PROBE_TEXT, "a short prompt"),
                           (LONG_PROBE_TEXT, f"a prompt truncated to max_length ({self.manifest.max_length}) tokens")):
            try:
                ids, mask = self.encode([text])
                probabilities = np.asarray(self._run(self._output_names, {"input_ids": ids, "attention_mask": mask},
                                                     quiet)[0], dtype=np.float32)
            except Exception as exc:  # noqa: BLE001 - onnxruntime's own types: a graph that cannot run these shapes
                raise CascadeError(f"{where}: {MODEL_FILE}: fails on {what}: {exc}") from None
            expected_shape = (1, self._num_labels)
            if probabilities.shape != expected_shape:
                raise CascadeError(f"{where}: {MODEL_FILE}: returns shape {list(probabilities.shape)} for {what}; "
                                   f"{MANIFEST_FILE} lists {self._num_labels} labels, so [1, {self._num_labels}] "
                                   "was expected")
            row = probabilities[0]
            if not np.all(np.isfinite(row)) or np.any(row < -SUM_TOLERANCE) or abs(float(row.sum()) - 1.0) > SUM_TOLERANCE:
                raise CascadeError(f"{where}: {MODEL_FILE}: returns {row.tolist()} for {what}, which are not "
                                   "probabilities (finite, non-negative, summing to 1): is the softmax in the graph?")

    @property
    def version(self) -> str:
        return self.manifest.version

    @property
    def labels(self) -> tuple[str, ...]:
        return self.manifest.labels

    @property
    def threshold(self) -> float:
        return self.manifest.threshold

    @property
    def combination(self) -> str:
        return self.manifest.combination

    def encode(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """``input_ids`` and ``attention_mask`` for ``texts``: truncated, padded with ``pad_id`` to the longest."""
        encodings = self._tokenizer.encode_batch(list(texts))
        width = max(1, max(len(encoding.ids) for encoding in encodings))
        ids = np.full((len(encodings), width), self.manifest.pad_id, dtype=np.int64)
        mask = np.zeros((len(encodings), width), dtype=np.int64)
        for row, encoding in enumerate(encodings):
            length = len(encoding.ids)
            ids[row, :length] = encoding.ids
            mask[row, :length] = 1
        return ids, mask

    def predict_batch(self, texts: Sequence[str]) -> np.ndarray:
        """float32 [len(texts), len(labels)] probabilities, columns in the router classifier's order."""
        if not texts:
            return np.empty((0, self._num_labels), dtype=np.float32)
        ids, mask = self.encode(texts)
        probabilities = self._run(self._output_names, {"input_ids": ids, "attention_mask": mask})[0]
        return np.asarray(probabilities, dtype=np.float32)

    def __repr__(self) -> str:
        m = self.manifest
        return (f"CascadeModel(version={m.version!r}, threshold={m.threshold:g}, combination={m.combination!r}, "
                f"provider={self.provider!r})")


def combine(fast: np.ndarray, slow: np.ndarray, combination: str) -> np.ndarray:
    """The scores the decision is made from: the mean of both rows ("average") or the cascade's ("replace")."""
    if combination == "replace":
        return np.ascontiguousarray(slow, dtype=np.float32)
    return np.ascontiguousarray((np.asarray(fast, dtype=np.float32) + np.asarray(slow, dtype=np.float32)) / 2)


class CascadeScorer:
    """Rescores one prompt at a time in a thread of its own, at most ``max_pending`` waiting or running.

    ``score`` returns the cascade's row, or None when the fast answer must stand: the bound is
    reached (``skipped_busy``) or the model raised (``error``; logged once per run of failures).
    A caller cancelled while its prompt is being scored leaves the thread to finish; the result is
    dropped and the slot is freed when the thread is done, so the bound counts the real work.
    """

    def __init__(self, model: Any, *, threshold: float | None = None, max_pending: int = 4,
                 metrics: RouterMetrics | None = None) -> None:
        if max_pending < 1:
            raise ValueError(f"max_pending must be >= 1, got {max_pending}")
        self.model = model
        self.version: str = model.version
        self.combination: str = model.combination
        self.threshold: float = model.threshold if threshold is None else threshold
        self.max_pending = max_pending
        self._num_labels = len(model.labels)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cascade")
        self._lock = threading.Lock()  # the pending count is freed from the worker thread
        self._pending = 0
        self._failing = False
        self._closed = False
        if metrics is None:
            from router_svc.metrics import RouterMetrics

            metrics = RouterMetrics()
        self._outcomes = {outcome: metrics.cascade_prompts.labels(outcome)
                          for outcome in ("scored", "skipped_busy", "error")}
        self._observe_latency = metrics.cascade_latency.observe

    @property
    def pending(self) -> int:
        """Prompts waiting for the cascade's thread or being scored in it now."""
        return self._pending

    def wanted(self, fast: np.ndarray) -> bool:
        """Whether the fast classifier's row is unsure enough to ask the cascade."""
        return float(fast.max()) < self.threshold

    async def score(self, text: str) -> np.ndarray | None:
        """The cascade's probabilities for ``text``, or None when the fast answer stands."""
        with self._lock:
            if self._closed or self._pending >= self.max_pending:
                busy = True
            else:
                busy = False
                self._pending += 1
        if busy:
            self._outcomes["skipped_busy"].inc()
            return None
        started = time.perf_counter()
        try:
            future = self._executor.submit(self._predict, text)
        except RuntimeError:  # closed meanwhile by a reload: this generation is being retired
            self._release(None)
            self._outcomes["skipped_busy"].inc()
            return None
        future.add_done_callback(self._release)
        try:
            row = await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # the client went away: a queued run is cancelled, a running one finishes unheard
            # Not this request's cancel: close() dropped the queued run (the generation was retired).
            self._outcomes["skipped_busy"].inc()
            return None
        except Exception as exc:  # whatever the model raises: the cascade must never fail a request
            self._outcomes["error"].inc()
            if not self._failing:
                self._failing = True
                log.error("cascade model %s failed; the fast classifier's answers stand until it works again: %s",
                          self.version, exc, exc_info=exc)
            return None
        if self._failing:
            self._failing = False
            log.info("cascade model %s scores prompts again", self.version)
        self._outcomes["scored"].inc()
        self._observe_latency(time.perf_counter() - started)
        return row

    def _predict(self, text: str) -> np.ndarray:
        probabilities = np.asarray(self.model.predict_batch([text]), dtype=np.float32)
        if probabilities.shape != (1, self._num_labels):
            raise RuntimeError(f"cascade model returned shape {probabilities.shape} for one prompt, "
                               f"not (1, {self._num_labels})")
        return probabilities[0]

    def _release(self, _future: Any) -> None:
        with self._lock:
            self._pending -= 1

    async def close(self) -> None:
        """No new prompts; queued ones are cancelled, a running one finishes in its thread."""
        with self._lock:
            self._closed = True
        self._executor.shutdown(wait=False, cancel_futures=True)

    def describe(self) -> str:
        """For the start-up and reload log lines."""
        model = self.model
        return (f"cascade model {self.version} ({getattr(model, 'directory', '?')}): prompts whose best score "
                f"is below {self.threshold:g} are rescored ({self.combination}), at most {self.max_pending} "
                f"pending, provider {getattr(model, 'provider', '?')}")
