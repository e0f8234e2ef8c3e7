"""The packaged classifier artifact and its runtime (router_svc.classifier)."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from router_svc.classifier import DEFAULT_ARTIFACT_DIR, Classifier
from router_svc.training.evaluate import EVERYDAY_PROMPTS
from router_svc.training.export import linear_probabilities
from router_svc.training.subjects import EXPERTS

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def classifier() -> Classifier:
    return Classifier.load()


def test_loads_the_packaged_artifact(classifier: Classifier) -> None:
    assert classifier.labels == EXPERTS
    assert classifier.version.startswith("ngram-m2v-lr-")
    assert classifier.provider in ("CPUExecutionProvider", "CUDAExecutionProvider")
    metadata = json.loads((DEFAULT_ARTIFACT_DIR / "metadata.json").read_text())
    # MMLU, HumanEval, chitchat, the seven Perl FAQ pages, the medical word list, the 29 source files
    # quoted by the code requests and the four licence texts quoted by the law requests
    assert len(metadata["training_data_sha256"]) == 44
    # 0.859 for the packaged model (docs/classifier.md).
    assert metadata["held_out"]["accuracy"] > 0.85
    assert classifier.word_featurizer_config is not None
    assert 0.2 < metadata["temperature"] < 6.0  # the fit grid spans 0.2..5 (then refined by 5%)


def test_artifact_stays_small() -> None:
    size = sum(p.stat().st_size for p in DEFAULT_ARTIFACT_DIR.iterdir() if p.is_file())
    assert size <= 32_000_000, size


@pytest.mark.parametrize(("prompt", "expert"), [
    ("Write a Python function that reverses a linked list and returns the new head node.", "code"),
    ("def fizzbuzz(n: int) -> list[str]:\n    \"\"\"Return fizz, buzz or the number for 1..n.\"\"\"", "code"),
    ("Compute the integral of x^2 sin(x) dx using integration by parts.", "math"),
    ("Find all real roots of the polynomial x^3 - 6x^2 + 11x - 6.", "math"),
    (("The seller refused to deliver the goods, so the buyer sued for breach of contract. "
     "Is the contract enforceable under the statute of frauds?"), "law"),
    ("What is the recommended dosage of amoxicillin for a child with acute otitis media?", "medicine"),
    (("What is the wavelength of a photon emitted when an electron in a hydrogen atom "
     "falls from n=3 to n=2?"), "science"),
    ("Which empire built Machu Picchu and what caused its decline in the sixteenth century?", "general"),
])
def test_obvious_prompts_route_to_their_expert(classifier: Classifier, prompt: str, expert: str) -> None:
    scores = classifier.predict(prompt)
    assert classifier.labels[int(np.argmax(scores))] == expert, dict(zip(classifier.labels, scores))


def test_rows_are_probabilities(classifier: Classifier) -> None:
    texts = ["hello", "", "   ", "\x00\ud800 emoji \U0001f600 \u05e9\u05dc\u05d5\u05dd", "x" * 100_000]
    scores = classifier.predict_batch(texts)
    assert scores.dtype == np.float32 and scores.shape == (len(texts), len(EXPERTS))
    assert np.all(scores >= 0)
    np.testing.assert_allclose(scores.sum(axis=1), 1.0, atol=1e-5)


def test_empty_prompt_scores_are_the_softmax_of_the_bias(classifier: Classifier) -> None:
    empty, blank = classifier.predict_batch(["", " \t\n"])
    np.testing.assert_array_equal(empty, blank)
    _table, bias = _weights()
    np.testing.assert_allclose(empty, np.exp(bias) / np.exp(bias).sum(), atol=1e-6)


def test_empty_batch(classifier: Classifier) -> None:
    assert classifier.predict_batch([]).shape == (0, len(EXPERTS))


def test_batch_equals_single(classifier: Classifier) -> None:
    texts = ["Solve 2x + 3 = 7.", "", "Who wrote Hamlet?", "SELECT * FROM users WHERE id = 1;",
             "A tort claim for negligence requires duty, breach, causation and damages."]
    batch = classifier.predict_batch(texts)
    for text, row in zip(texts, batch):
        np.testing.assert_allclose(classifier.predict(text), row, rtol=0, atol=1e-6)


def test_non_string_prompt_is_a_value_error(classifier: Classifier) -> None:
    with pytest.raises(ValueError, match="must be a str"):
        classifier.predict_batch(["fine", b"bytes"])  # type: ignore[list-item]


def _weights(name: str = "table") -> tuple[np.ndarray, np.ndarray]:
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(DEFAULT_ARTIFACT_DIR / "model.onnx"))
    weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    return weights[name], weights["bias"]


def test_onnx_output_matches_numpy_linear_model(classifier: Classifier) -> None:
    table, bias = _weights()
    word_table, _ = _weights("word_table")
    texts = ["Explain quicksort in C.", "What causes the seasons on Earth?", "", "Is a verbal lease valid?"]
    ids, weights, segments = classifier.featurizer_config.build().transform_batch(texts)
    word_ids, word_weights, word_segments = classifier.word_featurizer_config.build().transform_batch(texts)
    expected = linear_probabilities(table, bias, ids, weights, segments, len(texts),
                                    (word_table, word_ids, word_weights, word_segments))
    np.testing.assert_allclose(classifier.predict_batch(texts), expected, rtol=0, atol=1e-5)


def test_concurrent_calls_agree(classifier: Classifier) -> None:
    texts = [f"Question {i}: what is the derivative of x^{i}?" for i in range(64)]
    expected = classifier.predict_batch(texts)
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(classifier.predict, texts))
    np.testing.assert_allclose(np.stack(results), expected, atol=1e-6)


# --- metadata validation ---------------------------------------------------------------------


@pytest.fixture()
def artifact_copy(tmp_path: Path) -> Path:
    target = tmp_path / "artifact"
    shutil.copytree(DEFAULT_ARTIFACT_DIR, target)
    return target


def _edit_metadata(directory: Path, edit) -> None:
    path = directory / "metadata.json"
    metadata = json.loads(path.read_text())
    edit(metadata)
    path.write_text(json.dumps(metadata))


@pytest.mark.parametrize(("edit", "message"), [
    (lambda m: m.pop("labels"), "missing labels"),
    (lambda m: m.pop("version"), "missing version"),
    (lambda m: m.update(labels=[]), "'labels' must be a non-empty list"),
    (lambda m: m.update(labels=["code", "code", "math", "science", "medicine", "law"]), "duplicates"),
    (lambda m: m.update(labels=m["labels"][:5]), "5 labels"),
    (lambda m: m.update(onnx_sha256="0" * 64), "do not belong together"),
    (lambda m: m["featurizer"].update(bogus=1), "unknown featurizer parameter"),
    (lambda m: m["featurizer"].update(num_buckets=0), "'featurizer' is invalid"),
])
def test_bad_metadata_is_a_clear_value_error(artifact_copy: Path, edit, message: str) -> None:
    _edit_metadata(artifact_copy, edit)
    with pytest.raises(ValueError, match=message):
        Classifier.load(artifact_copy)


def test_missing_files_and_bad_json(artifact_copy: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="has no model.onnx"):
        Classifier.load(tmp_path / "nowhere")
    (artifact_copy / "metadata.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        Classifier.load(artifact_copy)


def test_tampered_model_is_rejected(artifact_copy: Path) -> None:
    model = artifact_copy / "model.onnx"
    model.write_bytes(model.read_bytes() + b"\x00")
    with pytest.raises(ValueError, match="sha256"):
        Classifier.load(artifact_copy)


# --- command line ----------------------------------------------------------------------------


def _cli() -> list[str]:
    script = Path(sys.executable).with_name("expert-router")
    return [str(script)] if script.exists() else [sys.executable, "-m", "router_svc.cli"]


@pytest.mark.slow
def test_cli_classify_prints_one_json_line_per_prompt() -> None:
    result = subprocess.run([*_cli(), "classify",
                             "Write a Python function that parses a JSON file and returns a dict.",
                             "What is 2+2?"],
                            capture_output=True, text=True, timeout=60, cwd=ROOT, check=False)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 2
    first = json.loads(lines[0])
    assert first["expert"] == "code"
    assert set(first["scores"]) == set(EXPERTS)
    assert abs(sum(first["scores"].values()) - 1.0) < 1e-4
    assert first["classifier_version"].startswith("ngram-m2v-lr-")


@pytest.mark.slow
def test_cli_classify_reads_stdin_and_falls_back() -> None:
    result = subprocess.run([*_cli(), "classify", "--min-confidence", "1.0", "--fallback", "general"],
                            input="Explain recursion in Python.\nWho painted the Mona Lisa?\n",
                            capture_output=True, text=True, timeout=60, cwd=ROOT, check=False)
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["expert"] for r in records] == ["general", "general"]
    assert all(r["fallback"] for r in records)


@pytest.mark.slow
def test_cli_classify_with_a_cascade_model_rescores_unsure_prompts(tmp_path: Path) -> None:
    from tests.cascade_model import write_cascade_model

    # "replace" and a threshold of 1.0: every prompt is rescored and the tiny model's answer decides.
    cascade = write_cascade_model(tmp_path / "cascade", threshold=1.0, combination="replace")
    result = subprocess.run([*_cli(), "classify", "--cascade-model", str(cascade),
                             "poem about a birthday", "side effects of ibuprofen"],
                            capture_output=True, text=True, timeout=60, cwd=ROOT, check=False)
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["expert"] for r in records] == ["general", "medicine"]
    assert all(r["cascade"] == "tiny-bow-1" for r in records)
    # A threshold no best score is below: the cascade is never asked, and the record says so.
    kept = subprocess.run([*_cli(), "classify", "--cascade-model", str(cascade), "--cascade-below", "0.01",
                           "side effects of ibuprofen"],
                          capture_output=True, text=True, timeout=60, cwd=ROOT, check=False)
    assert kept.returncode == 0, kept.stderr
    assert "cascade" not in json.loads(kept.stdout)


@pytest.mark.slow
def test_cli_classify_refuses_a_bad_cascade_model(tmp_path: Path) -> None:
    from tests.cascade_model import write_cascade_model

    cascade = write_cascade_model(tmp_path / "cascade")
    (cascade / "model.onnx").write_bytes((cascade / "model.onnx").read_bytes()[:100])
    result = subprocess.run([*_cli(), "classify", "--cascade-model", str(cascade), "hello"],
                            capture_output=True, text=True, timeout=60, cwd=ROOT, check=False)
    assert result.returncode == 1
    assert "cannot load the cascade model" in result.stderr and "model.onnx" in result.stderr


# --- artifact checks: corrupted, truncated or mismatched files -----------------------------------


def _resign(directory: Path) -> None:
    """Rewrites onnx_sha256 so that only the check under test can refuse the artifact."""
    import hashlib

    digest = hashlib.sha256((directory / "model.onnx").read_bytes()).hexdigest()
    _edit_metadata(directory, lambda m: m.update(onnx_sha256=digest))


def test_truncated_model_is_refused_naming_the_file(artifact_copy: Path) -> None:
    model = artifact_copy / "model.onnx"
    model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])
    _resign(artifact_copy)
    with pytest.raises(ValueError, match="model.onnx cannot be loaded"):
        Classifier.load(artifact_copy)


def test_corrupted_model_is_refused_naming_the_file(artifact_copy: Path) -> None:
    model = artifact_copy / "model.onnx"
    data = bytearray(model.read_bytes())
    data[:64] = b"\xff" * 64
    model.write_bytes(bytes(data))
    _resign(artifact_copy)
    with pytest.raises(ValueError, match="model.onnx"):
        Classifier.load(artifact_copy)


def test_featurizer_that_does_not_match_the_table_is_refused(artifact_copy: Path) -> None:
    # Half the buckets: every id would still be in range, yet the table was trained for more.
    _edit_metadata(artifact_copy, lambda m: m["featurizer"].update(
        num_buckets=m["featurizer"]["num_buckets"] // 2))
    with pytest.raises(ValueError, match=r"table does not have the \d+ rows"):
        Classifier.load(artifact_copy)


def test_word_featurizer_without_word_inputs_is_refused(artifact_copy: Path) -> None:
    metadata = json.loads((artifact_copy / "metadata.json").read_text())
    if "word_featurizer" in metadata:
        _edit_metadata(artifact_copy, lambda m: m.pop("word_featurizer"))
        match = "implies"
    else:
        _edit_metadata(artifact_copy, lambda m: m.update(word_featurizer=dict(m["featurizer"])))
        match = "implies"
    with pytest.raises(ValueError, match=match):
        Classifier.load(artifact_copy)


def test_truncated_metadata_is_refused_naming_the_file(artifact_copy: Path) -> None:
    path = artifact_copy / "metadata.json"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match="metadata.json is not valid JSON"):
        Classifier.load(artifact_copy)


# The five everyday prompts that the n-gram-only model sent to `general`. Four now route right
# (no training text contains their distinctive words: router_svc/training/templates.py); the word
# problem still does not, even with everyday word problems (rates, meeting times) in the templates,
# and stays a strict expected failure so a fix shows up here.
_NOT_YET = pytest.mark.xfail(strict=True, reason="still misrouted by the packaged model (to general, "
                             "docs/classifier.md): its words are travel and clock times, not math terms")


@pytest.mark.parametrize(("prompt", "expert"), [
    pytest.param(prompt, expert, marks=_NOT_YET) if prompt.startswith("A train leaves") else (prompt, expert)
    for prompt, expert in EVERYDAY_PROMPTS
])
def test_everyday_prompts(classifier: Classifier, prompt: str, expert: str) -> None:
    scores = classifier.predict(prompt)
    assert classifier.labels[int(np.argmax(scores))] == expert, dict(zip(classifier.labels, scores))


def test_missing_onnxruntime_names_the_extra_to_install(monkeypatch):
    # onnxruntime comes from the `cpu` or `gpu` extra; without either the router must say which to install.
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` raise ImportError
    with pytest.raises(ValueError, match=r"needs onnxruntime.*expert-router\[cpu\].*'gpu' extra"):
        Classifier.load(DEFAULT_ARTIFACT_DIR)
