"""The Expert gRPC servicer: converts messages, admits requests, maps errors. No model logic.

A request is known by one id (the ``x-request-id`` metadata the router sets, else the body's
request_id, else a new one), which its log line, its errors and the engine's abort records carry.

With tracing on (``--otlp-endpoint``), each Generate becomes an ``expert.generate`` span, child of
the caller's W3C ``traceparent`` metadata (the router's span), with three stages as child spans:
``expert.queue`` (receipt until the engine takes the request: validation and admission),
``expert.first_token`` (until the first frame: the engine's own queue and the prompt's prefill)
and ``expert.generation`` (first frame to the end, with frames and completion tokens). They are
built from timestamps once the stream has ended; with tracing off nothing of this runs.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator

import grpc

from expert_router.v1 import expert_router_pb2 as pb
from expert_router.v1 import expert_router_pb2_grpc as pb_grpc
from service_base.logs import log_request
from service_base.parsing import UndecodableRequest, tolerant_parser
from service_base.rules import REQUEST_ID_KEY, resolve_request_id
from service_base.tracing import Tracing

from .convert import RequestLimits, delta_to_pb, info_to_pb, request_from_pb
from .engines.base import Engine
from .errors import EngineUnavailableError, OverloadedError, status_for
from .streaming import coalesce

log = logging.getLogger(__name__)
# One line per finished Generate, joinable with the router's on request_id.
request_log = logging.getLogger("expert_svc.requests")


def add_expert_servicer(servicer: ExpertServicer, server: grpc.aio.Server) -> None:
    """Register the Expert service like the generated `add_ExpertServicer_to_server`, but with
    request parsers that let the handler answer INVALID_ARGUMENT to undecodable bytes."""
    handlers = {
        "Generate": grpc.unary_stream_rpc_method_handler(
            servicer.Generate,
            request_deserializer=tolerant_parser(pb.GenerateRequest),
            response_serializer=pb.GenerateResponse.SerializeToString,
        ),
        "GetInfo": grpc.unary_unary_rpc_method_handler(
            servicer.GetInfo,
            request_deserializer=tolerant_parser(pb.GetInfoRequest),
            response_serializer=pb.ExpertInfo.SerializeToString,
        ),
    }
    service = pb.DESCRIPTOR.services_by_name["Expert"].full_name
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, handlers),))
    server.add_registered_method_handlers(service, handlers)


async def _abort(context: grpc.aio.ServicerContext, code: grpc.StatusCode, details: str, request_id: str) -> None:
    """Ends the call (abort raises); the request id travels in the trailing metadata, so a caller
    can quote it whatever the error."""
    await context.abort(code, details, trailing_metadata=((REQUEST_ID_KEY, request_id),) if request_id else ())


class ExpertServicer(pb_grpc.ExpertServicer):
    """Serves `expert_router.v1.Expert` for one engine."""

    def __init__(
        self,
        name: str,
        engine: Engine,
        limits: RequestLimits,
        max_concurrency: int | None,
        *,
        stream_interval: int = 1,
        tracing: Tracing | None = None,
    ) -> None:
        self._name = name
        self._tracing = tracing
        self._engine = engine
        self.limits = limits
        # None until the engine has loaded and stated its own limit (trtllm: its max batch size).
        self.max_concurrency = max_concurrency
        self._stream_interval = stream_interval
        self._active = 0

    @property
    def active(self) -> int:
        """Requests being generated now."""
        return self._active

    def _admit(self) -> None:
        if not self._engine.ready:
            raise EngineUnavailableError(
                f"expert {self._name!r} is not ready (model loading or shutting down)"
            )
        limit = self.max_concurrency if self.max_concurrency is not None else self._engine.info().max_concurrency
        if self._active >= limit:
            raise OverloadedError(
                f"expert {self._name!r} is busy: all {limit} generation slots are in use; "
                f"retry later or on another replica"
            )

    async def Generate(
        self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.GenerateResponse]:
        received = time.perf_counter()
        admitted = first_frame = 0.0  # when the engine took the request, when its first frame came
        request_id = ""
        status = grpc.StatusCode.CANCELLED  # unless the stream ends another way below
        frames = 0
        completion_tokens = None
        try:
            if isinstance(request, UndecodableRequest):
                status, details = status_for(request.error(), expert=self._name)
                await context.abort(status, details)
            try:
                request_id = resolve_request_id(context.invocation_metadata(), request.request_id)
                if not self._engine.ready:
                    # Before the limits of a model still loading are known.
                    self._admit()
                engine_request = request_from_pb(request, self.limits, request_id)
                self._admit()
            except Exception as exc:  # noqa: BLE001 - every error is mapped by the error table
                status, details = status_for(exc, expert=self._name, request_id=request_id)
                await _abort(context, status, details, request_id)
            self._active += 1
            admitted = time.perf_counter()
            error: Exception | None = None
            try:
                # aclosing: if this handler is cancelled while it waits to send a frame, the engine's
                # generator is still closed, which aborts the request inside the engine.
                interval = 1 if self._engine.coalesces_frames else self._stream_interval
                async with (
                    contextlib.aclosing(self._engine.generate(engine_request)) as deltas,
                    contextlib.aclosing(coalesce(deltas, interval)) as frames_out,
                ):
                    async for delta in frames_out:
                        if not frames:
                            first_frame = time.perf_counter()
                        frames += 1
                        if delta.finish_reason is not None:
                            completion_tokens = delta.completion_tokens
                        yield delta_to_pb(delta)
            except Exception as exc:  # noqa: BLE001 - mapped below; CancelledError is not an Exception
                error = exc
            finally:
                self._active -= 1
            if error is not None:
                status, details = status_for(error, expert=self._name, request_id=request_id)
                await _abort(context, status, details, request_id)
            status = grpc.StatusCode.OK
        finally:
            if self._tracing is not None:
                self._trace(context, request_id, status, received, admitted, first_frame, frames, completion_tokens)
            if request_log.isEnabledFor(logging.INFO):
                log_request(request_log, {
                    "request_id": request_id, "expert": self._name, "status": status.name, "frames": frames,
                    "completion_tokens": completion_tokens,
                    "duration_ms": round(1000 * (time.perf_counter() - received), 3),
                })

    def _trace(self, context: grpc.aio.ServicerContext, request_id: str, status: grpc.StatusCode, received: float,
               admitted: float, first_frame: float, frames: int, completion_tokens: int | None) -> None:
        """The request's spans, from its timestamps (tracing on only)."""
        tracing = self._tracing
        offset = tracing.clock()
        ended = time.perf_counter()
        error = None if status is grpc.StatusCode.OK else status.name
        root = tracing.start_server_span("expert.generate", received, context.invocation_metadata() or ())
        if admitted:
            tracing.span(root, "expert.queue", received, admitted, offset)
            tracing.span(root, "expert.first_token", admitted, first_frame or ended, offset,
                         error=None if first_frame else error)
        if first_frame:
            attributes = {"expert_router.frames": frames}
            if completion_tokens is not None:
                attributes["expert_router.completion_tokens"] = completion_tokens
            tracing.span(root, "expert.generation", first_frame, ended, offset, attributes, error=error)
        attributes = {"expert_router.request_id": request_id, "expert_router.expert": self._name,
                      "rpc.grpc.status_code": status.value[0], "expert_router.frames": frames}
        if first_frame:
            attributes["expert_router.ttft_ms"] = round(1000 * (first_frame - received), 3)
        tracing.finish(root, ended, offset, attributes, error=error)

    async def GetInfo(self, request: pb.GetInfoRequest, context: grpc.aio.ServicerContext) -> pb.ExpertInfo:
        if isinstance(request, UndecodableRequest):
            await context.abort(*status_for(request.error(), expert=self._name))
        return info_to_pb(self._name, self._engine.info())
