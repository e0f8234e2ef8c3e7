"""The featurizer algorithm of ``core._featurizer`` in plain Python.

It exists so that tests can hold the compiled featurizer to a readable
specification and so the benchmark can report the speed-up of compiling it.
It is not used on the request path.
"""
from __future__ import annotations

import math

import numpy as np

_MASK = (1 << 64) - 1
_FNV_OFFSET = 14695981039346656037
_FNV_PRIME = 1099511628211
_GOLDEN = 0x9E3779B97F4A7C15
_SEED_TOKEN, _SEED_BIGRAM, _SEED_CHAR = 1, 2, 3


def _byte_class(b: int) -> int:
    if b >= 0x80 or chr(b).isascii() and (chr(b).isalnum() or b == 95):
        return 1
    if 33 <= b <= 126:
        return 2
    return 0


_BYTE_CLASS = [_byte_class(b) for b in range(256)]


def _fnv1a(data: bytes, seed: int) -> int:
    h = _FNV_OFFSET ^ ((seed * _GOLDEN) & _MASK)
    for byte in data:
        h = ((h ^ byte) * _FNV_PRIME) & _MASK
    return h


def _mix(x: int) -> int:
    x &= _MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


class ReferenceFeaturizer:
    """Pure-Python twin of :class:`core.Featurizer` (same constructor, same output)."""

    def __init__(self, *, num_buckets: int, char_ngram_min: int, char_ngram_max: int,
                 word_bigrams: bool, max_chars: int) -> None:
        self.num_buckets = num_buckets
        self.char_ngram_min = char_ngram_min
        self.char_ngram_max = char_ngram_max
        self.word_bigrams = word_bigrams
        self.max_chars = max_chars

    def _tokens(self, data: bytes) -> list[tuple[bytes, bool]]:
        tokens: list[tuple[bytes, bool]] = []
        i, n = 0, len(data)
        while i < n:
            cls = _BYTE_CLASS[data[i]]
            if cls == 0:
                i += 1
                continue
            start = i
            i += 1
            if cls == 1:
                while i < n and _BYTE_CLASS[data[i]] == 1:
                    i += 1
            tokens.append((data[start:i], cls == 1))
        return tokens

    def _ids(self, text: str) -> list[int]:
        if not isinstance(text, str):
            # ValueError, like the compiled featurizer: callers handle one error type for bad prompts.
            raise ValueError(f"a prompt must be a str, got {type(text).__name__}")  # noqa: TRY004
        data = text[: self.max_chars].lower().encode("utf-8", "surrogatepass")
        ids: list[int] = []
        prev = None
        for token, is_word in self._tokens(data):
            h = _fnv1a(token, _SEED_TOKEN)
            ids.append(_mix(h) % self.num_buckets)
            if self.word_bigrams and prev is not None:
                ids.append(_mix(prev * _GOLDEN + h + _SEED_BIGRAM) % self.num_buckets)
            prev = h
            if is_word and self.char_ngram_max > 0:
                wrapped = b"<" + token + b">"
                starts = [j for j, byte in enumerate(wrapped) if byte & 0xC0 != 0x80]
                starts.append(len(wrapped))
                ncp = len(starts) - 1
                for j in range(ncp):
                    for order in range(self.char_ngram_min, self.char_ngram_max + 1):
                        if j + order > ncp:
                            break
                        gram = wrapped[starts[j]: starts[j + order]]
                        ids.append(_mix(_fnv1a(gram, _SEED_CHAR)) % self.num_buckets)
        return ids

    def transform(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        ids, weights, _ = self.transform_batch([text])
        return ids, weights

    def transform_batch(self, texts) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        all_ids: list[int] = []
        weights: list[float] = []
        segments: list[int] = []
        for index, text in enumerate(texts):
            ids = self._ids(text)
            all_ids.extend(ids)
            if ids:
                weights.extend([1.0 / math.sqrt(len(ids))] * len(ids))
            segments.extend([index] * len(ids))
        return (np.asarray(all_ids, dtype=np.int64), np.asarray(weights, dtype=np.float32),
                np.asarray(segments, dtype=np.int64))
