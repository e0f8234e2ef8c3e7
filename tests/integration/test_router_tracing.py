"""OpenTelemetry traces across a real router (both relays) and a real synthetic expert on port 0.

The spans go to the SDK's InMemorySpanExporter, one per service; one test exports over real
OTLP/gRPC to a collector served in the test, and one checks that without an endpoint nothing of
OpenTelemetry is even imported.
"""
from __future__ import annotations

import subprocess
import sys
import textwrap

import aiohttp
import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from expert_router.v1 import expert_router_pb2 as pb
from expert_router.v1 import expert_router_pb2_grpc as pb_grpc
from tests.helpers import eventually

CLIENT_TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN_ID = "00f067aa0ba902b7"
CLIENT_TRACEPARENT = f"00-{CLIENT_TRACE_ID}-{CLIENT_SPAN_ID}-01"
ROUTER_SPANS = {"router.generate", "router.classify", "router.admission", "router.upstream_open", "router.relay"}
EXPERT_SPANS = {"expert.generate", "expert.queue", "expert.first_token", "expert.generation"}


def by_name(exporter: InMemorySpanExporter) -> dict[str, object]:
    spans = exporter.get_finished_spans()
    named = {span.name: span for span in spans}
    assert len(named) == len(spans), f"one span of each name per request, got {[s.name for s in spans]}"
    return named


@pytest.fixture
async def traced(relay: str, fake_classifier, unused_address):
    """``await traced(experts={"math": live or None, ...})`` -> (router address, router spans, expert spans)."""
    from expert_svc import server as expert_server
    from expert_svc.config import ExpertConfig
    from router_svc import server as router_server
    from router_svc.config import RouterConfig, UpstreamExpert

    router_spans, expert_spans = InMemorySpanExporter(), InMemorySpanExporter()
    running = []

    async def start(names: dict[str, bool]):
        experts = []
        for name, live in names.items():
            if live:
                expert = await expert_server.start(
                    ExpertConfig(name=name, engine="synthetic", listen="127.0.0.1:0", ttft_ms=5.0,
                                 tokens_per_second=500.0), span_exporter=expert_spans)
                running.append(expert)
                experts.append(UpstreamExpert(name, (expert.address,)))
            else:
                experts.append(UpstreamExpert(name, (unused_address(),)))
        cfg = RouterConfig(experts=tuple(experts), fallback="general", relay=relay, listen="127.0.0.1:0",
                           http_listen="127.0.0.1:0")
        router = await router_server.start(cfg, classifier=fake_classifier, span_exporter=router_spans)
        running.append(router)
        return router, router_spans, expert_spans

    yield start
    for server in reversed(running):
        await server.stop(0)


async def generate(address: str, prompt: str, metadata=()) -> list[pb.GenerateResponse]:
    async with grpc.aio.insecure_channel(address) as channel:
        call = pb_grpc.RouterStub(channel).Generate(
            pb.GenerateRequest(prompt=prompt, sampling=pb.SamplingParams(max_tokens=3)), metadata=metadata)
        return [frame async for frame in call]


async def test_one_trace_from_the_client_through_router_and_expert(traced) -> None:
    router, router_spans, expert_spans = await traced({"math": True, "general": True})
    frames = await generate(router.address, "solve this integral",
                            (("traceparent", CLIENT_TRACEPARENT), ("x-request-id", "trace-1")))
    assert len(frames) == 3
    await eventually(lambda: len(router_spans.get_finished_spans()) == len(ROUTER_SPANS))
    await eventually(lambda: len(expert_spans.get_finished_spans()) == len(EXPERT_SPANS))
    routed, expert = by_name(router_spans), by_name(expert_spans)
    assert set(routed) == ROUTER_SPANS and set(expert) == EXPERT_SPANS

    # One trace id everywhere: the client's.
    trace_ids = {f"{span.context.trace_id:032x}" for span in [*routed.values(), *expert.values()]}
    assert trace_ids == {CLIENT_TRACE_ID}
    # Parent links: client -> router.generate -> its stages; router.generate -> expert.generate -> its stages.
    root = routed["router.generate"]
    assert f"{root.parent.span_id:016x}" == CLIENT_SPAN_ID and root.parent.is_remote
    for name in ROUTER_SPANS - {"router.generate"}:
        assert routed[name].parent.span_id == root.context.span_id, name
    served = expert["expert.generate"]
    assert served.parent.span_id == root.context.span_id and served.parent.is_remote
    for name in EXPERT_SPANS - {"expert.generate"}:
        assert expert[name].parent.span_id == served.context.span_id, name

    # The attributes a reader looks for.
    assert root.attributes["expert_router.request_id"] == "trace-1"
    assert root.attributes["expert_router.expert"] == "math" and root.attributes["rpc.grpc.status_code"] == 0
    assert root.attributes["expert_router.relay"] == router.relay
    assert routed["router.classify"].attributes["expert_router.expert"] == "math"
    relayed = routed["router.relay"].attributes
    assert relayed["expert_router.frames"] == 3 and relayed["expert_router.ttft_ms"] > 0
    assert relayed["expert_router.bytes"] == sum(frame.ByteSize() for frame in frames)
    opened = routed["router.upstream_open"].attributes
    assert opened["expert_router.attempts"] == 1 and opened["expert_router.replica"] == router.upstream.expert(
        "math").replicas[0].address
    assert served.attributes["expert_router.request_id"] == "trace-1"
    assert expert["expert.generation"].attributes["expert_router.frames"] == 3
    # Stages in order, inside their parents.
    assert root.start_time <= routed["router.classify"].start_time <= routed["router.upstream_open"].start_time
    assert routed["router.upstream_open"].end_time <= routed["router.relay"].end_time <= root.end_time
    assert expert["expert.queue"].end_time <= expert["expert.first_token"].end_time
    assert expert["expert.first_token"].end_time <= expert["expert.generation"].end_time <= served.end_time


