"""The router's bad-input table (docs/reliability.md, "Router: bad input"), one test per row.

Each row runs against a real in-process router with a synthetic expert behind it, asserts the
status code and a message fragment a person can act on, and then sends a good request to the same
router, which must succeed.
"""
from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from expert_router.v1 import expert_router_pb2 as pb
from expert_router.v1 import expert_router_pb2_grpc as pb_grpc

GENERATE_PATH = "/expert_router.v1.Router/Generate"
TOKEN = "bad-input-test-token-0001"
DEADLINE_S = 5.0


def sampled(prompt: str = "hello", **sampling) -> pb.GenerateRequest:
    return pb.GenerateRequest(prompt=prompt, sampling=pb.SamplingParams(**sampling))


def good_request() -> pb.GenerateRequest:
    return sampled("hello after bad input", max_tokens=3)


@dataclass(frozen=True)
class Row:
    """One row of the table: the request, what the router answers, and the router settings it needs."""

    request: pb.GenerateRequest
    code: grpc.StatusCode
    fragment: str
    metadata: tuple[tuple[str, str | bytes], ...] = ()
    router: dict = field(default_factory=dict)


INVALID = grpc.StatusCode.INVALID_ARGUMENT
ROWS: dict[str, Row] = {
    "empty prompt, no messages": Row(pb.GenerateRequest(), INVALID,
                                     "the request is empty: set prompt or messages"),
    "whitespace-only prompt": Row(sampled(" \n\t"), INVALID, "the prompt is only whitespace; send some text"),
    "both prompt and messages": Row(
        pb.GenerateRequest(prompt="hi", messages=[pb.ChatMessage(role="user", content="hi")]),
        INVALID, "set either prompt or messages, not both"),
    "prompt over the default limit": Row(sampled("a" * (256 * 1024 + 1)), INVALID,
                                         "the prompt is 262145 bytes; this service accepts at most 262144 bytes"),
    "prompt over a configured limit": Row(sampled("é" * 501), INVALID, "the prompt is 1002 bytes; this service accepts at most 1000 bytes",
                                          router={"max_prompt_bytes": 1000}),
    "messages over a configured limit together": Row(
        pb.GenerateRequest(messages=[pb.ChatMessage(role="user", content="x" * 600)] * 2), INVALID,
        "the prompt is 1200 bytes; this service accepts at most 1000 bytes", router={"max_prompt_bytes": 1000}),
    "unknown message role": Row(pb.GenerateRequest(messages=[pb.ChatMessage(role="wizard", content="hi")]),
                                INVALID, "messages[0].role is 'wizard'; it must be one of assistant, system, user"),
    "every message empty": Row(pb.GenerateRequest(messages=[pb.ChatMessage(role="user", content=" ")]),
                               INVALID, "every message is empty"),
    "max_tokens above the model's limit (expert's answer passed through)": Row(
        sampled(max_tokens=4096), INVALID,
        "sampling.max_tokens is 4096 but this expert's context length is 2048 tokens"),
    "temperature below 0": Row(sampled(temperature=-0.5), INVALID,
                               "sampling.temperature must be a finite number >= 0 (0 is greedy), got -0.5"),
    "temperature NaN": Row(sampled(temperature=math.nan), INVALID,
                           "sampling.temperature must be a finite number >= 0 (0 is greedy), got nan"),
    "top_p 0": Row(sampled(top_p=0.0), INVALID, "sampling.top_p must be in (0, 1], got 0.0"),
    "top_p above 1": Row(sampled(top_p=1.5), INVALID, "sampling.top_p must be in (0, 1], got 1.5"),
    "top_p NaN": Row(sampled(top_p=math.nan), INVALID, "sampling.top_p must be in (0, 1], got nan"),
    "negative top_k": Row(sampled(top_k=-1), INVALID, "sampling.top_k must be >= 0 (0 disables it), got -1"),
    "too many stop strings": Row(sampled(stop=[f"s{i}" for i in range(17)]), INVALID,
                                 "sampling.stop has 17 strings; at most 16 are allowed"),
    "an empty stop string": Row(sampled(stop=["end", ""]), INVALID, "sampling.stop[1] is empty"),
    "a too-long stop string": Row(
        sampled(stop=["s" * 257]), INVALID, "sampling.stop[0] has 257 characters; at most 256 are allowed"),
    "unknown explicit expert": Row(pb.GenerateRequest(prompt="hi", expert="astrology"), grpc.StatusCode.NOT_FOUND,
                                   "unknown expert 'astrology'; known experts: general"),
    "x-request-id metadata over 128 characters": Row(
        good_request(), INVALID, "x-request-id must be 1-128 printable ASCII characters",
        metadata=(("x-request-id", "r" * 129),)),
    "request_id field over 128 characters": Row(
        pb.GenerateRequest(prompt="hi", request_id="r" * 129), INVALID,
        "request_id must be 1-128 printable ASCII characters, got 129 characters"),
    "message over the gRPC size limit (default 4 MiB)": Row(
        sampled("a" * (4 * 1024 * 1024 + 10)), grpc.StatusCode.RESOURCE_EXHAUSTED,
        "Received message larger than max (4194321 vs. 4194304)"),
    "message over a configured gRPC size limit": Row(
        sampled("a" * 70_000), grpc.StatusCode.RESOURCE_EXHAUSTED, "Received message larger than max (70006 vs. 65536)",
        router={"max_message_bytes": 65536, "max_prompt_bytes": 1000}),
    "no authorization metadata (auth on)": Row(
        good_request(), grpc.StatusCode.UNAUTHENTICATED,
        "missing credentials: send the metadata 'authorization: Bearer <token>'", router={"auth": True}),
    "authorization not Bearer (auth on)": Row(
        good_request(), grpc.StatusCode.UNAUTHENTICATED, "malformed authorization metadata: expected 'Bearer <token>'",
        metadata=(("authorization", "Basic dXNlcjpwYXNz"),), router={"auth": True}),
    "unknown bearer token (auth on)": Row(
        good_request(), grpc.StatusCode.UNAUTHENTICATED, "the bearer token is not valid for this router",
        metadata=(("authorization", "Bearer not-a-token-this-router-knows"),), router={"auth": True}),
}


