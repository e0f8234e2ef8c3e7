"""Routing core: the compiled prompt featurizer and routing decision.

The compiled extension modules (``core._featurizer``, ``core._routing``) are the
product; this module is their plain Python face.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from core._featurizer import Featurizer
from core._routing import Decision, decide, rank

__all__ = ["Decision", "Featurizer", "FeaturizerConfig", "decide", "rank"]


@dataclass(frozen=True)
class FeaturizerConfig:
    """Featurizer parameters; they travel in the classifier's metadata file."""

    num_buckets: int = 1 << 18
    char_ngram_min: int = 3
    char_ngram_max: int = 5
    word_bigrams: bool = True
    max_chars: int = 8192

    def build(self) -> Featurizer:
        return Featurizer(**asdict(self))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FeaturizerConfig:
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown featurizer parameter(s): {', '.join(sorted(unknown))}")
        return cls(**data)
