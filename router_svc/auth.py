"""Bearer-token authentication and per-token rate limits for the router (``--auth-tokens FILE``).

Clients send ``authorization: Bearer <token>`` metadata. A grpc.aio server interceptor checks it
before any handler runs, and before the request body is parsed:

- no ``authorization`` metadata, or one that is not ``Bearer <token>``: UNAUTHENTICATED, with a
  message that says what to send;
- a token the file does not list: UNAUTHENTICATED (the caller is not known);
- a known token calling an rpc it is not allowed (``rpcs``): PERMISSION_DENIED;
- a known token over its rate (a token bucket: ``rate`` per second, ``burst`` at once):
  RESOURCE_EXHAUSTED with a ``retry-after-ms`` trailing metadata, like admission control.

Health and reflection stay open so that probes and ``grpcurl list`` work without a token.

Tokens are compared by their SHA-256 digest: the presented token is hashed and the digest looked up,
then compared with ``hmac.compare_digest``. What a timing side channel could reveal is where the
digest of a guess differs from a stored digest, which says nothing usable about the token itself
(finding a preimage is what SHA-256 prevents). The file may hold ``token_sha256`` instead of
``token``, so that it need not contain the secrets at all. Tokens are never logged: log lines and
error messages carry the token's ``name``.
"""
from __future__ import annotations

import hashlib
import hmac
import math
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc

from expert_router.v1 import expert_router_pb2 as pb
from router_svc.config import ConfigError
from router_svc.errors import RETRY_AFTER_KEY

AUTHORIZATION_KEY = "authorization"
ROUTER_SERVICE = pb.DESCRIPTOR.services_by_name["Router"].full_name
ROUTER_RPCS = ("Generate", "Classify", "ListExperts")
# Services reachable without a token: health probes and reflection (grpcurl list/describe).
OPEN_SERVICE_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.v1alpha.ServerReflection/",
                         "/grpc.reflection.v1.ServerReflection/")
MIN_TOKEN_CHARS = 16
_TOKEN_KEYS = ("name", "token", "token_sha256", "rate", "burst", "rpcs")

SEND_A_TOKEN = "send the metadata 'authorization: Bearer <token>' with a token from the router's token file"


@dataclass(frozen=True)
class TokenEntry:
    """One token from the file: who it is, what it may call, how fast."""

    name: str
    digest: bytes = field(repr=False)
    rpcs: frozenset[str] = frozenset(ROUTER_RPCS)
    rate: float | None = None  # requests per second; None: no limit
    burst: int = 0

    @property
    def limit(self) -> tuple[float, int] | None:
        return None if self.rate is None else (self.rate, self.burst)


class TokenBucket:
    """``rate`` tokens per second up to ``burst``; ``take()`` returns 0 or the seconds until one is free."""

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = float(burst)
        self._updated = now

    def take(self, now: float) -> float:
        self._tokens = min(self.burst, self._tokens + (now - self._updated) * self.rate)
        self._updated = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0.0
        return (1.0 - self._tokens) / self.rate


@dataclass(frozen=True)
class Rejection:
    """Why a call is refused: the status, its details and trailing metadata."""

    code: grpc.StatusCode
    details: str
    reason: str
    trailing_metadata: tuple[tuple[str, str], ...] = ()


class TokenTable:
    """The tokens of one file, looked up by the SHA-256 digest of the presented token."""

    def __init__(self, entries: Iterable[TokenEntry]) -> None:
        self.entries = tuple(entries)
        self._by_digest = {entry.digest: entry for entry in self.entries}

    def __len__(self) -> int:
        return len(self.entries)

    def find(self, token: str) -> TokenEntry | None:
        digest = hashlib.sha256(token.encode("utf-8")).digest()
        entry = self._by_digest.get(digest)
        if entry is None or not hmac.compare_digest(entry.digest, digest):
            return None
        return entry


def _check_token_text(key: str, token: Any) -> str:
    if not isinstance(token, str) or len(token) < MIN_TOKEN_CHARS:
        raise ConfigError(f"{key}: expected a string of at least {MIN_TOKEN_CHARS} characters")
    if not token.isascii() or not token.isprintable() or any(ch.isspace() for ch in token):
        raise ConfigError(f"{key}: a token is printable ASCII without spaces (it travels as gRPC metadata)")
    return token


