"""The prompt classifier at run time: compiled featurizer + ONNX linear model in onnxruntime.

An artifact is a directory with ``model.onnx`` and ``metadata.json`` (labels in output-column
order, featurizer parameters, version, digests). A model with semantic features also names a
``word_featurizer`` (a second, words-only pass of the same compiled featurizer, whose buckets
index the distilled word-vector table inside the ONNX graph; see
``router_svc.training.semantic``). Every mismatch between the files is refused at load with a
message naming the file and what is wrong. The packaged default lives in
``router_svc/classifier_data``. ``Classifier.predict_batch`` is thread-safe: the featurizer keeps
no state between calls and ``InferenceSession.run`` may be called from many threads, so the
servicer can call it from a thread pool, off the event loop.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from core import FeaturizerConfig

DEFAULT_ARTIFACT_DIR = Path(__file__).resolve().parent / "classifier_data"
MODEL_FILE = "model.onnx"
METADATA_FILE = "metadata.json"
INPUT_NAMES = ("feature_ids", "feature_weights", "segment_ids", "prompt_count")
WORD_INPUT_NAMES = ("word_ids", "word_weights", "word_segments")
OUTPUT_NAME = "probabilities"
REQUIRED_METADATA = ("labels", "featurizer", "version", "onnx_sha256")


def validate_metadata(metadata: Any, onnx_bytes: bytes | None = None) -> None:
    """Raises ValueError naming what is missing or wrong in an artifact's metadata.

    A wrongly typed field is a ValueError too: it is a bad artifact file, not a caller's bug.
    """
    if not isinstance(metadata, Mapping):
        raise ValueError(  # noqa: TRY004
            f"classifier metadata must be a JSON object, got {type(metadata).__name__}")
    missing = [key for key in REQUIRED_METADATA if key not in metadata]
    if missing:
        raise ValueError(f"classifier metadata is missing {', '.join(missing)}")
    labels = metadata["labels"]
    if (not isinstance(labels, list) or not labels
            or not all(isinstance(label, str) and label for label in labels)):
        raise ValueError("classifier metadata 'labels' must be a non-empty list of non-empty strings")
    if len(set(labels)) != len(labels):
        raise ValueError(f"classifier metadata 'labels' has duplicates: {labels}")
    if not isinstance(metadata["version"], str) or not metadata["version"]:
        raise ValueError("classifier metadata 'version' must be a non-empty string")
    if not isinstance(metadata["featurizer"], Mapping):
        raise ValueError(  # noqa: TRY004
            "classifier metadata 'featurizer' must be an object of featurizer parameters")
    for key in ("featurizer", "word_featurizer"):
        if key not in metadata:
            continue
        if not isinstance(metadata[key], Mapping):
            raise ValueError(  # noqa: TRY004
                f"classifier metadata {key!r} must be an object of featurizer parameters")
        try:
            FeaturizerConfig.from_dict(metadata[key]).build()
        except (TypeError, ValueError) as exc:
            raise ValueError(f"classifier metadata {key!r} is invalid: {exc}") from None
    if onnx_bytes is not None:
        digest = hashlib.sha256(onnx_bytes).hexdigest()
        if digest != metadata["onnx_sha256"]:
            raise ValueError(f"{MODEL_FILE} has sha256 {digest} but the metadata says "
                             f"{metadata['onnx_sha256']}: the artifact files do not belong together")


def _choose_providers(available: Sequence[str]) -> list[str]:
    if "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def import_onnxruntime() -> Any:
    """The onnxruntime module, or a ValueError that says which install extra brings it.

    onnxruntime is not a base dependency: the `cpu` extra brings onnxruntime and the `gpu` extra
    onnxruntime-gpu, and both provide the same module, so only one of them may be installed.
    """
    try:
        import onnxruntime
    except ImportError:
        raise ValueError("the classifier needs onnxruntime, which is not installed: install the router with "
                         "the 'cpu' extra (pip install 'expert-router[cpu]'), or with the 'gpu' extra "
                         "on a GPU machine") from None
    return onnxruntime


class Classifier:
    """Scores prompts: one probability per expert label, rows summing to 1."""

    def __init__(self, model_bytes: bytes, metadata: Mapping[str, Any], *,
                 providers: Sequence[str] | None = None) -> None:
        ort = import_onnxruntime()

        validate_metadata(metadata, model_bytes)
        self._metadata = dict(metadata)
        self._labels = tuple(metadata["labels"])
        self._version = str(metadata["version"])
        self._featurizer_config = FeaturizerConfig.from_dict(metadata["featurizer"])
        self._featurizer = self._featurizer_config.build()
        self._word_featurizer = (FeaturizerConfig.from_dict(metadata["word_featurizer"]).build()
                                 if "word_featurizer" in metadata else None)

        options = ort.SessionOptions()
        # One prompt batch is microseconds of work: threads would cost more than they save, and
        # the router scales by running one process per core.
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        if providers is None:
            providers = _choose_providers(ort.get_available_providers())
        chosen = list(providers)
        try:
            self._session = ort.InferenceSession(model_bytes, sess_options=options, providers=chosen)
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ValueError(f"{MODEL_FILE} cannot be loaded by onnxruntime: {exc}") from exc
        inputs = tuple(i.name for i in self._session.get_inputs())
        outputs = tuple(o.name for o in self._session.get_outputs())
        expected = INPUT_NAMES + (WORD_INPUT_NAMES if self._word_featurizer is not None else ())
        if sorted(inputs) != sorted(expected) or outputs != (OUTPUT_NAME,):
            raise ValueError(f"{MODEL_FILE} has inputs {inputs} and outputs {outputs}; the metadata "
                             f"({METADATA_FILE}) implies {expected} and ({OUTPUT_NAME!r},)")

        self._provider = self._session.get_providers()[0]
        self._output_names = [OUTPUT_NAME]
        self._transform_batch = self._featurizer.transform_batch
        self._run = self._session.run
        self._empty_probabilities = self._run(self._output_names, self._feeds([], 0))[0]
        if self._empty_probabilities.shape != (0, len(self._labels)):
            raise ValueError(f"{MODEL_FILE} returns {self._empty_probabilities.shape[1:]} scores per "
                             f"prompt but the metadata lists {len(self._labels)} labels")
        self._check_tables()

    def _check_tables(self) -> None:
        """Each embedding table must have exactly as many rows as its featurizer has buckets.

        A smaller table would make onnxruntime fail on the first prompt that hashes past its end;
        a larger one means the featurizer and the table were not trained together. Probed with
        onnxruntime itself (Gather refuses an index past the end), so serving needs no onnx package.
        """
        tables = [("table", "feature", self._featurizer.num_buckets)]
        if self._word_featurizer is not None:
            tables.append(("word_table", "word", self._word_featurizer.num_buckets))
        for table, kind, rows in tables:
            last_fits = self._probe(kind, rows - 1)
            past_end_fits = self._probe(kind, rows)
            if not last_fits or past_end_fits:
                raise ValueError(
                    f"{MODEL_FILE}'s {table} does not have the {rows} rows that {METADATA_FILE}'s "
                    f"{'word_featurizer' if kind == 'word' else 'featurizer'} needs: the artifact "
                    "files do not belong together")

    def _probe(self, kind: str, index: int) -> bool:
        feeds = self._feeds([], 1)
        one = np.array([index], dtype=np.int64)
        if kind == "feature":
            feeds.update(feature_ids=one, feature_weights=np.ones(1, np.float32),
                         segment_ids=np.zeros(1, np.int64))
        else:
            feeds.update(word_ids=one, word_weights=np.ones(1, np.float32),
                         word_segments=np.zeros(1, np.int64))
        ort = import_onnxruntime()

        quiet = ort.RunOptions()
        quiet.log_severity_level = 4  # the refused index is expected; do not log it as an error
        try:
            self._session.run(self._output_names, feeds, quiet)
        except Exception:  # onnxruntime's own exception types  # noqa: BLE001
            return False
        return True

    @classmethod
    def load(cls, directory: Path | str | None = None, *,
             providers: Sequence[str] | None = None) -> Classifier:
        """Loads an artifact directory (default: the one packaged with the router)."""
        directory = Path(directory) if directory is not None else DEFAULT_ARTIFACT_DIR
        model_path, metadata_path = directory / MODEL_FILE, directory / METADATA_FILE
        for path in (model_path, metadata_path):
            if not path.is_file():
                raise ValueError(f"classifier artifact {directory} has no {path.name}")
        try:
            metadata = json.loads(metadata_path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"{metadata_path} is not valid JSON: {exc}") from None
        return cls(model_path.read_bytes(), metadata, providers=providers)

    @property
    def labels(self) -> tuple[str, ...]:
        return self._labels

    @property
    def version(self) -> str:
        return self._version

    @property
    def provider(self) -> str:
        """The onnxruntime execution provider that runs the model."""
        return self._provider

    @property
    def featurizer_config(self) -> FeaturizerConfig:
        return self._featurizer_config

    @property
    def word_featurizer_config(self) -> FeaturizerConfig | None:
        """The words-only featurizer of the semantic part, or None for an n-gram-only model."""
        return (FeaturizerConfig.from_dict(self._metadata["word_featurizer"])
                if "word_featurizer" in self._metadata else None)

    @property
    def metadata(self) -> dict[str, Any]:
        return dict(self._metadata)

    def _feeds(self, texts: Sequence[str], count: int) -> dict[str, np.ndarray]:
        ids, weights, segments = self._transform_batch(texts)
        feeds = {"feature_ids": ids, "feature_weights": weights, "segment_ids": segments,
                 "prompt_count": np.array([count], dtype=np.int64)}
        if self._word_featurizer is not None:
            word_ids, word_weights, word_segments = self._word_featurizer.transform_batch(texts)
            feeds.update(word_ids=word_ids, word_weights=word_weights, word_segments=word_segments)
        return feeds

    def predict_batch(self, texts: Sequence[str]) -> np.ndarray:
        """Returns float32 [len(texts), len(labels)] probabilities; raises ValueError on a non-str."""
        count = len(texts)
        if count == 0:
            return self._empty_probabilities.copy()
        return self._run(self._output_names, self._feeds(texts, count))[0]

    def predict(self, text: str) -> np.ndarray:
        """Returns float32 [len(labels)] probabilities for one prompt."""
        return self.predict_batch((text,))[0]

    def __repr__(self) -> str:
        return f"Classifier(version={self._version!r}, labels={self._labels}, provider={self._provider!r})"
