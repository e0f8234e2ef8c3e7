"""A TINY REAL cascade model, written by the tests (and by benchmarks/cascade_cost.py's default run).

It follows the cascade-model contract exactly (router_svc/cascade.py): ``model.onnx`` is a real
ONNX graph run by onnxruntime, ``tokenizer.json`` a real Hugging Face ``tokenizers`` file, and
``cascade.json`` carries their real sha256 digests. The graph is a bag-of-words classifier: each
token id picks a row of a [vocabulary, labels] table of logits (Gather), the rows are averaged over
the attention mask, and a Softmax gives the probabilities. A few known words push known labels
("ibuprofen" -> medicine, "landlord" -> law, "tuple" -> code, ...); every other word is unknown and
neutral. So the tests can predict what the cascade says about a prompt: "side effects of ibuprofen"
is medicine with high probability, a prompt of unknown words is uniform.

A stand-in for the MiniLM + logistic regression export the router serves in production, which is
too large to build in a unit test; the router code under test is the same for both.
``GatedCascade`` wraps a loaded model to make it slow (it waits for the test) or broken.
"""
from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

LABELS = ("code", "math", "science", "medicine", "law", "general")
# Words that push one label; chosen to be absent from the FAKE classifier's keywords
# (tests/helpers.py), so the fast answer and the cascade's are independent in the tests.
WORDS: Mapping[str, str] = {
    "tuple": "code", "list": "code", "compile": "code",
    "derivative": "math", "train": "math", "mph": "math",
    "gravity": "science", "molecule": "science",
    "ibuprofen": "medicine", "aspirin": "medicine", "fever": "medicine",
    "landlord": "law", "deposit": "law", "lawsuit": "law",
    "poem": "general", "birthday": "general",
}
PAD, UNKNOWN = "[PAD]", "[UNK]"
# The logit a known word adds to its label: large enough that one such word among a dozen unknown
# ones still makes its label the clear winner after the masked mean.
WORD_LOGIT = 40.0
OPSET = 17


def vocabulary(words: Sequence[str] = tuple(WORDS)) -> dict[str, int]:
    """Token -> id: the pad token first (id 0), the unknown token, then the known words."""
    return {PAD: 0, UNKNOWN: 1, **{word: i + 2 for i, word in enumerate(words)}}


def build_tokenizer(vocab: Mapping[str, int]) -> Any:
    """A WordLevel tokenizer: lower-cased, split on whitespace and punctuation, unknown words -> [UNK]."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

    tokenizer = Tokenizer(models.WordLevel(vocab=dict(vocab), unk_token=UNKNOWN))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    return tokenizer


def build_graph(table: np.ndarray, *, output_name: str = "probabilities",
                input_names: tuple[str, str] = ("input_ids", "attention_mask"), id_type: str = "int64",
                softmax: bool = True, extra_input: str | None = None) -> bytes:
    """The bag-of-words graph over ``table`` ([vocabulary, labels] logits), serialized.

    The keyword arguments make the broken variants the refusal tests need: other names, int32
    inputs, logits instead of probabilities (``softmax=False``), a third input (``extra_input``).
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    ids_name, mask_name = input_names
    elem_type = {"int64": TensorProto.INT64, "int32": TensorProto.INT32}[id_type]
    nodes = [
        helper.make_node("Gather", ["table", ids_name], ["rows"], axis=0),  # [B, S, K]
        helper.make_node("Cast", [mask_name], ["mask_f"], to=TensorProto.FLOAT),  # [B, S]
        helper.make_node("Unsqueeze", ["mask_f", "axis2"], ["mask3"]),  # [B, S, 1]
        helper.make_node("Mul", ["rows", "mask3"], ["masked"]),
        helper.make_node("ReduceSum", ["masked", "axis1"], ["summed"], keepdims=0),  # [B, K]
        helper.make_node("ReduceSum", ["mask_f", "axis1"], ["count"], keepdims=1),  # [B, 1]
        helper.make_node("Max", ["count", "one"], ["count_safe"]),  # an all-padding row divides by 1
        helper.make_node("Div", ["summed", "count_safe"], ["mean"]),
        helper.make_node("Softmax", ["mean"], [output_name], axis=-1) if softmax
        else helper.make_node("Identity", ["mean"], [output_name]),
    ]
    initializers = [
        numpy_helper.from_array(np.asarray(table, dtype=np.float32), "table"),
        numpy_helper.from_array(np.array([2], dtype=np.int64), "axis2"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"),
        numpy_helper.from_array(np.array([1.0], dtype=np.float32), "one"),
    ]
    graph = helper.make_graph(
        nodes, "tiny_bag_of_words_cascade",
        [helper.make_tensor_value_info(ids_name, elem_type, ["batch", "sequence"]),
         helper.make_tensor_value_info(mask_name, elem_type, ["batch", "sequence"]),
         *([helper.make_tensor_value_info(extra_input, TensorProto.INT64, ["batch", "sequence"])]
           if extra_input else [])],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, ["batch", table.shape[1]])],
        initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="expert-router-tests")
    model.ir_version = 8  # what onnxruntime >= 1.15 reads for opset 17
    onnx.checker.check_model(model)
    return model.SerializeToString()


