"""Router + in-process synthetic experts: routing, byte-exact relay, metadata, cancel, deadlines, failures."""
from __future__ import annotations

import asyncio

import grpc
import pytest

from expert_router.v1 import expert_router_pb2 as pb
from expert_router.v1 import expert_router_pb2_grpc as pb_grpc
from tests.helpers import drain, eventually

ROUTER_GENERATE = "/expert_router.v1.Router/Generate"
EXPERT_GENERATE = "/expert_router.v1.Expert/Generate"


async def answer(call) -> tuple[dict[str, str], list[pb.GenerateResponse]]:
    """The call's initial metadata and every frame."""
    frames = await drain(call)
    return dict(await call.initial_metadata()), frames


def text_of(frames) -> str:
    return "".join(frame.text for frame in frames)


@pytest.fixture
async def three_experts(start_expert):
    return {name: await start_expert(name, system_prompt=f"You are the {name} expert.")
            for name in ("math", "code", "general")}


async def test_classified_expert_is_chosen_and_metadata_sent(start_router, three_experts, channels) -> None:
    router = await start_router({name: [e.address] for name, e in three_experts.items()})
    stub = pb_grpc.RouterStub(channels(router.address))
    request = pb.GenerateRequest(prompt="Solve the equation x^2 = 9",
                                 sampling=pb.SamplingParams(max_tokens=6))

    metadata, frames = await answer(stub.Generate(request))

    assert metadata["x-expert"] == "math"
    assert metadata["x-expert-source"] == "classifier"
    assert float(metadata["x-expert-score"]) > 0.5
    assert metadata["x-classifier-version"] == "fake-1"
    assert frames[-1].finish_reason == pb.FINISH_REASON_LENGTH and frames[-1].usage.completion_tokens == 6
    direct = [f async for f in pb_grpc.ExpertStub(channels(three_experts["math"].address)).Generate(request)]
    assert text_of(frames) == text_of(direct)
    assert three_experts["math"].engine.stats.started == 2
    assert three_experts["code"].engine.stats.started == three_experts["general"].engine.stats.started == 0


async def test_every_frame_is_relayed_byte_for_byte(start_router, start_expert, channels) -> None:
    expert = await start_expert("general")
    router = await start_router({"general": [expert.address]})
    request = pb.GenerateRequest(
        request_id="relay-1", prompt="Tell me something.",
        sampling=pb.SamplingParams(max_tokens=40, seed=7, stop=["never-matches"]),
    ).SerializeToString()

    direct_call = channels(expert.address).unary_stream(EXPERT_GENERATE)
    routed_call = channels(router.address).unary_stream(ROUTER_GENERATE)
    direct = [frame async for frame in direct_call(request)]
    routed = [frame async for frame in routed_call(request)]

    assert len(direct) == 40 and all(isinstance(frame, bytes) for frame in routed)
    assert routed == direct
    assert pb.GenerateResponse.FromString(routed[-1]).usage.completion_tokens == 40


async def test_a_compressed_request_is_served_and_frames_stay_byte_exact(start_router, start_expert) -> None:
    # The native relay turns gRPC's per-message compression filter off (it never compresses what it
    # sends) but must keep decompressing what clients send: a gzip request is parsed and routed.
    expert = await start_expert("general")
    router = await start_router({"general": [expert.address]})
    request = pb.GenerateRequest(request_id="gzip-1", prompt="Tell me something." * 20,
                                 sampling=pb.SamplingParams(max_tokens=12, seed=3)).SerializeToString()
    async with grpc.aio.insecure_channel(expert.address) as direct_channel, \
            grpc.aio.insecure_channel(router.address, compression=grpc.Compression.Gzip) as routed_channel:
        direct = [frame async for frame in direct_channel.unary_stream(EXPERT_GENERATE)(request)]
        call = routed_channel.unary_stream(ROUTER_GENERATE)(request, compression=grpc.Compression.Gzip)
        routed = [frame async for frame in call]
        assert await call.code() == grpc.StatusCode.OK
    assert routed == direct
    assert pb.GenerateResponse.FromString(routed[-1]).usage.completion_tokens == 12


