"""service_base.tracing: off means None, spans from perf_counter times, W3C context in and out."""
from __future__ import annotations

import time

from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from service_base.tracing import start_tracing

PARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_no_endpoint_and_no_exporter_is_off() -> None:
    assert start_tracing("svc", "") is None


def test_spans_take_their_times_from_perf_counter_and_their_parent_from_traceparent() -> None:
    exporter = InMemorySpanExporter()
    tracing = start_tracing("svc", exporter=exporter)
    started = time.perf_counter()
    root = tracing.start_server_span("root", started, [("traceparent", PARENT), ("x-request-id", "r1")])
    offset = tracing.clock()
    tracing.span(root, "stage", started + 0.001, started + 0.003, offset, {"k": 1},
                 events=[(started + 0.002, "retry", {"why": "busy"})], error="UNAVAILABLE")
    tracing.finish(root, started + 0.004, offset, {"done": True})
    stage, finished_root = exporter.get_finished_spans()
    assert f"{finished_root.context.trace_id:032x}" == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert f"{finished_root.parent.span_id:016x}" == "00f067aa0ba902b7"
    assert stage.parent.span_id == finished_root.context.span_id
    assert stage.end_time - stage.start_time == 2_000_000  # 2 ms, to the nanosecond rounding
    assert abs(finished_root.start_time - time.time_ns()) < 5e9  # wall-clock nanoseconds, not perf_counter's
    assert stage.attributes["k"] == 1 and not stage.status.is_ok
    assert [(event.name, event.timestamp - stage.start_time) for event in stage.events] == [("retry", 1_000_000)]
    assert finished_root.attributes["done"] is True
    assert finished_root.resource.attributes["service.name"] == "svc"
    tracing.shutdown()


def test_headers_carry_the_span_as_the_next_parent() -> None:
    tracing = start_tracing("svc", exporter=InMemorySpanExporter())
    root = tracing.start_server_span("root", time.perf_counter())  # no traceparent: a new trace
    assert root.parent is None
    headers = dict(tracing.headers(root))
    version, trace_id, span_id, flags = headers["traceparent"].split("-")
    assert version == "00" and int(flags, 16) & 1  # sampled (newer SDKs also set the random-trace-id bit)
    assert (trace_id, span_id) == (f"{root.context.trace_id:032x}", f"{root.context.span_id:016x}")
    assert tracing.extract(headers.items()) is not None and tracing.extract([("x-other", "1")]) is None
