"""The cascade model directory's producer side: metadata, digests, class order, verification, scoring.

Everything except the last section runs without torch: the onnxruntime scorer is exercised on a
small graph built with onnx.helper and a word-level tokenizer built with `tokenizers`. The last
section exports a tiny randomly initialised BERT through the real exporter (skipped without torch
and transformers; `make test` installs both).
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from router_svc.training import cascade_model as cm
from tests.cascade_model import build_graph, build_tokenizer
from tests.cascade_model import vocabulary as word_vocabulary

LABELS = ("code", "math", "science", "medicine", "law", "general")


def _write_files(directory: Path) -> None:
    (directory / cm.MODEL_FILE).write_bytes(b"not really onnx")
    (directory / cm.TOKENIZER_FILE).write_text("{}", encoding="utf-8")


def test_metadata_follows_the_contract_and_digests_the_files(tmp_path: Path) -> None:
    _write_files(tmp_path)
    metadata = cm.build_metadata(tmp_path, labels=LABELS, max_length=128, pad_id=0, combination="average",
                                 threshold=0.9, description="tiny", extra={"validation": {"rows": []}},
                                 today=dt.date(2026, 12, 2))
    model_digest = hashlib.sha256(b"not really onnx").hexdigest()
    assert metadata["format"] == "expert-router-cascade/1"
    assert metadata["files"] == {"model.onnx": model_digest, "tokenizer.json": hashlib.sha256(b"{}").hexdigest()}
    assert metadata["version"] == f"minilm-lr-20261202-{model_digest[:8]}"
    assert metadata["labels"] == list(LABELS) and metadata["max_length"] == 128 and metadata["pad_id"] == 0
    assert (metadata["combination"], metadata["threshold"]) == ("average", 0.9)
    assert metadata["validation"] == {"rows": []}
    cm.write_metadata(tmp_path, metadata)
    assert json.loads((tmp_path / "cascade.json").read_text(encoding="utf-8")) == metadata
    assert cm.read_metadata(tmp_path) == metadata


@pytest.mark.parametrize("change, message", [
    ({"combination": "vote"}, "combination"),
    ({"threshold": 0.0}, "threshold"),
    ({"threshold": 1.5}, "threshold"),
    ({"max_length": 4}, "max_length"),
    ({"labels": ("code", "code")}, "labels"),
    ({"extra": {"threshold": 0.5}}, "overwrite"),
])
def test_metadata_refuses_what_the_contract_forbids(tmp_path: Path, change: dict, message: str) -> None:
    _write_files(tmp_path)
    arguments = {"labels": LABELS, "max_length": 128, "pad_id": 0, "combination": "average", "threshold": 0.9,
                 "description": "tiny"}
    with pytest.raises(ValueError, match=message):
        cm.build_metadata(tmp_path, **{**arguments, **change})


def test_reading_refuses_a_changed_file_and_names_it(tmp_path: Path) -> None:
    _write_files(tmp_path)
    cm.write_metadata(tmp_path, cm.build_metadata(tmp_path, labels=LABELS, max_length=128, pad_id=0,
                                                  combination="replace", threshold=0.5, description="tiny"))
    (tmp_path / cm.TOKENIZER_FILE).write_text("{ }", encoding="utf-8")
    with pytest.raises(ValueError, match=r"tokenizer\.json: sha256 .* differs"):
        cm.read_metadata(tmp_path)
    (tmp_path / cm.TOKENIZER_FILE).unlink()
    with pytest.raises(ValueError, match=r"tokenizer\.json: missing"):
        cm.read_metadata(tmp_path)


def test_reading_refuses_an_unknown_format(tmp_path: Path) -> None:
    (tmp_path / "cascade.json").write_text(json.dumps({"format": "expert-router-cascade/2"}), encoding="utf-8")
    with pytest.raises(ValueError, match="format"):
        cm.read_metadata(tmp_path)
    (tmp_path / "cascade.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError, match="JSON"):
        cm.read_metadata(tmp_path)


def test_head_rows_follow_the_router_labels_whatever_the_training_order() -> None:
    training_order = ("general", "code", "math")
    coef = np.array([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]])  # rows by classes [0, 1, 2] = general, code, math
    weight, bias = cm.head_in_label_order(coef, np.array([10.0, 20.0, 30.0]), [0, 1, 2], training_order,
                                          ("code", "math", "general"))
    assert weight[:, 0].tolist() == [2.0, 3.0, 1.0] and bias.tolist() == [20.0, 30.0, 10.0]
    assert weight.dtype == np.float32
    with pytest.raises(ValueError, match="not the labels"):
        cm.head_in_label_order(coef, np.zeros(3), [0, 1, 2], training_order, ("code", "math", "law"))
    columns = cm.columns_in_label_order(np.array([[0.1, 0.2, 0.7]]), training_order, ("code", "math", "general"))
    assert columns.tolist() == [[0.2, 0.7, 0.1]]


def test_comparison_passes_only_within_tolerance() -> None:
    reference = np.array([[0.7, 0.3], [0.4, 0.6]])
    assert cm.compare_probabilities(reference, reference + 5e-5).ok
    far = cm.compare_probabilities(reference, reference + np.array([[0.0, 0.0], [2e-4, -2e-4]]))
    assert not far.ok and far.max_abs_diff == pytest.approx(2e-4)
    flipped = cm.compare_probabilities(reference, reference[:, ::-1])
    assert not flipped.ok and flipped.argmax_agreement == 0.0
    assert not cm.compare_probabilities(reference, np.full_like(reference, np.nan)).ok
    assert not cm.compare_probabilities(reference, reference[:1]).ok
    assert "2 texts" in cm.compare_probabilities(reference, reference).describe()


def test_padding_is_right_aligned_with_the_pad_id() -> None:
    input_ids, mask = cm.pad_batch([[5, 6, 7], [8]], pad_id=3)
    assert input_ids.tolist() == [[5, 6, 7], [8, 3, 3]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    assert input_ids.dtype == np.int64 and mask.dtype == np.int64
    with pytest.raises(ValueError):
        cm.pad_batch([], pad_id=0)


def test_max_length_rule_prefers_accuracy_then_the_shorter() -> None:
    assert cm.choose_max_length({128: 0.9130, 256: 0.9133}) == 256
    assert cm.choose_max_length({128: 0.9133, 256: 0.9133}) == 128
    with pytest.raises(ValueError):
        cm.choose_max_length({})


def test_int8_rule_needs_both_small_loss_and_large_speedup() -> None:
    assert cm.adopt_int8(0.9133, 0.9103, 10.0, 7.5)       # -0.3 point, -25%: both at the limit
    assert not cm.adopt_int8(0.9133, 0.9100, 10.0, 5.0)   # -0.33 point
    assert not cm.adopt_int8(0.9133, 0.9140, 10.0, 7.6)   # only 24% faster


def test_choice_is_rebuilt_from_the_recorded_validation() -> None:
    metadata = {"combination": "average", "threshold": 0.9,
                "validation": {"router_accuracy": 0.90, "cascade_accuracy": 0.91, "fraction_cascaded": 0.28,
                               "rows": [["average", 0.9, 0.91, 0.28], ["replace", 0.9, 0.89, 0.28]]}}
    choice = cm.choice_from_metadata(metadata)
    assert (choice.combination, choice.threshold, choice.validation_accuracy_fast) == ("average", 0.9, 0.90)
    assert choice.rows[1] == ("replace", 0.9, 0.89, 0.28)


def test_latency_is_timed_per_text_for_every_scorer() -> None:
    calls: dict[str, list[int]] = {"a": [], "b": []}

    def scorer(name: str):
        def score(texts):
            calls[name].append(len(texts))
            return np.zeros((len(texts), 2))
        return score

    result = cm.time_batch_of_one({"a": scorer("a"), "b": scorer("b")}, ["x", "y", "z"], warmup=1)
    assert calls == {"a": [1] * 4, "b": [1] * 4}  # one warm-up text, then each text alone
    assert result["a"].prompts == 3 and result["a"].median_ms >= 0.0 and result["b"].p90_ms >= 0.0


# --- onnxruntime + tokenizers on a small hand-built graph --------------------------------------------

def _bag_of_words_graph(path: Path, table: np.ndarray) -> None:
    """The tests' tiny cascade graph (tests/cascade_model.py): softmax of the mean of the unmasked
    tokens' rows of ``table``."""
    pytest.importorskip("onnx")
    path.write_bytes(build_graph(table))


