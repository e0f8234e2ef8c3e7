"""Pure conversions between protobuf messages and the domain types, with request validation.

The rules shared with the router live in `service_base.rules`; what depends on this expert
(its context length, its default max_tokens) is checked here.
"""

from __future__ import annotations

from dataclasses import dataclass

from expert_router.v1 import expert_router_pb2 as pb
from service_base.errors import InvalidRequestError
from service_base.rules import check_prompt, check_sampling, resolve_request_id

from .types import ChatMessage, Delta, EngineInfo, EngineRequest, FinishReason, SamplingParams

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


def request_from_pb(msg: pb.GenerateRequest, limits: RequestLimits, request_id: str = "") -> EngineRequest:
    """Validate a GenerateRequest and convert it; raises InvalidRequestError naming the field.

    ``request_id`` is the id the servicer resolved (metadata first); without one, the body's
    request_id, else a new id.
    """
    if not request_id:
        request_id = resolve_request_id((), msg.request_id)
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
