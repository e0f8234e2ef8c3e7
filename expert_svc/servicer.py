"""The Expert gRPC servicer: converts messages, admits requests, maps errors. No model logic."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable

import grpc
from google.protobuf.message import DecodeError, Message

from expert_router.v1 import expert_router_pb2 as pb
from expert_router.v1 import expert_router_pb2_grpc as pb_grpc

from .convert import RequestLimits, delta_to_pb, info_to_pb, request_from_pb
from .engines.base import Engine
from .errors import EngineUnavailableError, InvalidRequestError, OverloadedError, status_for
from .streaming import coalesce

log = logging.getLogger(__name__)


class UndecodableRequest:
    """What the handler receives when the request bytes are not the message the rpc takes.

    gRPC's own handling of a deserializer error is an UNKNOWN status naming a Python exception
    class; a bad body is the caller's fault, so the handler turns this into INVALID_ARGUMENT.
    """

    __slots__ = ("message_type", "reason", "size")

    def __init__(self, message_type: str, size: int, reason: str) -> None:
        self.message_type = message_type
        self.size = size
        self.reason = reason

    def error(self) -> InvalidRequestError:
        return InvalidRequestError(
            f"the request body ({self.size} bytes) is not a valid {self.message_type} message "
            f"({self.reason}); send a serialized {self.message_type}"
        )


def tolerant_parser(message_class: type[Message]) -> Callable[[bytes], Message | UndecodableRequest]:
    """A request deserializer that never raises: bad bytes become an UndecodableRequest."""
    full_name = message_class.DESCRIPTOR.full_name

    def parse(data: bytes) -> Message | UndecodableRequest:
        try:
            return message_class.FromString(data)
        except DecodeError as exc:
            return UndecodableRequest(full_name, len(data), str(exc).rsplit(": ", 1)[-1] or "corrupt")

    return parse


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
    ) -> None:
        self._name = name
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
        if isinstance(request, UndecodableRequest):
            await context.abort(*status_for(request.error(), expert=self._name))
        request_id = request.request_id
        try:
            if not self._engine.ready:
                # Before the limits of a model still loading are known.
                self._admit()
            engine_request = request_from_pb(request, self.limits)
            request_id = engine_request.request_id
            self._admit()
        except Exception as exc:  # noqa: BLE001 - every error is mapped by the error table
            await context.abort(*status_for(exc, expert=self._name, request_id=request_id))
        self._active += 1
        error: Exception | None = None
        try:
            # aclosing: if this handler is cancelled while it waits to send a frame, the engine's
            # generator is still closed, which aborts the request inside the engine.
            interval = 1 if self._engine.coalesces_frames else self._stream_interval
            async with (
                contextlib.aclosing(self._engine.generate(engine_request)) as deltas,
                contextlib.aclosing(coalesce(deltas, interval)) as frames,
            ):
                async for delta in frames:
                    yield delta_to_pb(delta)
        except Exception as exc:  # noqa: BLE001 - mapped below; CancelledError is not an Exception
            error = exc
        finally:
            self._active -= 1
        if error is not None:
            await context.abort(*status_for(error, expert=self._name, request_id=request_id))

    async def GetInfo(self, request: pb.GetInfoRequest, context: grpc.aio.ServicerContext) -> pb.ExpertInfo:
        if isinstance(request, UndecodableRequest):
            await context.abort(*status_for(request.error(), expert=self._name))
        return info_to_pb(self._name, self._engine.info())
