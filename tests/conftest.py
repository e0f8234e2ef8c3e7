"""Fixtures for every test: real servers on port 0, in-process synthetic experts, the FAKE
classifier and the FAKE tensorrt_llm; and the GPU tests' skips.

The shared code behind them is in tests/helpers.py (one way to drain a stream, to wait for a
condition, to start an expert). Fakes come through fixtures or package imports (``tests.fakes``),
never by editing ``sys.path`` by hand.
"""
from __future__ import annotations

import importlib.util
import socket
from collections.abc import Callable, Sequence
from pathlib import Path

import grpc
import pytest

from tests.helpers import FakeClassifier, start_synthetic_expert

GPU_TESTS = Path(__file__).resolve().parent / "gpu"


# --- GPU tests: run only where an NVIDIA GPU is usable; elsewhere skipped with the reason ----------
# A test marked `needs_trtllm` also needs the tensorrt_llm package (NGC TensorRT-LLM container), and
# one marked `needs_modelopt` needs ModelOpt, transformers and torch with CUDA.

def _missing(*modules: str) -> list[str]:
    return [m for m in modules if importlib.util.find_spec(m) is None]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    gpu_items = [item for item in items if GPU_TESTS in Path(item.path).resolve().parents]
    if not gpu_items:
        return
    from expert_svc.engines.trtllm import missing_gpu

    gpu = missing_gpu()
    for item in gpu_items:
        item.add_marker(pytest.mark.gpu)
        if gpu:
            item.add_marker(pytest.mark.skip(reason=f"no usable NVIDIA GPU: {gpu}"))
            continue
        if item.get_closest_marker("needs_trtllm") and _missing("tensorrt_llm"):
            item.add_marker(pytest.mark.skip(
                reason="tensorrt_llm is not installed (run inside NVIDIA's NGC TensorRT-LLM container)"))
        if item.get_closest_marker("needs_modelopt"):
            absent = _missing("modelopt", "transformers", "torch")
            if absent:
                item.add_marker(pytest.mark.skip(reason=f"not installed: {', '.join(absent)}"))


# --- fakes -----------------------------------------------------------------------------------------

@pytest.fixture
def fake_classifier() -> FakeClassifier:
    return FakeClassifier()


@pytest.fixture
def fake_trtllm(monkeypatch):
    """The FAKE tensorrt_llm (tests/fakes/tensorrt_llm) is importable for one test; yields its control module."""
    from tests.fakes.trtllm_env import use_fake_tensorrt_llm

    yield from use_fake_tensorrt_llm(monkeypatch)


# --- servers and channels --------------------------------------------------------------------------

@pytest.fixture
def unused_address() -> Callable[[], str]:
    """``unused_address()`` -> a local address nothing listens on (bound, then released)."""

    def address() -> str:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            return f"127.0.0.1:{sock.getsockname()[1]}"

    return address


@pytest.fixture
async def start_expert():
    """``await start_expert(name, **ExpertConfig fields)`` -> a running synthetic expert, stopped after."""
    started = []

    async def start(name: str, **fields):
        running = await start_synthetic_expert(name=name, **fields)
        started.append(running)
        return running

    yield start
    for running in started:
        await running.stop(0)  # a no-op for experts the test already stopped


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
