"""The router's errors, on the shared base (`service_base.errors`) whose table gives each its gRPC status.

Bad input is INVALID_ARGUMENT, an unknown expert NOT_FOUND, an expert nobody can reach UNAVAILABLE,
the router over its admission bounds RESOURCE_EXHAUSTED (with a ``retry-after-ms`` hint);
an expert's own error keeps the expert's status and details, so that a client can tell a broken worker
from a bad request. Anything else is a bug: INTERNAL, with the traceback logged.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import NoReturn

import grpc

from service_base.errors import InvalidRequestError, ServiceError
from service_base.errors import status_for as _status_for

log = logging.getLogger("router_svc")

# Trailing metadata of RESOURCE_EXHAUSTED answers: how long to wait before retrying.
RETRY_AFTER_KEY = "retry-after-ms"


class RouterError(ServiceError):
    """A failure only the router raises; ``str(exc)`` is the status details."""


# Bad input is the one error class both services share: the request rules raise it directly.
InvalidRequest = InvalidRequestError


class UnknownExpert(RouterError):
    """The request names an expert the router does not have."""

    code = grpc.StatusCode.NOT_FOUND

    def __init__(self, name: str, known: Sequence[str]) -> None:
        super().__init__(f"unknown expert {name!r}; known experts: {', '.join(known)}")
        self.name = name


class ExpertUnavailable(RouterError):
    """No replica of the expert could take the request."""

    code = grpc.StatusCode.UNAVAILABLE

    def __init__(self, name: str, addresses: Sequence[str], reason: str) -> None:
        super().__init__(f"expert {name!r} is unavailable at {', '.join(addresses)}: {reason}")
        self.name = name


class Overloaded(RouterError):
    """Admission control refused the request; the trailing metadata says when to retry."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED

    def __init__(self, details: str, *, retry_after_ms: int, reason: str) -> None:
        super().__init__(details)
        self.reason = reason
        self.trailing_metadata = ((RETRY_AFTER_KEY, str(retry_after_ms)),)


class UpstreamError(RouterError):
    """The expert answered with an error status: relayed as is (status, details, trailing metadata)."""

    def __init__(self, code: grpc.StatusCode, details: str, trailing_metadata: Sequence = ()) -> None:
        super().__init__(details)
        self.code = code
        self.trailing_metadata = tuple(trailing_metadata or ())


class Rejected(RouterError):
    """Token authentication refused the call (router_svc.auth): its status, details and trailers."""

    def __init__(self, rejection) -> None:
        super().__init__(rejection.details)
        self.code = rejection.code
        self.trailing_metadata = tuple(rejection.trailing_metadata)


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status and details a client sees for ``exc``."""
    return _status_for(exc, service="the router")


async def abort_with(context: grpc.aio.ServicerContext, exc: BaseException) -> NoReturn:
    """Ends the rpc with the status ``exc`` maps to (never returns)."""
    code, details = status_for(exc)
    if not isinstance(exc, ServiceError):
        log.error("internal error in %s", type(exc).__name__, exc_info=exc)
    trailing = tuple(getattr(exc, "trailing_metadata", None) or ())
    await context.abort(code, details, trailing_metadata=trailing)
    raise AssertionError("context.abort returned")  # pragma: no cover
