"""A model-free engine: deterministic text at a configured pace, for measuring the router alone.

Text is derived from the prompt (a stable hash seeds the word choice), so a test or a benchmark
can check that frames arrive unchanged. Timing uses `asyncio.sleep` on an absolute schedule, so
thousands of concurrent streams cost little more than their timers.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections.abc import AsyncIterator

from ..types import Delta, EngineInfo, EngineRequest, FinishReason
from .base import Engine, StopMatcher

VOCABULARY = (
    "the",
    "model",
    "expert",
    "router",
    "token",
    "stream",
    "answer",
    "question",
    "data",
    "signal",
    "value",
    "system",
    "result",
    "number",
    "function",
    "proof",
    "cell",
    "law",
    "patient",
    "energy",
    "graph",
    "vector",
    "field",
    "order",
    "state",
    "light",
    "time",
    "space",
    "code",
    "theory",
    "and",
    "of",
    "to",
    "is",
    "in",
    "a",
    "for",
    "with",
    "on",
    "by",
)


def prompt_text(request: EngineRequest, system_prompt: str | None) -> str:
    return "\n".join(m.content for m in request.chat_messages(system_prompt))


def synthetic_words(text: str):
    """An endless, deterministic sequence of (token id, word) seeded by a stable hash of `text`."""
    seed = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")
    rng = random.Random(seed)
    while True:
        token_id = rng.randrange(len(VOCABULARY))
        yield token_id, VOCABULARY[token_id]


class SyntheticEngine(Engine):
    """Emits one word per frame after `ttft_ms`, at `tokens_per_second`."""

    name = "synthetic"

    def __init__(
        self,
        *,
        ttft_ms: float = 20.0,
        tokens_per_second: float = 50.0,
        context_length: int = 2048,
        max_concurrency: int = 4,
        system_prompt: str | None = None,
    ) -> None:
        super().__init__()
        self._ttft = ttft_ms / 1000.0
        self._interval = 1.0 / tokens_per_second
        self._context_length = context_length
        self._max_concurrency = max_concurrency
        self._system_prompt = system_prompt

    async def start(self) -> None:
        self._ready = True

    def info(self) -> EngineInfo:
        return EngineInfo(
            engine=self.name,
            model="synthetic",
            quantization="none",
            context_length=self._context_length,
            max_concurrency=self._max_concurrency,
        )

    async def close(self) -> None:
        self._ready = False

    async def generate(self, request: EngineRequest) -> AsyncIterator[Delta]:
        text = prompt_text(request, self._system_prompt)
        prompt_tokens = len(text.split())
        max_tokens = min(request.sampling.max_tokens, max(self._context_length - prompt_tokens, 0))
        stops = StopMatcher(request.sampling.stop)
        words = synthetic_words(text)
        loop = asyncio.get_running_loop()
        self.stats.started += 1
        self.stats.active += 1
        done = False
        try:
            start = loop.time() + self._ttft
            for i in range(max_tokens):
                delay = start + i * self._interval - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                token_id, word = next(words)
                piece = word if i == 0 else " " + word
                emit, stopped = stops.feed(piece)
                if stopped:
                    done = True
                    yield Delta(emit, (token_id,), FinishReason.STOP, prompt_tokens, i + 1)
                    return
                if i + 1 == max_tokens:
                    done = True
                    yield Delta(emit + stops.flush(), (token_id,), FinishReason.LENGTH, prompt_tokens, i + 1)
                    return
                yield Delta(emit, (token_id,))
            done = True  # the prompt filled the context: nothing to generate
            yield Delta("", (), FinishReason.LENGTH, prompt_tokens, 0)
        finally:
            self.stats.active -= 1
            if done:
                self.stats.finished += 1
            else:
                self.stats.record_abort(request.request_id)
