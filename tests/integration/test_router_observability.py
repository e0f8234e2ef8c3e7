"""Metrics over HTTP, request ids and trace context forwarded to the expert, and request logs."""
from __future__ import annotations

import asyncio
import json
import logging
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from expert_router.v1 import expert_router_pb2 as pb
from expert_router.v1 import expert_router_pb2_grpc as pb_grpc
from tests.helpers import drain, eventually


class FakeExpert(pb_grpc.ExpertServicer):
    """Test-only expert: records each call's metadata and streams three frames (or fails at once)."""

    def __init__(self, fail_with: grpc.StatusCode | None = None) -> None:
        self.metadata: list[dict[str, str]] = []
        self.fail_with = fail_with

    async def Generate(self, request, context):
        self.metadata.append(dict(context.invocation_metadata()))
        if self.fail_with is not None:
            await context.abort(self.fail_with, "fake failure before the first frame")
        for word in ("one ", "two "):
            yield pb.GenerateResponse(text=word)
        yield pb.GenerateResponse(text="three", finish_reason=pb.FINISH_REASON_STOP,
                                  usage=pb.Usage(prompt_tokens=1, completion_tokens=3))


async def start_fake_expert(servicer: FakeExpert) -> tuple[grpc.aio.Server, str]:
    server = grpc.aio.server()
    pb_grpc.add_ExpertServicer_to_server(servicer, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)  # healthy, whatever Generate does
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


@pytest.fixture
async def fake_expert():
    servicer = FakeExpert()
    server, address = await start_fake_expert(servicer)
    yield servicer, address
    await server.stop(0)


def scrape(address: str) -> dict[str, float]:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as response:
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}"] = sample.value
    return samples


async def settled(router) -> None:
    """Waits until every stream's accounting is done: the native relay reports a stream's end to
    Python just after the client has seen it, so metrics and logs may lag the client by a moment."""
    await eventually(lambda: not (router.state.active or router.admission.total), what="streams accounted")


async def test_request_id_and_trace_context_reach_the_expert(start_router, fake_expert, channels) -> None:
    servicer, address = fake_expert
    router = await start_router({"general": [address]})
    stub = pb_grpc.RouterStub(channels(router.address))
    traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    call = stub.Generate(pb.GenerateRequest(prompt="hi"), metadata=(
        ("x-request-id", "req-42"), ("traceparent", traceparent), ("tracestate", "vendor=1")))
    frames = await drain(call)
    assert "".join(f.text for f in frames) == "one two three"
    assert servicer.metadata[0]["x-request-id"] == "req-42"
    assert servicer.metadata[0]["traceparent"] == traceparent
    assert servicer.metadata[0]["tracestate"] == "vendor=1"
    assert dict(await call.initial_metadata())["x-request-id"] == "req-42"

    await drain(stub.Generate(pb.GenerateRequest(prompt="hi")))  # no id: one is generated
    generated = servicer.metadata[1]["x-request-id"]
    assert len(generated) == 32 and "traceparent" not in servicer.metadata[1]
    await drain(stub.Generate(pb.GenerateRequest(prompt="hi", request_id="from-message")))
    assert servicer.metadata[2]["x-request-id"] == "from-message"

    with pytest.raises(grpc.aio.AioRpcError) as info:
        await drain(stub.Generate(pb.GenerateRequest(prompt="hi"), metadata=(("x-request-id", "x" * 200),)))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "x-request-id" in info.value.details()


