"""The relay's end of a stream, for both relays (the ``relay`` fixture): clients that vanish, counted.

A client that disappears mid-stream (its connection closed, not a polite cancel) must not leave an
upstream stream behind: the expert aborts every generation, and the router's own counts
(replica outstanding, streams active, admission slots) come back to zero.
"""
from __future__ import annotations

import grpc

from expert_router.v1 import expert_router_pb2 as pb
from expert_router.v1 import expert_router_pb2_grpc as pb_grpc
from tests.helpers import eventually

STREAMS = 12


async def test_vanished_clients_leave_no_upstream_stream_open(start_router, start_expert, relay) -> None:
    expert = await start_expert("general", tokens_per_second=20.0, max_concurrency=2 * STREAMS)
    router = await start_router({"general": [expert.address]})
    channel = grpc.aio.insecure_channel(router.address)
    stub = pb_grpc.RouterStub(channel)
    calls = [stub.Generate(pb.GenerateRequest(request_id=f"gone-{i}", prompt="a long answer please",
                                              sampling=pb.SamplingParams(max_tokens=500)))
             for i in range(STREAMS)]
    for call in calls:
        assert (await call.read()).text
    assert expert.engine.stats.active == STREAMS
    await channel.close(grace=None)  # the connection goes away under the streams

    await eventually(lambda: expert.engine.stats.active == 0)
    assert sorted(expert.engine.stats.aborted_request_ids) == sorted(f"gone-{i}" for i in range(STREAMS))
    assert expert.engine.stats.finished == 0
    await eventually(lambda: router.upstream.outstanding == 0 and router.state.active == 0
                     and router.admission.total == 0)
    if relay == "native":
        assert router.native.native.waiting() == 0  # no call left waiting for a decision

    # The router still serves.
    async with grpc.aio.insecure_channel(router.address) as fresh:
        call = pb_grpc.RouterStub(fresh).Generate(pb.GenerateRequest(
            prompt="hello", sampling=pb.SamplingParams(max_tokens=2)))
        frames = [frame async for frame in call]
    assert frames[-1].usage.completion_tokens == 2


async def test_a_taken_port_is_a_bind_error_and_nothing_is_left_running(start_router, start_expert, relay) -> None:
    import socket

    from router_svc.server import BindError

    expert = await start_expert("general")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        try:
            await start_router({"general": [expert.address]}, listen=address)
        except BindError as exc:
            assert address in str(exc)
        else:
            raise AssertionError(f"the router started on {address}, which another socket holds")
