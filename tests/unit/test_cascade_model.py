"""The cascade model directory at load: every way it can break is refused with a message naming the
file; a good one tokenizes, pads and scores like the graph says (tests/cascade_model.py's tiny model)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from router_svc.cascade import CascadeError, CascadeModel
from tests.cascade_model import (
    LABELS,
    build_graph,
    vocabulary,
    word_table,
    write_cascade_model,
    write_manifest,
)


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    return write_cascade_model(tmp_path / "cascade")


def refused(directory: Path, *, labels=LABELS) -> str:
    with pytest.raises(CascadeError) as caught:
        CascadeModel.load(directory, labels=labels)
    message = str(caught.value)
    assert str(directory) in message
    return message


def manifest(directory: Path) -> dict:
    return json.loads((directory / "cascade.json").read_text(encoding="utf-8"))


# --- a good directory -------------------------------------------------------------------------------

def test_a_good_directory_loads_and_scores_known_words(model_dir: Path) -> None:
    model = CascadeModel.load(model_dir, labels=LABELS)
    assert (model.version, model.threshold, model.combination) == ("tiny-bow-1", 0.5, "average")
    assert model.labels == LABELS
    assert model.provider == "CPUExecutionProvider"
    rows = model.predict_batch(["What are the side effects of ibuprofen?", "Can my landlord keep my deposit?",
                                "hello there"])
    assert rows.dtype == np.float32 and rows.shape == (3, len(LABELS))
    np.testing.assert_allclose(rows.sum(axis=1), 1.0, rtol=1e-5)
    assert LABELS[rows[0].argmax()] == "medicine" and rows[0].max() > 0.9
    assert LABELS[rows[1].argmax()] == "law"
    np.testing.assert_allclose(rows[2], 1 / len(LABELS), rtol=1e-5)  # no known word: uniform


def test_batches_are_padded_with_pad_id_and_masked(model_dir: Path) -> None:
    model = CascadeModel.load(model_dir, labels=LABELS)
    ids, mask = model.encode(["ibuprofen", "a b c landlord"])
    vocab = vocabulary()
    assert ids.dtype == mask.dtype == np.int64
    assert ids.tolist() == [[vocab["ibuprofen"], 0, 0, 0], [1, 1, 1, vocab["landlord"]]]
    assert mask.tolist() == [[1, 0, 0, 0], [1, 1, 1, 1]]
    # Padding changes nothing: each prompt scores the same alone and in a batch.
    together = model.predict_batch(["ibuprofen", "a b c landlord"])
    alone = np.vstack([model.predict_batch(["ibuprofen"]), model.predict_batch(["a b c landlord"])])
    np.testing.assert_allclose(together, alone, rtol=1e-6)


def test_prompts_are_truncated_to_max_length(tmp_path: Path) -> None:
    directory = write_cascade_model(tmp_path / "short", max_length=8)
    model = CascadeModel.load(directory, labels=LABELS)
    ids, mask = model.encode(["one two three four five six seven eight nine ten ibuprofen"])
    assert ids.shape == mask.shape == (1, 8)
    # The known word came after the cut: the model never saw it.
    np.testing.assert_allclose(model.predict_batch(["one two three four five six seven eight ibuprofen"])[0],
                               1 / len(LABELS), rtol=1e-5)


def test_the_files_own_truncation_and_padding_are_ignored(tmp_path: Path) -> None:
    directory = tmp_path / "configured"
    write_cascade_model(directory, max_length=16)
    tokenizer_json = json.loads((directory / "tokenizer.json").read_text(encoding="utf-8"))
    tokenizer_json["truncation"] = {"direction": "Right", "max_length": 2, "strategy": "LongestFirst", "stride": 0}
    tokenizer_json["padding"] = {"strategy": {"Fixed": 64}, "direction": "Right", "pad_to_multiple_of": None,
                                 "pad_id": 7, "pad_type_id": 0, "pad_token": "[PAD]"}
    (directory / "tokenizer.json").write_text(json.dumps(tokenizer_json), encoding="utf-8")
    write_manifest(directory)
    ids, mask = CascadeModel.load(directory, labels=LABELS).encode(["a b c d e"])
    assert ids.shape == (1, 5) and mask.tolist() == [[1] * 5]


def test_empty_batch(model_dir: Path) -> None:
    assert CascadeModel.load(model_dir, labels=LABELS).predict_batch([]).shape == (0, len(LABELS))


def test_extra_keys_are_ignored(model_dir: Path) -> None:
    write_manifest(model_dir, validation_accuracy=0.91, notes={"anything": [1, 2]})
    CascadeModel.load(model_dir, labels=LABELS)


# --- missing files and digests ----------------------------------------------------------------------

def test_not_a_directory(tmp_path: Path) -> None:
    assert "not a directory" in refused(tmp_path / "nowhere")


@pytest.mark.parametrize("name", ["cascade.json", "model.onnx", "tokenizer.json"])
def test_a_missing_file_is_named(model_dir: Path, name: str) -> None:
    (model_dir / name).unlink()
    assert f"{name}: missing" in refused(model_dir)


@pytest.mark.parametrize("name", ["model.onnx", "tokenizer.json"])
def test_a_digest_mismatch_is_named(model_dir: Path, name: str) -> None:
    with open(model_dir / name, "ab") as stream:
        stream.write(b" ")
    message = refused(model_dir)
    assert f"{name}: sha256" in message and "cascade.json" in message


# --- cascade.json -----------------------------------------------------------------------------------

def test_malformed_json(model_dir: Path) -> None:
    (model_dir / "cascade.json").write_text("{'format': 'single quotes'}", encoding="utf-8")
    assert "cascade.json: not valid UTF-8 JSON" in refused(model_dir)


def test_truncated_json(model_dir: Path) -> None:
    text = (model_dir / "cascade.json").read_text(encoding="utf-8")
    (model_dir / "cascade.json").write_text(text[: len(text) // 2], encoding="utf-8")
    assert "cascade.json: not valid UTF-8 JSON (malformed or truncated)" in refused(model_dir)


def test_not_utf8(model_dir: Path) -> None:
    (model_dir / "cascade.json").write_bytes(b'{"format": "\xff"}')
    assert "cascade.json: not valid UTF-8 JSON" in refused(model_dir)


def test_not_an_object(model_dir: Path) -> None:
    (model_dir / "cascade.json").write_text("[1, 2]", encoding="utf-8")
    assert "cascade.json: must be a JSON object, got list" in refused(model_dir)


@pytest.mark.parametrize("key", ["format", "version", "labels", "max_length", "pad_id", "combination", "threshold",
                                 "files", "description"])
def test_a_missing_key_is_named(model_dir: Path, key: str) -> None:
    data = manifest(model_dir)
    del data[key]
    (model_dir / "cascade.json").write_text(json.dumps(data), encoding="utf-8")
    assert f"cascade.json: missing key(s) {key}" in refused(model_dir)


def test_unknown_format(model_dir: Path) -> None:
    write_manifest(model_dir, format="expert-router-cascade/2")
    assert "cascade.json: unknown format 'expert-router-cascade/2'" in refused(model_dir)


@pytest.mark.parametrize(("key", "value", "expected"), [
    ("version", "", "'version' must be a non-empty string"),
    ("version", 3, "'version' must be a non-empty string"),
    ("labels", "code", "'labels' must be a non-empty list"),
    ("labels", [], "'labels' must be a non-empty list"),
    ("labels", ["code", 1], "'labels' must be a non-empty list"),
    ("labels", ["code", "code"], "'labels' has duplicates"),
    ("max_length", "128", "'max_length' must be an integer in [8, 512]"),
    ("max_length", 4, "'max_length' must be an integer in [8, 512]"),
    ("max_length", 1024, "'max_length' must be an integer in [8, 512]"),
    ("max_length", 128.0, "'max_length' must be an integer in [8, 512]"),
    ("max_length", True, "'max_length' must be an integer in [8, 512]"),
    ("pad_id", -1, "'pad_id' must be an integer >= 0"),
    ("pad_id", "0", "'pad_id' must be an integer >= 0"),
    ("combination", "vote", "'combination' must be one of average, replace"),
    ("threshold", 0, "'threshold' must be a number in (0, 1]"),
    ("threshold", 1.5, "'threshold' must be a number in (0, 1]"),
    ("threshold", "0.9", "'threshold' must be a number in (0, 1]"),
    ("threshold", True, "'threshold' must be a number in (0, 1]"),
    ("files", ["model.onnx"], "'files' must be an object"),
    ("files", {"model.onnx": "0" * 64}, "'files' must give tokenizer.json's sha256"),
    ("files", {"model.onnx": "ABC", "tokenizer.json": "0" * 64}, "'files' must give model.onnx's sha256"),
    ("description", None, "'description' must be a string"),
])
def test_an_ill_typed_key_is_named(model_dir: Path, key: str, value, expected: str) -> None:
    data = manifest(model_dir)
    data[key] = value
    (model_dir / "cascade.json").write_text(json.dumps(data), encoding="utf-8")
    assert f"cascade.json: {expected}" in refused(model_dir)


def test_pad_id_outside_the_vocabulary(model_dir: Path) -> None:
    write_manifest(model_dir, pad_id=len(vocabulary()))
    assert "cascade.json: pad_id 18 is outside tokenizer.json's vocabulary of 18 tokens" in refused(model_dir)


def test_labels_that_are_not_the_classifiers(model_dir: Path) -> None:
    message = refused(model_dir, labels=("code", "math", "science", "medicine", "law", "chat"))
    assert "cascade.json: labels" in message and "not the same labels" in message


def test_labels_in_another_order(model_dir: Path) -> None:
    message = refused(model_dir, labels=tuple(reversed(LABELS)))
    assert "cascade.json: labels" in message and "same labels in another order" in message


# --- model.onnx -------------------------------------------------------------------------------------

def replace_model(directory: Path, content: bytes) -> None:
    (directory / "model.onnx").write_bytes(content)
    write_manifest(directory)  # the digest matches: the check that refuses it is the one under test


def test_truncated_onnx(model_dir: Path) -> None:
    content = (model_dir / "model.onnx").read_bytes()
    replace_model(model_dir, content[: len(content) // 3])
    assert "model.onnx: cannot be loaded by onnxruntime" in refused(model_dir)


def test_corrupt_onnx(model_dir: Path) -> None:
    replace_model(model_dir, b"\x08\x07garbage, not a protobuf graph" * 10)
    assert "model.onnx: cannot be loaded by onnxruntime" in refused(model_dir)


@pytest.mark.parametrize("variant", [
    {"input_names": ("token_ids", "attention_mask")},
    {"input_names": ("input_ids", "mask")},
    {"output_name": "logits"},
    {"id_type": "int32"},
    {"extra_input": "token_type_ids"},
])
def test_wrong_onnx_inputs_or_outputs(model_dir: Path, variant: dict) -> None:
    replace_model(model_dir, build_graph(word_table(vocabulary()), **variant))
    message = refused(model_dir)
    assert "model.onnx: has inputs" in message and "a cascade model has inputs" in message


def test_probe_with_the_wrong_number_of_labels(model_dir: Path) -> None:
    replace_model(model_dir, build_graph(word_table(vocabulary())[:, :5]))
    assert "model.onnx: returns shape [1, 5] for a short prompt" in refused(model_dir)


def test_probe_without_softmax(model_dir: Path) -> None:
    replace_model(model_dir, build_graph(word_table(vocabulary()), softmax=False))
    message = refused(model_dir)
    assert "model.onnx: returns" in message and "not probabilities" in message


def test_probe_with_nan(model_dir: Path) -> None:
    table = word_table(vocabulary())
    table[:] = np.nan
    replace_model(model_dir, build_graph(table))
    assert "not probabilities" in refused(model_dir)


def test_probe_past_the_table(model_dir: Path) -> None:
    """A table smaller than the tokenizer's vocabulary: a token id past its end fails the run."""
    replace_model(model_dir, build_graph(word_table(vocabulary())[:1]))
    assert "model.onnx: fails on a short prompt" in refused(model_dir)


