"""The expert service over real gRPC (in-process, port 0) with the synthetic engine."""

import asyncio
import logging

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from expert_router.v1 import expert_router_pb2 as pb
from expert_svc.engines.synthetic import SyntheticEngine
from expert_svc.server import start
from expert_svc.types import EngineRequest, SamplingParams
from tests.helpers import drain, eventually, request, running_expert, synthetic_config


async def test_stream_frames_finish_reason_and_usage():
    async with running_expert(synthetic_config()) as (_expert, stub):
        frames = await drain(stub.Generate(request("the quick brown fox", max_tokens=12)))
    assert len(frames) == 12
    assert all(
        f.finish_reason == pb.FINISH_REASON_UNSPECIFIED and not f.HasField("usage") for f in frames[:-1]
    )
    assert frames[-1].finish_reason == pb.FINISH_REASON_LENGTH
    assert (frames[-1].usage.prompt_tokens, frames[-1].usage.completion_tokens) == (4, 12)
    # Every frame carries exactly what the engine produced, in order.
    direct = [
        d
        async for d in SyntheticEngine().generate(
            EngineRequest("x", SamplingParams(max_tokens=12), prompt="the quick brown fox")
        )
    ]
    assert [(f.text, list(f.token_ids)) for f in frames] == [(d.text, list(d.token_ids)) for d in direct]


async def test_chat_messages_and_default_max_tokens():
    async with running_expert(synthetic_config(default_max_tokens=5)) as (_, stub):
        msg = pb.GenerateRequest(messages=[pb.ChatMessage(role="user", content="one two three")])
        frames = await drain(stub.Generate(msg))
    assert frames[-1].usage.completion_tokens == 5 and frames[-1].usage.prompt_tokens == 3


async def test_stop_string_finishes_with_stop():
    async with running_expert(synthetic_config()) as (_, stub):
        full = "".join(f.text for f in await drain(stub.Generate(request("p", max_tokens=10))))
        stop = full.split(" ")[2]
        frames = await drain(stub.Generate(request("p", max_tokens=10, stop=[" " + stop])))
    assert frames[-1].finish_reason == pb.FINISH_REASON_STOP
    assert "".join(f.text for f in frames) == full[: full.index(" " + stop)]


async def test_client_cancel_reaches_the_engine():
    async with running_expert(synthetic_config(tokens_per_second=20.0)) as (expert, stub):
        call = stub.Generate(request("cancel me", max_tokens=1000, request_id="to-cancel"))
        frames = 0
        async for _ in call:
            frames += 1
            if frames == 2:
                break
        call.cancel()
        await eventually(lambda: expert.engine.stats.aborted == 1)
        assert expert.engine.stats.aborted_request_ids == ["to-cancel"]
        assert expert.engine.stats.active == 0 and expert.servicer.active == 0


async def test_deadline_exceeded_aborts_generation():
    async with running_expert(synthetic_config(tokens_per_second=10.0)) as (expert, stub):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await drain(stub.Generate(request("slow", max_tokens=1000), timeout=0.3))
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        await eventually(lambda: expert.engine.stats.aborted == 1)
        assert expert.servicer.active == 0


async def test_over_max_concurrency_is_rejected_at_once():
    async with running_expert(synthetic_config(max_concurrency=2, tokens_per_second=20.0)) as (expert, stub):
        calls = [stub.Generate(request(f"busy {i}", max_tokens=1000)) for i in range(2)]
        for call in calls:
            await call.read()  # both are generating
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await drain(stub.Generate(request("one too many", max_tokens=3)))
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "2 generation slots" in info.value.details()
        assert loop.time() - t0 < 1.0  # rejected, not queued behind 50-second streams
        calls[0].cancel()
        await eventually(lambda: expert.servicer.active == 1)
        frames = await drain(stub.Generate(request("now fits", max_tokens=3)))
        assert frames[-1].usage.completion_tokens == 3
        calls[1].cancel()


