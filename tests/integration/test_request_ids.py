"""One request id from the client through the router to the expert: in both services' request log
lines, in the expert's error status and in its engine's abort records.

A real router and a real synthetic expert, both in-process on port 0; both log through ``logging``,
so one ``caplog`` sees the router's and the expert's lines.
"""
from __future__ import annotations

import logging

import grpc
import pytest

from expert_router.v1 import expert_router_pb2 as pb
from expert_router.v1 import expert_router_pb2_grpc as pb_grpc
from tests.helpers import eventually

ROUTER_LOG = "router_svc.requests"
EXPERT_LOG = "expert_svc.requests"


def request_lines(caplog: pytest.LogCaptureFixture, logger: str) -> list[dict]:
    return [record.fields for record in caplog.records if record.name == logger]


@pytest.fixture
def request_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger=ROUTER_LOG)
    caplog.set_level(logging.INFO, logger=EXPERT_LOG)
    return caplog


async def test_the_header_id_is_the_id_in_both_logs(start_router, start_expert, channels, request_logs) -> None:
    expert = await start_expert("general")
    router = await start_router({"general": [expert.address]})
    stub = pb_grpc.RouterStub(channels(router.address))
    # The metadata wins over the body's request_id, in the router and in the expert alike.
    call = stub.Generate(pb.GenerateRequest(prompt="hi", request_id="from-body", sampling=pb.SamplingParams(
        max_tokens=3)), metadata=(("x-request-id", "e2e-header-1"),))
    frames = [frame async for frame in call]
    assert len(frames) == 3

    await eventually(lambda: request_lines(request_logs, EXPERT_LOG) and request_lines(request_logs, ROUTER_LOG))
    [routed] = request_lines(request_logs, ROUTER_LOG)
    [served] = request_lines(request_logs, EXPERT_LOG)
    assert routed["request_id"] == served["request_id"] == "e2e-header-1"
    assert (served["expert"], served["status"], served["frames"], served["completion_tokens"]) == (
        "general", "OK", 3, 3)


async def test_an_id_the_router_makes_reaches_the_expert(start_router, start_expert, channels,
                                                         request_logs) -> None:
    expert = await start_expert("general")
    router = await start_router({"general": [expert.address]})
    call = pb_grpc.RouterStub(channels(router.address)).Generate(
        pb.GenerateRequest(prompt="hi", sampling=pb.SamplingParams(max_tokens=2)))
    [frame async for frame in call]
    made = dict(await call.initial_metadata())["x-request-id"]

    # The router writes its line once the relay has handed over the stream's end, just after the client sees it.
    await eventually(lambda: request_lines(request_logs, EXPERT_LOG) and request_lines(request_logs, ROUTER_LOG))
    assert len(made) == 32
    assert [line["request_id"] for line in request_lines(request_logs, ROUTER_LOG)] == [made]
    assert [line["request_id"] for line in request_lines(request_logs, EXPERT_LOG)] == [made]


async def test_the_expert_error_and_log_carry_the_routers_id(start_router, start_expert, channels,
                                                             request_logs) -> None:
    expert = await start_expert("general", context_length=64, default_max_tokens=16)
    router = await start_router({"general": [expert.address]})
    # Only the expert knows its context length: its INVALID_ARGUMENT passes through the router.
    call = pb_grpc.RouterStub(channels(router.address)).Generate(
        pb.GenerateRequest(prompt="hi", sampling=pb.SamplingParams(max_tokens=500)),
        metadata=(("x-request-id", "e2e-error-1"),))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        [frame async for frame in call]
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "context length is 64" in info.value.details()
    assert dict(info.value.trailing_metadata())["x-request-id"] == "e2e-error-1"

    await eventually(lambda: request_lines(request_logs, EXPERT_LOG) and request_lines(request_logs, ROUTER_LOG))
    [served] = request_lines(request_logs, EXPERT_LOG)
    assert (served["request_id"], served["status"], served["frames"]) == ("e2e-error-1", "INVALID_ARGUMENT", 0)
    assert request_lines(request_logs, ROUTER_LOG)[0]["request_id"] == "e2e-error-1"


async def test_a_cancel_is_recorded_under_the_header_id(start_router, start_expert, channels, request_logs) -> None:
    expert = await start_expert("general", tokens_per_second=20.0)
    router = await start_router({"general": [expert.address]})
    call = pb_grpc.RouterStub(channels(router.address)).Generate(
        pb.GenerateRequest(prompt="a long answer please", request_id="body-id",
                           sampling=pb.SamplingParams(max_tokens=500)),
        metadata=(("x-request-id", "e2e-cancel-1"),))
    assert (await call.read()).text
    call.cancel()

    await eventually(lambda: expert.engine.stats.aborted_request_ids == ["e2e-cancel-1"])
    await eventually(lambda: request_lines(request_logs, EXPERT_LOG))
    [served] = request_lines(request_logs, EXPERT_LOG)
    assert (served["request_id"], served["status"]) == ("e2e-cancel-1", "CANCELLED")


async def test_the_expert_alone_prefers_metadata_then_body(start_expert, channels, request_logs) -> None:
    expert = await start_expert("general")
    stub = pb_grpc.ExpertStub(channels(expert.address))
    body = pb.GenerateRequest(prompt="hi", request_id="body-2", sampling=pb.SamplingParams(max_tokens=1))
    [frame async for frame in stub.Generate(body, metadata=(("x-request-id", "meta-2"),))]
    [frame async for frame in stub.Generate(body)]
    with pytest.raises(grpc.aio.AioRpcError) as info:
        [frame async for frame in stub.Generate(body, metadata=(("x-request-id", "x" * 129),))]
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == "x-request-id must be 1-128 printable ASCII characters, got 129 characters"

    await eventually(lambda: len(request_lines(request_logs, EXPERT_LOG)) == 3)
    ids = [(line["request_id"], line["status"]) for line in request_lines(request_logs, EXPERT_LOG)]
    assert ids == [("meta-2", "OK"), ("body-2", "OK"), ("", "INVALID_ARGUMENT")]
