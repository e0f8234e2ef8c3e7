"""Where a Generate request goes, and where it goes when something fails: one dispatcher for every door.

The router has three ways in to Generate: the gRPC port relayed by grpc.aio (``RouterServicer.Generate``),
the same port relayed by gRPC's C++ library (``RouterServicer.generate_native``) and the OpenAI HTTP
door (``router_svc.http_api``). They differ only at their edges: how a request arrives, how frames
move, how an error is written back. Between the edges every request takes the same steps, and
they are written here once:

1. ``begin``: the call counts against the current RouterState generation (a reload waits for it).
2. ``identify``: the request id and the metadata forwarded to the expert.
3. ``route``: refuse at once when the router is full (before any classifier work), classify (or
   take the expert the request named), then wait for a slot for that expert (admission).
4. ``open`` / ``open_stream``: the candidate experts in order (``ExpertChooser.candidates``: the
   chosen one, then the failover experts within the margin, then the fallback), moving the
   admission slot along; on each, the replicas in order (``UpstreamPool.try_replicas``: another
   replica on UNAVAILABLE or RESOURCE_EXHAUSTED before the first frame, up to ``max_attempts``).
   The first candidate that takes the request wins; if none does, the chosen expert's error.
5. ``failed`` / ``upstream_failed``: the status an error ends the call with (the error table).
6. ``end``: release the replica, the admission slot and the generation; then metrics, the
   request log line and (with ``--otlp-endpoint``) the call's spans, once, from its ``CallRecord``.

A door owns only its edges and the frames in between; it writes the counters (frames, bytes, time
to first token, inter-token gaps) into the record as it relays, or, for the native relay, copies
the counters the relay hands over once at the end.

Traces (service_base.tracing): ``identify`` starts the call's ``router.generate`` span, child of the
client's ``traceparent`` if it sent one, and forwards that span's context to the expert in place of
the client's, so the expert's spans join the same trace. The stages become child spans at ``end``,
built from the record's timestamps: ``router.classify``, ``router.admission`` (the wait for a
slot), ``router.upstream_open`` (every replica and candidate tried, failed attempts and failovers as
events) and ``router.relay`` (time to first token, frames and bytes as attributes). With tracing
off ``self.tracing`` is None and none of this runs.
"""
from __future__ import annotations

import functools
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc

from expert_router.v1 import expert_router_pb2 as pb
from router_svc.errors import ExpertUnavailable, UpstreamError, status_for
from router_svc.logging_setup import log_request, request_log
from router_svc.metrics import RouterMetrics
from router_svc.upstream import Replica, UpstreamFailure, first_frame, release_replica, upstream_error
from service_base.errors import ServiceError
from service_base.rules import REQUEST_ID_KEY
from service_base.tracing import TRACE_KEYS

if TYPE_CHECKING:
    from router_svc.admission import Admission, Permit
    from router_svc.servicer import Route, RouterState
    from service_base.tracing import Tracing

log = logging.getLogger("router_svc")

# One attempt on one replica (see UpstreamPool.try_replicas): an UpstreamFailure before the first
# frame, or whatever the door needs to go on.
Attempt = Callable[[Replica, "float | None"], Awaitable[Any]]
ROOT_SPAN = "router.generate"


def no_deadline() -> float | None:
    """``time_remaining`` for a door whose calls have no deadline (HTTP)."""
    return None


@dataclass(slots=True, eq=False)
class CallRecord:
    """What one Generate call did: filled in along the way, read once at its end.

    Times are ``time.perf_counter()`` seconds; 0.0 means the stage was not reached.
    """

    door: str  # "grpc" or "http"
    relay: str  # who moved the frames: "native", "python" (grpc.aio) or "http"
    state: RouterState
    received: float
    request_id: str = ""
    route: Route | None = None  # where the request went (after failover, the expert that took it)
    chosen: Route | None = None  # what the classifier or the request chose
    permit: Permit | None = None
    replica: Replica | None = None
    attempts: int = 0  # replicas tried on the expert that took the request
    call: Any = None  # the Python relays' upstream call, cancelled at the end
    relayed: bool = False  # an upstream stream was opened (counted in router_in_flight_streams)
    code: grpc.StatusCode | None = None
    ttft: float | None = None
    frames: int = 0
    bytes: int = 0
    gaps: Sequence[int] = ()
    gap_sum: float = 0.0
    classify_start: float = 0.0
    classify_end: float = 0.0
    admission_start: float = 0.0
    admission_end: float = 0.0
    open_start: float = 0.0
    relay_start: float = 0.0  # first frame in (Python relays), the winning attempt begun (native)
    ended: float = 0.0
    # Failed attempts and failovers, in order: (time, what, attributes); None until the first.
    events: list[tuple[float, str, dict[str, Any]]] | None = None
    message: pb.GenerateRequest | None = None
    # With --log-prompts: the output as frames (bytes) or texts (str).
    outputs: Sequence[bytes | str] | None = None
    path: str = ""  # the HTTP door's endpoint
    span: Any = None  # the live router.generate span, with tracing on

    @property
    def failover_from(self) -> str | None:
        return self.route.failover_from if self.route is not None else None

    def initial_metadata(self) -> tuple[tuple[str, str], ...]:
        """The response metadata: the route actually taken and the request id."""
        return (*self.route.metadata(), (REQUEST_ID_KEY, self.request_id))

    def note(self, what: str, **attributes: Any) -> None:
        if self.events is None:
            self.events = []
        self.events.append((time.perf_counter(), what, attributes))


