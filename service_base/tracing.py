"""OpenTelemetry traces for both services, paid for only when they are switched on.

Off (no ``--otlp-endpoint``, the default), ``start_tracing`` returns None and imports nothing
from OpenTelemetry; a service holding ``tracing = None`` pays one ``is None`` test per request and
allocates nothing for tracing.

On, spans are built from timestamps the services take anyway (``time.perf_counter()`` at a bounded
number of points per request) with explicit start and end times, once the request is over. So
there is nothing per frame, and a stream relayed by the native relay, whose frames Python never
sees, gets its span from the counters the relay hands over. Only the router's outermost span is
started while the request is still running, because its context has to travel to the expert as
W3C ``traceparent`` metadata (``headers``) before the expert is called.

Each service owns its TracerProvider instead of setting OpenTelemetry's global one: a router and
experts in one process (the tests, the local stack) keep their own ``service.name``, and a library
that installs a global provider cannot take our spans. Export is OTLP over gRPC through a
BatchSpanProcessor (a background thread encodes and sends spans in batches); tests hand in the
SDK's InMemorySpanExporter instead.
"""
from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = ["TRACE_KEYS", "Tracing", "check_endpoint", "start_tracing"]

# W3C trace context: the metadata keys (gRPC) and headers (HTTP) that carry it.
TRACE_KEYS = ("traceparent", "tracestate")
INSTRUMENTATION = "expert_router"

Attributes = Mapping[str, Any]
# (perf_counter time, event name, attributes)
Event = tuple[float, str, Attributes]


def _ns(seconds: float) -> int:
    """perf_counter seconds as nanoseconds, rounded: truncating lost a nanosecond whenever the float
    product fell just below the integer, so a 1 ms gap read 999,999 or 1,000,001 ns."""
    return round(seconds * 1e9)


class Tracing:
    """One service's tracer: spans from perf_counter timestamps, and W3C propagation."""

    def __init__(self, service_name: str, exporter: Any, *, batch: bool) -> None:
        from opentelemetry import trace
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self.service_name = service_name
        self.exporter = exporter
        self.provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
        processor = BatchSpanProcessor(exporter) if batch else SimpleSpanProcessor(exporter)
        self.provider.add_span_processor(processor)
        self._tracer = self.provider.get_tracer(INSTRUMENTATION)
        self._propagator = TraceContextTextMapPropagator()
        self._in_context = trace.set_span_in_context
        self._server = trace.SpanKind.SERVER
        self._internal = trace.SpanKind.INTERNAL
        self._status = trace.Status
        self._error = trace.StatusCode.ERROR

    @staticmethod
    def clock() -> int:
        """The offset from ``perf_counter`` nanoseconds to wall-clock (epoch) nanoseconds, now.

        Taken once per request: the two clocks drift apart over hours, not over one request.
        """
        return time.time_ns() - time.perf_counter_ns()

    def start_server_span(self, name: str, start: float, carrier: Iterable[tuple[str, Any]] = (),
                          attributes: Attributes | None = None) -> Any:
        """A live SERVER span that began at ``start`` (perf_counter), child of the caller's trace
        context in ``carrier`` (metadata or header pairs) when there is one."""
        parent = self.extract(carrier)
        return self._tracer.start_span(name, context=parent, kind=self._server, attributes=attributes,
                                       start_time=_ns(start) + self.clock())

    def extract(self, carrier: Iterable[tuple[str, Any]]) -> Any:
        """The trace context in W3C ``traceparent``/``tracestate`` pairs (None when absent)."""
        found = {key: value for key, value in carrier if key in TRACE_KEYS}
        if "traceparent" not in found:
            return None
        return self._propagator.extract(found)

    def headers(self, span: Any) -> list[tuple[str, str]]:
        """``traceparent`` (and ``tracestate``) naming ``span`` as the parent of what is called next."""
        carrier: dict[str, str] = {}
        self._propagator.inject(carrier, context=self._in_context(span))
        return list(carrier.items())

    def span(self, parent: Any, name: str, start: float, end: float, offset: int,
             attributes: Attributes | None = None, events: Sequence[Event] = (), error: str | None = None,
             server: bool = False) -> Any:
        """Records a finished span from perf_counter times (``offset`` from ``clock()``)."""
        context = self._in_context(parent) if parent is not None else None
        span = self._tracer.start_span(name, context=context, kind=self._server if server else self._internal,
                                       attributes=attributes, start_time=_ns(start) + offset)
        self.finish(span, end, offset, events=events, error=error)
        return span

    def finish(self, span: Any, end: float, offset: int, attributes: Attributes | None = None,
               events: Sequence[Event] = (), error: str | None = None) -> None:
        """Ends a span at ``end`` (perf_counter), adding attributes, events and an error status."""
        if attributes:
            span.set_attributes(attributes)
        for at, event, event_attributes in events:
            span.add_event(event, event_attributes, timestamp=_ns(at) + offset)
        if error is not None:
            span.set_status(self._status(self._error, error))
        span.end(end_time=_ns(end) + offset)

    def shutdown(self) -> None:
        """Exports what is still buffered and stops the exporter (blocking: call it off the event loop)."""
        self.provider.shutdown()


def check_endpoint(key: str, value: Any) -> None:
    """``--otlp-endpoint``'s rule, one for both services: HOST:PORT or http(s)://HOST:PORT, port 1..65535.

    Raises ValueError naming ``key``; the services' own error types (the router's ConfigError) are
    ValueErrors too, so their callers report it like any other bad setting."""
    address = value if isinstance(value, str) else ""
    for scheme in ("http://", "https://"):
        if address.startswith(scheme):
            address = address[len(scheme):].rstrip("/")
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"{key}: expected HOST:PORT or http(s)://HOST:PORT with a port in 1..65535 "
                         f"(leave it out for no tracing), got {value!r}")


def start_tracing(service_name: str, endpoint: str | None = "", *, exporter: Any = None,
                  batch: bool | None = None) -> Tracing | None:
    """Tracing for one service: OTLP/gRPC to ``endpoint``, or to ``exporter`` (tests); None when off.

    ``endpoint`` is ``HOST:PORT`` (plaintext), ``http://HOST:PORT`` or ``https://HOST:PORT`` (TLS
    with the system's roots). ``batch``: export through a BatchSpanProcessor (default for OTLP) or
    synchronously as each span ends (default for a handed-in exporter, so tests see spans at once).
    """
    if exporter is None:
        if not endpoint:
            return None
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter(endpoint=endpoint, insecure=not endpoint.startswith("https://"))
        batch = True if batch is None else batch
    return Tracing(service_name, exporter, batch=bool(batch))
