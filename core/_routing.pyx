# cython: language_level=3, boundscheck=False, wraparound=False
"""Compiled routing decision: classifier scores to the expert a prompt goes to."""


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


def rank(labels, float[::1] scores):
    """Returns ``((label, score), ...)`` sorted by score, highest first; ties keep label order."""
    cdef Py_ssize_t n = scores.shape[0]
    if len(labels) != n:
        raise ValueError(f"{len(labels)} labels for {n} scores")
    order = sorted(range(n), key=lambda i: -scores[i])
    return tuple([(labels[i], float(scores[i])) for i in order])


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
