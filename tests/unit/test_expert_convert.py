"""Request validation and protobuf conversion of the expert service."""

import math

import pytest

from expert_router.v1 import expert_router_pb2 as pb
from expert_svc.convert import RequestLimits, delta_to_pb, info_to_pb, request_from_pb
from expert_svc.errors import InvalidRequestError
from expert_svc.types import ChatMessage, Delta, EngineInfo, FinishReason

LIMITS = RequestLimits(context_length=512, default_max_tokens=32, max_prompt_bytes=1000)


def convert(**fields):
    sampling = fields.pop("sampling", None)
    msg = pb.GenerateRequest(**fields)
    if sampling is not None:
        msg.sampling.CopyFrom(pb.SamplingParams(**sampling))
    return request_from_pb(msg, LIMITS)


def test_prompt_request_takes_server_defaults():
    req = convert(prompt="hi there")
    assert req.prompt == "hi there" and req.messages == ()
    assert req.sampling.max_tokens == 32
    assert req.sampling.temperature is None and req.sampling.top_p is None and req.sampling.seed is None
    assert len(req.request_id) == 32  # generated when the caller sends none


def test_zero_max_tokens_means_server_default():
    assert convert(prompt="x", sampling={"max_tokens": 0}).sampling.max_tokens == 32


def test_sampling_fields_are_carried():
    req = convert(
        prompt="x",
        request_id="r-1",
        sampling={
            "max_tokens": 7,
            "temperature": 0.0,
            "top_p": 0.5,
            "top_k": 3,
            "seed": 2**40,
            "stop": ["END", "\n\n"],
        },
    )
    s = req.sampling
    assert req.request_id == "r-1"
    assert (s.max_tokens, s.temperature, s.top_p, s.top_k, s.seed, s.stop) == (
        7,
        0.0,
        0.5,
        3,
        2**40,
        ("END", "\n\n"),
    )


def test_messages_are_converted_in_order():
    req = convert(
        messages=[
            pb.ChatMessage(role="system", content="be brief"),
            pb.ChatMessage(role="user", content="hi"),
        ]
    )
    assert req.prompt is None
    assert req.messages == (ChatMessage("system", "be brief"), ChatMessage("user", "hi"))


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({}, "empty"),
        ({"prompt": "a", "messages": [pb.ChatMessage(role="user", content="b")]}, "not both"),
        ({"messages": [pb.ChatMessage(role="robot", content="b")]}, "messages[0].role"),
        ({"prompt": "x" * 1001}, "at most 1000 bytes"),
        ({"messages": [pb.ChatMessage(role="user", content="é" * 501)]}, "at most 1000 bytes"),
        ({"prompt": "x", "sampling": {"max_tokens": 513}}, "context length is 512"),
        ({"prompt": "x", "sampling": {"temperature": -0.1}}, "temperature"),
        ({"prompt": "x", "sampling": {"temperature": math.nan}}, "temperature"),
        ({"prompt": "x", "sampling": {"temperature": math.inf}}, "temperature"),
        ({"prompt": "x", "sampling": {"top_p": 0.0}}, "top_p"),
        ({"prompt": "x", "sampling": {"top_p": 1.5}}, "top_p"),
        ({"prompt": "x", "sampling": {"top_p": math.nan}}, "top_p"),
        ({"prompt": "x", "sampling": {"top_k": -1}}, "top_k"),
        ({"prompt": "x", "sampling": {"stop": ["s"] * 17}}, "at most 16"),
        ({"prompt": "x", "sampling": {"stop": ["s" * 257]}}, "at most 256"),
        ({"prompt": "x", "sampling": {"stop": [""]}}, "stop[0] is empty"),
        ({"prompt": "x", "request_id": "r" * 129}, "request_id"),
    ],
)
def test_invalid_requests_name_the_problem(fields, needle):
    with pytest.raises(InvalidRequestError) as info:
        convert(**fields)
    assert needle in str(info.value)


def test_limits_are_inclusive():
    assert convert(prompt="x" * 1000, sampling={"max_tokens": 512, "top_p": 1.0, "stop": ["s" * 256] * 16})


def test_delta_to_pb_sets_finish_and_usage_only_on_last():
    middle = delta_to_pb(Delta("ab", (1, 2)))
    assert middle.text == "ab" and list(middle.token_ids) == [1, 2]
    assert middle.finish_reason == pb.FINISH_REASON_UNSPECIFIED and not middle.HasField("usage")
    last = delta_to_pb(Delta("", (), FinishReason.LENGTH, 5, 9))
    assert last.finish_reason == pb.FINISH_REASON_LENGTH
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (5, 9)


@pytest.mark.parametrize(
    ("reason", "expected"),
    [
        (FinishReason.STOP, pb.FINISH_REASON_STOP),
        (FinishReason.CANCELLED, pb.FINISH_REASON_CANCELLED),
        (FinishReason.ERROR, pb.FINISH_REASON_ERROR),
    ],
)
def test_finish_reasons_map(reason, expected):
    assert delta_to_pb(Delta("", (), reason, 0, 0)).finish_reason == expected


def test_info_to_pb():
    msg = info_to_pb("code", EngineInfo("llamacpp", "SmolLM2-135M-Instruct", "Q4_1", 2048, 4))
    assert (msg.name, msg.model, msg.quantization, msg.context_length, msg.engine) == (
        "code",
        "SmolLM2-135M-Instruct",
        "Q4_1",
        2048,
        "llamacpp",
    )
    assert (msg.tensor_parallel_size, msg.max_concurrency) == (1, 4)
