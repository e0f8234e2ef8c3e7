"""The request rules of GenerateRequest and ClassifyRequest, applied alike by the router and the expert.

One rule, one message: a request the router refuses gets the words the expert would have used, so a
client calling either one learns the same thing. Rules that depend on one service's state (the
expert's context length, the router's need for text to classify) stay with that service.
"""
from __future__ import annotations

import math
import uuid
from collections.abc import Iterable, Sequence

from expert_router.v1 import expert_router_pb2 as pb

from .errors import InvalidRequestError

__all__ = [
    "MAX_REQUEST_ID_CHARS", "MAX_STOP_CHARS", "MAX_STOP_STRINGS", "REQUEST_ID_KEY", "ROLES",
    "check_prompt", "check_request_id", "check_sampling", "resolve_request_id",
]

ROLES = frozenset({"system", "user", "assistant"})
MAX_STOP_STRINGS = 16
MAX_STOP_CHARS = 256
MAX_REQUEST_ID_CHARS = 128
# The call metadata key that carries a request's id from the client through the router to the expert.
REQUEST_ID_KEY = "x-request-id"


def check_sampling(msg: pb.SamplingParams) -> None:
    """The sampling rules that hold whatever the model."""
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


def check_prompt(prompt: str, messages: Sequence[pb.ChatMessage], max_prompt_bytes: int) -> int:
    """The prompt/messages rules; returns the prompt's size in UTF-8 bytes."""
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


def check_request_id(request_id: str, source: str) -> None:
    """A request id travels in metadata and log lines, so it must be short printable ASCII.

    ``source`` names where the id came from (``x-request-id`` or ``request_id``), for the message.
    """
    if not 0 < len(request_id) <= MAX_REQUEST_ID_CHARS:
        got = f"{len(request_id)} characters"
    elif not (request_id.isascii() and request_id.isprintable()):
        got = repr(request_id)
    else:
        return
    raise InvalidRequestError(f"{source} must be 1-{MAX_REQUEST_ID_CHARS} printable ASCII characters, got {got}")


def resolve_request_id(metadata: Iterable[tuple[str, str | bytes]] | None, body_id: str) -> str:
    """The id of one request: the ``x-request-id`` metadata, else the body's request_id, else a new one.

    The same order in the router and the expert, so that a request forwarded by the router (which
    sets the metadata) is known by one id in both services' logs, errors and abort records.
    """
    for key, value in metadata or ():
        if key == REQUEST_ID_KEY and isinstance(value, str) and value:
            check_request_id(value, REQUEST_ID_KEY)
            return value
    if body_id:
        check_request_id(body_id, "request_id")
        return body_id
    return uuid.uuid4().hex
