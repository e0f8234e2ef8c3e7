"""OpenAI API <-> expert_router.v1 conversions: request bodies to GenerateRequest, frames to JSON.

Pure functions, no I/O, so that every rule is unit-tested without a server. The HTTP door
(router_svc.http_api) calls them; the gRPC contract stays the one source of truth, and this module
only says how the OpenAI shapes map onto it:

- ``model``: ``"auto"`` lets the classifier choose; an expert's name pins that expert.
- ``max_completion_tokens`` (or the older ``max_tokens``), ``temperature``, ``top_p``, ``seed``,
  ``stop`` and the common ``top_k`` extension map to ``SamplingParams``; ``n`` other than 1 is refused.
- Parameters the router cannot honour (tools, logprobs, penalties...) are accepted only at their
  neutral value, and anything the API does not define is refused, as OpenAI itself does: a client
  that asks for something silently dropped would get an answer it did not ask for.

Streaming chunks are formatted from a per-request prefix and suffix around the JSON-escaped delta
text, so one frame costs one protobuf parse and one ``json.dumps`` of a short string.
"""
from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from expert_router.v1 import expert_router_pb2 as pb

AUTO_MODEL = "auto"
OWNER = "expert-router"
MAX_UINT32 = 2**32 - 1
MAX_UINT64 = 2**64 - 1

FINISH_REASONS = {
    pb.FINISH_REASON_UNSPECIFIED: "stop",
    pb.FINISH_REASON_STOP: "stop",
    pb.FINISH_REASON_LENGTH: "length",
    # Not in OpenAI's list; the names vLLM's OpenAI server uses for the same two outcomes.
    pb.FINISH_REASON_CANCELLED: "abort",
    pb.FINISH_REASON_ERROR: "error",
}

CHAT_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}

# Fields both endpoints understand.
_COMMON_FIELDS = frozenset({"model", "stream", "stream_options", "max_tokens", "temperature", "top_p", "top_k",
                            "seed", "stop", "n", "user", "metadata", "store", "service_tier",
                            "frequency_penalty", "presence_penalty", "logit_bias", "logprobs"})
CHAT_FIELDS = _COMMON_FIELDS | {"messages", "max_completion_tokens", "top_logprobs", "tools", "tool_choice",
                                "parallel_tool_calls", "functions", "function_call", "response_format",
                                "prompt_cache_key", "safety_identifier"}
COMPLETION_FIELDS = _COMMON_FIELDS | {"prompt", "echo", "suffix", "best_of"}
# Accepted at these neutral values only (besides null): anything else changes the answer in a way
# the experts cannot provide.
_NEUTRAL_VALUES: dict[str, tuple[Any, ...]] = {
    "frequency_penalty": (0, 0.0), "presence_penalty": (0, 0.0), "logit_bias": ({},),
    "logprobs": (False,), "top_logprobs": (0,), "tools": ([],), "functions": ([],),
    "tool_choice": ("none",), "function_call": ("none",), "parallel_tool_calls": (True, False),
    "response_format": ({"type": "text"},), "echo": (False,), "suffix": ("",), "best_of": (1,),
}


class ApiError(Exception):
    """An OpenAI-shaped error: HTTP status, message, ``type``, ``param`` and ``code``."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 error_type: str | None = None, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.error_type = error_type or error_type_for(status)
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.error_type, self.param, self.code)


def error_type_for(status: int) -> str:
    """OpenAI's ``error.type`` for an HTTP status."""
    if status == 401:
        return "authentication_error"
    if status == 403:
        return "permission_error"
    if status == 404:
        return "not_found_error"
    if status == 429:
        return "rate_limit_error"
    if status >= 500:
        return "server_error"
    return "invalid_request_error"