def entries_from_mapping(data: Any, *, source: str = "token file") -> TokenTable:
    """Validates a parsed token file: ``{tokens: [{name, token | token_sha256, rate?, burst?, rpcs?}, ...]}``."""
    if not isinstance(data, Mapping) or set(data) != {"tokens"}:
        raise ConfigError(f"{source}: expected a mapping with one key, 'tokens', holding a list of tokens")
    items = data["tokens"]
    if not isinstance(items, list) or not items:
        raise ConfigError(f"{source}: tokens: expected a non-empty list of {{name, token, ...}} entries")
    entries: list[TokenEntry] = []
    names: set[str] = set()
    digests: set[bytes] = set()
    for i, item in enumerate(items):
        where = f"{source}: tokens[{i}]"
        if not isinstance(item, Mapping):
            raise ConfigError(f"{where}: expected a mapping with name and token")
        unknown = sorted(map(str, set(item) - set(_TOKEN_KEYS)))
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)} (known keys: {', '.join(_TOKEN_KEYS)})")
        name = item.get("name")
        if not isinstance(name, str) or not name.strip() or not name.isprintable():
            raise ConfigError(f"{where}.name: expected a non-empty name (it appears in logs and errors)")
        where = f"{source}: token {name!r}"
        if name in names:
            raise ConfigError(f"{where}: the name is used twice")
        names.add(name)
        if ("token" in item) == ("token_sha256" in item):
            raise ConfigError(f"{where}: set exactly one of token and token_sha256")
        if "token" in item:
            digest = hashlib.sha256(_check_token_text(f"{where}.token", item["token"]).encode()).digest()
        else:
            text = item["token_sha256"]
            try:
                digest = bytes.fromhex(text) if isinstance(text, str) else b""
            except ValueError:
                digest = b""
            if len(digest) != 32:
                raise ConfigError(f"{where}.token_sha256: expected 64 hex digits (the SHA-256 of the token)")
        if digest in digests:
            raise ConfigError(f"{where}: the same token is listed twice")
        digests.add(digest)
        rpcs = item.get("rpcs", list(ROUTER_RPCS))
        if (not isinstance(rpcs, list) or not rpcs
                or any(not isinstance(rpc, str) or rpc not in ROUTER_RPCS for rpc in rpcs)):
            raise ConfigError(f"{where}.rpcs: expected a non-empty list of {', '.join(ROUTER_RPCS)}, got {rpcs!r}")
        rate = item.get("rate")
        if rate is not None and (isinstance(rate, bool) or not isinstance(rate, (int, float))
                                 or not math.isfinite(rate) or rate <= 0):
            raise ConfigError(f"{where}.rate: expected requests per second > 0, got {rate!r}")
        burst = item.get("burst")
        if burst is not None:
            if rate is None:
                raise ConfigError(f"{where}.burst: only meaningful with rate")
            if isinstance(burst, bool) or not isinstance(burst, int) or burst < 1:
                raise ConfigError(f"{where}.burst: expected an integer >= 1, got {burst!r}")
        elif rate is not None:
            burst = max(1, math.ceil(rate))
        entries.append(TokenEntry(name, digest, frozenset(rpcs), None if rate is None else float(rate),
                                  burst or 0))
    return TokenTable(entries)


