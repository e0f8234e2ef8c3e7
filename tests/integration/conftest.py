"""Fixtures for router integration tests: real servers on port 0, in-process synthetic experts."""
from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable, Sequence

import grpc
import numpy as np
import pytest

from expert_router.v1 import expert_router_pb2_grpc as pb_grpc

LABELS = ("code", "math", "science", "medicine", "law", "general")
KEYWORDS = {
    "code": ("python", "function", "code"),
    "math": ("integral", "equation", "solve"),
    "science": ("photosynthesis", "atom", "physics"),
    "medicine": ("symptoms", "diagnosis", "dose"),
    "law": ("contract", "court", "statute"),
}


class FakeClassifier:
    """Test-only classifier: keyword hits decide; no keyword gives a flat, low-confidence row."""

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


@pytest.fixture
def unused_address() -> Callable[[], str]:
    """``unused_address()`` -> a local address nothing listens on (bound, then released)."""

    def address() -> str:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            return f"127.0.0.1:{sock.getsockname()[1]}"

    return address


@pytest.fixture
def fake_classifier() -> FakeClassifier:
    return FakeClassifier()


@pytest.fixture
async def start_expert():
    """``await start_expert(name, **ExpertConfig fields)`` -> a running synthetic expert, stopped after."""
    from expert_svc import server
    from expert_svc.config import ExpertConfig

    started = []

    async def start(name: str, **fields):
        fields = {"engine": "synthetic", "listen": "127.0.0.1:0", "ttft_ms": 5.0,
                  "tokens_per_second": 500.0, **fields}
        running = await server.start(ExpertConfig(name=name, **fields))
        started.append(running)
        return running

    yield start
    for running in started:
        await running.stop(0)  # a no-op for experts the test already stopped


StartRouter = Callable[..., Awaitable["object"]]


@pytest.fixture(params=["native", "python"])
def relay(request) -> str:
    """Every router test runs against both relays of Generate (router_svc.native_relay)."""
    from router_svc import native_relay

    if request.param == "native" and not native_relay.available():
        pytest.skip(native_relay.UNAVAILABLE_REASON)
    return request.param


@pytest.fixture
async def start_router(fake_classifier: FakeClassifier, relay: str):
    """``await start_router({"math": ["host:port", ...] or "dns:///host:port"}, **RouterConfig fields)``."""
    from router_svc import server
    from router_svc.config import RouterConfig, parse_expert_flag

    started = []

    async def start(experts: dict[str, Sequence[str] | str], *, classifier=None, resolver=None, **fields):
        fields.setdefault("fallback", "general" if "general" in experts else next(iter(experts)))
        fields.setdefault("relay", relay)
        specs = tuple(parse_expert_flag(f"{n}={a if isinstance(a, str) else ','.join(a)}")
                      for n, a in experts.items())
        fields.setdefault("listen", "127.0.0.1:0")
        cfg = RouterConfig(experts=specs, **fields)
        running = await server.start(cfg, classifier=classifier or fake_classifier, resolver=resolver)
        started.append(running)
        return running

    yield start
    for running in started:
        await running.stop(0)


@pytest.fixture
async def channels():
    """``channels(address)`` -> a grpc.aio channel closed after the test."""
    opened: list[grpc.aio.Channel] = []

    def open_channel(address: str) -> grpc.aio.Channel:
        channel = grpc.aio.insecure_channel(address)
        opened.append(channel)
        return channel

    yield open_channel
    for channel in opened:
        await channel.close()


def router_stub(channel: grpc.aio.Channel) -> pb_grpc.RouterStub:
    return pb_grpc.RouterStub(channel)
