"""Faults seen through the router, with real processes: `python -m router_svc --workers 1` and
`python -m expert_svc --engine synthetic` as children of the test.

An expert killed mid-stream ends its streams with an error within 2 s and leaves streams to other
experts alone; an expert restarted on its port is back in rotation within one health interval; an
expert that accepts and never answers runs into the client's deadline while the router stays
healthy; a router killed under load ends its streams with UNAVAILABLE at once, and its restart
serves again.
"""
from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from expert_router.v1 import expert_router_pb2 as pb
from expert_router.v1 import expert_router_pb2_grpc as pb_grpc
from tests.helpers import (
    discard_output,
    drain,
    expert_processes,
    serve_fake_expert_generate,
    start_expert_process,
)

ARTIFACT = Path(__file__).resolve().parents[2] / "router_svc" / "classifier_data" / "model.onnx"
pytestmark = pytest.mark.skipif(not ARTIFACT.exists(), reason="the packaged classifier is not built yet")

LISTENING = re.compile(r"router listening on (\S+:\d+);")
HEALTH_INTERVAL_S = 0.5
SLOW = ("--tokens-per-second", "20", "--ttft-ms", "5", "--max-concurrency", "64")


@dataclass
class RouterProcess:
    process: asyncio.subprocess.Process
    address: str
    drain: asyncio.Task

    async def close(self) -> None:
        if self.process.returncode is None:
            self.process.kill()
        await self.process.wait()
        await self.drain


async def start_router_process(tmp_path: Path, experts: dict[str, str], *, listen: str = "127.0.0.1:0",
                               **settings) -> RouterProcess:
    """A one-worker router with ``experts`` (name -> HOST:PORT) and YAML ``settings``."""
    config = tmp_path / f"router-{time.monotonic_ns()}.yaml"
    lines = [f"health_interval_s: {HEALTH_INTERVAL_S}", "experts:"]
    lines += [f"  {name}: '{address}'" for name, address in experts.items()]
    lines += [f"{key}: {value}" for key, value in settings.items()]
    config.write_text("\n".join(lines) + "\n")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "router_svc", "--workers", "1", "--listen", listen, "--config", str(config),
        "--grace-s", "0.5",
        stdin=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    seen = []
    try:
        async with asyncio.timeout(60):
            while True:
                line = (await process.stderr.readline()).decode(errors="replace")
                if not line:
                    raise AssertionError("router exited before listening:\n" + "".join(seen[-20:]))
                seen.append(line)
                if match := LISTENING.search(line):
                    break
    except BaseException:
        if process.returncode is None:
            process.kill()
        await process.wait()
        raise
    drain = asyncio.get_running_loop().create_task(discard_output(process.stderr))
    return RouterProcess(process, match.group(1), drain)


@contextlib.asynccontextmanager
async def router_process(tmp_path: Path, experts: dict[str, str], **kwargs) -> AsyncIterator[RouterProcess]:
    router = await start_router_process(tmp_path, experts, **kwargs)
    try:
        yield router
    finally:
        await router.close()


def request(expert: str, max_tokens: int) -> pb.GenerateRequest:
    return pb.GenerateRequest(prompt="hello", expert=expert, sampling=pb.SamplingParams(max_tokens=max_tokens))


