"""Pure conversions between protobuf messages and the domain types, with request validation."""

from __future__ import annotations

import math
import uuid
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


def sampling_params_from_pb(
    msg: pb.SamplingParams, limits: RequestLimits, *, has_field: bool = True
) -> SamplingParams:
    """Validate sampling settings; zero or unset values take the server's defaults."""
    if not has_field:
        return SamplingParams(max_tokens=limits.default_max_tokens)
    max_tokens = msg.max_tokens or limits.default_max_tokens
    if max_tokens > limits.context_length:
        raise InvalidRequestError(
            f"sampling.max_tokens is {msg.max_tokens} but this expert's context length is "
            f"{limits.context_length} tokens (prompt included); ask for fewer tokens"
        )
    temperature = None
    if msg.HasField("temperature"):
        temperature = msg.temperature
        if not math.isfinite(temperature) or temperature < 0:
            raise InvalidRequestError(
                f"sampling.temperature must be a finite number >= 0 (0 is greedy), got {temperature}"
            )
    top_p = None
    if msg.HasField("top_p"):
        top_p = msg.top_p
        if not (0.0 < top_p <= 1.0):  # also rejects NaN
            raise InvalidRequestError(f"sampling.top_p must be in (0, 1], got {top_p}")
    if msg.top_k < 0:
        raise InvalidRequestError(f"sampling.top_k must be >= 0 (0 disables it), got {msg.top_k}")
    stop = tuple(msg.stop)
    if len(stop) > MAX_STOP_STRINGS:
        raise InvalidRequestError(
            f"sampling.stop has {len(stop)} strings; at most {MAX_STOP_STRINGS} are allowed"
        )
    for i, s in enumerate(stop):
        if not s:
            raise InvalidRequestError(f"sampling.stop[{i}] is empty; remove it or give a non-empty string")
        if len(s) > MAX_STOP_CHARS:
            raise InvalidRequestError(
                f"sampling.stop[{i}] has {len(s)} characters; at most {MAX_STOP_CHARS} are allowed"
            )
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=temperature,
        top_p=top_p,
        top_k=msg.top_k,
        seed=msg.seed if msg.HasField("seed") else None,
        stop=stop,
    )


def request_from_pb(msg: pb.GenerateRequest, limits: RequestLimits) -> EngineRequest:
    """Validate a GenerateRequest and convert it; raises InvalidRequestError naming the field."""
    if len(msg.request_id) > MAX_REQUEST_ID_CHARS:
        raise InvalidRequestError(
            f"request_id has {len(msg.request_id)} characters; at most {MAX_REQUEST_ID_CHARS}"
        )
    request_id = msg.request_id or uuid.uuid4().hex
    if msg.prompt and msg.messages:
        raise InvalidRequestError("set either prompt or messages, not both")
    if not msg.prompt and not msg.messages:
        raise InvalidRequestError("the request is empty: set prompt or messages")
    size = len(msg.prompt.encode())
    messages = []
    for i, m in enumerate(msg.messages):
        if m.role not in ROLES:
            raise InvalidRequestError(
                f"messages[{i}].role is {m.role!r}; it must be one of {', '.join(sorted(ROLES))}"
            )
        size += len(m.content.encode())
        messages.append(ChatMessage(m.role, m.content))
    if size > limits.max_prompt_bytes:
        raise InvalidRequestError(
            f"the prompt is {size} bytes; this expert accepts at most {limits.max_prompt_bytes} bytes"
        )
    sampling = sampling_params_from_pb(msg.sampling, limits, has_field=msg.HasField("sampling"))
    return EngineRequest(
        request_id=request_id,
        sampling=sampling,
        prompt=msg.prompt or None,
        messages=tuple(messages),
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
