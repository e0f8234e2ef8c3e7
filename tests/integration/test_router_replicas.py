"""Replicas with real synthetic experts: DNS discovery, health watch, ejection, restarts, failover."""
from __future__ import annotations

import asyncio

import grpc
import pytest

from expert_router.v1 import expert_router_pb2 as pb
from expert_router.v1 import expert_router_pb2_grpc as pb_grpc
from tests.helpers import drain, eventually


async def generate(stub, prompt: str = "hi", max_tokens: int = 2, **fields):
    call = stub.Generate(pb.GenerateRequest(prompt=prompt, sampling=pb.SamplingParams(max_tokens=max_tokens),
                                            **fields))
    frames = [frame async for frame in call]
    return dict(await call.initial_metadata()), frames


def port_of(expert) -> int:
    return int(expert.address.rpartition(":")[2])


async def test_dns_name_resolves_to_every_address(start_router, start_expert, channels) -> None:
    expert = await start_expert("general")
    router = await start_router({"general": f"dns:///localhost:{port_of(expert)}"})
    pool = router.upstream.expert("general")
    addresses = [r.address for r in pool.replicas]
    assert f"127.0.0.1:{port_of(expert)}" in addresses
    # The expert listens on IPv4 only: an IPv6 answer (::1) is a replica that health keeps out.
    await eventually(lambda: all(r.serving is not None for r in pool.replicas))
    assert [r.healthy for r in pool.replicas] == [a.startswith("127.") for a in addresses]

    stub = pb_grpc.RouterStub(channels(router.address))
    for _ in range(4):
        _, frames = await generate(stub)
        assert frames[-1].usage.completion_tokens == 2
    assert expert.engine.stats.finished == 4


async def test_dns_changes_add_and_remove_replicas_without_dropping_streams(
        start_router, start_expert, channels) -> None:
    first, second = await start_expert("general", tokens_per_second=40.0), await start_expert("general")
    answers = {"now": [first.address]}

    async def resolver(host: str, port: int) -> list[str]:
        return answers["now"]

    router = await start_router({"general": "dns:///experts.test:1"}, resolver=resolver, dns_refresh_s=0.05)
    pool = router.upstream.expert("general")
    assert [r.address for r in pool.replicas] == [first.address]
    stub = pb_grpc.RouterStub(channels(router.address))
    long_call = stub.Generate(pb.GenerateRequest(prompt="long", sampling=pb.SamplingParams(max_tokens=20)))
    assert (await long_call.read()).text
    old_replica = pool.replicas[0]

    answers["now"] = [second.address]  # the first replica leaves DNS while its stream is running
    await eventually(lambda: [r.address for r in pool.replicas] == [second.address])
    _, frames = await generate(stub)
    assert second.engine.stats.finished == 1 and frames

    rest = await drain(long_call)
    assert rest[-1].usage.completion_tokens == 20  # the stream survived the change
    await eventually(lambda: old_replica.channel.get_state() == grpc.ChannelConnectivity.SHUTDOWN)


async def test_failing_replica_is_ejected_and_returns_after_backoff(start_router, start_expert, channels) -> None:
    expert = await start_expert("general")
    router = await start_router({"general": [expert.address]}, eject_after=2, eject_base_s=0.3,
                                eject_max_s=0.6)
    replica = router.upstream.expert("general").replicas[0]
    replica.record_failure("simulated")
    assert replica.healthy  # one failure is not enough
    replica.record_failure("simulated")
    assert not replica.healthy and replica.ejections == 1
    stub = pb_grpc.RouterStub(channels(router.address))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await generate(stub)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE and "simulated" in info.value.details()
    await eventually(lambda: replica.healthy)
    _, frames = await generate(stub)
    assert frames[-1].usage.completion_tokens == 2
    await eventually(lambda: replica.ejections == 0)  # a success resets the backoff (at the stream's end)

    # The backoff doubles with each ejection and is capped.
    started = asyncio.get_running_loop().time()
    for _ in range(3):
        replica.eject("again")
    assert replica.ejected_until - started > 0.55 and replica.ejected_until - started < 0.7


