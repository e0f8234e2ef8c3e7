"""The compiled featurizer: determinism, equivalence with the reference, hostile input."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import core
from core import FeaturizerConfig
from core._featurizer_reference import ReferenceFeaturizer

CONFIG = FeaturizerConfig()


@pytest.fixture(scope="module")
def featurizer() -> core.Featurizer:
    return CONFIG.build()


@pytest.fixture(scope="module")
def reference() -> ReferenceFeaturizer:
    return ReferenceFeaturizer(**CONFIG.to_dict())


def test_compiled_module_is_in_use() -> None:
    import core._featurizer as compiled

    assert compiled.__file__.endswith((".so", ".pyd")), compiled.__file__
    assert core.Featurizer is compiled.Featurizer
    # Methods of a compiled cdef class are Cython functions, never plain Python functions.
    assert type(core.Featurizer.transform_batch).__name__ == "cython_function_or_method"
    assert core._routing.__file__.endswith((".so", ".pyd"))


def test_ids_are_stable_across_processes(featurizer: core.Featurizer) -> None:
    text = "Prove that the square root of 2 is irrational."
    code = (f"import core; ids, _ = core.FeaturizerConfig().build().transform({text!r}); "
            "print(','.join(map(str, ids.tolist())))")
    outputs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              check=True, env={"PYTHONHASHSEED": seed}).stdout.strip()
               for seed in ("1", "2")}
    assert len(outputs) == 1
    assert outputs.pop() == ",".join(map(str, featurizer.transform(text)[0].tolist()))


def test_known_ids_do_not_drift() -> None:
    # Pinned values: a change here invalidates every trained classifier artifact.
    small = FeaturizerConfig(num_buckets=1000, char_ngram_min=3, char_ngram_max=3,
                             word_bigrams=True, max_chars=100).build()
    ids, weights = small.transform("Hi, Bob")
    assert ids.tolist() == PINNED_HI_BOB
    assert weights.dtype == np.float32
    np.testing.assert_allclose(weights, 1 / np.sqrt(len(ids)))


PINNED_HI_BOB = [498, 155, 492, 981, 173, 231, 222, 352, 750, 421]


def test_tokens_bigrams_and_char_ngrams_are_counted(featurizer: core.Featurizer) -> None:
    # "ab cd": 2 words + 1 bigram + char 3..5-grams of "<ab>" (2+1) and "<cd>" (2+1).
    ids, _ = featurizer.transform("ab cd")
    assert len(ids) == 2 + 1 + 3 + 3
    # Symbols are tokens of their own: "a+b" is 3 tokens and 2 bigrams, chars for "a", "b".
    ids, _ = featurizer.transform("a+b")
    assert len(ids) == 3 + 2 + 1 + 1


def test_case_and_spacing_do_not_matter(featurizer: core.Featurizer) -> None:
    a, _ = featurizer.transform("Solve  THE equation\n")
    b, _ = featurizer.transform("solve the\tequation")
    assert a.tolist() == b.tolist()


def test_empty_and_whitespace_give_no_features(featurizer: core.Featurizer) -> None:
    for text in ("", "   \n\t", "\x00\x00"):
        ids, weights = featurizer.transform(text)
        assert ids.shape == (0,) and weights.shape == (0,)


def test_batch_segments_match_single_calls(featurizer: core.Featurizer) -> None:
    texts = ["first prompt", "", "def f(x):\n    return x", "ünïcödé ✓"]
    ids, weights, segments = featurizer.transform_batch(texts)
    for index, text in enumerate(texts):
        single_ids, single_weights = featurizer.transform(text)
        assert ids[segments == index].tolist() == single_ids.tolist()
        np.testing.assert_array_equal(weights[segments == index], single_weights)
    assert segments.tolist() == sorted(segments.tolist())


def test_input_is_truncated_to_max_chars() -> None:
    short = FeaturizerConfig(max_chars=10).build()
    assert short.transform("a" * 10)[0].tolist() == short.transform("a" * 1_000_000)[0].tolist()


@pytest.mark.parametrize("bad", [None, b"bytes", 42, ["list"]])
def test_non_str_is_a_clear_value_error(featurizer: core.Featurizer, bad: object) -> None:
    with pytest.raises(ValueError, match="must be a str"):
        featurizer.transform(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("kwargs", [{"num_buckets": 0}, {"num_buckets": 1 << 70}, {"char_ngram_min": 4, "char_ngram_max": 3},
                                    {"max_chars": 0}])
def test_bad_parameters_are_rejected(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        FeaturizerConfig(**kwargs).build()


HOSTILE = [
    "",
    " " * 1000,
    "x" * (1 << 20),
    "\ud800 lone \udfff surrogates",
    "nul\x00bytes\x00inside",
    "emoji 🙂👍🏽👨‍👩‍👧 zwj",
    "שלום עולם مرحبا بالعالم",
    "🙂" * 1_000_000,
    "\u0301\u0301\u0301 combining marks only",
    "İstanbul ß ﬁ",  # lower() changes lengths
]


@pytest.mark.parametrize("text", HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_text_gives_valid_features(featurizer: core.Featurizer,
                                           reference: ReferenceFeaturizer, text: str) -> None:
    ids, weights = featurizer.transform(text)
    assert ids.dtype == np.int64 and weights.dtype == np.float32
    assert ids.shape == weights.shape
    assert ((ids >= 0) & (ids < CONFIG.num_buckets)).all()
    assert np.isfinite(weights).all()
    if len(text) <= 1000:
        assert ids.tolist() == reference.transform(text)[0].tolist()


@pytest.mark.slow
@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(codec=None), max_size=200))
def test_any_unicode_matches_the_reference(text: str) -> None:
    compiled = CONFIG.build()
    reference = ReferenceFeaturizer(**CONFIG.to_dict())
    ids, weights = compiled.transform(text)
    ref_ids, ref_weights = reference.transform(text)
    assert ids.tolist() == ref_ids.tolist()
    np.testing.assert_allclose(weights, ref_weights, rtol=1e-6)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.text(max_size=50), max_size=10),
       st.integers(min_value=1, max_value=1 << 20))
def test_batches_of_anything_stay_in_range(texts: list[str], buckets: int) -> None:
    featurizer = FeaturizerConfig(num_buckets=buckets).build()
    ids, weights, segments = featurizer.transform_batch(texts)
    assert len(ids) == len(weights) == len(segments)
    assert ((ids >= 0) & (ids < buckets)).all()
    assert ((segments >= 0) & (segments < max(len(texts), 1))).all()
