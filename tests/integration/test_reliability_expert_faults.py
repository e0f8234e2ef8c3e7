"""Expert faults with real processes and sockets, seen by a direct client (no router).

- an expert killed with SIGKILL mid-stream: its client gets UNAVAILABLE within 2 s, while streams
  to another expert process run to the end untouched;
- an expert that accepts the connection and never answers (FakeHangingExpert: a gRPC server whose
  handler sleeps, and a bare TCP listener that never speaks HTTP/2): the client deadline fires on
  time with DEADLINE_EXCEEDED.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import grpc
import pytest

from expert_router.v1 import expert_router_pb2 as pb
from expert_router.v1 import expert_router_pb2_grpc as pb_grpc
from tests.helpers import drain, eventually, expert_processes, request

KILL_DETECTION_S = 2.0
DEADLINE_S = 0.6
# How late a deadline may fire on a busy 2-core machine before we call it a hang.
DEADLINE_SLACK_S = 0.75


async def test_sigkill_mid_stream_is_unavailable_fast_and_other_expert_unaffected():
    # 50 tokens/s: the victim's stream would last 4 s, the survivors' 1.6 s.
    specs = [(name, ["--tokens-per-second", "50", "--ttft-ms", "5"]) for name in ("victim", "survivor")]
    async with (
        expert_processes(*specs) as (victim, survivor),
        grpc.aio.insecure_channel(victim.address) as victim_channel,
        grpc.aio.insecure_channel(survivor.address) as survivor_channel,
    ):
        doomed = pb_grpc.ExpertStub(victim_channel).Generate(request("doomed", max_tokens=200), timeout=30)
        survivor_stub = pb_grpc.ExpertStub(survivor_channel)
        healthy = [
            survivor_stub.Generate(request(f"healthy {i}", max_tokens=80), timeout=30) for i in range(3)
        ]
        first = await doomed.read()
        assert first.text
        for call in healthy:
            assert (await call.read()).text
        healthy_rest = [asyncio.ensure_future(drain(call)) for call in healthy]

        victim.kill()
        killed_at = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as info:
            while await doomed.read() is not grpc.aio.EOF:
                pass
        detected_after = time.monotonic() - killed_at
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE, info.value
        assert detected_after < KILL_DETECTION_S, f"error seen {detected_after:.2f} s after SIGKILL"

        for rest in await asyncio.gather(*healthy_rest):
            # One frame was read before the kill; the other 79 arrive, ending normally.
            assert len(rest) == 79
            assert rest[-1].finish_reason == pb.FINISH_REASON_LENGTH
            assert rest[-1].usage.completion_tokens == 80
        assert await victim.process.wait() == -9


class FakeHangingExpert:
    """Test-only: a real gRPC server speaking expert_router.v1.Expert whose handlers never answer."""

    def __init__(self) -> None:
        self.server = grpc.aio.server()
        self.started = 0
        self.cancelled = 0
        handlers = {
            "Generate": grpc.unary_stream_rpc_method_handler(
                self._hang_stream,
                request_deserializer=pb.GenerateRequest.FromString,
                response_serializer=pb.GenerateResponse.SerializeToString,
            ),
            "GetInfo": grpc.unary_unary_rpc_method_handler(
                self._hang_unary,
                request_deserializer=pb.GetInfoRequest.FromString,
                response_serializer=pb.ExpertInfo.SerializeToString,
            ),
        }
        self.server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("expert_router.v1.Expert", handlers),)
        )
        self.port = self.server.add_insecure_port("127.0.0.1:0")

    async def _sleep(self) -> None:
        self.started += 1
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise

    async def _hang_stream(self, request, context):
        await self._sleep()
        yield pb.GenerateResponse()

    async def _hang_unary(self, request, context):
        await self._sleep()
        return pb.ExpertInfo()


@contextlib.asynccontextmanager
async def hanging_grpc_expert() -> AsyncIterator[FakeHangingExpert]:
    fake = FakeHangingExpert()
    await fake.server.start()
    try:
        yield fake
    finally:
        await fake.server.stop(0)


@contextlib.asynccontextmanager
async def silent_tcp_listener() -> AsyncIterator[tuple[str, list]]:
    """Accepts connections and never writes a byte (a wedged process, or the wrong service)."""
    connections: list[asyncio.StreamWriter] = []

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)
        await reader.read()  # until the client gives up and closes

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"127.0.0.1:{port}", connections
    finally:
        for writer in connections:
            writer.close()
        server.close()
        await server.wait_closed()


async def assert_deadline_fires_on_time(call_factory) -> None:
    started = time.monotonic()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call_factory()
    elapsed = time.monotonic() - started
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED, info.value
    assert DEADLINE_S - 0.05 <= elapsed <= DEADLINE_S + DEADLINE_SLACK_S, f"deadline fired after {elapsed:.2f} s"


async def test_hanging_grpc_expert_hits_the_client_deadline():
    async with hanging_grpc_expert() as fake:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{fake.port}") as channel:
            stub = pb_grpc.ExpertStub(channel)
            await assert_deadline_fires_on_time(
                lambda: drain(stub.Generate(request("anyone there?"), timeout=DEADLINE_S))
            )
            await assert_deadline_fires_on_time(lambda: stub.GetInfo(pb.GetInfoRequest(), timeout=DEADLINE_S))
        assert fake.started == 2
        # The deadline also reaches the server: its handlers are cancelled, not left sleeping.
        await eventually(lambda: fake.cancelled == 2)
        assert fake.cancelled == 2


async def test_silent_tcp_listener_hits_the_client_deadline():
    async with silent_tcp_listener() as (address, connections):
        async with grpc.aio.insecure_channel(address) as channel:
            stub = pb_grpc.ExpertStub(channel)
            await assert_deadline_fires_on_time(
                lambda: drain(stub.Generate(request("hello?"), timeout=DEADLINE_S, wait_for_ready=True))
            )
            await assert_deadline_fires_on_time(
                lambda: drain(stub.Generate(request("hello?"), timeout=DEADLINE_S))
            )
        assert connections, "the client never connected to the listener"