def _word_tokenizer(path: Path, words: list[str]) -> dict[str, int]:
    """The tests' WordLevel tokenizer over ``words``, saved with truncation and padding settings that
    the contract says the consumer ignores: the scorer must override them."""
    pytest.importorskip("tokenizers")
    vocab = word_vocabulary(words)
    tokenizer = build_tokenizer(vocab)
    tokenizer.enable_truncation(2)
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]", length=16)
    tokenizer.save(str(path))
    return vocab


def _tiny_bert(vocab_size: int, *, layers: int, seed: int):
    """A randomly initialised BERT of hidden size 16, small enough to export in a second."""
    torch = pytest.importorskip("torch", reason="the export needs torch (make test installs it)")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    config = transformers.BertConfig(vocab_size=vocab_size, hidden_size=16, num_hidden_layers=layers,
                                     num_attention_heads=2, intermediate_size=32, max_position_embeddings=64)
    return transformers.BertModel(config).eval()


def test_scorer_truncates_pads_and_masks_as_the_contract_says(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    words = ["alpha", "beta", "gamma", "delta"]
    vocabulary = _word_tokenizer(tmp_path / "tokenizer.json", words)
    table = np.zeros((len(vocabulary), 3), dtype=np.float32)
    table[0] = [50.0, 0.0, 0.0]  # the pad row: any padding that leaks through shows up in column 0
    table[vocabulary["alpha"]] = [0.0, 1.0, 0.0]
    table[vocabulary["beta"]] = [0.0, 0.0, 1.0]
    table[vocabulary["gamma"]] = [0.0, 0.0, 3.0]
    _bag_of_words_graph(tmp_path / "model.onnx", table)
    score = cm.load_onnx_scorer(tmp_path / "model.onnx", tmp_path / "tokenizer.json", max_length=3, pad_id=0,
                                batch_size=2)

    def softmax(logits):
        e = np.exp(np.asarray(logits) - max(logits))
        return e / e.sum()

    alone = score(["alpha"])
    batched = score(["alpha", "alpha beta gamma", "beta"])  # two batches; "alpha" padded to 3 tokens
    assert batched.shape == (3, 3) and batched.dtype == np.float32
    np.testing.assert_allclose(alone[0], softmax([0.0, 1.0, 0.0]), atol=1e-6)
    np.testing.assert_allclose(batched[0], alone[0], atol=1e-6)  # padding masked out
    np.testing.assert_allclose(batched[1], softmax([0.0, 1 / 3, 4 / 3]), atol=1e-6)  # not the file's truncation (2)
    truncated = score(["alpha beta gamma gamma"])  # max_length 3: the fourth word is cut
    np.testing.assert_allclose(truncated[0], batched[1], atol=1e-6)
    assert score([]).shape == (0, 3)


# --- the real exporter on a tiny BERT -----------------------------------------------------------------

@pytest.mark.slow
def test_exported_graph_matches_torch_and_the_contract(tmp_path: Path) -> None:
    words = [f"w{i}" for i in range(20)]
    vocabulary = _word_tokenizer(tmp_path / "tokenizer.json", words)
    encoder = _tiny_bert(len(vocabulary), layers=2, seed=0)
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    from router_svc.training.cascade_export import EmbeddingClassifier, export_onnx

    rng = np.random.default_rng(0)
    weight, bias = rng.normal(size=(len(LABELS), 16)).astype(np.float32), rng.normal(size=len(LABELS))
    module = EmbeddingClassifier(encoder, weight, bias).eval()
    export_onnx(module, tmp_path / "model.onnx", vocab_size=len(vocabulary))

    import onnxruntime as ort

    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [(i.name, i.type) for i in session.get_inputs()] == [("input_ids", "tensor(int64)"),
                                                               ("attention_mask", "tensor(int64)")]
    assert [(o.name, o.type, o.shape[1]) for o in session.get_outputs()] == [("probabilities", "tensor(float)", 6)]
    assert all(isinstance(i.shape[0], str) and isinstance(i.shape[1], str) for i in session.get_inputs())

    texts = ["w1 w2 w3", "w4", "w5 w6 w7 w8 w9 w10 w11 w12 w13 w14", "w3 w3"]
    score = cm.load_onnx_scorer(tmp_path / "model.onnx", tmp_path / "tokenizer.json", max_length=12, pad_id=0,
                                batch_size=4)
    exported = score(texts)
    with torch.no_grad():
        expected = []
        for text in texts:  # torch, one text at a time and unpadded
            ids = torch.tensor([[vocabulary[w] for w in text.split()][:12]])
            expected.append(module(ids, torch.ones_like(ids))[0].numpy())
    comparison = cm.compare_probabilities(np.array(expected), exported)
    assert comparison.ok, comparison.describe()
    np.testing.assert_allclose(exported.sum(axis=1), 1.0, atol=1e-5)


def test_evaluation_scores_only_cascaded_prompts_with_the_exported_model(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    from router_svc.commands.evaluate import _measure_exported_cascade

    labels = ("code", "math", "general")
    vocabulary = _word_tokenizer(tmp_path / "tokenizer.json", ["loop", "sum", "hello"])
    table = np.zeros((len(vocabulary), 3), dtype=np.float32)
    table[vocabulary["loop"], 0] = table[vocabulary["sum"], 1] = table[vocabulary["hello"], 2] = 10.0
    _bag_of_words_graph(tmp_path / "model.onnx", table)
    cm.write_metadata(tmp_path, cm.build_metadata(
        tmp_path, labels=labels, max_length=16, pad_id=0, combination="replace", threshold=0.6,
        description="bag of words", extra={"validation": {"router_accuracy": 0.5, "cascade_accuracy": 1.0,
                                                          "fraction_cascaded": 0.5,
                                                          "rows": [["replace", 0.6, 1.0, 0.5]]}}))
    # The fast model is unsure (0.4) on the first two prompts of each set and sure on the rest.
    fast = np.array([[0.4, 0.3, 0.3], [0.3, 0.3, 0.4], [0.9, 0.05, 0.05], [0.05, 0.05, 0.9]])
    texts = ["sum", "loop", "hello", "sum"]  # the last one is sure, wrong, and must stay so
    truth = [1, 0, 0, 1]
    lines = _measure_exported_cascade(tmp_path, labels, (fast, fast), (texts, texts), (truth, ["s"] * 4),
                                      (truth, ["s"] * 4), fast_name="fast", fast_latency_us=10.0)
    text = "\n".join(lines)
    assert "exported cascade model `minilm-lr-" in text
    assert "| external set | 0.2500 | 0.7500 | +50.0 | 50.0% |" in text
    assert "replace** below **0.60" in text
    with pytest.raises(SystemExit, match="labels"):
        _measure_exported_cascade(tmp_path, ("math", "code", "general"), (fast, fast), (texts, texts),
                                  (truth, ["s"] * 4), (truth, ["s"] * 4), fast_name="fast", fast_latency_us=1.0)


class _FixedScoresClassifier:
    """FAKE of router_svc.classifier.Classifier's labels + predict: the same scores for every prompt."""

    labels = LABELS

    def __init__(self, row: list[float]) -> None:
        self.row = np.asarray(row, dtype=np.float32)

    def predict(self, prompt: str) -> np.ndarray:
        return self.row


@pytest.mark.parametrize("fast_row, ours_right, cascade_right, rescored", [
    # Unsure everywhere (best 0.3, below the tiny model's 0.5): the tiny model knows one word of each
    # prompt ("ibuprofen", "landlord", "tuple", "train", "derivative") and the average follows it.
    ([0.14, 0.14, 0.14, 0.14, 0.14, 0.3], 0, 5, True),
    # Sure of general (0.95): never rescored, so the cascade cannot change anything.
    ([0.01, 0.01, 0.01, 0.01, 0.01, 0.95], 0, 0, False),
])
def test_everyday_prompts_are_decided_as_the_router_decides(tmp_path: Path, fast_row, ours_right, cascade_right,
                                                            rescored) -> None:
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from router_svc.cascade import CascadeModel
    from router_svc.commands.evaluate import everyday_prompt_lines
    from router_svc.training.evaluate import EVERYDAY_PROMPTS
    from tests.cascade_model import write_cascade_model

    directory = write_cascade_model(tmp_path / "cascade", threshold=0.5)
    model = CascadeModel.load(directory, labels=LABELS)
    choice = cm.choice_from_metadata(cm.read_metadata(directory))
    lines = everyday_prompt_lines(_FixedScoresClassifier(fast_row), model, choice)
    rows = [line for line in lines if line.startswith("| ") and not line.startswith("| prompt")]
    assert len(rows) == len(EVERYDAY_PROMPTS)
    assert all(("rescored" in row) == rescored for row in rows)
    assert f"Right: ours {ours_right} of 5, with the cascade {cascade_right} of 5." in lines
    if rescored:
        assert rows[0].startswith("| What are the side effects of ibuprofen? | medicine | general (0.30) ✗ | medicine (")


def test_int8_check_wants_finite_normalised_rows_that_mostly_agree() -> None:
    reference = np.tile([[0.7, 0.2, 0.1]], (10, 1))
    close = reference.copy()
    close[0] = [0.3, 0.6, 0.1]  # one answer in ten changes: 90% agreement is enough
    assert cm.check_quantized(reference, close)[0]
    close[1] = [0.3, 0.6, 0.1]
    ok, described = cm.check_quantized(reference, close)
    assert not ok and "80.00%" in described
    assert not cm.check_quantized(reference, reference * 1.01)[0]  # rows no longer sum to 1
    assert not cm.check_quantized(reference, np.full_like(reference, np.nan))[0]
    assert not cm.check_quantized(reference, reference[:5])[0]


@pytest.mark.slow
def test_fine_tuned_export_folds_the_logit_scale_and_is_verified(tmp_path: Path) -> None:
    words = [f"w{i}" for i in range(20)]
    vocabulary = _word_tokenizer(tmp_path / "tokenizer.json", words)
    encoder = _tiny_bert(len(vocabulary), layers=1, seed=1)
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    from router_svc.training.cascade import CascadeChoice
    from router_svc.training.cascade_export import EmbeddingClassifier
    from router_svc.training.finetune import LOGIT_SCALE, export_directory

    rng = np.random.default_rng(1)
    module = EmbeddingClassifier(encoder,
                                 rng.normal(size=(len(LABELS), 16)).astype(np.float32) * 0.1, np.zeros(len(LABELS)))
    texts = ["w1 w2", "w3 w4 w5 w6", "w7"]
    token_ids = [[vocabulary[w] for w in t.split()] for t in texts]
    choice = CascadeChoice(combination="average", threshold=0.9, validation_accuracy=0.93,
                           validation_accuracy_fast=0.90, validation_fraction=0.28, rows=())
    out = tmp_path / "finetuned"
    metadata = export_directory(out, module, tmp_path / "tokenizer.json", labels=LABELS, max_length=12, pad_id=0,
                                choice=choice, verify_token_ids=token_ids, verify_texts=texts, description="tiny")
    assert cm.read_metadata(out) == metadata and metadata["version"].startswith("minilm-finetuned-")
    assert metadata["verification"]["max_abs_diff"] <= cm.VERIFY_TOLERANCE
    score = cm.load_onnx_scorer(out / "model.onnx", out / "tokenizer.json", max_length=12, pad_id=0)
    with torch.no_grad():
        ids = torch.tensor([token_ids[1]])
        expected = torch.softmax(LOGIT_SCALE * module.head(module.embed(ids, torch.ones_like(ids))), dim=-1)[0]
    np.testing.assert_allclose(score([texts[1]])[0], expected.numpy(), atol=1e-5)


# --- the INT8 rule on a written directory (what train-cascade does after the fine-tuned export) -------

def _fine_tuned_directory(tmp_path: Path) -> Path:
    """The tests' tiny cascade model, written as the fine-tuned export would be: float32, with a
    version of the producer's form and a validation entry of its own."""
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from tests.cascade_model import write_cascade_model

    return write_cascade_model(tmp_path / "cascade", version="minilm-finetuned-20261202-0123abcd", max_length=16)


def _validation(count: int = 40) -> cm.ValidationData:
    """Validation texts the tiny model knows a word of, each labelled by that word; the router's
    probabilities are unsure (best 0.4) and right on every other text, so the cascade has work."""
    from tests.cascade_model import WORDS

    words = list(WORDS)
    texts, truth, ours = [], [], []
    for i in range(count):
        word = words[i % len(words)]
        label = LABELS.index(WORDS[word])
        texts.append(f"a question about {word} number {i}")
        truth.append(label)
        row = np.full(len(LABELS), 0.12)
        row[label if i % 2 == 0 else (label + 1) % len(LABELS)] = 0.4
        ours.append(row / row.sum())
    return cm.ValidationData(texts=texts, ours=np.array(ours), truth=np.array(truth))


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def test_int8_rule_adopted_rewrites_the_directory_with_the_int8_graphs_cascade(tmp_path: Path, monkeypatch) -> None:
    from router_svc.cascade import CascadeModel

    directory = _fine_tuned_directory(tmp_path)
    before = _snapshot(directory)
    seen = []

    def adopt(*args):
        seen.append(args)
        return True

    monkeypatch.setattr(cm, "adopt_int8", adopt)
    metadata = cm.quantize_by_rule(directory, _validation(), log=lambda _: None)

    int8 = metadata["int8"]
    # The rule was given the two graphs' measured cascade accuracy and latency, float32 first.
    (float_accuracy, int8_accuracy, float_ms, int8_ms), = seen
    assert round(float_accuracy, 4) == int8["float32"]["cascade_accuracy"]
    assert round(int8_accuracy, 4) == int8["int8"]["cascade_accuracy"]
    assert round(float_ms, 3) == int8["float32"]["latency_ms_median"] and round(int8_ms, 3) == int8["int8"]["latency_ms_median"]
    assert int8["adopted"] is True and metadata["quantized"] is True and "same answer as float32" in int8["written_check"]
    # The cascade is the one chosen on the INT8 graph's own validation probabilities.
    assert (metadata["combination"], metadata["threshold"]) == (int8["int8"]["combination"], int8["int8"]["threshold"])
    assert metadata["validation"]["cascade_accuracy"] == int8["int8"]["cascade_accuracy"]
    assert metadata["validation"]["note"] == "an extra key the router ignores"  # the export's own entries kept
    assert metadata["version"].startswith("minilm-finetuned-") and metadata["version"] != "minilm-finetuned-20261202-0123abcd"
    assert metadata["description"].endswith("INT8 weights (onnxruntime dynamic quantization)")
    after = _snapshot(directory)
    assert after["model.onnx"] != before["model.onnx"] and after["tokenizer.json"] == before["tokenizer.json"]
    assert json.loads(after["cascade.json"]) == metadata
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cascade"]  # no staging or scratch left behind
    # The router loads what was written, digests and probes included.
    model = CascadeModel.load(directory, labels=LABELS)
    assert model.version == metadata["version"]
    with pytest.raises(ValueError, match="already quantized"):
        cm.quantize_by_rule(directory, _validation(), log=lambda _: None)


def test_int8_rule_not_adopted_keeps_the_float32_graph_and_records_why(tmp_path: Path, monkeypatch) -> None:
    directory = _fine_tuned_directory(tmp_path)
    before = _snapshot(directory)
    monkeypatch.setattr(cm, "adopt_int8", lambda *args: False)
    metadata = cm.quantize_by_rule(directory, _validation(), log=lambda _: None)
    assert metadata["quantized"] is False and metadata["int8"]["adopted"] is False
    assert "written_check" not in metadata["int8"]
    assert _snapshot(directory)["model.onnx"] == before["model.onnx"]
    assert metadata["version"].startswith("minilm-finetuned-")
    assert metadata["version"].endswith(metadata["files"]["model.onnx"][:8])
    assert (metadata["combination"], metadata["threshold"]) == (metadata["int8"]["float32"]["combination"],
                                                              metadata["int8"]["float32"]["threshold"])


def test_int8_rule_leaves_the_directory_as_it_was_when_the_int8_graph_fails_its_check(tmp_path: Path,
                                                                                        monkeypatch) -> None:
    directory = _fine_tuned_directory(tmp_path)
    before = _snapshot(directory)
    monkeypatch.setattr(cm, "adopt_int8", lambda *args: True)
    monkeypatch.setattr(cm, "check_quantized", lambda *args: (False, "same answer as float32 on 12.00%"))
    with pytest.raises(RuntimeError, match=r"fails its check \(same answer as float32 on 12.00%\).*left as it was"):
        cm.quantize_by_rule(directory, _validation(), log=lambda _: None)
    assert _snapshot(directory) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cascade"]


# --- `expert-router train-cascade`: which model ends up in --out ------------------------------------

@pytest.fixture
def fake_producers(monkeypatch, tmp_path: Path):
    """FAKES of the two producers and the data loading (the real ones need the data and minutes of
    MiniLM): build_cascade writes the tests' tiny model, labelled MiniLM + LR; fine_tune returns
    ``outcome`` as its report and, when that says "exported", writes a tiny model labelled fine-tuned."""
    pytest.importorskip("torch", reason="train-cascade's modules import torch (make test installs it)")
    pytest.importorskip("onnx")
    from router_svc.training import cascade_export, finetune
    from tests.cascade_model import write_cascade_model

    calls: dict = {"outcome": {}}

    def build_cascade(out, **kwargs):
        calls["build_cascade"] = (Path(out), kwargs)
        write_cascade_model(out, version="minilm-lr-20261202-00000000")

    def fine_tune(baseline_dir, **kwargs):
        calls["fine_tune"] = (Path(baseline_dir), kwargs)
        if "exported" in calls["outcome"]:
            write_cascade_model(kwargs["export"], version="minilm-finetuned-20261202-11111111")
        return dict(calls["outcome"])

    monkeypatch.setattr(cascade_export, "build_cascade", build_cascade)
    monkeypatch.setattr(cascade_export, "load_splits", lambda artifact, cache_dir: "splits")
    monkeypatch.setattr(cascade_export, "validation_data", lambda splits: "validation")
    monkeypatch.setattr(finetune, "fine_tune", fine_tune)
    return calls


def _version(directory: Path) -> str:
    return json.loads((directory / "cascade.json").read_text(encoding="utf-8"))["version"]


def test_train_cascade_writes_the_fine_tuned_model_and_keeps_minilm_lr_beside_it(tmp_path: Path, fake_producers) -> None:
    from router_svc.cli import main

    fake_producers["outcome"] = {"adopted": True, "exported": {"directory": "x"}}
    out = tmp_path / "cascade"
    assert main(["train-cascade", "--out", str(out)]) == 0
    bar, kwargs = fake_producers["fine_tune"]
    assert bar == tmp_path / "cascade-minilm-lr" and fake_producers["build_cascade"][0] == bar
    assert kwargs["export"] == out and kwargs["epochs"] == 2 and kwargs["report_path"] == tmp_path / "cascade-finetune.json"
    # Both producers got the one data load and validation set.
    assert kwargs["splits"] == "splits" and kwargs["validation_set"] == "validation"
    assert fake_producers["build_cascade"][1]["validation_set"] == "validation"
    assert _version(out).startswith("minilm-finetuned-") and _version(bar).startswith("minilm-lr-")


@pytest.mark.parametrize("outcome, reason", [
    ({"stopped": "one epoch would take ~41 min (> 25) on this machine"}, "one epoch would take ~41 min"),
    ({"adopted": False, "margin_points": 0.21}, "0.21 points from MiniLM + LR's on validation"),
])
def test_train_cascade_falls_back_to_minilm_lr_and_says_why(tmp_path: Path, fake_producers, capsys, outcome,
                                                            reason) -> None:
    from router_svc.cli import main

    fake_producers["outcome"] = outcome
    out = tmp_path / "cascade"
    (out).mkdir()
    (out / "stale.txt").write_text("from an older run", encoding="utf-8")
    assert main(["train-cascade", "--out", str(out), "--epochs", "1"]) == 0
    assert fake_producers["fine_tune"][1]["epochs"] == 1
    assert _version(out).startswith("minilm-lr-") and not (out / "stale.txt").exists()
    assert _snapshot(out) == _snapshot(tmp_path / "cascade-minilm-lr")
    printed = capsys.readouterr().out
    assert "the fine-tuned model is not written" in printed and reason in printed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cascade", "cascade-minilm-lr"]


def test_train_cascade_without_fine_tuning_writes_minilm_lr_to_out(tmp_path: Path, fake_producers) -> None:
    from router_svc.cli import main

    out = tmp_path / "cascade"
    assert main(["train-cascade", "--out", str(out), "--no-fine-tune"]) == 0
    assert fake_producers["build_cascade"][0] == out and "fine_tune" not in fake_producers
    assert _version(out).startswith("minilm-lr-")


def test_train_cascade_refuses_zero_epochs(tmp_path: Path) -> None:
    from router_svc.cli import main

    with pytest.raises(SystemExit, match="--epochs must be at least 1"):
        main(["train-cascade", "--out", str(tmp_path / "cascade"), "--epochs", "0"])


def test_one_thread_timing_gives_torch_its_threads_back() -> None:
    torch = pytest.importorskip("torch", reason="the export needs torch (make test installs it)")
    from router_svc.training.cascade_export import torch_threads

    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError), torch_threads(1):
        raise RuntimeError("a failed measurement")
    assert torch.get_num_threads() == before