@pytest.fixture
async def router_for(start_router, start_expert, tmp_path: Path):
    """``await router_for(settings)`` -> (router, metadata a good request needs)."""
    expert = None

    async def start(settings: dict):
        nonlocal expert
        settings = dict(settings)
        expert = expert or await start_expert("general")
        good_metadata: tuple = ()
        if settings.pop("auth", False):
            path = tmp_path / "tokens.yaml"
            path.write_text(f"tokens:\n  - {{name: tester, token: {TOKEN}}}\n")
            settings["auth_tokens"] = str(path)
            good_metadata = (("authorization", f"Bearer {TOKEN}"),)
        return await start_router({"general": [expert.address]}, **settings), good_metadata

    return start


async def assert_good_request_succeeds(stub: pb_grpc.RouterStub, metadata=()) -> None:
    frames = [f async for f in stub.Generate(good_request(), metadata=metadata or None, timeout=DEADLINE_S)]
    assert frames[-1].usage.completion_tokens == 3


@pytest.mark.parametrize("row", list(ROWS), ids=list(ROWS))
async def test_bad_request_row(row: str, router_for, channels) -> None:
    case = ROWS[row]
    router, good_metadata = await router_for(case.router)
    stub = pb_grpc.RouterStub(channels(router.address))
    metadata = case.metadata or (good_metadata if case.code is not grpc.StatusCode.UNAUTHENTICATED else ())
    with pytest.raises(grpc.aio.AioRpcError) as info:
        [f async for f in stub.Generate(case.request, metadata=metadata or None, timeout=DEADLINE_S)]
    assert info.value.code() == case.code, info.value
    assert case.fragment in info.value.details()
    await assert_good_request_succeeds(stub, good_metadata)


async def test_max_tokens_0_means_the_expert_default(router_for, channels) -> None:
    router, _ = await router_for({})
    stub = pb_grpc.RouterStub(channels(router.address))
    frames = [f async for f in stub.Generate(sampled(max_tokens=0), timeout=DEADLINE_S)]
    assert frames[-1].usage.completion_tokens == 128  # the synthetic expert's --max-tokens default


