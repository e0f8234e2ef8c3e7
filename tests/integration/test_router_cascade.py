"""A real router on port 0 with a real cascade model directory (the tiny one of tests/cascade_model.py):
an unsure prompt streams from the expert the cascade chose and says so in its metadata; a reload adds,
changes and removes the cascade; a bad directory stops the start and is refused by a reload."""
from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

import aiohttp
import grpc
import pytest

from expert_router.v1 import expert_router_pb2 as pb
from expert_router.v1 import expert_router_pb2_grpc as pb_grpc
from router_svc import config
from router_svc.cascade import CascadeError
from router_svc.reload import ConfigReloader
from tests.cascade_model import LABELS, GatedCascade, write_cascade_model, write_manifest
from tests.helpers import eventually

# The FAKE classifier (tests/helpers.py) knows none of these words: it falls back to general. The
# cascade model knows "ibuprofen" (medicine).
UNSURE_MEDICINE = "What are the side effects of ibuprofen?"
# "symptoms" makes the FAKE classifier sure of medicine; "landlord" would make the cascade say law.
SURE_MEDICINE = "symptoms after my landlord painted the flat"
EXPERTS = ("medicine", "law", "general")


@pytest.fixture
async def experts(start_expert):
    return {name: await start_expert(name) for name in EXPERTS}


def counts(experts) -> dict[str, int]:
    return {name: expert.engine.stats.finished for name, expert in experts.items()}


def outcome(router, name: str) -> float:
    return router.metrics.registry.get_sample_value("router_cascade_prompts_total", {"outcome": name}) or 0.0


async def generate(stub: pb_grpc.RouterStub, prompt: str) -> dict[str, str]:
    call = stub.Generate(pb.GenerateRequest(prompt=prompt, sampling=pb.SamplingParams(max_tokens=2)))
    frames = [frame async for frame in call]
    assert frames[-1].usage.completion_tokens == 2
    return dict(await call.initial_metadata())


async def test_an_unsure_prompt_streams_from_the_cascades_expert(start_router, experts, channels, tmp_path,
                                                                  caplog) -> None:
    model_dir = write_cascade_model(tmp_path / "cascade")
    with caplog.at_level(logging.INFO, logger="router_svc"):
        router = await start_router({name: [e.address] for name, e in experts.items()}, cascade_dir=str(model_dir),
                                    http_listen="127.0.0.1:0")
    assert any("cascade model tiny-bow-1" in r.getMessage() and "below 0.5" in r.getMessage()
               for r in caplog.records), "the start-up log names the cascade model and its threshold"
    stub = pb_grpc.RouterStub(channels(router.address))

    metadata = await generate(stub, UNSURE_MEDICINE)
    assert metadata["x-expert"] == "medicine" and metadata["x-expert-source"] == "classifier"
    assert metadata["x-expert-cascade"] == "tiny-bow-1"
    assert metadata["x-classifier-version"] == "fake-1"  # the existing keys are unchanged
    assert counts(experts) == {"medicine": 1, "law": 0, "general": 0}

    metadata = await generate(stub, SURE_MEDICINE)
    assert metadata["x-expert"] == "medicine" and "x-expert-cascade" not in metadata
    assert counts(experts) == {"medicine": 2, "law": 0, "general": 0}
    assert outcome(router, "scored") == 1

    classified = await stub.Classify(pb.ClassifyRequest(prompt=UNSURE_MEDICINE))
    assert classified.expert == "medicine" and not classified.fallback

    # The HTTP door takes the same decision and shows the same header.
    async with aiohttp.ClientSession() as session, session.post(
            f"http://{router.http.address}/v1/chat/completions",
            json={"model": "auto", "messages": [{"role": "user", "content": UNSURE_MEDICINE}],
                  "max_tokens": 2}) as response:
        assert response.status == 200
        assert response.headers["x-expert"] == "medicine"
        assert response.headers["x-expert-cascade"] == "tiny-bow-1"
    assert outcome(router, "scored") == 3
    assert router.metrics.registry.get_sample_value("router_cascade_seconds_count") == 3


def write_config(path: Path, experts, **settings) -> None:
    lines = ["experts:"] + [f"  {name}: '{e.address}'" for name, e in experts.items()]
    lines += [f"{key}: {value}" for key, value in settings.items()]
    path.write_text("\n".join(lines) + "\n")


