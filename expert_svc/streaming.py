"""Token coalescing for `--stream-interval N`: fewer, larger response frames.

Every frame costs the same fixed work on its way out of the expert and through the router
(protobuf, HTTP/2 framing, a write, a wake-up), whatever it carries; at N tokens per frame that
work is paid once per N tokens. The first token still leaves at once, so time to first token is
unchanged; later tokens wait for up to N-1 others, and whatever remains goes with the last frame.
TensorRT-LLM's PyTorch backend does the same itself (its `stream_interval`); for every other
engine the servicer applies `coalesce` to the engine's deltas (benchmarks/stream_interval.py
measures the effect).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from .types import Delta


def _tokens(delta: Delta) -> int:
    # Engines send token ids with each piece; a piece of text without ids counts as one token.
    return len(delta.token_ids) or (1 if delta.text else 0)


def merge(deltas: list[Delta]) -> Delta:
    """One delta carrying the text and token ids of `deltas` in order; the finish reason and usage
    of the last one."""
    last = deltas[-1]
    if len(deltas) == 1:
        return last
    return Delta(
        "".join(d.text for d in deltas),
        tuple(t for d in deltas for t in d.token_ids),
        last.finish_reason,
        last.prompt_tokens,
        last.completion_tokens,
    )


async def coalesce(deltas: AsyncIterator[Delta], interval: int) -> AsyncIterator[Delta]:
    """Regroup a stream of deltas: the first token alone, then one delta per `interval` tokens, and
    the rest with the finishing delta. `interval` 1 passes every delta through unchanged."""
    if interval <= 1:
        async for delta in deltas:
            yield delta
        return
    pending: list[Delta] = []
    pending_tokens = 0
    first_sent = False
    async for delta in deltas:
        pending.append(delta)
        pending_tokens += _tokens(delta)
        if delta.finish_reason is not None or (not first_sent and pending_tokens) or pending_tokens >= interval:
            first_sent = first_sent or pending_tokens > 0
            yield merge(pending)
            pending, pending_tokens = [], 0
    if pending:
        yield merge(pending)