async def test_messages_are_classified_by_user_turns(start_router, three_experts, channels) -> None:
    router = await start_router({name: [e.address] for name, e in three_experts.items()})
    request = pb.GenerateRequest(messages=[
        pb.ChatMessage(role="system", content="Solve every equation."),
        pb.ChatMessage(role="user", content="Write a python function that reverses a list."),
    ], sampling=pb.SamplingParams(max_tokens=2))
    metadata, frames = await answer(pb_grpc.RouterStub(channels(router.address)).Generate(request))
    assert metadata["x-expert"] == "code" and frames


async def test_explicit_expert_wins_and_unknown_is_not_found(start_router, three_experts, channels) -> None:
    router = await start_router({name: [e.address] for name, e in three_experts.items()})
    stub = pb_grpc.RouterStub(channels(router.address))
    request = pb.GenerateRequest(prompt="Solve the equation", expert="code",
                                 sampling=pb.SamplingParams(max_tokens=2))
    metadata, frames = await answer(stub.Generate(request))
    assert frames[-1].usage.completion_tokens == 2
    assert (metadata["x-expert"], metadata["x-expert-source"]) == ("code", "explicit")
    assert three_experts["code"].engine.stats.started == 1 and three_experts["math"].engine.stats.started == 0

    with pytest.raises(grpc.aio.AioRpcError) as info:
        await answer(stub.Generate(pb.GenerateRequest(prompt="hi", expert="poetry")))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert info.value.details() == "unknown expert 'poetry'; known experts: math, code, general"


async def test_unconfigured_or_unsure_goes_to_fallback(start_router, start_expert, channels) -> None:
    math, general = await start_expert("math"), await start_expert("general")
    router = await start_router({"math": [math.address], "general": [general.address]})
    stub = pb_grpc.RouterStub(channels(router.address))
    for prompt in ("Fix this python function", "Good morning!"):  # code is not configured; no keyword
        metadata, _ = await answer(stub.Generate(pb.GenerateRequest(
            prompt=prompt, sampling=pb.SamplingParams(max_tokens=1))))
        assert (metadata["x-expert"], metadata["x-expert-source"]) == ("general", "fallback")
    assert general.engine.stats.started == 2 and math.engine.stats.started == 0


async def test_invalid_request_is_rejected_before_any_expert(start_router, start_expert, channels) -> None:
    expert = await start_expert("general")
    router = await start_router({"general": [expert.address]}, max_prompt_bytes=100)
    stub = pb_grpc.RouterStub(channels(router.address))
    cases = [
        (pb.GenerateRequest(), "the request is empty"),
        (pb.GenerateRequest(prompt="x" * 101), "prompt is 101 bytes; this service accepts at most 100 bytes"),
        (pb.GenerateRequest(messages=[pb.ChatMessage(role="bot", content="x")]), "messages[0].role is 'bot'"),
        (pb.GenerateRequest(prompt="x", sampling=pb.SamplingParams(top_p=2.0)), "sampling.top_p"),
    ]
    for request, message in cases:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await answer(stub.Generate(request))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert message in info.value.details()
    garbage = channels(router.address).unary_stream(ROUTER_GENERATE)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        [frame async for frame in garbage(b"\xff\xff\xff")]
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert expert.engine.stats.started == 0


async def test_client_cancel_aborts_the_expert(start_router, start_expert, channels) -> None:
    expert = await start_expert("general", tokens_per_second=20.0)
    router = await start_router({"general": [expert.address]})
    call = pb_grpc.RouterStub(channels(router.address)).Generate(pb.GenerateRequest(
        request_id="cancel-me", prompt="a long answer please", sampling=pb.SamplingParams(max_tokens=500)))
    first = await call.read()
    assert first.text
    call.cancel()

    await eventually(lambda: "cancel-me" in expert.engine.stats.aborted_request_ids)
    assert expert.engine.stats.finished == 0
    await eventually(lambda: router.upstream.expert("general").replicas[0].outstanding == 0)


