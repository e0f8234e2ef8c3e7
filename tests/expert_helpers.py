"""Helpers shared by the expert service's tests: in-process experts on port 0 and stream readers."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import grpc

from expert_router.v1 import expert_router_pb2 as pb
from expert_router.v1 import expert_router_pb2_grpc as pb_grpc
from expert_svc.config import ExpertConfig
from expert_svc.server import RunningExpert, start


def synthetic_config(**overrides) -> ExpertConfig:
    """A fast synthetic expert on a free local port."""
    values = {
        "name": "test",
        "engine": "synthetic",
        "listen": "127.0.0.1:0",
        "ttft_ms": 5.0,
        "tokens_per_second": 500.0,
    }
    values.update(overrides)
    return ExpertConfig(**values)


@contextlib.asynccontextmanager
async def running_expert(cfg: ExpertConfig) -> AsyncIterator[tuple[RunningExpert, pb_grpc.ExpertStub]]:
    """Start an expert and a client channel to it; stop both on exit."""
    expert = await start(cfg)
    try:
        async with grpc.aio.insecure_channel(expert.address) as channel:
            yield expert, pb_grpc.ExpertStub(channel)
    finally:
        await expert.stop(grace=0.5)


def request(prompt: str = "hello expert", request_id: str = "", **sampling) -> pb.GenerateRequest:
    return pb.GenerateRequest(request_id=request_id, prompt=prompt, sampling=pb.SamplingParams(**sampling))


async def collect(call) -> list[pb.GenerateResponse]:
    return [frame async for frame in call]


async def read_to_end(call) -> list[pb.GenerateResponse]:
    """Like collect, for a call already read with ``read()`` (the two ways cannot be mixed)."""
    frames = []
    while (frame := await call.read()) is not grpc.aio.EOF:
        frames.append(frame)
    return frames


async def wait_until(predicate, timeout: float = 5.0, interval: float = 0.02) -> bool:
    """Poll `predicate` (sync or async) until it is true or the timeout passes."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return True
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(interval)
