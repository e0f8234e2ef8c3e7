"""OpenAI request bodies -> GenerateRequest, and frames -> OpenAI JSON (router_svc.openai_compat)."""
from __future__ import annotations

import json

import pytest

from expert_router.v1 import expert_router_pb2 as pb
from router_svc.openai_compat import (
    ApiError,
    ChunkWriter,
    chat_request,
    completion_request,
    completion_response,
    models_response,
    parse_json_body,
)

EXPERTS = ("math", "code", "general")
USER = [{"role": "user", "content": "hi"}]


def test_chat_maps_messages_and_sampling() -> None:
    parsed = chat_request({
        "model": "auto",
        "messages": [{"role": "developer", "content": "Be brief."},
                     {"role": "user", "content": [{"type": "text", "text": "Solve "}, {"type": "text", "text": "x"}],
                      "name": "ann"},
                     {"role": "assistant", "content": "ok"}],
        "max_completion_tokens": 12, "temperature": 0, "top_p": 0.5, "seed": 2**63, "stop": "END", "top_k": 4,
        "n": 1, "user": "u1", "logprobs": False, "frequency_penalty": 0, "stream": True,
        "stream_options": {"include_usage": True},
    }, EXPERTS)
    request = parsed.request
    assert [(m.role, m.content) for m in request.messages] == [("system", "Be brief."), ("user", "Solve x"),
                                                                ("assistant", "ok")]
    sampling = request.sampling
    assert (sampling.max_tokens, sampling.temperature, sampling.top_p, sampling.seed, list(sampling.stop),
            sampling.top_k) == (12, 0.0, 0.5, 2**63, ["END"], 4)
    assert sampling.HasField("temperature") and not request.prompt and not request.expert
    assert (parsed.model, parsed.stream, parsed.include_usage, parsed.chat) == ("auto", True, True, True)


def test_unset_sampling_stays_unset() -> None:
    sampling = chat_request({"model": "code", "messages": USER}, EXPERTS).request.sampling
    assert sampling.max_tokens == 0 and not sampling.HasField("temperature") and not sampling.HasField("seed")


def test_completion_takes_one_prompt() -> None:
    parsed = completion_request({"model": "math", "prompt": ["2+2="], "max_tokens": 3, "echo": False}, EXPERTS)
    assert (parsed.request.prompt, parsed.request.sampling.max_tokens, parsed.model, parsed.chat) == (
        "2+2=", 3, "math", False)


@pytest.mark.parametrize(("body", "status", "param", "fragment"), [
    ({"model": "poetry", "messages": USER}, 404, "model", "does not exist"),
    ({"messages": USER}, 400, "model", "model is required"),
    ({"model": "auto", "messages": USER, "n": 2}, 400, "n", "n must be 1"),
    ({"model": "auto", "messages": USER, "n": True}, 400, "n", "n must be 1"),
    ({"model": "auto", "messages": USER, "max_tokens": 5, "max_completion_tokens": 6}, 400, "max_tokens", "differ"),
    ({"model": "auto", "messages": USER, "max_tokens": 2**32}, 400, "max_tokens", "integer >= 1"),
    ({"model": "auto", "messages": USER, "max_tokens": 1.5}, 400, "max_tokens", "integer >= 1"),
    ({"model": "auto", "messages": USER, "temperature": 2.5}, 400, "temperature", "[0, 2]"),
    ({"model": "auto", "messages": USER, "temperature": True}, 400, "temperature", "a number"),
    ({"model": "auto", "messages": USER, "top_p": 0}, 400, "top_p", "(0, 1]"),
    ({"model": "auto", "messages": USER, "seed": 2**64}, 400, "seed", "[0, 2^64)"),
    ({"model": "auto", "messages": USER, "stop": ["a", 1]}, 400, "stop", "array of strings"),
    ({"model": "auto", "messages": USER, "stream_options": {"include_usage": True}}, 400, "stream_options",
     "only allowed when stream is true"),
    ({"model": "auto", "messages": USER, "stream": True, "stream_options": {"include_usage": 1}}, 400,
     "stream_options.include_usage", "true or false"),
    ({"model": "auto", "messages": USER, "presence_penalty": 0.5}, 400, "presence_penalty", "not supported"),
    ({"model": "auto", "messages": USER, "logprobs": True}, 400, "logprobs", "not supported"),
    ({"model": "auto", "messages": USER, "response_format": {"type": "json_object"}}, 400, "response_format",
     "not supported"),
    ({"model": "auto", "messages": USER, "best_of": 1}, 400, "best_of", "Unrecognized request argument"),
    ({"model": "auto", "messages": [{"role": "tool", "content": "x"}]}, 400, "messages[0].role", "must be one of"),
    ({"model": "auto", "messages": [{"role": "user", "content": "x", "tool_calls": []}]}, 400,
     "messages[0].tool_calls", "not supported"),
    ({"model": "auto", "messages": [3]}, 400, "messages[0]", "must be an object"),
])
def test_chat_rejections_name_the_parameter(body, status, param, fragment) -> None:
    with pytest.raises(ApiError) as info:
        chat_request(body, EXPERTS)
    assert (info.value.status, info.value.param) == (status, param)
    assert fragment in info.value.message
    assert set(info.value.body()["error"]) == {"message", "type", "param", "code"}


