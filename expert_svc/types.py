"""Domain types of the expert service, independent of protobuf and of any engine."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class FinishReason(enum.Enum):
    """Why a generation ended."""

    STOP = "stop"
    LENGTH = "length"
    CANCELLED = "cancelled"
    ERROR = "error"


@dataclass(frozen=True, slots=True)
class ChatMessage:
    """One turn of a conversation."""

    role: str
    content: str


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """Validated sampling settings; `max_tokens` is always resolved to a positive number."""

    max_tokens: int
    temperature: float | None = None
    top_p: float | None = None
    top_k: int = 0
    seed: int | None = None
    stop: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class EngineRequest:
    """A validated generation request: exactly one of `prompt` or `messages` is set."""

    request_id: str
    sampling: SamplingParams
    prompt: str | None = None
    messages: tuple[ChatMessage, ...] = ()

    def chat_messages(self, system_prompt: str | None = None) -> list[ChatMessage]:
        """The conversation to render: a plain prompt becomes one user turn, and the expert's
        system prompt is prepended when the request brings no system turn of its own."""
        turns = list(self.messages) if self.messages else [ChatMessage("user", self.prompt or "")]
        if system_prompt and not any(m.role == "system" for m in turns):
            turns.insert(0, ChatMessage("system", system_prompt))
        return turns


@dataclass(frozen=True, slots=True)
class Delta:
    """A piece of a streamed completion; the last one carries finish reason and token counts."""

    text: str
    token_ids: tuple[int, ...] = ()
    finish_reason: FinishReason | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


@dataclass(frozen=True, slots=True)
class EngineInfo:
    """What an engine serves."""

    engine: str
    model: str
    quantization: str
    context_length: int
    max_concurrency: int
    tensor_parallel_size: int = 1


@dataclass(slots=True)
class EngineStats:
    """Counters an engine keeps about its requests (read by tests, logs and benchmarks)."""

    started: int = 0
    finished: int = 0
    aborted: int = 0
    active: int = 0
    aborted_request_ids: list[str] = field(default_factory=list)

    def record_abort(self, request_id: str) -> None:
        self.aborted += 1
        self.aborted_request_ids.append(request_id)
        # Only the recent ids matter for diagnosis; keep memory bounded under load.
        del self.aborted_request_ids[:-1000]