async def test_failover_is_an_event_and_a_new_trace_starts_without_traceparent(traced) -> None:
    router, router_spans, expert_spans = await traced({"math": False, "general": True})
    frames = await generate(router.address, "solve this integral")
    assert len(frames) == 3
    await eventually(lambda: any(s.name == "router.generate" for s in router_spans.get_finished_spans()))
    await eventually(lambda: any(s.name == "expert.generate" for s in expert_spans.get_finished_spans()))
    routed, expert = by_name(router_spans), by_name(expert_spans)
    root = routed["router.generate"]
    assert root.parent is None  # no traceparent from the client: the router starts the trace
    assert expert["expert.generate"].context.trace_id == root.context.trace_id
    assert root.attributes["expert_router.expert"] == "general"
    assert root.attributes["expert_router.source"] == "fallback"  # the failover went to the fallback expert
    opened = routed["router.upstream_open"]
    assert opened.attributes["expert_router.failover_from"] == "math"
    failovers = [event for event in opened.events if event.name == "failover"]
    assert [(e.attributes["expert_router.from"], e.attributes["expert_router.to"]) for e in failovers] == [
        ("math", "general")]


async def test_the_http_door_joins_the_callers_trace(traced) -> None:
    router, router_spans, expert_spans = await traced({"math": True, "general": True})
    body = {"model": "auto", "prompt": "solve this integral", "max_tokens": 3}
    async with (aiohttp.ClientSession() as session,
                session.post(f"http://{router.http.address}/v1/completions", json=body,
                             headers={"traceparent": CLIENT_TRACEPARENT}) as response):
        assert response.status == 200, await response.text()
    await eventually(lambda: any(s.name == "router.generate" for s in router_spans.get_finished_spans()))
    await eventually(lambda: any(s.name == "expert.generate" for s in expert_spans.get_finished_spans()))
    routed, expert = by_name(router_spans), by_name(expert_spans)
    root = routed["router.generate"]
    assert f"{root.context.trace_id:032x}" == CLIENT_TRACE_ID and f"{root.parent.span_id:016x}" == CLIENT_SPAN_ID
    assert root.attributes["expert_router.door"] == "http" and root.attributes["url.path"] == "/v1/completions"
    assert routed["router.relay"].attributes["expert_router.frames"] == 3
    assert expert["expert.generate"].parent.span_id == root.context.span_id


