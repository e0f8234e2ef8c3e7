"""Writes the linear classifier as an ONNX graph: an embedding bag, a bias and a softmax.

Inputs are the featurizer's flat output, so one call scores a whole batch::

    feature_ids     int64[N]   hashed n-gram ids in [0, num_buckets)
    feature_weights float[N]   their weights
    segment_ids     int64[N]   which prompt each feature belongs to, in [0, B)
    prompt_count    int64[1]   B (a prompt with no features still gets a row)

    rows   = Gather(table, feature_ids) * feature_weights[:, None]          [N, K]
    logits = ScatterND(zeros[B, K], segment_ids[:, None], rows, add) + bias  [B, K]
    probabilities = Softmax(logits, axis=-1)                                 [B, K]

With semantic features there is a second bag over the word featurizer's output (``word_ids``,
``word_weights``, ``word_segments``; the weights are squared in the graph, so the bag is the mean
over the prompt's words) and a second table whose rows are the distilled word vectors
already multiplied by the head (see ``router_svc.training.semantic``); the two bags add up
before the bias. The temperature fitted on validation data is folded into both tables and the
bias, so the softmax output is the calibrated score.

The tables may be stored as float16 to halve the artifact; only the gathered rows are cast, so
the cost per call does not grow with the tables.
"""
from __future__ import annotations

import numpy as np

OPSET = 18
INPUT_NAMES = ("feature_ids", "feature_weights", "segment_ids", "prompt_count")
WORD_INPUT_NAMES = ("word_ids", "word_weights", "word_segments")
OUTPUT_NAME = "probabilities"


def _bag(prefix: str, table: str, ids: str, weights: str, segments: str, dtype, tensor_proto) -> list:
    """Nodes computing ScatterND-add of table[ids] * weights into the rows of ``zeros``."""
    from onnx import helper

    nodes = [helper.make_node("Gather", [table, ids], [f"{prefix}_gathered"], axis=0)]
    gathered = f"{prefix}_gathered"
    if dtype == np.float16:
        nodes.append(helper.make_node("Cast", [gathered], [f"{prefix}_gathered_f32"], to=tensor_proto.FLOAT))
        gathered = f"{prefix}_gathered_f32"
    nodes += [
        helper.make_node("Unsqueeze", [weights, "last_axis"], [f"{prefix}_weights_column"]),
        helper.make_node("Mul", [gathered, f"{prefix}_weights_column"], [f"{prefix}_rows"]),
        helper.make_node("Unsqueeze", [segments, "last_axis"], [f"{prefix}_index"]),
        helper.make_node("ScatterND", ["zeros", f"{prefix}_index", f"{prefix}_rows"], [f"{prefix}_bag"],
                         reduction="add"),
    ]
    return nodes


def build_model(table: np.ndarray, bias: np.ndarray, *, labels: tuple[str, ...], doc: str = "",
                word_table: np.ndarray | None = None):
    """Returns an ``onnx.ModelProto``; ``table`` is [num_buckets, K] float32 or float16.

    ``word_table`` ([word_buckets, K], same dtype) adds the semantic bag and its three inputs.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    if table.ndim != 2 or bias.shape != (table.shape[1],) or len(labels) != table.shape[1]:
        raise ValueError(f"table {table.shape}, bias {bias.shape} and {len(labels)} labels disagree")
    if table.dtype not in (np.float32, np.float16):
        raise ValueError(f"table must be float32 or float16, got {table.dtype}")
    num_classes = table.shape[1]
    initializers = [
        numpy_helper.from_array(np.ascontiguousarray(table), "table"),
        numpy_helper.from_array(bias.astype(np.float32), "bias"),
        numpy_helper.from_array(np.array([num_classes], dtype=np.int64), "num_classes"),
        numpy_helper.from_array(np.array([-1], dtype=np.int64), "last_axis"),
    ]
    if word_table is not None:
        if word_table.ndim != 2 or word_table.shape[1] != num_classes or word_table.dtype != table.dtype:
            raise ValueError(f"word table {word_table.shape} {word_table.dtype} does not match "
                             f"table {table.shape} {table.dtype}")
        initializers.append(numpy_helper.from_array(np.ascontiguousarray(word_table), "word_table"))
    nodes = [
        helper.make_node("Concat", ["prompt_count", "num_classes"], ["logits_shape"], axis=0),
        helper.make_node("ConstantOfShape", ["logits_shape"], ["zeros"],
                         value=helper.make_tensor("zero", TensorProto.FLOAT, [1], [0.0])),
        *_bag("ngram", "table", "feature_ids", "feature_weights", "segment_ids", table.dtype, TensorProto),
    ]
    bag = "ngram_bag"
    inputs = [
        helper.make_tensor_value_info("feature_ids", TensorProto.INT64, ["N"]),
        helper.make_tensor_value_info("feature_weights", TensorProto.FLOAT, ["N"]),
        helper.make_tensor_value_info("segment_ids", TensorProto.INT64, ["N"]),
        helper.make_tensor_value_info("prompt_count", TensorProto.INT64, [1]),
    ]
    if word_table is not None:
        # The featurizer weighs each of n words 1/sqrt(n); squared, the bag is the mean word vector.
        nodes += [helper.make_node("Mul", ["word_weights", "word_weights"], ["word_mean_weights"]),
                  *_bag("word", "word_table", "word_ids", "word_mean_weights", "word_segments",
                        word_table.dtype, TensorProto),
                  helper.make_node("Add", ["ngram_bag", "word_bag"], ["bags"])]
        bag = "bags"
        inputs += [
            helper.make_tensor_value_info("word_ids", TensorProto.INT64, ["W"]),
            helper.make_tensor_value_info("word_weights", TensorProto.FLOAT, ["W"]),
            helper.make_tensor_value_info("word_segments", TensorProto.INT64, ["W"]),
        ]
    nodes += [
        helper.make_node("Add", [bag, "bias"], ["logits"]),
        helper.make_node("Softmax", ["logits"], [OUTPUT_NAME], axis=-1),
    ]
    graph = helper.make_graph(
        nodes, "expert_router_classifier",
        inputs=inputs,
        outputs=[helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["B", num_classes])],
        initializer=initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="expert-router", doc_string=doc)
    # IR version 10 keeps the file loadable by onnxruntime releases older than the onnx package.
    model.ir_version = min(model.ir_version, 10)
    helper.set_model_props(model, {"labels": ",".join(labels)})
    onnx.checker.check_model(model, full_check=True)
    return model


def linear_probabilities(table: np.ndarray, bias: np.ndarray, ids: np.ndarray, weights: np.ndarray,
                         segments: np.ndarray, prompt_count: int,
                         word_part: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None
                         ) -> np.ndarray:
    """The same computation in numpy (float64): the reference the ONNX graph is checked against.

    ``word_part`` is (word_table, word_ids, word_weights, word_segments) for a semantic model.
    """
    logits = np.zeros((prompt_count, table.shape[1]), dtype=np.float64)
    np.add.at(logits, segments, table[ids].astype(np.float64) * weights.astype(np.float64)[:, None])
    if word_part is not None:
        word_table, word_ids, word_weights, word_segments = word_part
        np.add.at(logits, word_segments,
                  word_table[word_ids].astype(np.float64) * (word_weights.astype(np.float64) ** 2)[:, None])
    logits += bias.astype(np.float64)
    logits -= logits.max(axis=1, keepdims=True)
    exp = np.exp(logits)
    return exp / exp.sum(axis=1, keepdims=True)
