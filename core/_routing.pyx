# cython: language_level=3, boundscheck=False, wraparound=False
"""Compiled routing decision: classifier scores to the expert a prompt goes to."""

from libc.stdlib cimport free, malloc


cdef class Decision:
    """Where a prompt goes and why."""

    cdef readonly str expert
    cdef readonly float score
    cdef readonly bint fallback
    cdef readonly tuple ranked

    def __init__(self, str expert, float score, bint fallback, tuple ranked):
        self.expert = expert
        self.score = score
        self.fallback = fallback
        self.ranked = ranked

    def __repr__(self) -> str:
        return f"Decision(expert={self.expert!r}, score={self.score:.4f}, fallback={self.fallback})"


cdef inline bint _ranks_before(float a, float b) noexcept nogil:
    """True when score ``a`` goes strictly before ``b``: higher first, NaN after every number."""
    return a > b or (b != b and a == a)


def rank(labels, float[::1] scores):
    """Returns ``((label, score), ...)`` sorted by score, highest first; ties keep label order.

    An insertion sort in C over a handful of labels: the router calls this once per classified
    request, and ``sorted`` with a Python key function was 10-20x its warm cost on a CPU whose
    caches other processes had refilled (benchmarks/route_decision.py).
    """
    cdef Py_ssize_t n = scores.shape[0], i, j
    if len(labels) != n:
        raise ValueError(f"{len(labels)} labels for {n} scores")
    cdef Py_ssize_t small[16]
    cdef Py_ssize_t* order = &small[0]
    if n > 16:
        order = <Py_ssize_t*>malloc(n * sizeof(Py_ssize_t))
        if order == NULL:
            raise MemoryError()
    cdef float score
    try:
        for i in range(n):  # stable: an equal score never moves ahead of an earlier label
            score = scores[i]
            j = i
            while j > 0 and _ranks_before(score, scores[order[j - 1]]):
                order[j] = order[j - 1]
                j -= 1
            order[j] = i
        return tuple([(labels[order[i]], float(scores[order[i]])) for i in range(n)])
    finally:
        if n > 16:
            free(order)


def decide(labels, float[::1] scores, float min_confidence, str fallback, available=None):
    """Chooses the expert for one prompt.

    The best-scoring label wins unless its score is below ``min_confidence``
    or it is not in ``available`` (when given); then ``fallback`` is chosen
    and the decision is marked as a fallback. ``score`` is always the
    classifier's score of the chosen expert (0 when the classifier does not
    know the fallback's name).
    """
    cdef Py_ssize_t n = scores.shape[0], i, best = 0
    if n == 0:
        raise ValueError("no scores to decide from")
    if len(labels) != n:
        raise ValueError(f"{len(labels)} labels for {n} scores")
    for i in range(1, n):
        if scores[i] > scores[best]:
            best = i
    ranked = rank(labels, scores)
    cdef str best_label = labels[best]
    if scores[best] >= min_confidence and (available is None or best_label in available):
        return Decision(best_label, scores[best], False, ranked)
    cdef float fallback_score = 0.0
    for i in range(n):
        if labels[i] == fallback:
            fallback_score = scores[i]
    return Decision(fallback, fallback_score, True, ranked)