async def test_killed_expert_leaves_rotation_and_returns_when_restarted(
        start_router, start_expert, channels) -> None:
    first, second = await start_expert("general"), await start_expert("general")
    router = await start_router({"general": [first.address, second.address]}, health_interval_s=0.2)
    replicas = router.upstream.expert("general").replicas
    await first.stop(0)
    await eventually(lambda: not replicas[0].healthy)  # the health watch saw it go
    stub = pb_grpc.RouterStub(channels(router.address))
    for _ in range(3):
        _, frames = await generate(stub)
        assert frames
    assert second.engine.stats.finished == 3

    restarted = await start_expert("general", listen=first.address)
    await eventually(lambda: replicas[0].healthy)
    # Fewest outstanding first: concurrent streams now reach both replicas.
    await asyncio.gather(*(generate(stub, max_tokens=5) for _ in range(4)))
    assert restarted.engine.stats.finished >= 1


async def test_slow_expert_mid_stream_error_passes_through(start_router, start_expert, channels) -> None:
    slow = await start_expert("general", tokens_per_second=20.0)
    router = await start_router({"general": [slow.address]})
    stub = pb_grpc.RouterStub(channels(router.address))
    call = stub.Generate(pb.GenerateRequest(prompt="hi", sampling=pb.SamplingParams(max_tokens=100)))
    assert (await call.read()).text
    await slow.stop(0)  # killed after the first frame: the client sees the error, no retry
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await drain(call)
    assert info.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)


class FixedScoresClassifier:
    """Test-only classifier: "close call" -> math 0.50, code 0.45; anything else -> math 0.90."""

    labels = ("math", "code", "general")
    version = "fixed-1"

    def predict_batch(self, texts):
        import numpy as np

        rows = [[0.50, 0.45, 0.05] if "close call" in t else [0.90, 0.04, 0.06] for t in texts]
        return np.asarray(rows, dtype=np.float32)


async def test_next_best_expert_within_margin(start_router, start_expert, channels) -> None:
    math, code, general = [await start_expert(n) for n in ("math", "code", "general")]
    router = await start_router({"math": [math.address], "code": [code.address],
                                 "general": [general.address]}, failover_margin=0.1,
                                classifier=FixedScoresClassifier())
    await math.stop(0)
    await eventually(lambda: not router.upstream.expert("math").healthy)
    stub = pb_grpc.RouterStub(channels(router.address))
    # code scores 0.45 against math's 0.50: within the 0.1 margin.
    metadata, frames = await generate(stub, prompt="a close call")
    assert (metadata["x-expert"], metadata["x-expert-source"]) == ("code", "failover")
    assert metadata["x-expert-failover-from"] == "math"
    assert code.engine.stats.finished == 1 and frames

    assert float(metadata["x-expert-score"]) == pytest.approx(0.45)
    # Only math scores high: the next best is far below, so the fallback expert takes it.
    metadata, _ = await generate(stub, prompt="solve the equation")
    assert (metadata["x-expert"], metadata["x-expert-source"]) == ("general", "fallback")
    assert metadata["x-expert-failover-from"] == "math"
    assert general.engine.stats.finished == 1


async def test_no_alternative_is_unavailable_naming_the_expert(start_router, start_expert, channels,
                                                               unused_address) -> None:
    router = await start_router({"math": [unused_address()], "general": [unused_address()]})
    stub = pb_grpc.RouterStub(channels(router.address))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await generate(stub, prompt="solve the equation")
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert info.value.details().startswith("expert 'math' is unavailable")
    # An explicit choice never moves to another expert.
    general = await start_expert("general")
    router2 = await start_router({"math": [unused_address()], "general": [general.address]})
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await generate(pb_grpc.RouterStub(channels(router2.address)), prompt="hello", expert="math")
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE and "'math'" in info.value.details()
    assert general.engine.stats.started == 0