async def test_deadline_propagates_to_the_expert(start_router, start_expert, channels) -> None:
    expert = await start_expert("general", tokens_per_second=20.0)
    router = await start_router({"general": [expert.address]})
    call = pb_grpc.RouterStub(channels(router.address)).Generate(pb.GenerateRequest(
        request_id="too-slow", prompt="a long answer please", sampling=pb.SamplingParams(max_tokens=500)),
        timeout=0.5)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await answer(call)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    await eventually(lambda: "too-slow" in expert.engine.stats.aborted_request_ids)


async def test_unreachable_expert_is_unavailable_naming_it(start_router, channels, unused_address) -> None:
    address = unused_address()
    router = await start_router({"general": [address]})
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await answer(pb_grpc.RouterStub(channels(router.address)).Generate(pb.GenerateRequest(prompt="hi")))
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert f"expert 'general' is unavailable at {address}" in info.value.details()


async def test_second_replica_takes_over_before_the_first_frame(start_router, start_expert, channels) -> None:
    first, second = await start_expert("general"), await start_expert("general")
    # Probing is slow here, so the router still believes the first replica is healthy after it dies:
    # only the retry-before-first-frame path can save the request.
    router = await start_router({"general": [first.address, second.address]}, health_interval_s=600.0)
    replicas = router.upstream.expert("general").replicas
    assert all(replica.healthy for replica in replicas)
    await first.stop(0)

    stub = pb_grpc.RouterStub(channels(router.address))
    for _ in range(3):
        request = pb.GenerateRequest(prompt="hi", sampling=pb.SamplingParams(max_tokens=3))
        _, frames = await answer(stub.Generate(request))
        assert frames[-1].usage.completion_tokens == 3
    assert second.engine.stats.finished == 3
    assert [replica.healthy for replica in replicas] == [False, True]

    listed = await stub.ListExperts(pb.ListExpertsRequest())
    assert [(r.address, r.healthy) for r in listed.experts[0].replicas] == [
        (first.address, False), (second.address, True)]
    assert listed.experts[0].healthy


async def test_probe_brings_a_replica_back(start_router, start_expert, channels) -> None:
    expert = await start_expert("general")
    router = await start_router({"general": [expert.address]}, health_interval_s=0.1)
    replica = router.upstream.expert("general").replicas[0]
    replica.eject("simulated connection failure")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await answer(pb_grpc.RouterStub(channels(router.address)).Generate(pb.GenerateRequest(prompt="hi")))
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "simulated connection failure" in info.value.details()
    await eventually(lambda: replica.healthy)


async def test_expert_error_status_passes_through(start_router, start_expert, channels) -> None:
    expert = await start_expert("general", context_length=64, default_max_tokens=16)
    router = await start_router({"general": [expert.address]})
    request = pb.GenerateRequest(prompt="hi", sampling=pb.SamplingParams(max_tokens=10_000))
    with pytest.raises(grpc.aio.AioRpcError) as direct:
        await answer(pb_grpc.ExpertStub(channels(expert.address)).Generate(request))
    with pytest.raises(grpc.aio.AioRpcError) as routed:
        await answer(pb_grpc.RouterStub(channels(router.address)).Generate(request))
    assert direct.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (routed.value.code(), routed.value.details()) == (direct.value.code(), direct.value.details())
    assert router.upstream.expert("general").replicas[0].healthy  # a bad request is not a bad replica


async def test_stop_drains_in_flight_streams(start_router, start_expert, channels) -> None:
    expert = await start_expert("general", tokens_per_second=50.0)
    router = await start_router({"general": [expert.address]})
    call = pb_grpc.RouterStub(channels(router.address)).Generate(pb.GenerateRequest(
        prompt="hi", sampling=pb.SamplingParams(max_tokens=20)))
    assert (await call.read()).text
    stopping = asyncio.create_task(router.stop(5.0))
    rest = []
    while (frame := await call.read()) is not grpc.aio.EOF:
        rest.append(frame)
    await stopping
    assert rest[-1].usage.completion_tokens == 20
    assert await call.code() == grpc.StatusCode.OK
    # The router no longer accepts calls.
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await answer(pb_grpc.RouterStub(channels(router.address)).Generate(pb.GenerateRequest(prompt="hi")))
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