def word_table(vocab: Mapping[str, int], labels: Sequence[str] = LABELS,
               words: Mapping[str, str] = WORDS) -> np.ndarray:
    table = np.zeros((len(vocab), len(labels)), dtype=np.float32)
    for word, label in words.items():
        table[vocab[word], list(labels).index(label)] = WORD_LOGIT
    return table


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_manifest(directory: Path, **changes: Any) -> dict[str, Any]:
    """(Re)writes cascade.json with the current files' digests, then ``changes`` on top."""
    directory = Path(directory)
    path = directory / "cascade.json"
    manifest = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    manifest["files"] = {name: sha256(directory / name) for name in ("model.onnx", "tokenizer.json")
                         if (directory / name).exists()}
    manifest.update(changes)
    path.write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    return manifest


def write_cascade_model(directory: Path | str, *, labels: Sequence[str] = LABELS, threshold: float = 0.5,
                        combination: str = "average", max_length: int = 32, version: str = "tiny-bow-1",
                        words: Mapping[str, str] = WORDS) -> Path:
    """Writes the tiny cascade model into ``directory`` (created); returns the directory."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    vocab = vocabulary(tuple(words))
    build_tokenizer(vocab).save(str(directory / "tokenizer.json"))
    (directory / "model.onnx").write_bytes(build_graph(word_table(vocab, labels, words)))
    (directory / "cascade.json").write_text(json.dumps({
        "format": "expert-router-cascade/1",
        "version": version,
        "labels": list(labels),
        "max_length": max_length,
        "pad_id": vocab[PAD],
        "combination": combination,
        "threshold": threshold,
        "description": "tests: a bag-of-words classifier over a few known words",
        "validation": {"note": "an extra key the router ignores"},
    }), encoding="utf-8")
    write_manifest(directory)
    return directory


class GatedCascade:
    """FAKE of router_svc.cascade.CascadeModel's scoring surface (version, labels, threshold,
    combination, predict_batch) that scores with a real model (the tiny one), but only once ``gate``
    opens; ``fail`` makes it raise instead, ``shape_override`` return zeros of that shape. Records
    which thread each run used."""

    def __init__(self, model: Any, *, open_gate: bool = False, combination: str | None = None) -> None:
        self._model = model
        self.version = model.version
        self.labels = model.labels
        self.threshold = model.threshold
        self.combination = combination or model.combination
        self.gate = threading.Event()
        if open_gate:
            self.gate.set()
        self.started = threading.Semaphore(0)
        self.runs = 0
        self.finished = 0
        self.threads: list[str] = []
        self.fail: Exception | None = None
        self.shape_override: tuple[int, int] | None = None

    def predict_batch(self, texts: Sequence[str]) -> np.ndarray:
        self.threads.append(threading.current_thread().name)
        self.runs += 1
        self.started.release()
        assert self.gate.wait(30), "the test never opened the gate"
        try:
            if self.fail is not None:
                raise self.fail
            if self.shape_override is not None:
                return np.zeros(self.shape_override, dtype=np.float32)
            return self._model.predict_batch(texts)
        finally:
            self.finished += 1

    async def wait_started(self) -> None:
        from tests.helpers import eventually

        await eventually(lambda: self.started.acquire(blocking=False), what="a cascade run started")