async def test_metrics_endpoint_counts_requests_frames_and_latency(start_router, start_expert, channels,
                                                                   unused_address) -> None:
    expert = await start_expert("general")
    router = await start_router({"general": [expert.address], "math": [unused_address()]},
                                metrics_listen="127.0.0.1:0")
    stub = pb_grpc.RouterStub(channels(router.address))
    for _ in range(3):
        await drain(stub.Generate(pb.GenerateRequest(prompt="hello", sampling=pb.SamplingParams(max_tokens=5))))
    with pytest.raises(grpc.aio.AioRpcError):
        await drain(stub.Generate(pb.GenerateRequest(prompt="hello", expert="math")))

    await settled(router)
    samples = await asyncio.to_thread(scrape, router.metrics_server.address)
    assert samples["router_requests_total{code=OK,expert=general}"] == 3
    assert samples["router_requests_total{code=UNAVAILABLE,expert=math}"] == 1
    assert samples["router_frames_relayed_total{expert=general}"] == 15
    assert samples["router_ttft_seconds_count{expert=general}"] == 3
    assert samples["router_inter_token_seconds_count{expert=general}"] == 12  # 4 gaps per 5-frame stream
    assert samples["router_inter_token_seconds_sum{expert=general}"] > 0
    assert samples["router_classification_seconds_count{}"] == 3
    assert samples["router_in_flight_streams{expert=general}"] == 0


async def test_unavailable_before_the_first_frame_is_retried_ejected_and_counted(
        start_router, start_expert, channels) -> None:
    failing = FakeExpert(fail_with=grpc.StatusCode.UNAVAILABLE)
    server, failing_address = await start_fake_expert(failing)
    try:
        good = await start_expert("general")
        router = await start_router({"general": [failing_address, good.address]}, eject_after=2,
                                    metrics_listen="127.0.0.1:0")
        stub = pb_grpc.RouterStub(channels(router.address))
        for _ in range(4):
            frames = await drain(stub.Generate(pb.GenerateRequest(
                prompt="hi", sampling=pb.SamplingParams(max_tokens=2))))
            assert frames[-1].usage.completion_tokens == 2  # every request saved by the second replica
        assert good.engine.stats.finished == 4
        # Health says SERVING, but two failures in a row ejected it: later requests went straight to `good`.
        assert len(failing.metadata) == 2
        replica = router.upstream.expert("general").replicas[0]
        assert replica.serving and not replica.healthy
        samples = await asyncio.to_thread(scrape, router.metrics_server.address)
        assert samples["router_upstream_errors_total{code=UNAVAILABLE,expert=general}"] == 2
        assert samples["router_ejections_total{expert=general}"] == 1
        assert samples["router_requests_total{code=OK,expert=general}"] == 4
    finally:
        await server.stop(0)


async def test_request_log_line_without_prompts_unless_asked(start_router, start_expert, channels,
                                                             caplog) -> None:
    expert = await start_expert("general")
    caplog.set_level(logging.INFO, logger="router_svc.requests")
    router = await start_router({"general": [expert.address]})
    stub = pb_grpc.RouterStub(channels(router.address))
    secret = "my secret prompt"
    await drain(stub.Generate(pb.GenerateRequest(prompt=secret, sampling=pb.SamplingParams(max_tokens=3)),
                              metadata=(("x-request-id", "log-1"),)))
    await settled(router)
    records = [r for r in caplog.records if r.name == "router_svc.requests"]
    assert len(records) == 1
    fields = records[0].fields
    assert (fields["request_id"], fields["door"], fields["expert"], fields["status"], fields["frames"]) == (
        "log-1", "grpc", "general", "OK", 3)
    assert fields["replica"] == expert.address and fields["ttft_ms"] > 0 and fields["duration_ms"] >= fields["ttft_ms"]
    from router_svc.logging_setup import JsonFormatter, TextFormatter

    line = TextFormatter().format(records[0])
    assert json.loads(line)["request_id"] == "log-1" and secret not in line
    assert json.loads(JsonFormatter().format(records[0]))["status"] == "OK"

    caplog.clear()
    debug = await start_router({"general": [expert.address]}, log_prompts=True)
    await drain(pb_grpc.RouterStub(channels(debug.address)).Generate(
        pb.GenerateRequest(prompt=secret, sampling=pb.SamplingParams(max_tokens=3))))
    await settled(debug)
    fields = next(r for r in caplog.records if r.name == "router_svc.requests").fields
    assert fields["prompt"] == secret and len(fields["output"].split()) == 3
