"""Writes the linear classifier as an ONNX graph: an embedding bag, a bias and a softmax.

Inputs are the featurizer's flat output, so one call scores a whole batch::

    feature_ids     int64[N]   hashed n-gram ids in [0, num_buckets)
    feature_weights float[N]   their weights
    segment_ids     int64[N]   which prompt each feature belongs to, in [0, B)
    prompt_count    int64[1]   B (a prompt with no features still gets a row)

    rows   = Gather(table, feature_ids) * feature_weights[:, None]          [N, K]
    logits = ScatterND(zeros[B, K], segment_ids[:, None], rows, add) + bias  [B, K]
    probabilities = Softmax(logits, axis=-1)                                 [B, K]

The table may be stored as float16 to halve the artifact; only the gathered rows are cast, so
the cost per call does not grow with the table.
"""
from __future__ import annotations

import numpy as np

OPSET = 18
INPUT_NAMES = ("feature_ids", "feature_weights", "segment_ids", "prompt_count")
OUTPUT_NAME = "probabilities"


def build_model(table: np.ndarray, bias: np.ndarray, *, labels: tuple[str, ...], doc: str = ""):
    """Returns an ``onnx.ModelProto``; ``table`` is [num_buckets, K] float32 or float16."""
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
    gathered = "gathered"
    nodes = [helper.make_node("Gather", ["table", "feature_ids"], [gathered], axis=0)]
    if table.dtype == np.float16:
        nodes.append(helper.make_node("Cast", [gathered], ["gathered_f32"], to=TensorProto.FLOAT))
        gathered = "gathered_f32"
    nodes += [
        helper.make_node("Unsqueeze", ["feature_weights", "last_axis"], ["weights_column"]),
        helper.make_node("Mul", [gathered, "weights_column"], ["weighted_rows"]),
        helper.make_node("Concat", ["prompt_count", "num_classes"], ["logits_shape"], axis=0),
        helper.make_node("ConstantOfShape", ["logits_shape"], ["zeros"],
                         value=helper.make_tensor("zero", TensorProto.FLOAT, [1], [0.0])),
        helper.make_node("Unsqueeze", ["segment_ids", "last_axis"], ["segment_index"]),
        helper.make_node("ScatterND", ["zeros", "segment_index", "weighted_rows"], ["bag"],
                         reduction="add"),
        helper.make_node("Add", ["bag", "bias"], ["logits"]),
        helper.make_node("Softmax", ["logits"], [OUTPUT_NAME], axis=-1),
    ]
    graph = helper.make_graph(
        nodes, "expert_router_classifier",
        inputs=[
            helper.make_tensor_value_info("feature_ids", TensorProto.INT64, ["N"]),
            helper.make_tensor_value_info("feature_weights", TensorProto.FLOAT, ["N"]),
            helper.make_tensor_value_info("segment_ids", TensorProto.INT64, ["N"]),
            helper.make_tensor_value_info("prompt_count", TensorProto.INT64, [1]),
        ],
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
                         segments: np.ndarray, prompt_count: int) -> np.ndarray:
    """The same computation in numpy (float64): the reference the ONNX graph is checked against."""
    logits = np.zeros((prompt_count, table.shape[1]), dtype=np.float64)
    np.add.at(logits, segments, table[ids].astype(np.float64) * weights.astype(np.float64)[:, None])
    logits += bias.astype(np.float64)
    logits -= logits.max(axis=1, keepdims=True)
    exp = np.exp(logits)
    return exp / exp.sum(axis=1, keepdims=True)