async def test_a_reload_adds_changes_and_removes_the_cascade(tmp_path: Path, experts, fake_classifier, channels,
                                                             caplog) -> None:
    from router_svc import server

    write_cascade_model(tmp_path / "cascade", version="tiny-bow-1")
    write_cascade_model(tmp_path / "cascade-2", version="tiny-bow-2", combination="replace")
    path = tmp_path / "router.yaml"
    write_config(path, experts)
    parser = argparse.ArgumentParser()
    config.add_arguments(parser)
    args = parser.parse_args(["--config", str(path), "--listen", "127.0.0.1:0", "--workers", "1"])
    load = lambda: config.from_sources(args)
    router = await server.start(load(), classifier=fake_classifier)
    reloader = ConfigReloader(router, load)
    try:
        stub = pb_grpc.RouterStub(channels(router.address))
        assert router.state.cascade is None
        assert (await generate(stub, UNSURE_MEDICINE))["x-expert"] == "general"

        write_config(path, experts, cascade_model="cascade", cascade_max_pending=2)  # relative to the file
        assert await reloader.reload("test")
        first = router.state
        assert first.cascade is not None and first.cascade.max_pending == 2
        assert first.cascade.model.directory == tmp_path / "cascade"
        metadata = await generate(stub, UNSURE_MEDICINE)
        assert (metadata["x-expert"], metadata["x-expert-cascade"]) == ("medicine", "tiny-bow-1")

        write_config(path, experts, cascade_model="cascade-2", cascade_below=0.95)
        assert await reloader.reload("test")
        assert router.state.cascade.threshold == 0.95 and router.state.cascade.combination == "replace"
        metadata = await generate(stub, UNSURE_MEDICINE)
        assert (metadata["x-expert"], metadata["x-expert-cascade"]) == ("medicine", "tiny-bow-2")
        await eventually(lambda: first.cascade._closed, what="the old generation's cascade is closed")

        # A broken model is refused by the reload, which keeps the running state and its cascade.
        write_manifest(tmp_path / "cascade", labels=["medicine", "law", "general"])
        write_config(path, experts, cascade_model="cascade")
        running = router.state
        with caplog.at_level(logging.ERROR, logger="router_svc.reload"):
            assert not await reloader.reload("test")
        assert router.state is running and reloader.failures == 1
        assert any("cascade.json: labels" in r.getMessage() for r in caplog.records)
        assert (await generate(stub, UNSURE_MEDICINE))["x-expert-cascade"] == "tiny-bow-2"

        write_config(path, experts)
        assert await reloader.reload("test")
        assert router.state.cascade is None
        metadata = await generate(stub, UNSURE_MEDICINE)
        assert metadata["x-expert"] == "general" and "x-expert-cascade" not in metadata
    finally:
        await reloader.close()
        await router.stop(0)


async def test_a_bad_cascade_model_stops_the_start(tmp_path: Path, start_router, experts) -> None:
    model_dir = write_cascade_model(tmp_path / "cascade")
    (model_dir / "model.onnx").write_bytes(b"truncated")
    with pytest.raises(CascadeError, match=r"model\.onnx: sha256"):
        await start_router({name: [e.address] for name, e in experts.items()}, cascade_dir=str(model_dir))


async def test_the_router_process_refuses_a_bad_cascade_model_with_its_message(tmp_path: Path) -> None:
    model_dir = write_cascade_model(tmp_path / "cascade")
    (model_dir / "tokenizer.json").unlink()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "router_svc", "--listen", "127.0.0.1:0", "--workers", "1",
        "--expert", "general=127.0.0.1:9", "--cascade-model", str(model_dir),
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    _, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 1
    assert f"cascade model {model_dir}: tokenizer.json: missing" in stderr.decode()


async def test_the_classify_span_names_the_cascade(tmp_path: Path, experts, fake_classifier, channels,
                                                   relay: str) -> None:
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from router_svc import server
    from router_svc.config import RouterConfig, UpstreamExpert

    spans = InMemorySpanExporter()
    cfg = RouterConfig(experts=tuple(UpstreamExpert(name, (e.address,)) for name, e in experts.items()),
                       relay=relay, listen="127.0.0.1:0", cascade_dir=str(write_cascade_model(tmp_path / "c")))
    router = await server.start(cfg, classifier=fake_classifier, span_exporter=spans)
    try:
        stub = pb_grpc.RouterStub(channels(router.address))
        await generate(stub, UNSURE_MEDICINE)
        await generate(stub, SURE_MEDICINE)
        await eventually(lambda: len([s for s in spans.get_finished_spans() if s.name == "router.classify"]) == 2)
        classify = [s for s in spans.get_finished_spans() if s.name == "router.classify"]
        assert [s.attributes.get("expert_router.cascade") for s in classify] == ["tiny-bow-1", None]
    finally:
        await router.stop(0)


async def test_a_client_cancel_while_the_cascade_scores_leaks_nothing(start_router, experts, channels, tmp_path,
                                                                      monkeypatch) -> None:
    from router_svc import server
    from router_svc.cascade import CascadeModel

    model_dir = write_cascade_model(tmp_path / "cascade")
    gated = GatedCascade(CascadeModel.load(model_dir, labels=LABELS))
    monkeypatch.setattr(server, "load_cascade", lambda cfg, labels: gated if cfg.cascade_dir else None)
    router = await start_router({name: [e.address] for name, e in experts.items()}, cascade_dir=str(model_dir))
    stub = pb_grpc.RouterStub(channels(router.address))
    call = stub.Generate(pb.GenerateRequest(prompt=UNSURE_MEDICINE, sampling=pb.SamplingParams(max_tokens=2)))
    await gated.wait_started()
    call.cancel()
    assert await call.code() == grpc.StatusCode.CANCELLED
    state = router.state
    assert state.cascade.pending == 1  # the run goes on in its thread...
    gated.gate.set()
    # ...and when it is done nothing is held: no slot, no call on the generation, no admission, no stream.
    await eventually(lambda: state.cascade.pending == 0 and state.active == 0 and router.admission.total == 0,
                     what="everything released")
    assert router.metrics.registry.get_sample_value("router_in_flight_streams", {"expert": "medicine"}) in (None, 0)
    assert outcome(router, "scored") + outcome(router, "error") <= 1
    metadata = await generate(stub, UNSURE_MEDICINE)  # and the next prompt is rescored as usual
    assert (metadata["x-expert"], metadata["x-expert-cascade"]) == ("medicine", "tiny-bow-1")
