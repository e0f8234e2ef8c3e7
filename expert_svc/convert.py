"""Pure conversions between protobuf messages and the domain types, with request validation."""

from __future__ import annotations

import math
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from expert_router.v1 import expert_router_pb2 as pb

from .errors import InvalidRequestError
from .types import ChatMessage, Delta, EngineInfo, EngineRequest, FinishReason, SamplingParams

ROLES = frozenset({"system", "user", "assistant"})
MAX_STOP_STRINGS = 16
MAX_STOP_CHARS = 256
MAX_REQUEST_ID_CHARS = 128

_FINISH_TO_PB = {
    None: pb.FINISH_REASON_UNSPECIFIED,
    FinishReason.STOP: pb.FINISH_REASON_STOP,
    FinishReason.LENGTH: pb.FINISH_REASON_LENGTH,
    FinishReason.CANCELLED: pb.FINISH_REASON_CANCELLED,
    FinishReason.ERROR: pb.FINISH_REASON_ERROR,
}


@dataclass(frozen=True, slots=True)
class RequestLimits:
    """The bounds a request is validated against."""

    context_length: int = 2048
    default_max_tokens: int = 128
    max_prompt_bytes: int = 256 * 1024


def check_sampling(msg: pb.SamplingParams) -> None:
    """The sampling rules that hold whatever the model; the router applies them too."""
    if msg.HasField("temperature") and not (math.isfinite(msg.temperature) and msg.temperature >= 0):
        raise InvalidRequestError(
            f"sampling.temperature must be a finite number >= 0 (0 is greedy), got {msg.temperature}"
        )
    if msg.HasField("top_p") and not (0.0 < msg.top_p <= 1.0):  # also rejects NaN
        raise InvalidRequestError(f"sampling.top_p must be in (0, 1], got {msg.top_p}")
    if msg.top_k < 0:
        raise InvalidRequestError(f"sampling.top_k must be >= 0 (0 disables it), got {msg.top_k}")
    if len(msg.stop) > MAX_STOP_STRINGS:
        raise InvalidRequestError(
            f"sampling.stop has {len(msg.stop)} strings; at most {MAX_STOP_STRINGS} are allowed"
        )
    for i, s in enumerate(msg.stop):
        if not s:
            raise InvalidRequestError(f"sampling.stop[{i}] is empty; remove it or give a non-empty string")
        if len(s) > MAX_STOP_CHARS:
            raise InvalidRequestError(
                f"sampling.stop[{i}] has {len(s)} characters; at most {MAX_STOP_CHARS} are allowed"
            )


def sampling_params_from_pb(
    msg: pb.SamplingParams, limits: RequestLimits, *, has_field: bool = True
) -> SamplingParams:
    """Validate sampling settings; zero or unset values take the server's defaults."""
    if not has_field:
        return SamplingParams(max_tokens=limits.default_max_tokens)
    max_tokens = msg.max_tokens or limits.default_max_tokens
    if max_tokens > limits.context_length:
        raise InvalidRequestError(
            f"sampling.max_tokens is {max_tokens}"
            f"{'' if msg.max_tokens else ' (the server default)'} but this expert's context length is "
            f"{limits.context_length} tokens (prompt included); ask for fewer tokens"
        )
    check_sampling(msg)
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=msg.temperature if msg.HasField("temperature") else None,
        top_p=msg.top_p if msg.HasField("top_p") else None,
        top_k=msg.top_k,
        seed=msg.seed if msg.HasField("seed") else None,
        stop=tuple(msg.stop),
    )


def check_prompt(prompt: str, messages: Sequence[pb.ChatMessage], max_prompt_bytes: int) -> int:
    """The prompt/messages rules of GenerateRequest and ClassifyRequest, shared with the router.

    Returns the prompt's size in UTF-8 bytes.
    """
    if prompt and messages:
        raise InvalidRequestError("set either prompt or messages, not both")
    if not prompt and not messages:
        raise InvalidRequestError("the request is empty: set prompt or messages")
    size = len(prompt.encode())
    for i, m in enumerate(messages):
        if m.role not in ROLES:
            raise InvalidRequestError(
                f"messages[{i}].role is {m.role!r}; it must be one of {', '.join(sorted(ROLES))}"
            )
        size += len(m.content.encode())
    if size > max_prompt_bytes:
        raise InvalidRequestError(
            f"the prompt is {size} bytes; this service accepts at most {max_prompt_bytes} bytes"
        )
    return size


def request_from_pb(msg: pb.GenerateRequest, limits: RequestLimits) -> EngineRequest:
    """Validate a GenerateRequest and convert it; raises InvalidRequestError naming the field."""
    if len(msg.request_id) > MAX_REQUEST_ID_CHARS:
        raise InvalidRequestError(
            f"request_id has {len(msg.request_id)} characters; at most {MAX_REQUEST_ID_CHARS}"
        )
    request_id = msg.request_id or uuid.uuid4().hex
    check_prompt(msg.prompt, msg.messages, limits.max_prompt_bytes)
    messages = tuple(ChatMessage(m.role, m.content) for m in msg.messages)
    sampling = sampling_params_from_pb(msg.sampling, limits, has_field=msg.HasField("sampling"))
    return EngineRequest(
        request_id=request_id,
        sampling=sampling,
        prompt=msg.prompt or None,
        messages=messages,
    )


def delta_to_pb(delta: Delta) -> pb.GenerateResponse:
    """One streamed frame; finish reason and usage only on the last."""
    msg = pb.GenerateResponse(text=delta.text, token_ids=delta.token_ids)
    if delta.finish_reason is not None:
        msg.finish_reason = _FINISH_TO_PB[delta.finish_reason]
        msg.usage.prompt_tokens = delta.prompt_tokens or 0
        msg.usage.completion_tokens = delta.completion_tokens or 0
    return msg


def info_to_pb(name: str, info: EngineInfo) -> pb.ExpertInfo:
    return pb.ExpertInfo(
        name=name,
        model=info.model,
        quantization=info.quantization,
        context_length=info.context_length,
        engine=info.engine,
        tensor_parallel_size=info.tensor_parallel_size,
        max_concurrency=info.max_concurrency,
    )
