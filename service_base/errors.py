"""The error base both services raise and the one table that turns an exception into a gRPC status.

Each error class carries its status code, so the table is a lookup rather than a chain of
`isinstance` tests, and a caller can tell bad input (INVALID_ARGUMENT, its own fault) from overload
(RESOURCE_EXHAUSTED: retry elsewhere), a dependency that is down (UNAVAILABLE) and a bug (INTERNAL,
whose traceback stays in the service's log instead of reaching the caller).
"""
from __future__ import annotations

from collections.abc import Sequence

import grpc

__all__ = ["InvalidRequestError", "ServiceError", "status_for"]


class ServiceError(Exception):
    """A failure with a definite gRPC status; ``str(exc)`` is the status details.

    ``trailing_metadata`` goes out with the status (for example a ``retry-after-ms`` hint).
    """

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    trailing_metadata: Sequence[tuple[str, str]] = ()


class InvalidRequestError(ServiceError, ValueError):
    """The request cannot be served as sent; the message says which field and why."""

    code = grpc.StatusCode.INVALID_ARGUMENT


def status_for(exc: BaseException, *, service: str, request_id: str = "") -> tuple[grpc.StatusCode, str]:
    """The status code and details a caller sees for ``exc``, raised while ``service`` served a request.

    Anything that is not a ServiceError is a bug: INTERNAL, naming only the exception's type (the
    caller learns where to look, never the internals). Logging its traceback is the caller's job,
    once, where the request's context is known.
    """
    if isinstance(exc, ServiceError):
        return exc.code, str(exc)
    where = f" (request {request_id})" if request_id else ""
    return grpc.StatusCode.INTERNAL, f"internal error in {service}{where}: {type(exc).__name__}; see that service's log"