@pytest.mark.parametrize(
    ("msg", "needle"),
    [
        (pb.GenerateRequest(), "empty"),
        (pb.GenerateRequest(prompt="a", messages=[pb.ChatMessage(role="user", content="b")]), "not both"),
        (pb.GenerateRequest(messages=[pb.ChatMessage(role="wizard", content="b")]), "role"),
        (pb.GenerateRequest(prompt="x" * (256 * 1024 + 1)), "at most 262144 bytes"),
        (request(max_tokens=100_000), "context length"),
        (request(temperature=float("nan")), "temperature"),
        (request(top_p=2.0), "top_p"),
        (request(top_k=-3), "top_k"),
        (request(stop=["x"] * 17), "at most 16"),
    ],
)
async def test_invalid_arguments(msg, needle):
    async with running_expert(synthetic_config()) as (expert, stub):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await drain(stub.Generate(msg))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert needle in info.value.details()
        assert expert.engine.stats.started == 0


async def test_engine_not_ready_is_unavailable():
    async with running_expert(synthetic_config()) as (expert, stub):
        await expert.engine.close()
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await drain(stub.Generate(request()))
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "not ready" in info.value.details()


async def test_unexpected_engine_bug_is_internal_and_logged(caplog):
    async def broken(_request):
        raise ZeroDivisionError("bug in engine")
        yield  # pragma: no cover

    async with running_expert(synthetic_config(name="buggy")) as (expert, stub):
        expert.engine.generate = broken
        with caplog.at_level(logging.ERROR, logger="expert_svc"), pytest.raises(grpc.aio.AioRpcError) as info:
            await drain(stub.Generate(request(request_id="req-7")))
    assert info.value.code() == grpc.StatusCode.INTERNAL
    assert "req-7" in info.value.details() and "ZeroDivisionError" in info.value.details()
    assert "bug in engine" not in info.value.details()
    assert any(r.exc_info and r.exc_info[0] is ZeroDivisionError for r in caplog.records)


async def test_health_is_serving_for_server_and_expert_service():
    async with (
        running_expert(synthetic_config()) as (expert, _),
        grpc.aio.insecure_channel(expert.address) as channel,
    ):
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "expert_router.v1.Expert"):
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=service))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_get_info():
    cfg = synthetic_config(name="math", max_concurrency=7, context_length=1024)
    async with running_expert(cfg) as (_, stub):
        info = await stub.GetInfo(pb.GetInfoRequest())
    assert (info.name, info.engine, info.model, info.context_length, info.max_concurrency) == (
        "math",
        "synthetic",
        "synthetic",
        1024,
        7,
    )
    assert info.tensor_parallel_size == 1


async def test_reflection_lists_expert_and_health():
    async with (
        running_expert(synthetic_config()) as (expert, _),
        grpc.aio.insecure_channel(expert.address) as channel,
    ):
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        replies = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        reply = await replies.read()
        replies.cancel()
    names = {s.name for s in reply.list_services_response.service}
    assert {"expert_router.v1.Expert", "grpc.health.v1.Health"} <= names


async def test_port_zero_is_read_back_and_a_taken_port_is_a_clear_error():
    async with running_expert(synthetic_config()) as (expert, _):
        assert expert.port > 0 and expert.address == f"127.0.0.1:{expert.port}"
        with pytest.raises(OSError, match=f"could not listen on 127.0.0.1:{expert.port}"):
            await start(synthetic_config(listen=f"127.0.0.1:{expert.port}"))


async def test_stop_drains_in_flight_stream_within_grace():
    expert = await start(synthetic_config(tokens_per_second=50.0))
    async with grpc.aio.insecure_channel(expert.address) as channel:
        from expert_router.v1 import expert_router_pb2_grpc as pb_grpc

        call = pb_grpc.ExpertStub(channel).Generate(request("drain", max_tokens=25))
        frames = [await call.read()]
        stopping = asyncio.create_task(expert.stop(grace=5.0))
        while (frame := await call.read()) is not grpc.aio.EOF:
            frames.append(frame)
        await stopping
    assert len(frames) == 25 and frames[-1].finish_reason == pb.FINISH_REASON_LENGTH
    assert expert.engine.stats.aborted == 0 and not expert.engine.ready
