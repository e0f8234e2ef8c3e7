"""What the tests share, once: reading a stream to its end, waiting for a condition, an in-process
synthetic expert, expert processes, and the FAKE keyword classifier the router tests route with.

Fixtures built on these live in tests/conftest.py. Waits are for conditions, never fixed sleeps; a
timeout here is a hang guard (generous, for a busy shared machine), not a speed bound.
"""
from __future__ import annotations

import asyncio
import contextlib
import re
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np

from expert_router.v1 import expert_router_pb2 as pb
from expert_router.v1 import expert_router_pb2_grpc as pb_grpc
from expert_svc.config import ExpertConfig
from expert_svc.server import RunningExpert, start

# How long a wait may take before the test fails instead of hanging.
HANG_GUARD_S = 30.0


async def drain(call) -> list[pb.GenerateResponse]:
    """Every frame still to come on a server-streaming call (read with ``read()``, so a call already
    read from with ``read()`` works too), up to the end of the stream; raises its error status."""
    frames = []
    while (frame := await call.read()) is not grpc.aio.EOF:
        frames.append(frame)
    return frames


async def eventually(predicate: Callable[[], Any], timeout: float = HANG_GUARD_S, interval: float = 0.02,
                     what: str = "") -> bool:
    """Waits until ``predicate()`` (sync or async) is true; raises AssertionError after ``timeout``.

    Returns True, so ``assert await eventually(...)`` reads as it behaves.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return True
        if loop.time() >= deadline:
            raise AssertionError(f"not reached within {timeout:g} s: {what or getattr(predicate, '__name__', '?')}")
        await asyncio.sleep(interval)


async def discard_output(stream: asyncio.StreamReader) -> None:
    """Reads a child's pipe to its end, so a chatty child never blocks on a full pipe."""
    with contextlib.suppress(Exception):
        while await stream.read(65536):
            pass


# --- in-process experts ----------------------------------------------------------------------------

def synthetic_config(**overrides: Any) -> ExpertConfig:
    """A fast synthetic expert on a free local port."""
    values: dict[str, Any] = {"name": "test", "engine": "synthetic", "listen": "127.0.0.1:0", "ttft_ms": 5.0,
                              "tokens_per_second": 500.0}
    values.update(overrides)
    return ExpertConfig(**values)


async def start_synthetic_expert(**overrides: Any) -> RunningExpert:
    """The one way tests start an in-process expert (the ``start_expert`` fixture and ``running_expert``)."""
    return await start(synthetic_config(**overrides))


@contextlib.asynccontextmanager
async def running_expert(cfg: ExpertConfig) -> AsyncIterator[tuple[RunningExpert, pb_grpc.ExpertStub]]:
    """Start an expert and a client channel to it; stop both on exit."""
    expert = await start(cfg)
    try:
        async with grpc.aio.insecure_channel(expert.address) as channel:
            yield expert, pb_grpc.ExpertStub(channel)
    finally:
        await expert.stop(grace=0.5)


async def serve_fake_expert_generate(generate: Callable[..., Any]) -> tuple[grpc.aio.Server, str]:
    """A gRPC server on a free loopback port whose Expert.Generate is ``generate`` (a unary-stream
    handler) and whose health service answers SERVING; returns the server and its address. For the
    fake experts of the router tests, which only need Generate to misbehave in their own way."""
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    server = grpc.aio.server()
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("expert_router.v1.Expert", {
        "Generate": grpc.unary_stream_rpc_method_handler(generate)}),))
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    return server, f"127.0.0.1:{port}"


def request(prompt: str = "hello expert", request_id: str = "", **sampling: Any) -> pb.GenerateRequest:
    return pb.GenerateRequest(request_id=request_id, prompt=prompt, sampling=pb.SamplingParams(**sampling))


# --- expert processes (`python -m expert_svc` as a child, for fault tests) -------------------------

SERVING = re.compile(r"serving .* on (\S+:\d+)")
STARTUP_TIMEOUT_S = 30.0


@dataclass
class ExpertProcess:
    """A running expert process and the address it reported."""

    process: asyncio.subprocess.Process
    address: str
    stderr_drain: asyncio.Task | None = None

    def kill(self) -> None:
        if self.process.returncode is None:
            self.process.kill()

    async def close(self) -> None:
        """Kill the process (if still running) and reap it."""
        self.kill()
        await self.process.wait()
        if self.stderr_drain is not None:
            await self.stderr_drain


async def start_expert_process(
    name: str, *flags: str, listen: str = "127.0.0.1:0", prefix: Sequence[str] = ()
) -> ExpertProcess:
    """Start a synthetic expert (extra `flags` appended; `prefix` runs it under another command,
    such as `ip netns exec NS`) and wait until it logs the address it serves on."""
    argv = [
        *prefix, sys.executable, "-m", "expert_svc", "--engine", "synthetic", "--name", name,
        "--listen", listen, "--grace-s", "0.5", *flags,
    ]
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    seen: list[str] = []
    try:
        async with asyncio.timeout(STARTUP_TIMEOUT_S):
            while True:
                line = (await proc.stderr.readline()).decode(errors="replace")
                if not line:
                    await proc.wait()
                    raise RuntimeError(f"expert {name} exited with {proc.returncode}: {''.join(seen)}")
                seen.append(line)
                if match := SERVING.search(line):
                    break
    except BaseException:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
        raise
    drain_task = asyncio.get_running_loop().create_task(discard_output(proc.stderr))
    return ExpertProcess(proc, match.group(1), drain_task)


@contextlib.asynccontextmanager
async def expert_processes(*specs: tuple[str, Sequence[str]]) -> AsyncIterator[list[ExpertProcess]]:
    """Start several expert processes at once; kill whatever is left on exit."""
    results = await asyncio.gather(
        *(start_expert_process(name, *flags) for name, flags in specs), return_exceptions=True
    )
    started = [r for r in results if isinstance(r, ExpertProcess)]
    try:
        for r in results:
            if isinstance(r, BaseException):
                raise r
        yield started
    finally:
        for p in started:
            p.kill()
        for p in started:
            await p.close()


# --- the router's FAKE classifier ------------------------------------------------------------------

LABELS = ("code", "math", "science", "medicine", "law", "general")
KEYWORDS = {
    "code": ("python", "function", "code"),
    "math": ("integral", "equation", "solve"),
    "science": ("photosynthesis", "atom", "physics"),
    "medicine": ("symptoms", "diagnosis", "dose"),
    "law": ("contract", "court", "statute"),
}


class FakeClassifier:
    """FAKE of router_svc.classifier.Classifier's scoring surface (``labels``, ``version``,
    ``provider``, ``predict_batch``): keyword hits decide; no keyword gives a flat, low-confidence row."""

    labels = LABELS
    version = "fake-1"
    provider = "none"

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def predict_batch(self, texts: Sequence[str]) -> np.ndarray:
        self.calls.append(list(texts))
        rows = np.full((len(texts), len(LABELS)), 0.02, dtype=np.float32)
        for i, text in enumerate(texts):
            for j, label in enumerate(LABELS):
                if any(word in text.lower() for word in KEYWORDS.get(label, ())):
                    rows[i, j] = 0.9
            if rows[i].max() < 0.5:
                rows[i] = 1.0 / len(LABELS)
        return rows / rows.sum(axis=1, keepdims=True)