class Dispatcher:
    """Admission, route, candidates and replicas with failover, outcome: the same for every door."""

    def __init__(self, admission: Admission, metrics: RouterMetrics, *, log_prompts: bool = False,
                 tracing: Tracing | None = None) -> None:
        self._admission = admission
        self._metrics = metrics
        self.log_prompts = log_prompts
        self.tracing = tracing

    def begin(self, door: str, relay: str, state: RouterState) -> CallRecord:
        """A new call on ``state`` (the generation it keeps until ``end``)."""
        state.active += 1
        return CallRecord(door, relay, state, time.perf_counter())

    def identify(self, record: CallRecord, request_id: str, metadata: Sequence[tuple[str, Any]]
                 ) -> list[tuple[str, Any]]:
        """Sets the request id; returns the metadata for the expert (trace context and the id)."""
        record.request_id = request_id
        if self.tracing is None:
            forwarded = [(key, value) for key, value in metadata if key in TRACE_KEYS]
        else:  # the expert's spans become children of this call's span
            record.span = self.tracing.start_server_span(ROOT_SPAN, record.received, metadata)
            forwarded = self.tracing.headers(record.span)
        forwarded.append((REQUEST_ID_KEY, request_id))
        return forwarded

    async def route(self, record: CallRecord, message: pb.GenerateRequest) -> None:
        """Refuses when full, routes ``message``, then takes an admission slot for its expert."""
        self._admission.refuse_if_full()
        record.classify_start = time.perf_counter()
        route = record.chosen = record.route = await record.state.chooser.route(message)
        record.admission_start = record.classify_end = time.perf_counter()
        record.permit = await self._admission.acquire(route.expert)
        record.admission_end = time.perf_counter()

    async def open(self, record: CallRecord, attempt_for: Callable[[Route], Attempt],
                   time_remaining: Callable[[], float | None]) -> Any:
        """The first candidate expert, and replica of it, whose attempt does not fail before its
        first frame; returns that attempt's result. Raises the chosen expert's ExpertUnavailable
        when none takes it, or UpstreamError for an expert's own refusal."""
        state = record.state
        chosen = record.route
        permit = record.permit
        record.open_start = time.perf_counter()
        first_error: ExpertUnavailable | None = None
        for candidate in state.chooser.candidates(chosen):
            if first_error is not None:
                if not permit.move(candidate.expert):
                    continue  # that expert is at its own bound
                self._metrics.failovers.labels(chosen.expert, candidate.expert).inc()
                record.note("failover", **{"expert_router.from": chosen.expert, "expert_router.to": candidate.expert})
            try:
                result, replica, attempts = await state.upstream.try_replicas(
                    candidate.expert, time_remaining(), self._watched(record, attempt_for(candidate)))
            except ExpertUnavailable as exc:
                first_error = first_error or exc
                continue
            record.route, record.replica, record.attempts = candidate, replica, attempts
            return result
        assert first_error is not None  # candidates() is never empty
        raise first_error

    @staticmethod
    def _watched(record: CallRecord, attempt: Attempt) -> Attempt:
        """``attempt``, noting the tries that failed."""

        async def watched(replica: Replica, remaining: float | None) -> Any:
            outcome = await attempt(replica, remaining)
            if isinstance(outcome, UpstreamFailure):
                record.note("attempt_failed", **{"expert_router.replica": replica.address,
                                                 "rpc.grpc.status_code": outcome.code.value[0]})
            return outcome

        return watched

    async def open_stream(self, record: CallRecord, request: bytes, time_remaining: Callable[[], float | None],
                          metadata: Sequence[tuple[str, Any]]) -> tuple[grpc.aio.UnaryStreamCall, Any]:
        """For the doors that relay in Python: an upstream call whose first frame is in, and that frame
        (``grpc.aio.EOF`` for a stream without frames)."""
        attempt = functools.partial(first_frame, request=request, metadata=metadata)
        call, first = await self.open(record, lambda _candidate: attempt, time_remaining)
        record.call = call
        record.relay_start = time.perf_counter()
        record.relayed = True
        self._metrics.expert(record.route.expert).in_flight.inc()
        return call, first

    def failed(self, record: CallRecord, exc: BaseException, code: grpc.StatusCode | None = None
               ) -> tuple[grpc.StatusCode, str, tuple]:
        """The status, details and trailing metadata the call ends with for ``exc`` (the error table).

        ``code``: the status a door decided itself (the HTTP door's own errors). Admission refusals
        are counted by reason; an exception outside the table is a bug and is logged with its traceback.
        """
        if code is None:
            code, details = status_for(exc)
            if not isinstance(exc, ServiceError):
                log.error("internal error in %s", type(exc).__name__, exc_info=exc)
        else:
            details = str(exc)
        record.code = code
        if code is grpc.StatusCode.RESOURCE_EXHAUSTED and hasattr(exc, "reason"):
            self._metrics.rejections.labels(exc.reason).inc()
        return code, details, tuple(getattr(exc, "trailing_metadata", None) or ())

    def upstream_failed(self, record: CallRecord, err: grpc.aio.AioRpcError) -> UpstreamError:
        """The expert failed mid-stream: its status, to pass through to the client unchanged."""
        record.code = err.code()
        self._metrics.upstream_error(record.route.expert, record.code)
        return upstream_error(err)

    def end(self, record: CallRecord) -> None:
        """Releases what the call held, then metrics and the log line; exactly once per call."""
        record.ended = time.perf_counter()
        code = record.code
        if code is None:  # the client cancelled or its deadline passed
            code = record.code = grpc.StatusCode.CANCELLED
        if record.call is not None:
            record.call.cancel()  # the client went away or the relay ended early: the expert stops
        if record.replica is not None:
            release_replica(record.replica, code)
        if record.permit is not None:
            record.permit.release()
        record.state.active -= 1
        route = record.route
        self._metrics.generate_done(route.expert if route else None, record.relayed, code, record.ttft,
                                    record.frames, record.gaps, record.gap_sum)
        if self.tracing is not None:
            self._trace(record)
        if request_log.isEnabledFor(logging.INFO):
            self._log(record)

    def _trace(self, record: CallRecord) -> None:
        """The call's spans, from the record's timestamps (tracing on only)."""
        tracing = self.tracing
        offset = tracing.clock()
        code = record.code
        error = None if code is grpc.StatusCode.OK else code.name
        root = record.span
        if root is None:  # refused before its request id was read
            root = tracing.start_server_span(ROOT_SPAN, record.received)
        route, chosen = record.route, record.chosen
        if record.classify_end and chosen.score is not None:
            attributes = {"expert_router.expert": chosen.expert, "expert_router.score": chosen.score,
                          "expert_router.source": chosen.source,
                          "expert_router.classifier_version": chosen.classifier_version}
            if chosen.cascade:  # the cascade model rescored the prompt (router_svc.cascade)
                attributes["expert_router.cascade"] = chosen.cascade
            tracing.span(root, "router.classify", record.classify_start, record.classify_end, offset, attributes)
        if record.admission_start:
            admitted = record.admission_end
            tracing.span(root, "router.admission", record.admission_start, admitted or record.ended, offset,
                         {"expert_router.expert": chosen.expert}, error=None if admitted else error)
        if record.open_start:
            attributes = {"expert_router.expert": route.expert, "expert_router.attempts": record.attempts}
            if record.replica is not None:
                attributes["expert_router.replica"] = record.replica.address
            if route.failover_from:
                attributes["expert_router.failover_from"] = route.failover_from
            tracing.span(root, "router.upstream_open", record.open_start,
                         record.relay_start if record.relayed else record.ended, offset, attributes,
                         record.events or (), error=None if record.relayed else error)
        if record.relayed:
            attributes = {"expert_router.relay": record.relay, "expert_router.frames": record.frames,
                          "expert_router.bytes": record.bytes}
            if record.ttft is not None:
                attributes["expert_router.ttft_ms"] = round(1000 * record.ttft, 3)
            tracing.span(root, "router.relay", record.relay_start, record.ended, offset, attributes, error=error)
        attributes = {"expert_router.request_id": record.request_id, "expert_router.door": record.door,
                      "expert_router.relay": record.relay, "rpc.grpc.status_code": code.value[0],
                      "expert_router.frames": record.frames}
        if record.path:
            attributes["url.path"] = record.path
        if route is not None:
            attributes["expert_router.expert"] = route.expert
            attributes["expert_router.source"] = route.source
        tracing.finish(root, record.ended, offset, attributes, error=error)

    def _log(self, record: CallRecord) -> None:
        """The request's log line; only built when it is emitted (INFO)."""
        route = record.route
        fields = {"request_id": record.request_id, "door": record.door}
        if record.path:
            fields["path"] = record.path
        fields.update({
            "expert": route.expert if route else "", "source": route.source if route else "",
            "replica": record.replica.address if record.replica is not None else "",
            "attempts": record.attempts, "status": record.code.name,
            "ttft_ms": round(1000 * record.ttft, 3) if record.ttft is not None else None,
            "frames": record.frames, "duration_ms": round(1000 * (record.ended - record.received), 3),
        })
        message = record.message
        if self.log_prompts and message is not None:
            fields["prompt"] = message.prompt or [[m.role, m.content] for m in message.messages]
            fields["output"] = "".join(item if isinstance(item, str) else pb.GenerateResponse.FromString(item).text
                                       for item in record.outputs or ())
        log_request(fields)
