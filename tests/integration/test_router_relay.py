"""The relay's end of a stream, for both relays (the ``relay`` fixture): clients that vanish or stop reading.

A client that disappears mid-stream (its connection closed, not a polite cancel) must not leave an
upstream stream behind: the expert aborts every generation, and the router's own counts
(replica outstanding, streams active, admission slots) come back to zero.

A client that stops reading must not make the router buffer what the expert keeps producing: the
relay reads the next upstream frame only once the client took the previous one, so HTTP/2 flow
control stops the expert. The expert here is a firehose (16 KiB frames as fast as gRPC takes
them), so an unbounded relay would show within a second as hundreds of MiB sent.

A router that stops with streams in flight, or with calls waiting for their routing decision, must
end every call and return: the native relay shuts its completion queues only once its last call
is gone (gRPC aborts the process when a call starts an operation on a queue already shut down and
drained, which stopping with streams in flight used to do).
"""
from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from expert_router.v1 import expert_router_pb2 as pb
from expert_router.v1 import expert_router_pb2_grpc as pb_grpc
from tests.helpers import HANG_GUARD_S, FakeClassifier, drain, eventually, serve_fake_expert_generate

STREAMS = 12
FRAME_TEXT_BYTES = 16 * 1024
# What flow control may let through: the HTTP/2 stream windows (expert -> router -> client, each
# at most a few MiB once gRPC's BDP probe has grown them) and the sockets' buffers. Unbounded
# relaying passes this in well under a second at the firehose's rate.
FLOW_CONTROL_BOUND_BYTES = 64 * 2**20


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


class FakeFirehoseExpert:
    """Test-only Expert service (a real grpc.aio server): Generate yields 16 KiB frames as fast as
    gRPC accepts them, until the call ends, counting what it handed to gRPC; health says SERVING."""

    def __init__(self) -> None:
        self.frames_sent = 0
        self.streams = 0
        self.ended = asyncio.Event()
        self._frame = pb.GenerateResponse(text="x" * FRAME_TEXT_BYTES).SerializeToString()

    async def generate(self, request: bytes, context):
        self.streams += 1
        try:
            while True:
                self.frames_sent += 1
                yield self._frame  # returns once gRPC took the frame: flow control waits here
        finally:
            # Only the other side can end this stream: grpc.aio fails the pending write (or
            # cancels the handler) once the router cancels its upstream call.
            self.ended.set()

    async def start(self) -> tuple[grpc.aio.Server, str]:
        return await serve_fake_expert_generate(self.generate)


async def until_stalled(count, quiet_s: float = 1.0, timeout: float = 20.0) -> int:
    """Waits until ``count()`` has not changed for ``quiet_s``; returns its value then."""
    deadline = time.monotonic() + timeout
    last, since = count(), time.monotonic()
    while time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        now = count()
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return now
    raise AssertionError(f"the expert never stalled: {count()} frames sent after {timeout:.0f} s")


async def test_a_client_that_stops_reading_stalls_the_expert_not_the_router(start_router, relay) -> None:
    firehose = FakeFirehoseExpert()
    server, address = await firehose.start()
    try:
        router = await start_router({"general": [address]})
        async with grpc.aio.insecure_channel(router.address) as channel:
            call = pb_grpc.RouterStub(channel).Generate(pb.GenerateRequest(
                request_id="slow-reader", prompt="tell me everything", expert="general"))
            assert len((await call.read()).text) == FRAME_TEXT_BYTES
            # The client reads nothing more; the expert would go on forever.
            sent = await until_stalled(lambda: firehose.frames_sent)
            assert sent * FRAME_TEXT_BYTES < FLOW_CONTROL_BOUND_BYTES, f"{sent} frames went out before the stall"
            if relay == "native":
                held = router.native.native.held_bytes()
                # One frame being written to the client and one read and waiting for it, no more.
                assert 0 < held <= 2 * (FRAME_TEXT_BYTES + 16), f"the relay holds {held} bytes"
            # Still stalled a moment later: nothing is being pulled through a buffer somewhere.
            await asyncio.sleep(0.5)
            assert firehose.frames_sent == sent
            assert router.upstream.outstanding == 1

            call.cancel()
            async with asyncio.timeout(5):
                await firehose.ended.wait()  # the upstream stream was cancelled, not left stalled
            await eventually(lambda: router.upstream.outstanding == 0 and router.state.active == 0
                             and router.admission.total == 0)
            if relay == "native":
                assert router.native.native.waiting() == 0
                await eventually(lambda: router.native.native.held_bytes() == 0)
    finally:
        await server.stop(0)


STOP_ROUNDS = 5
STREAMS_AT_STOP = 8
ENDED_BY_STOP = (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE)


async def ended_with_an_error(call) -> grpc.StatusCode:
    """Reads ``call`` to its end (a hang guard bounds the wait); returns its error status."""
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async with asyncio.timeout(HANG_GUARD_S):
            await drain(call)
    return info.value.code()


async def test_stopping_with_streams_in_flight_ends_every_stream(start_router, start_expert, relay) -> None:
    """Generate streams mid-generation and a forwarded health Watch, open while the router stops."""
    expert = await start_expert("general", tokens_per_second=50.0, max_concurrency=2 * STREAMS_AT_STOP)
    for round_number in range(STOP_ROUNDS):
        router = await start_router({"general": [expert.address]})
        async with grpc.aio.insecure_channel(router.address) as channel:
            stub = pb_grpc.RouterStub(channel)
            calls = [stub.Generate(pb.GenerateRequest(prompt="a long answer please",
                                                      sampling=pb.SamplingParams(max_tokens=500)))
                     for _ in range(STREAMS_AT_STOP)]
            for call in calls:
                assert (await call.read()).text
            # A stream the native relay forwards to the Python server, open too (a health Watch).
            watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())
            assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
            if relay == "native" and round_number == 0:
                # Two shutdowns at once from two threads: the second waits for the first, then returns.
                await asyncio.gather(*(asyncio.to_thread(router.native.native.shutdown, 0) for _ in range(2)))
            await router.stop(0)
            await router.stop(0)  # a second stop is a no-op
            codes = [await ended_with_an_error(call) for call in (*calls, watch)]
            assert all(code in ENDED_BY_STOP for code in codes), codes
        if relay == "native":
            native = router.native.native
            assert (native.live_calls(), native.waiting(), native.held_bytes()) == (0, 0, 0)
        await eventually(lambda: expert.engine.stats.active == 0, what="the expert's streams cancelled")
    assert expert.engine.stats.finished == 0