@pytest.mark.slow
async def test_expert_killed_mid_stream_then_restarted_on_its_port(tmp_path: Path, relay: str) -> None:
    async with (
        expert_processes(("math", SLOW), ("general", SLOW)) as (math, general),
        router_process(tmp_path, {"math": math.address, "general": general.address}, eject_base_s=0.2,
                       relay=relay) as router,
        grpc.aio.insecure_channel(router.address) as channel,
    ):
        stub = pb_grpc.RouterStub(channel)
        doomed = [stub.Generate(request("math", 200), timeout=20) for _ in range(2)]
        others = [stub.Generate(request("general", 30), timeout=20) for _ in range(2)]
        for call in (*doomed, *others):
            assert (await call.read()).text
        math.process.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()

        async def failure(call) -> tuple[grpc.StatusCode, float]:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await drain(call)
            return info.value.code(), time.monotonic() - killed_at

        failures = await asyncio.gather(*(failure(call) for call in doomed))
        assert all(code == grpc.StatusCode.UNAVAILABLE for code, _ in failures), failures
        assert max(elapsed for _, elapsed in failures) < 10.0  # at once, not at the calls' deadline (30 s)
        finished = await asyncio.gather(*(drain(call) for call in others))
        assert all(len(frames) == 29 and frames[-1].usage.completion_tokens == 30 for frames in finished)

        await math.close()
        restarted = await start_expert_process("math", *SLOW, listen=math.address)
        try:
            back_at = time.monotonic()
            while True:
                try:
                    frames = await drain(stub.Generate(request("math", 2), timeout=2))
                    break
                except grpc.aio.AioRpcError as err:
                    assert err.code() == grpc.StatusCode.UNAVAILABLE, err
                    assert time.monotonic() - back_at < HEALTH_INTERVAL_S + 1.0, err
                    await asyncio.sleep(0.05)
            assert frames[-1].usage.completion_tokens == 2
            assert time.monotonic() - back_at < HEALTH_INTERVAL_S + 1.0
        finally:
            await restarted.close()


class FakeHangingExpert:
    """Test-only Expert service: accepts Generate and never answers; health says SERVING."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.cancelled = asyncio.Event()

    async def generate(self, request: bytes, context) -> None:
        self.started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled.set()
            raise

    async def start(self) -> tuple[grpc.aio.Server, str]:
        return await serve_fake_expert_generate(self.generate)


async def test_expert_that_never_answers_meets_the_deadline(tmp_path: Path, start_expert, relay: str) -> None:
    hanging = FakeHangingExpert()
    server, address = await hanging.start()
    general = await start_expert("general")
    try:
        async with (
            router_process(tmp_path, {"math": address, "general": general.address}, relay=relay) as router,
            grpc.aio.insecure_channel(router.address) as channel,
        ):
            stub = pb_grpc.RouterStub(channel)
            started = time.monotonic()
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await drain(stub.Generate(request("math", 5), timeout=1.0))
            elapsed = time.monotonic() - started
            assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert 0.9 < elapsed < 15.0  # the deadline fires; the upper bound only rules out a hang
            assert hanging.started.is_set()
            await asyncio.wait_for(hanging.cancelled.wait(), 30)  # the router cancelled its upstream call
            checked = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
            assert checked.status == health_pb2.HealthCheckResponse.SERVING
            frames = await drain(stub.Generate(request("general", 3), timeout=5))
            assert frames[-1].usage.completion_tokens == 3
    finally:
        await server.stop(0)


@pytest.mark.slow
async def test_router_killed_under_load_fails_fast_and_its_restart_serves(tmp_path: Path, start_expert,
                                                                        relay: str) -> None:
    from tests.integration.test_router_processes import free_ports

    general = await start_expert("general", tokens_per_second=20.0, max_concurrency=64)
    listen = f"127.0.0.1:{free_ports(1)[0]}"
    router = await start_router_process(tmp_path, {"general": general.address}, listen=listen, relay=relay)
    try:
        async with grpc.aio.insecure_channel(listen) as channel:
            stub = pb_grpc.RouterStub(channel)
            load = [stub.Generate(request("general", 200), timeout=30) for _ in range(10)]
            for call in load:
                assert (await call.read()).text
            router.process.send_signal(signal.SIGKILL)
            killed_at = time.monotonic()
            codes = []
            for call in load:
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await drain(call)
                codes.append(info.value.code())
            assert set(codes) == {grpc.StatusCode.UNAVAILABLE}
            assert time.monotonic() - killed_at < 15.0  # at once, not at the calls' 30 s deadline
            await router.close()

            # While it is down, a new call fails at once rather than waiting for its deadline.
            started = time.monotonic()
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await drain(stub.Generate(request("general", 2), timeout=10))
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            assert time.monotonic() - started < 5.0  # at once, not at its 10 s deadline

            router = await start_router_process(tmp_path, {"general": general.address}, listen=listen, relay=relay)
            # The client's existing channel reconnects by itself.
            frames = await drain(stub.Generate(request("general", 2), timeout=10, wait_for_ready=True))
            assert frames[-1].usage.completion_tokens == 2
    finally:
        await router.close()