@pytest.mark.parametrize(("body", "fragment"), [
    (b"{", "not valid JSON"), (b"null", "got a JSON null"), (b'"x"', "got a JSON string"),
    (b"\xfe\xff", "not UTF-8"),
])
def test_body_must_be_a_json_object(body, fragment) -> None:
    with pytest.raises(ApiError) as info:
        parse_json_body(body)
    assert info.value.status == 400 and fragment in info.value.message


def parse_events(data: bytes) -> list[str]:
    text = data.decode()
    assert text.endswith("\n\n")
    return [event.removeprefix("data: ") for event in text.split("\n\n") if event]


def test_chunks_are_valid_json_with_escaped_text() -> None:
    parsed = chat_request({"model": "auto", "messages": USER, "stream": True,
                           "stream_options": {"include_usage": True}}, EXPERTS)
    writer = ChunkWriter(parsed, "chatcmpl-1", 1700000000, "math")
    role, = parse_events(writer.role())
    assert json.loads(role)["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    tricky = 'quote " backslash \\ newline \n unicode é \u2028 data: [DONE]'
    delta, = parse_events(writer.delta(tricky))
    chunk = json.loads(delta)
    assert chunk["choices"][0]["delta"]["content"] == tricky and chunk["usage"] is None
    assert (chunk["id"], chunk["object"], chunk["created"], chunk["model"]) == (
        "chatcmpl-1", "chat.completion.chunk", 1700000000, "math")
    last = pb.GenerateResponse(finish_reason=pb.FINISH_REASON_STOP, usage=pb.Usage(prompt_tokens=3,
                                                                                  completion_tokens=4))
    finish, usage, done = parse_events(writer.finish(last))
    assert json.loads(finish)["choices"][0] == {"index": 0, "delta": {}, "finish_reason": "stop", "logprobs": None}
    assert json.loads(usage) == {**json.loads(usage), "choices": [],
                                 "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}}
    assert done == "[DONE]"


def test_completion_chunks_and_no_usage_unless_asked() -> None:
    parsed = completion_request({"model": "auto", "prompt": "p", "stream": True}, EXPERTS)
    writer = ChunkWriter(parsed, "cmpl-1", 1, "code")
    chunk = json.loads(parse_events(writer.delta("abc"))[0])
    assert chunk["object"] == "text_completion" and chunk["choices"][0]["text"] == "abc" and "usage" not in chunk
    finish, done = parse_events(writer.finish(pb.GenerateResponse(finish_reason=pb.FINISH_REASON_LENGTH)))
    assert json.loads(finish)["choices"][0]["finish_reason"] == "length" and done == "[DONE]"


def test_whole_responses_and_models() -> None:
    parsed = chat_request({"model": "auto", "messages": USER}, EXPERTS)
    last = pb.GenerateResponse(finish_reason=pb.FINISH_REASON_LENGTH, usage=pb.Usage(prompt_tokens=1,
                                                                                    completion_tokens=2))
    body = completion_response(parsed, "chatcmpl-x", 5, "general", "hello", last)
    assert body["choices"][0]["message"]["content"] == "hello" and body["choices"][0]["finish_reason"] == "length"
    assert body["usage"] == {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}
    assert [m["id"] for m in models_response(EXPERTS, 0)["data"]] == ["auto", "math", "code", "general"]
