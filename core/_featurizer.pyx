# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Compiled prompt featurizer: hashed word and character n-grams.

A prompt becomes a bag of feature ids in ``[0, num_buckets)`` with float32
weights. The hash is FNV-1a over UTF-8 bytes followed by the splitmix64
finalizer, so ids are identical across processes, machines and Python
versions (Python's own ``hash()`` is salted per process).

Tokens are taken from the lower-cased UTF-8 bytes of the first ``max_chars``
characters: a *word* is a run of ASCII letters, digits, ``_`` or any non-ASCII
byte; every other printable ASCII character is a one-character *symbol* token
(code prompts are full of them); ASCII whitespace and control bytes separate
tokens. Features are token unigrams, adjacent token bigrams and the character
n-grams of each word wrapped in ``<`` and ``>`` (counted in code points, not
bytes). Every feature of a prompt weighs ``1/sqrt(n_features)``.

``core._featurizer_reference`` is the same algorithm in plain Python; tests
hold the two to identical output.
"""
from libc.stdint cimport uint8_t, uint64_t, int64_t
from libc.stdlib cimport malloc, free
from libc.string cimport memcpy
from libc.math cimport sqrt

import numpy as np

cdef uint64_t FNV_OFFSET = 14695981039346656037ULL
cdef uint64_t FNV_PRIME = 1099511628211ULL
cdef uint64_t GOLDEN = 0x9E3779B97F4A7C15ULL
cdef uint64_t SEED_TOKEN = 1
cdef uint64_t SEED_BIGRAM = 2
cdef uint64_t SEED_CHAR = 3

# Byte classes: 0 separator, 1 word byte, 2 symbol.
cdef uint8_t BYTE_CLASS[256]


cdef void _init_byte_classes():
    cdef int b
    for b in range(256):
        if b >= 0x80 or (48 <= b <= 57) or (65 <= b <= 90) or (97 <= b <= 122) or b == 95:
            BYTE_CLASS[b] = 1
        elif 33 <= b <= 126:
            BYTE_CLASS[b] = 2
        else:
            BYTE_CLASS[b] = 0


_init_byte_classes()


cdef inline uint64_t _fnv1a(const uint8_t* p, Py_ssize_t n, uint64_t seed) noexcept nogil:
    cdef uint64_t h = FNV_OFFSET ^ (seed * GOLDEN)
    cdef Py_ssize_t i
    for i in range(n):
        h = (h ^ p[i]) * FNV_PRIME
    return h


cdef inline uint64_t _mix(uint64_t x) noexcept nogil:
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL
    return x ^ (x >> 31)


cdef struct Params:
    uint64_t num_buckets
    int char_min
    int char_max
    int use_bigrams


cdef Py_ssize_t _featurize(const uint8_t* text, Py_ssize_t n, Params* p,
                           int64_t* ids, uint8_t* scratch, Py_ssize_t* offsets) noexcept nogil:
    """Writes the feature ids of ``text`` into ``ids`` (when not NULL); returns their count.

    ``scratch`` holds at least n + 2 bytes and ``offsets`` at least n + 3 entries.
    """
    cdef Py_ssize_t count = 0
    cdef Py_ssize_t i = 0, start, j, k, ncp, order
    cdef uint8_t cls
    cdef uint64_t h, prev_h = 0
    cdef int have_prev = 0
    while i < n:
        cls = BYTE_CLASS[text[i]]
        if cls == 0:
            i += 1
            continue
        start = i
        if cls == 2:
            i += 1
        else:
            while i < n and BYTE_CLASS[text[i]] == 1:
                i += 1
        h = _fnv1a(text + start, i - start, SEED_TOKEN)
        if ids != NULL:
            ids[count] = <int64_t>(_mix(h) % p.num_buckets)
        count += 1
        if p.use_bigrams and have_prev:
            if ids != NULL:
                ids[count] = <int64_t>(_mix(prev_h * GOLDEN + h + SEED_BIGRAM) % p.num_buckets)
            count += 1
        prev_h = h
        have_prev = 1
        if cls == 1 and p.char_max > 0:
            # "<word>" and the byte offset where each of its code points starts.
            scratch[0] = 60
            memcpy(scratch + 1, text + start, i - start)
            scratch[i - start + 1] = 62
            ncp = 0
            for j in range(i - start + 2):
                if (scratch[j] & 0xC0) != 0x80:
                    offsets[ncp] = j
                    ncp += 1
            offsets[ncp] = i - start + 2
            for j in range(ncp):
                for order in range(p.char_min, p.char_max + 1):
                    k = j + order
                    if k > ncp:
                        break
                    if ids != NULL:
                        ids[count] = <int64_t>(_mix(_fnv1a(scratch + offsets[j], offsets[k] - offsets[j], SEED_CHAR)) % p.num_buckets)
                    count += 1
    return count


cdef class Featurizer:
    """Turns prompts into hashed n-gram feature ids and weights."""

    cdef Params params
    cdef readonly Py_ssize_t max_chars

    def __init__(self, *, num_buckets, int char_ngram_min, int char_ngram_max,
                 bint word_bigrams, Py_ssize_t max_chars):
        # Checked before any C conversion, so a huge value is a ValueError, not an OverflowError.
        if not isinstance(num_buckets, int) or not 1 <= num_buckets <= (1 << 40):
            raise ValueError(f"num_buckets must be an integer in 1..2**40, got {num_buckets!r}")
        if char_ngram_max != 0 and not (1 <= char_ngram_min <= char_ngram_max <= 16):
            raise ValueError(
                "char n-gram orders must satisfy 1 <= char_ngram_min <= char_ngram_max <= 16 "
                f"(or char_ngram_max == 0 to disable them), got {char_ngram_min}..{char_ngram_max}")
        if max_chars < 1:
            raise ValueError(f"max_chars must be >= 1, got {max_chars}")
        self.params.num_buckets = num_buckets
        self.params.char_min = char_ngram_min
        self.params.char_max = char_ngram_max
        self.params.use_bigrams = word_bigrams
        self.max_chars = max_chars

    @property
    def num_buckets(self) -> int:
        return self.params.num_buckets

    cdef bytes _prepare(self, object text):
        if not isinstance(text, str):
            raise ValueError(f"a prompt must be a str, got {type(text).__name__}")
        # Lone surrogates cannot be UTF-8 encoded strictly; surrogatepass keeps them hashable.
        return (<str>text)[:self.max_chars].lower().encode("utf-8", "surrogatepass")

    def transform(self, text):
        """Returns ``(ids, weights)`` for one prompt: int64 and float32 arrays of equal length."""
        ids, weights, _ = self.transform_batch([text])
        return ids, weights

    def transform_batch(self, texts):
        """Featurizes many prompts at once.

        Returns ``(ids, weights, segments)``: flat arrays where ``segments[i]`` is the
        index of the prompt that feature ``i`` belongs to. A prompt with no tokens
        (empty or whitespace only) contributes no feature.
        """
        cdef list encoded = [self._prepare(t) for t in texts]
        cdef Py_ssize_t b, nb = len(encoded), total = 0, longest = 0, n
        cdef Py_ssize_t[::1] counts = np.empty(nb, dtype=np.intp)
        cdef bytes buf
        for b in range(nb):
            n = len(<bytes>encoded[b])
            if n > longest:
                longest = n
        cdef uint8_t* scratch = <uint8_t*>malloc(longest + 2)
        cdef Py_ssize_t* offsets = <Py_ssize_t*>malloc((longest + 3) * sizeof(Py_ssize_t))
        if scratch == NULL or offsets == NULL:
            free(scratch)
            free(offsets)
            raise MemoryError()
        try:
            for b in range(nb):
                buf = encoded[b]
                counts[b] = _featurize(<const uint8_t*><char*>buf, len(buf), &self.params, NULL, scratch, offsets)
                total += counts[b]
            ids_arr = np.empty(total, dtype=np.int64)
            weights_arr = np.empty(total, dtype=np.float32)
            segments_arr = np.empty(total, dtype=np.int64)
            self._fill(encoded, counts, ids_arr, weights_arr, segments_arr, scratch, offsets)
        finally:
            free(scratch)
            free(offsets)
        return ids_arr, weights_arr, segments_arr

    cdef void _fill(self, list encoded, Py_ssize_t[::1] counts, int64_t[::1] ids,
                    float[::1] weights, int64_t[::1] segments,
                    uint8_t* scratch, Py_ssize_t* offsets):
        cdef Py_ssize_t b, pos = 0, c, i
        cdef bytes buf
        cdef float w
        for b in range(len(encoded)):
            c = counts[b]
            if c == 0:
                continue
            buf = encoded[b]
            _featurize(<const uint8_t*><char*>buf, len(buf), &self.params, &ids[pos], scratch, offsets)
            w = <float>(1.0 / sqrt(<double>c))
            for i in range(pos, pos + c):
                weights[i] = w
                segments[i] = b
            pos += c
