"""The expert's bad-input table (docs/reliability.md), one test per row, against a real server.

Each row asserts the status code and a fragment of the message a person acts on, and then the
same server must serve a good request: bad input never takes an expert down.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc
import pytest

from expert_router.v1 import expert_router_pb2 as pb
from expert_router.v1 import expert_router_pb2_grpc as pb_grpc
from expert_svc.server import RunningExpert
from tests.helpers import drain, request, running_expert, synthetic_config

INVALID = grpc.StatusCode.INVALID_ARGUMENT
DEADLINE_S = 10.0


def sampling(**fields) -> pb.GenerateRequest:
    return pb.GenerateRequest(prompt="hello", sampling=pb.SamplingParams(**fields))


@dataclass(frozen=True)
class Row:
    """One bad input: how to build it, what the expert must answer, and under which config."""

    name: str
    build: Callable[[], pb.GenerateRequest]
    code: grpc.StatusCode
    fragment: str
    config: dict = field(default_factory=dict)


ROWS = [
    Row("empty prompt and no messages", lambda: pb.GenerateRequest(), INVALID,
        "the request is empty: set prompt or messages"),
    Row("both prompt and messages",
        lambda: pb.GenerateRequest(prompt="hi", messages=[pb.ChatMessage(role="user", content="hi")]),
        INVALID, "set either prompt or messages, not both"),
    Row("prompt over the default limit (256 KiB)", lambda: request("a" * (256 * 1024 + 1)), INVALID,
        "the prompt is 262145 bytes; this service accepts at most 262144 bytes"),
    Row("prompt over a configured limit (--max-prompt-bytes 1000)", lambda: request("é" * 501), INVALID,
        "the prompt is 1002 bytes; this service accepts at most 1000 bytes", {"max_prompt_bytes": 1000}),
    Row("messages over the limit together",
        lambda: pb.GenerateRequest(messages=[pb.ChatMessage(role="user", content="x" * 600)] * 2),
        INVALID, "the prompt is 1200 bytes; this service accepts at most 1000 bytes",
        {"max_prompt_bytes": 1000}),
    Row("unknown message role",
        lambda: pb.GenerateRequest(messages=[pb.ChatMessage(role="wizard", content="hi")]), INVALID,
        "messages[0].role is 'wizard'; it must be one of assistant, system, user"),
    Row("max_tokens above the context length", lambda: sampling(max_tokens=4096), INVALID,
        "sampling.max_tokens is 4096 but this expert's context length is 2048 tokens"),
    Row("temperature below 0", lambda: sampling(temperature=-0.5), INVALID,
        "sampling.temperature must be a finite number >= 0 (0 is greedy), got -0.5"),
    Row("temperature NaN", lambda: sampling(temperature=float("nan")), INVALID,
        "sampling.temperature must be a finite number >= 0 (0 is greedy), got nan"),
    Row("temperature infinite", lambda: sampling(temperature=float("inf")), INVALID,
        "sampling.temperature must be a finite number >= 0"),
    Row("top_p 0", lambda: sampling(top_p=0.0), INVALID, "sampling.top_p must be in (0, 1], got 0.0"),
    Row("top_p negative", lambda: sampling(top_p=-0.25), INVALID, "sampling.top_p must be in (0, 1], got -0.25"),
    Row("top_p above 1", lambda: sampling(top_p=1.5), INVALID, "sampling.top_p must be in (0, 1], got 1.5"),
    Row("top_p NaN", lambda: sampling(top_p=float("nan")), INVALID, "sampling.top_p must be in (0, 1], got nan"),
    Row("negative top_k", lambda: sampling(top_k=-1), INVALID, "sampling.top_k must be >= 0 (0 disables it), got -1"),
    Row("too many stop strings (17)", lambda: sampling(stop=[f"s{i}" for i in range(17)]), INVALID,
        "sampling.stop has 17 strings; at most 16 are allowed"),
    Row("a too-long stop string (257 chars)", lambda: sampling(stop=["x" * 257]), INVALID,
        "sampling.stop[0] has 257 characters; at most 256 are allowed"),
    Row("an empty stop string", lambda: sampling(stop=["ok", ""]), INVALID,
        "sampling.stop[1] is empty; remove it or give a non-empty string"),
    Row("request_id over 128 characters", lambda: pb.GenerateRequest(request_id="r" * 129, prompt="hi"),
        INVALID, "request_id must be 1-128 printable ASCII characters, got 129 characters"),
    Row("message over the gRPC size limit (default 4 MiB)", lambda: request("m" * (4 * 1024 * 1024 + 10)),
        grpc.StatusCode.RESOURCE_EXHAUSTED, "Received message larger than max"),
    Row("message over a configured gRPC size limit (--max-message-bytes 65536)",
        lambda: request("m" * 70_000), grpc.StatusCode.RESOURCE_EXHAUSTED,
        "Received message larger than max (70", {"max_message_bytes": 65536, "max_prompt_bytes": 32768}),
]


async def assert_serves_next_good_request(stub: pb_grpc.ExpertStub) -> None:
    frames = await drain(stub.Generate(request("a good request", max_tokens=3), timeout=DEADLINE_S))
    assert len(frames) == 3 and frames[-1].finish_reason == pb.FINISH_REASON_LENGTH


@pytest.mark.parametrize("row", ROWS, ids=[row.name for row in ROWS])
async def test_bad_input_row(row: Row):
    async with running_expert(synthetic_config(**row.config)) as (_, stub):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await drain(stub.Generate(row.build(), timeout=DEADLINE_S))
        assert info.value.code() == row.code, info.value
        assert row.fragment in info.value.details(), info.value.details()
        await assert_serves_next_good_request(stub)


async def test_max_tokens_zero_means_the_default():
    async with running_expert(synthetic_config(default_max_tokens=5)) as (_, stub):
        frames = await drain(stub.Generate(sampling(max_tokens=0), timeout=DEADLINE_S))
        assert len(frames) == 5
        assert frames[-1].usage.completion_tokens == 5
        assert frames[-1].finish_reason == pb.FINISH_REASON_LENGTH
        await assert_serves_next_good_request(stub)


def raw_generate(channel: grpc.aio.Channel):
    """Generate with identity serializers: whatever bytes we pass go on the wire as the body."""
    return channel.unary_stream("/expert_router.v1.Expert/Generate")


# A length-delimited field 1 whose declared length runs past the end, then noise: never parses.
CORRUPT_BODY = b"\x0a\xff\xff\xff\xff\x0f" + random.Random(7).randbytes(64)


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (CORRUPT_BODY, "is not a valid expert_router.v1.GenerateRequest message (Wire format was corrupt)"),
        # prompt (field 2) holding bytes that are not UTF-8.
        (b"\x12\x04\xff\xfe\xfd\xfc",
         "is not a valid expert_router.v1.GenerateRequest message (String field had bad UTF-8)"),
    ],
    ids=["random bytes", "invalid UTF-8 in prompt"],
)
async def test_undecodable_request_body_is_invalid_argument(body: bytes, fragment: str):
    async with running_expert(synthetic_config()) as (expert, stub):
        async with grpc.aio.insecure_channel(expert.address) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await drain(raw_generate(channel)(body, timeout=DEADLINE_S))
        assert info.value.code() == INVALID, info.value
        assert fragment in info.value.details()
        await assert_serves_next_good_request(stub)


async def test_undecodable_get_info_body_is_invalid_argument():
    async with running_expert(synthetic_config()) as (expert, stub):
        async with grpc.aio.insecure_channel(expert.address) as channel:
            get_info = channel.unary_unary("/expert_router.v1.Expert/GetInfo")
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await get_info(CORRUPT_BODY, timeout=DEADLINE_S)
        assert info.value.code() == INVALID
        assert "not a valid expert_router.v1.GetInfoRequest" in info.value.details()
        await assert_serves_next_good_request(stub)


async def send_raw_and_read_until_closed(expert: RunningExpert, payload: bytes) -> bytes:
    """Write `payload` on a plain TCP connection and read until the server closes it."""
    host, port = expert.address.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    received = b""
    try:
        writer.write(payload)
        await writer.drain()
        while chunk := await asyncio.wait_for(reader.read(65536), timeout=5.0):
            received += chunk
    except ConnectionResetError:
        pass
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except ConnectionError:
            pass
    return received


@pytest.mark.parametrize(
    "payload",
    [
        random.Random(1).randbytes(4096),
        b"GET /expert_router.v1.Expert/Generate HTTP/1.1\r\nHost: localhost\r\nConnection: keep-alive\r\n\r\n",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + random.Random(2).randbytes(512),
    ],
    ids=["random bytes", "HTTP/1.1 request", "HTTP/2 preface then garbage frames"],
)
async def test_raw_bytes_on_the_port_are_dropped_and_the_server_stays_up(payload: bytes):
    async with running_expert(synthetic_config()) as (expert, stub):
        # The server closes the connection (reading to EOF would time out otherwise) ...
        received = await send_raw_and_read_until_closed(expert, payload)
        # ... having sent at most its own HTTP/2 SETTINGS frame (frame type 4 in byte 3).
        assert received == b"" or (len(received) >= 9 and received[3] == 4), received[:64]
        await assert_serves_next_good_request(stub)
