"""The expert's error table: domain exceptions and the gRPC status each one maps to.

Applied once, at the servicer edge, so a router can tell bad input (the caller's fault) from
overload (try another replica) and from a broken worker (INTERNAL, with a logged traceback).
"""

from __future__ import annotations

import logging

import grpc

log = logging.getLogger(__name__)


class ExpertError(Exception):
    """Base of the errors the expert reports with a specific gRPC status."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL


class InvalidRequestError(ExpertError, ValueError):
    """The request cannot be served as sent; the message says which field and why."""

    code = grpc.StatusCode.INVALID_ARGUMENT


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

    Unexpected exceptions are bugs: they are logged with their traceback and reported as INTERNAL
    without leaking internals to the caller.
    """
    if isinstance(exc, ExpertError):
        return exc.code, str(exc)
    log.error("unexpected error in expert %s (request %s)", expert, request_id or "-", exc_info=exc)
    where = f" (request {request_id})" if request_id else ""
    return (
        grpc.StatusCode.INTERNAL,
        f"internal error in expert {expert!r}{where}: {type(exc).__name__}; see the expert's log",
    )