async def test_binary_metadata_with_random_bytes_is_ignored(router_for, channels) -> None:
    router, _ = await router_for({})
    stub = pb_grpc.RouterStub(channels(router.address))
    metadata = (("x-garbage-bin", bytes(range(256))), ("x-request-id-bin", b"\xff\x00\xfe"))
    frames = [f async for f in stub.Generate(good_request(), metadata=metadata, timeout=DEADLINE_S)]
    assert frames[-1].usage.completion_tokens == 3


@pytest.mark.parametrize(("body", "fragment"), [
    (b"\x07" * 70, ("the request body (70 bytes) is not a valid expert_router.v1.GenerateRequest message "
                    "(Wire format was corrupt)")),
    (b"\x0a\x02\xff\xfe", "is not a valid expert_router.v1.GenerateRequest message (String field had bad UTF-8)"),
], ids=["random bytes", "prompt not UTF-8"])
async def test_undecodable_body_is_invalid_argument(body: bytes, fragment: str, router_for, channels) -> None:
    router, _ = await router_for({})
    channel = channels(router.address)
    raw = channel.unary_stream(GENERATE_PATH, request_serializer=None, response_deserializer=None)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        [f async for f in raw(body, timeout=DEADLINE_S)]
    assert info.value.code() == INVALID, info.value
    assert fragment in info.value.details()
    await assert_good_request_succeeds(pb_grpc.RouterStub(channel))


async def closed_within(address: str, payload: bytes, timeout: float = 3.0) -> bytes:
    """Writes ``payload`` on a plain TCP connection; returns what the server sent before closing."""
    host, _, port = address.rpartition(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(payload)
        await writer.drain()
        received = b""
        async with asyncio.timeout(timeout):
            while chunk := await reader.read(65536):
                received += chunk
        return received
    finally:
        writer.close()


@pytest.mark.parametrize("payload", [
    bytes(range(256)) * 4,
    b"GET / HTTP/1.1\r\nHost: router\r\nConnection: keep-alive\r\n\r\n",
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x04\xff\x00\x00\x00\x00\x00garbage!",
], ids=["random bytes", "HTTP/1.1 request", "HTTP/2 preface then garbage"])
async def test_garbage_on_the_tcp_port_closes_the_connection_only(payload: bytes, router_for, channels) -> None:
    router, _ = await router_for({})
    received = await closed_within(router.address, payload)
    assert b"HTTP/1.1 200" not in received  # no HTTP/1.1 answer; the connection was closed
    await assert_good_request_succeeds(pb_grpc.RouterStub(channels(router.address)))


async def test_undecodable_classify_body_is_invalid_argument(router_for, channels) -> None:
    router, _ = await router_for({})
    channel = channels(router.address)
    raw = channel.unary_unary("/expert_router.v1.Router/Classify", request_serializer=None,
                              response_deserializer=None)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await raw(b"\x07" * 70, timeout=DEADLINE_S)
    assert info.value.code() == INVALID, info.value  # not UNKNOWN: a client's bytes are not a router bug
    assert "is not a valid expert_router.v1.ClassifyRequest message" in info.value.details()
    classified = await pb_grpc.RouterStub(channel).Classify(pb.ClassifyRequest(prompt="solve x"), timeout=DEADLINE_S)
    assert classified.expert == "general"
    await assert_good_request_succeeds(pb_grpc.RouterStub(channel))


async def test_undecodable_list_experts_body_is_invalid_argument(router_for, channels) -> None:
    router, _ = await router_for({})
    channel = channels(router.address)
    raw = channel.unary_unary("/expert_router.v1.Router/ListExperts", request_serializer=None,
                              response_deserializer=None)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await raw(b"\x07" * 70, timeout=DEADLINE_S)
    assert info.value.code() == INVALID, info.value  # grpcio alone would answer UNKNOWN
    assert "is not a valid expert_router.v1.ListExpertsRequest message" in info.value.details()
    listed = await pb_grpc.RouterStub(channel).ListExperts(pb.ListExpertsRequest(), timeout=DEADLINE_S)
    assert [expert.name for expert in listed.experts] == ["general"]
