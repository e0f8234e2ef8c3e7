"""The Expert gRPC servicer: converts messages, admits requests, maps errors. No model logic."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

import grpc

from expert_router.v1 import expert_router_pb2 as pb
from expert_router.v1 import expert_router_pb2_grpc as pb_grpc

from .convert import RequestLimits, delta_to_pb, info_to_pb, request_from_pb
from .engines.base import Engine
from .errors import EngineUnavailableError, OverloadedError, status_for

log = logging.getLogger(__name__)


class ExpertServicer(pb_grpc.ExpertServicer):
    """Serves `expert_router.v1.Expert` for one engine."""

    def __init__(self, name: str, engine: Engine, limits: RequestLimits, max_concurrency: int) -> None:
        self._name = name
        self._engine = engine
        self.limits = limits
        self._max_concurrency = max_concurrency
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
        if self._active >= self._max_concurrency:
            raise OverloadedError(
                f"expert {self._name!r} is busy: all {self._max_concurrency} generation slots are in use; "
                f"retry later or on another replica"
            )

    async def Generate(
        self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.GenerateResponse]:
        request_id = request.request_id
        try:
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
            async with contextlib.aclosing(self._engine.generate(engine_request)) as deltas:
                async for delta in deltas:
                    yield delta_to_pb(delta)
        except Exception as exc:  # noqa: BLE001 - mapped below; CancelledError is not an Exception
            error = exc
        finally:
            self._active -= 1
        if error is not None:
            await context.abort(*status_for(error, expert=self._name, request_id=request_id))

    async def GetInfo(self, request: pb.GetInfoRequest, context: grpc.aio.ServicerContext) -> pb.ExpertInfo:
        return info_to_pb(self._name, self._engine.info())