# --- tokenizer.json ---------------------------------------------------------------------------------

def replace_tokenizer(directory: Path, content: bytes) -> None:
    (directory / "tokenizer.json").write_bytes(content)
    write_manifest(directory)


def test_tokenizer_not_json(model_dir: Path) -> None:
    replace_tokenizer(model_dir, b"not json at all")
    assert "tokenizer.json: not a Hugging Face tokenizers file" in refused(model_dir)


def test_tokenizer_truncated(model_dir: Path) -> None:
    content = (model_dir / "tokenizer.json").read_bytes()
    replace_tokenizer(model_dir, content[: len(content) // 2])
    assert "tokenizer.json: not a Hugging Face tokenizers file" in refused(model_dir)


def test_tokenizer_json_of_another_kind(model_dir: Path) -> None:
    replace_tokenizer(model_dir, json.dumps({"model": {"type": "NoSuchModel"}}).encode())
    assert "tokenizer.json: not a Hugging Face tokenizers file" in refused(model_dir)


def test_tokenizer_not_utf8(model_dir: Path) -> None:
    replace_tokenizer(model_dir, b"\xff\xfe\x00")
    assert "tokenizer.json: not a Hugging Face tokenizers file" in refused(model_dir)


def test_tokenizers_is_imported_only_with_a_cascade() -> None:
    """The router's modules do not import ``tokenizers`` until a cascade model is loaded (README)."""
    import subprocess
    import sys

    code = ("import sys, router_svc.server, router_svc.cascade; "
            "print('tokenizers' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.strip() == "False"