def load_tokens(path: str) -> TokenTable:
    """Reads and validates a token file; errors name the file and the entry, never a token."""
    import yaml

    try:
        with open(path, encoding="utf-8") as stream:
            data = yaml.safe_load(stream)
    except OSError as exc:
        raise ConfigError(f"auth_tokens: token file {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        # The parser's message may quote the line, and the line may hold a token: say where only.
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError(f"auth_tokens: token file {path}: not valid YAML{where}") from None
    return entries_from_mapping(data, source=f"auth_tokens: token file {path}")


def bearer_token(metadata: Sequence[tuple[str, Any]] | None) -> str | Rejection:
    """The token of the ``authorization`` metadata, or why there is none usable."""
    values = [value for key, value in metadata or () if key == AUTHORIZATION_KEY]
    if not values:
        return Rejection(grpc.StatusCode.UNAUTHENTICATED, f"missing credentials: {SEND_A_TOKEN}", "missing")
    if len(values) > 1:
        return Rejection(grpc.StatusCode.UNAUTHENTICATED,
                         f"{len(values)} authorization metadata entries; send exactly one: {SEND_A_TOKEN}",
                         "malformed")
    value = values[0]
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    scheme, _, token = value.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return Rejection(grpc.StatusCode.UNAUTHENTICATED,
                         f"malformed authorization metadata: expected 'Bearer <token>'; {SEND_A_TOKEN}",
                         "malformed")
    return token


class TokenAuth(grpc.aio.ServerInterceptor):
    """The interceptor: authenticates, authorizes and rate-limits every call outside health and reflection.

    ``replace()`` swaps in a reloaded token file; buckets of tokens whose name and limit are unchanged
    carry over, so a reload does not hand every client a fresh burst.
    """

    def __init__(self, table: TokenTable, *, clock: Callable[[], float] = time.monotonic,
                 on_reject: Callable[[str], None] | None = None) -> None:
        self.table = table
        self._clock = clock
        self._on_reject = on_reject
        self._buckets: dict[str, TokenBucket] = {}

    def replace(self, table: TokenTable) -> None:
        limits = {entry.name: entry.limit for entry in table.entries}
        self._buckets = {name: bucket for name, bucket in self._buckets.items()
                         if limits.get(name) == (bucket.rate, bucket.burst)}
        self.table = table

    def check(self, method: str, metadata: Sequence[tuple[str, Any]] | None) -> Rejection | None:
        """None when the call may go ahead; else the Rejection to answer with."""
        if method.startswith(OPEN_SERVICE_PREFIXES):
            return None
        token = bearer_token(metadata)
        if isinstance(token, Rejection):
            return token
        entry = self.table.find(token)
        if entry is None:
            return Rejection(grpc.StatusCode.UNAUTHENTICATED,
                             "the bearer token is not valid for this router (unknown or revoked); "
                             "check the token or ask for a new one", "unknown")
        service, _, rpc = method.lstrip("/").partition("/")
        if service != ROUTER_SERVICE or rpc not in entry.rpcs:
            allowed = ", ".join(r for r in ROUTER_RPCS if r in entry.rpcs)
            return Rejection(grpc.StatusCode.PERMISSION_DENIED,
                             f"token {entry.name!r} may not call {rpc or method} (it may call: {allowed})",
                             "denied")
        if entry.rate is not None:
            now = self._clock()
            bucket = self._buckets.get(entry.name)
            if bucket is None:
                bucket = self._buckets[entry.name] = TokenBucket(entry.rate, entry.burst, now)
            wait = bucket.take(now)
            if wait:
                retry_ms = max(1, math.ceil(wait * 1000))
                return Rejection(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                 f"token {entry.name!r} is over its rate limit ({entry.rate:g} requests/s, "
                                 f"burst {entry.burst}); retry in {retry_ms} ms",
                                 "rate_limited", ((RETRY_AFTER_KEY, str(retry_ms)),))
        return None

    def admit(self, method: str, metadata: Sequence[tuple[str, Any]] | None) -> Rejection | None:
        """``check``, counting a rejection (the native relay's Generate calls come through here)."""
        rejection = self.check(method, metadata)
        if rejection is not None and self._on_reject is not None:
            self._on_reject(rejection.reason)
        return rejection

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        rejection = self.admit(handler_call_details.method, handler_call_details.invocation_metadata)
        if rejection is None:
            return await continuation(handler_call_details)
        return rejecting_handler(await continuation(handler_call_details), rejection)


def rejecting_handler(handler: grpc.RpcMethodHandler | None, rejection: Rejection) -> grpc.RpcMethodHandler:
    """A handler of the same kind as ``handler`` that answers ``rejection`` without parsing the request."""

    async def reject(_request: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(rejection.code, rejection.details, trailing_metadata=rejection.trailing_metadata)

    # No deserializer: an unauthenticated body is never parsed.
    if handler is None or not (handler.request_streaming or handler.response_streaming):
        return grpc.unary_unary_rpc_method_handler(reject)
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(reject)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(reject)
    return grpc.unary_stream_rpc_method_handler(reject)
