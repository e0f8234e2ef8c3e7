"""The expert's errors, on the shared base (`service_base.errors`) whose table maps them to gRPC statuses.

Applied once, at the servicer edge, so a router can tell bad input (the caller's fault) from
overload (try another replica) and from a broken worker (INTERNAL, with a logged traceback).
"""

from __future__ import annotations

import logging

import grpc

from service_base.errors import InvalidRequestError, ServiceError
from service_base.errors import status_for as _status_for

__all__ = [
    "EngineFailedError", "EngineStartupError", "EngineUnavailableError", "ExpertError", "InvalidRequestError",
    "OverloadedError", "status_for",
]

log = logging.getLogger(__name__)


class ExpertError(ServiceError):
    """Base of the errors only the expert raises (bad input is the shared InvalidRequestError)."""


class OverloadedError(ExpertError):
    """Every generation slot is busy; the caller may retry elsewhere or later."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class EngineUnavailableError(ExpertError):
    """The engine is not loaded yet, is shutting down, or has stopped."""

    code = grpc.StatusCode.UNAVAILABLE


class EngineFailedError(ExpertError):
    """The engine reported a failure that is not the caller's fault."""

    code = grpc.StatusCode.INTERNAL


class EngineStartupError(RuntimeError):
    """The engine cannot start on this machine; the message says what is missing and how to get it."""


def status_for(exc: BaseException, *, expert: str, request_id: str = "") -> tuple[grpc.StatusCode, str]:
    """The status code and details to send for an exception raised while serving a request.

    Unexpected exceptions are bugs: they are logged here with their traceback and reported as
    INTERNAL without leaking internals to the caller.
    """
    if not isinstance(exc, ServiceError):
        log.error("unexpected error in expert %s (request %s)", expert, request_id or "-", exc_info=exc)
    return _status_for(exc, service=f"expert {expert!r}", request_id=request_id)