def error_body(message: str, error_type: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def bad_request(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code=code)


@dataclass(frozen=True)
class ParsedRequest:
    """A validated OpenAI request: the GenerateRequest to route, and how to answer."""

    request: pb.GenerateRequest
    model: str  # as the client sent it: "auto" or an expert's name
    stream: bool
    include_usage: bool
    chat: bool


def parse_json_body(body: bytes) -> dict[str, Any]:
    """The request body as a JSON object, or a 400 that says what is wrong with it."""
    try:
        # JSON is UTF-8 (RFC 8259); json.loads on bytes would also guess UTF-16 and UTF-32.
        data = json.loads(body.decode("utf-8"))
    except UnicodeDecodeError:
        raise bad_request("the request body is not UTF-8 text; send a JSON object") from None
    except json.JSONDecodeError as exc:
        raise bad_request(f"the request body is not valid JSON ({exc.msg} at line {exc.lineno} column "
                          f"{exc.colno}); send a JSON object") from None
    if not isinstance(data, dict):
        raise bad_request(f"the request body must be a JSON object, got a JSON {_json_type(data)}")
    return data


def chat_request(data: Mapping[str, Any], experts: tuple[str, ...]) -> ParsedRequest:
    """Validates a ``/v1/chat/completions`` body (already a JSON object)."""
    _check_fields(data, CHAT_FIELDS)
    model = _model(data, experts)
    messages = data.get("messages")
    if not isinstance(messages, list):
        raise bad_request(f"messages must be an array of {{role, content}} objects, got {_json_type(messages)}",
                          "messages")
    if not messages:
        raise bad_request("messages is empty; send at least one message", "messages")
    converted = [_chat_message(i, message) for i, message in enumerate(messages)]
    request = pb.GenerateRequest(messages=converted, sampling=_sampling(data, chat=True))
    stream, include_usage = _stream(data)
    return ParsedRequest(request, model, stream, include_usage, chat=True)


def completion_request(data: Mapping[str, Any], experts: tuple[str, ...]) -> ParsedRequest:
    """Validates a ``/v1/completions`` body (already a JSON object)."""
    _check_fields(data, COMPLETION_FIELDS)
    model = _model(data, experts)
    prompt = data.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if isinstance(prompt, list):
        raise bad_request("prompt must be one string (arrays of several prompts or of token ids are not "
                          "supported); send one request per prompt", "prompt")
    if not isinstance(prompt, str):
        raise bad_request(f"prompt must be a string, got {_json_type(prompt)}", "prompt")
    if not prompt:
        raise bad_request("prompt is empty; send some text", "prompt")
    request = pb.GenerateRequest(prompt=prompt, sampling=_sampling(data, chat=False))
    stream, include_usage = _stream(data)
    return ParsedRequest(request, model, stream, include_usage, chat=False)


def _check_fields(data: Mapping[str, Any], known: frozenset[str]) -> None:
    for key in data:
        if key not in known:
            raise bad_request(f"Unrecognized request argument supplied: {key}", key, "unknown_parameter")
    for key, neutral in _NEUTRAL_VALUES.items():
        value = data.get(key)
        if key in data and value is not None and not any(_same(value, n) for n in neutral):
            raise bad_request(f"{key} is not supported by this router; leave it out "
                              f"(accepted: null or {json.dumps(neutral[0])})", key, "unsupported_parameter")


def _same(value: Any, neutral: Any) -> bool:
    return type(value) is type(neutral) and value == neutral or (
        isinstance(value, float) and isinstance(neutral, int) and not isinstance(neutral, bool) and value == neutral)


def _model(data: Mapping[str, Any], experts: tuple[str, ...]) -> str:
    model = data.get("model")
    if model is None:
        raise bad_request(f"model is required: {AUTO_MODEL!r} to let the router choose, or one of "
                          f"{', '.join(experts)}", "model")
    if not isinstance(model, str):
        raise bad_request(f"model must be a string, got {_json_type(model)}", "model")
    if model != AUTO_MODEL and model not in experts:
        raise ApiError(404, f"The model {model!r} does not exist; models: {AUTO_MODEL}, {', '.join(experts)} "
                            f"(GET /v1/models)", param="model", code="model_not_found")
    return model


def _chat_message(index: int, message: Any) -> pb.ChatMessage:
    where = f"messages[{index}]"
    if not isinstance(message, dict):
        raise bad_request(f"{where} must be an object with role and content, got {_json_type(message)}", where)
    role = message.get("role")
    if role not in CHAT_ROLES:
        raise bad_request(f"{where}.role must be one of {', '.join(CHAT_ROLES)}, got {json.dumps(role)}",
                          f"{where}.role")
    for key in message:
        if key not in ("role", "content", "name"):
            raise bad_request(f"{where}.{key} is not supported (tool calls and refusals are not); send role "
                              f"and content", f"{where}.{key}")
    content = message.get("content")
    if isinstance(content, list):
        parts = []
        for j, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise bad_request(f"{where}.content[{j}] must be a text part {{\"type\": \"text\", \"text\": ...}}; "
                                  f"the experts read text only", f"{where}.content")
            parts.append(part["text"])
        content = "".join(parts)
    if not isinstance(content, str):
        raise bad_request(f"{where}.content must be a string or an array of text parts, got "
                          f"{_json_type(content)}", f"{where}.content")
    return pb.ChatMessage(role=CHAT_ROLES[role], content=content)


def _sampling(data: Mapping[str, Any], *, chat: bool) -> pb.SamplingParams:
    sampling = pb.SamplingParams()
    n = data.get("n")
    if n is not None and (_int(n) is None or n != 1):
        raise bad_request(f"n must be 1 (one choice per request), got {json.dumps(n)}", "n")
    max_tokens = data.get("max_tokens")
    key = "max_tokens"
    if chat and data.get("max_completion_tokens") is not None:
        if max_tokens is not None and max_tokens != data["max_completion_tokens"]:
            raise bad_request("max_tokens and max_completion_tokens differ; send only max_completion_tokens",
                              "max_tokens")
        max_tokens, key = data["max_completion_tokens"], "max_completion_tokens"
    if max_tokens is not None:
        if _int(max_tokens) is None or not 1 <= max_tokens <= MAX_UINT32:
            raise bad_request(f"{key} must be an integer >= 1, got {json.dumps(max_tokens)}", key)
        sampling.max_tokens = max_tokens
    for key in ("temperature", "top_p"):
        value = data.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise bad_request(f"{key} must be a number, got {json.dumps(value)}", key)
        if key == "temperature" and not 0 <= value <= 2:
            raise bad_request(f"temperature must be in [0, 2], got {value}", key)
        if key == "top_p" and not 0 < value <= 1:
            raise bad_request(f"top_p must be in (0, 1], got {value}", key)
        setattr(sampling, key, value)
    top_k = data.get("top_k")
    if top_k is not None:
        if _int(top_k) is None or not 0 <= top_k < 2**31:
            raise bad_request(f"top_k must be an integer >= 0 (0 disables it), got {json.dumps(top_k)}", "top_k")
        sampling.top_k = top_k
    seed = data.get("seed")
    if seed is not None:
        if _int(seed) is None or not 0 <= seed <= MAX_UINT64:
            raise bad_request(f"seed must be an integer in [0, 2^64), got {json.dumps(seed)}", "seed")
        sampling.seed = seed
    stop = data.get("stop")
    if stop is not None:
        stops = [stop] if isinstance(stop, str) else stop
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            raise bad_request(f"stop must be a string or an array of strings, got {_json_type(stop)}", "stop")
        sampling.stop.extend(stops)
    return sampling


def _stream(data: Mapping[str, Any]) -> tuple[bool, bool]:
    stream = data.get("stream")
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise bad_request(f"stream must be true or false, got {json.dumps(stream)}", "stream")
    options = data.get("stream_options")
    if options is None:
        return stream, False
    if not stream:
        raise bad_request("stream_options is only allowed when stream is true", "stream_options")
    if not isinstance(options, dict) or set(options) - {"include_usage", "include_obfuscation"}:
        raise bad_request("stream_options must be an object with include_usage (true or false)", "stream_options")
    include_usage = options.get("include_usage", False)
    if not isinstance(include_usage, bool):
        raise bad_request(f"stream_options.include_usage must be true or false, got {json.dumps(include_usage)}",
                          "stream_options.include_usage")
    return stream, include_usage


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


# Responses ---------------------------------------------------------------------------------------

def usage_json(usage: pb.Usage) -> dict[str, int]:
    return {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.prompt_tokens + usage.completion_tokens}


def completion_response(parsed: ParsedRequest, response_id: str, created: int, expert: str, text: str,
                        last: pb.GenerateResponse | None) -> dict[str, Any]:
    """The non-streaming answer: one choice with the whole text."""
    finish = FINISH_REASONS[last.finish_reason] if last is not None else "stop"
    usage = usage_json(last.usage) if last is not None else usage_json(pb.Usage())
    if parsed.chat:
        choice = {"index": 0, "message": {"role": "assistant", "content": text, "refusal": None},
                  "finish_reason": finish, "logprobs": None}
        kind = "chat.completion"
    else:
        choice = {"index": 0, "text": text, "finish_reason": finish, "logprobs": None}
        kind = "text_completion"
    return {"id": response_id, "object": kind, "created": created, "model": expert, "choices": [choice],
            "usage": usage}


class ChunkWriter:
    """Formats one stream's server-sent events; built once per request, then cheap per frame."""

    __slots__ = ("_base", "_chat", "_delta_prefix", "_delta_suffix", "_include_usage")

    def __init__(self, parsed: ParsedRequest, response_id: str, created: int, expert: str) -> None:
        self._chat = parsed.chat
        self._include_usage = parsed.include_usage
        kind = "chat.completion.chunk" if parsed.chat else "text_completion"
        self._base = (f'{{"id":{json.dumps(response_id)},"object":"{kind}","created":{created},'
                      f'"model":{json.dumps(expert)},')
        usage = ',"usage":null' if parsed.include_usage else ""
        if parsed.chat:
            self._delta_prefix = ('data: ' + self._base + '"choices":[{"index":0,"delta":{"content":').encode()
            self._delta_suffix = ('},"finish_reason":null,"logprobs":null}]' + usage + '}\n\n').encode()
        else:
            self._delta_prefix = ('data: ' + self._base + '"choices":[{"index":0,"text":').encode()
            self._delta_suffix = (',"finish_reason":null,"logprobs":null}]' + usage + '}\n\n').encode()

    def role(self) -> bytes:
        """Chat streams open with the assistant role, as OpenAI's do."""
        usage = ',"usage":null' if self._include_usage else ""
        return ('data: ' + self._base + '"choices":[{"index":0,"delta":{"role":"assistant","content":""},'
                '"finish_reason":null,"logprobs":null}]' + usage + '}\n\n').encode()

    def delta(self, text: str) -> bytes:
        return self._delta_prefix + json.dumps(text).encode() + self._delta_suffix

    def finish(self, last: pb.GenerateResponse) -> bytes:
        """The chunk with the finish reason, the usage chunk when asked for, and ``[DONE]``."""
        finish = json.dumps(FINISH_REASONS[last.finish_reason])
        usage_null = ',"usage":null' if self._include_usage else ""
        if self._chat:
            choice = f'{{"index":0,"delta":{{}},"finish_reason":{finish},"logprobs":null}}'
        else:
            choice = f'{{"index":0,"text":"","finish_reason":{finish},"logprobs":null}}'
        out = 'data: ' + self._base + f'"choices":[{choice}]{usage_null}}}\n\n'
        if self._include_usage:
            out += ('data: ' + self._base + '"choices":[],"usage":'
                    + json.dumps(usage_json(last.usage), separators=(",", ":")) + '}\n\n')
        return (out + 'data: [DONE]\n\n').encode()

    @staticmethod
    def error(error: ApiError) -> bytes:
        """An error after the stream began: one event with OpenAI's error object, and no ``[DONE]``."""
        return ('data: ' + json.dumps(error.body(), separators=(",", ":")) + '\n\n').encode()


def models_response(experts: tuple[str, ...], created: int) -> dict[str, Any]:
    """``GET /v1/models``: ``auto`` first, then one model per expert."""
    return {"object": "list", "data": [{"id": name, "object": "model", "created": created, "owned_by": OWNER}
                                       for name in (AUTO_MODEL, *experts)]}