class GatedClassifier(FakeClassifier):
    """FAKE classifier (FakeClassifier's surface, see its docstring) whose ``predict_batch`` blocks,
    in the batcher's worker thread, until ``gate`` is set: calls wait for their routing decision."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.gate = threading.Event()

    def predict_batch(self, texts: Sequence[str]) -> np.ndarray:
        self.entered.set()
        self.gate.wait(HANG_GUARD_S)
        return super().predict_batch(texts)


async def test_stopping_with_a_call_waiting_for_its_decision_ends_it(start_router, start_expert, relay) -> None:
    expert = await start_expert("general")
    classifier = GatedClassifier()
    router = await start_router({"general": [expert.address]}, classifier=classifier)
    async with grpc.aio.insecure_channel(router.address) as channel:
        call = pb_grpc.RouterStub(channel).Generate(pb.GenerateRequest(prompt="which expert is this for?"))
        await eventually(classifier.entered.is_set, what="the call reached the classifier")
        if relay == "native":
            assert router.native.native.waiting() == 1
        stopping = asyncio.create_task(router.stop(0))
        try:
            assert await ended_with_an_error(call) in ENDED_BY_STOP
            if relay == "native":
                # The relay ended the call without Python's answer, which is still being computed.
                native = router.native.native
                await eventually(lambda: native.live_calls() == 0, what="every native call ended")
                assert native.waiting() == 0
                assert not classifier.gate.is_set()
        finally:
            classifier.gate.set()
        await stopping
    assert router.admission.total == 0 and router.state.active == 0
    assert expert.engine.stats.active == 0


RACES = 64


@pytest.mark.parametrize("relay", ["native"], indirect=True)  # the answer is a separate step only there
async def test_a_cancel_racing_the_answer_leaves_nothing_open(start_router, start_expert, relay, monkeypatch) -> None:
    """Python's answer and the client's cancel reach the native relay at nearly the same moment: each
    call's answer is held until its client has cancelled, then given after a random spin of up to
    150 µs (the relay handled a cancel some 50 µs after the client sent it: with spins of up to 3 ms,
    1 call in 64 still opened its upstream call), so the cancel lands before, during and after the
    upstream call is opened. Every upstream stream that opened must be cancelled and every count
    must come back to zero. Written for a relay that opened the upstream call on Python's thread
    while the relay thread handled the cancel (measured and not kept: docs/profiles/router.md,
    "Fewer hops before the first frame"); it holds the answer path to the same account today."""
    import random

    from router_svc.native_relay import NativeCall

    expert = await start_expert("general", tokens_per_second=10.0, max_concurrency=RACES)
    router = await start_router({"general": [expert.address]})
    native = router.native.native
    idle_calls = native.live_calls()  # the calls requested in advance, waiting for clients
    clients: dict[str, grpc.aio.UnaryStreamCall] = {}
    original = NativeCall.proceed
    rng = random.Random(11)

    async def proceed_as_the_client_cancels(self, *args, **kwargs):
        request_id = dict(self.metadata)["x-request-id"]
        clients[request_id].cancel()
        deadline = time.perf_counter() + rng.uniform(0.0, 0.00015)
        while time.perf_counter() < deadline:  # the GIL held, as by the real answer: the relay thread runs on
            pass
        return await original(self, *args, **kwargs)

    monkeypatch.setattr(NativeCall, "proceed", proceed_as_the_client_cancels)
    async with grpc.aio.insecure_channel(router.address) as channel:
        stub = pb_grpc.RouterStub(channel)
        for batch in range(RACES // 8):
            calls = []
            for i in range(8):
                request_id = f"race-{batch}-{i}"
                clients[request_id] = call = stub.Generate(
                    pb.GenerateRequest(prompt="a long answer please", sampling=pb.SamplingParams(max_tokens=1000)),
                    metadata=(("x-request-id", request_id),))
                calls.append(call)
            for call in calls:
                with pytest.raises(asyncio.CancelledError):
                    async with asyncio.timeout(HANG_GUARD_S):
                        await drain(call)
                assert await call.code() == grpc.StatusCode.CANCELLED
    assert len(clients) == RACES
    await eventually(lambda: expert.engine.stats.active == 0, what="every upstream stream that opened cancelled")
    assert expert.engine.stats.finished == 0
    await eventually(lambda: router.upstream.outstanding == 0 and router.state.active == 0
                     and router.admission.total == 0, what="the router's counts back to zero")
    await eventually(lambda: native.live_calls() == idle_calls, what="every native call ended")
    assert (native.waiting(), native.held_bytes()) == (0, 0)

    monkeypatch.setattr(NativeCall, "proceed", original)
    async with grpc.aio.insecure_channel(router.address) as fresh:  # the router still serves
        frames = [frame async for frame in pb_grpc.RouterStub(fresh).Generate(pb.GenerateRequest(
            prompt="hello", sampling=pb.SamplingParams(max_tokens=2)))]
    assert frames[-1].usage.completion_tokens == 2