async def test_a_refused_request_is_traced_with_its_status(traced) -> None:
    router, router_spans, _ = await traced({"general": True})
    async with grpc.aio.insecure_channel(router.address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await pb_grpc.RouterStub(channel).Generate(pb.GenerateRequest(prompt="hi", expert="nobody")).read()
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    await eventually(lambda: len(router_spans.get_finished_spans()) == 1)
    (root,) = router_spans.get_finished_spans()
    assert root.name == "router.generate" and not root.status.is_ok
    assert root.attributes["rpc.grpc.status_code"] == grpc.StatusCode.NOT_FOUND.value[0]


async def test_a_retried_replica_is_an_event_of_upstream_open(relay: str, fake_classifier) -> None:
    """A busy replica answers RESOURCE_EXHAUSTED before its first frame: the router retries on the
    other one, and the failed attempt shows as an event with the replica and its status."""
    from expert_svc import server as expert_server
    from expert_svc.config import ExpertConfig
    from router_svc import server as router_server
    from router_svc.config import RouterConfig, UpstreamExpert

    router_spans = InMemorySpanExporter()
    experts = [await expert_server.start(ExpertConfig(name="general", engine="synthetic", listen="127.0.0.1:0",
                                                      ttft_ms=5.0, tokens_per_second=500.0, max_concurrency=1))
               for _ in range(2)]
    busy = experts[0]
    router = None
    async with grpc.aio.insecure_channel(busy.address) as channel:
        # Holds the busy replica's only slot, past the router's back.
        hold = pb_grpc.ExpertStub(channel).Generate(pb.GenerateRequest(
            prompt="hold", sampling=pb.SamplingParams(max_tokens=2000)))
        try:
            await hold.read()
            cfg = RouterConfig(experts=(UpstreamExpert("general", tuple(e.address for e in experts)),),
                               relay=relay, listen="127.0.0.1:0")
            router = await router_server.start(cfg, classifier=fake_classifier, span_exporter=router_spans)
            # Ties rotate, so of two calls in a row at least one tries the busy replica first.
            for _ in range(2):
                assert len(await generate(router.address, "hello")) == 3
            await eventually(lambda: sum(s.name == "router.generate" for s in router_spans.get_finished_spans()) == 2)
        finally:
            hold.cancel()
            if router is not None:
                await router.stop(0)
            for expert in experts:
                await expert.stop(0)
    opened = [s for s in router_spans.get_finished_spans() if s.name == "router.upstream_open"]
    retried = [s for s in opened if s.attributes["expert_router.attempts"] == 2]
    assert retried, [s.attributes for s in opened]
    for span in opened:
        assert len(span.events) == span.attributes["expert_router.attempts"] - 1
    for span in retried:
        (event,) = span.events
        assert event.name == "attempt_failed"
        assert event.attributes["expert_router.replica"] == busy.address
        assert event.attributes["rpc.grpc.status_code"] == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
        assert span.attributes["expert_router.replica"] == experts[1].address


class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC trace collector that keeps what it receives (the service of opentelemetry-proto)."""

    def __init__(self) -> None:
        self.requests: list[trace_service_pb2.ExportTraceServiceRequest] = []

    async def Export(self, request, context):
        self.requests.append(request)
        return trace_service_pb2.ExportTraceServiceResponse()

    def span_names(self) -> dict[str, set[str]]:
        """service.name -> the names of its spans received so far."""
        names: dict[str, set[str]] = {}
        for request in self.requests:
            for resource_spans in request.resource_spans:
                service = next(a.value.string_value for a in resource_spans.resource.attributes
                               if a.key == "service.name")
                for scope in resource_spans.scope_spans:
                    names.setdefault(service, set()).update(span.name for span in scope.spans)
        return names


async def test_otlp_endpoint_exports_over_grpc(relay: str, fake_classifier) -> None:
    from expert_svc import server as expert_server
    from expert_svc.config import ExpertConfig
    from router_svc import server as router_server
    from router_svc.config import RouterConfig, UpstreamExpert

    collector = Collector()
    server = grpc.aio.server()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    endpoint = f"127.0.0.1:{port}"
    expert = router = None
    try:
        expert = await expert_server.start(ExpertConfig(name="general", engine="synthetic", listen="127.0.0.1:0",
                                                        ttft_ms=5.0, tokens_per_second=500.0,
                                                        otlp_endpoint=endpoint))
        cfg = RouterConfig(experts=(UpstreamExpert("general", (expert.address,)),), relay=relay,
                           listen="127.0.0.1:0", otlp_endpoint=f"http://{endpoint}")
        router = await router_server.start(cfg, classifier=fake_classifier)
        assert len(await generate(router.address, "hello there")) == 3
        await eventually(lambda: router.state.active == 0)
    finally:
        if router is not None:
            await router.stop(0)  # flushes the batch of spans still waiting
        if expert is not None:
            await expert.stop(0)
        names = collector.span_names()
        await server.stop(0)
    assert names == {"expert-router": ROUTER_SPANS,
                     "expert-general": EXPERT_SPANS}


@pytest.mark.slow  # a fresh interpreter imports both services
def test_without_an_endpoint_opentelemetry_is_never_imported() -> None:
    """Tracing off costs nothing: a router and an expert serve a request, and no OpenTelemetry
    module was loaded, no tracer provider made."""
    script = textwrap.dedent("""
        import asyncio, sys
        import grpc
        import numpy as np
        from expert_router.v1 import expert_router_pb2 as pb, expert_router_pb2_grpc as pb_grpc
        from expert_svc import server as expert_server
        from expert_svc.config import ExpertConfig
        from router_svc import server as router_server
        from router_svc.config import RouterConfig, UpstreamExpert

        class OneExpert:
            labels = ("general",)
            version = "one"
            def predict_batch(self, texts):
                return np.ones((len(texts), 1), dtype=np.float32)

        async def main():
            expert = await expert_server.start(ExpertConfig(name="general", engine="synthetic",
                                                            listen="127.0.0.1:0", ttft_ms=1.0))
            cfg = RouterConfig(experts=(UpstreamExpert("general", (expert.address,)),), listen="127.0.0.1:0")
            router = await router_server.start(cfg, classifier=OneExpert())
            async with grpc.aio.insecure_channel(router.address) as channel:
                call = pb_grpc.RouterStub(channel).Generate(pb.GenerateRequest(
                    prompt="hi", sampling=pb.SamplingParams(max_tokens=2)))
                frames = [frame async for frame in call]
            assert len(frames) == 2, frames
            assert router.tracing is None and router.servicer.dispatcher.tracing is None
            assert expert.tracing is None
            await router.stop(0)
            await expert.stop(0)
            loaded = sorted(name for name in sys.modules if name.startswith("opentelemetry"))
            print("loaded:", loaded)
            assert not loaded

        asyncio.run(main())
    """)
    result = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "loaded: []" in result.stdout
