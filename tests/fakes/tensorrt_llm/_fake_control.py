"""Controls of the FAKE tensorrt_llm: what the fake model generates, and what was called."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class FakeBehaviour:
    """The scripted model: `tokens` are (token id, text) pairs emitted in order, one per step."""

    tokens: list[tuple[int, str]] = field(
        default_factory=lambda: [(9906, "Hello"), (1917, " world"), (0, "!"), (128009, "")]
    )
    step_delay_s: float = 0.0
    fail_at_step: int | None = None  # raise RuntimeError at this step (an engine failure)
    fail_on_construct: str | None = None  # raise RuntimeError(message) from LLM(...)
    construct_delay_s: float = 0.0  # LLM(...) blocks its thread this long, like a real load
    refuse_with: str | None = None  # the executor refuses every request (RequestError)


behaviour = FakeBehaviour()
instances: list[Any] = []  # every LLM constructed, in order


def reset() -> None:
    global behaviour
    behaviour = FakeBehaviour()
    instances.clear()
