"""Upstream experts: a pool of replicas per expert, their health, replica choice and opening a stream.

Each replica has its own channel and watches the standard ``grpc.health.v1`` service (``Watch``,
a server stream: a status change reaches the router at once; the watch reconnects with backoff).
On top of that, passive ejection: ``eject_after`` consecutive failures take a replica out of
rotation for a backoff that doubles with each ejection up to ``eject_max_s``; it comes back when
the backoff has passed and its health says SERVING. Only transport failures count (FAILURE_CODES),
and at most ``max_ejected_percent`` of an expert's replicas are ejected at once (at least one may
be): when a whole pool fails together the fault is more likely the network or the requests than
every replica, and keeping some in rotation keeps the expert answering. ``pick()`` returns the
healthy replica with the fewest outstanding requests (ties rotate); with more than
``P2C_THRESHOLD`` candidates it compares two at random (power of two choices), which spreads load
as well at O(1).

An expert's replicas are a fixed list or a DNS name re-resolved periodically; replicas that
disappear from the answer leave rotation at once and close their channel when their last stream ends.

``UpstreamPool.try_replicas()`` runs one attempt per replica (``first_frame`` for the relays in
Python: send the request's original bytes, wait for the first response frame; the whole stream for
the native relay): a connection failure, UNAVAILABLE or RESOURCE_EXHAUSTED (a busy replica) before
that frame is retried on another replica, up to ``max_attempts`` and within the deadline. After it,
the caller relays frames itself and errors pass through. Which experts to try in turn is the
dispatcher's (router_svc.dispatch).
"""
from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from router_svc.config import UpstreamExpert, declared_default, parse_address
from router_svc.discovery import DnsWatcher, Resolver, resolve
from router_svc.errors import ExpertUnavailable, UnknownExpert, UpstreamError
from router_svc.metrics import RouterMetrics
from service_base.tasks import cancel_and_wait

log = logging.getLogger("router_svc.upstream")

GENERATE_PATH = "/expert_router.v1.Expert/Generate"
EXPERT_SERVICE = "expert_router.v1.Expert"
PROBE_TIMEOUT_S = 1.0
FIRST_HEALTH_WAIT_S = 1.0
WATCH_INITIAL_BACKOFF_S = 0.05
P2C_THRESHOLD = 4
SERVING = health_pb2.HealthCheckResponse.SERVING
# Before the first frame these codes mean "this replica cannot take it now": another one may.
RETRIED_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED})
# Codes that count toward passive ejection: transport-level failures only. gRPC reports a refused
# connection, a reset or closed socket and a server that went away as UNAVAILABLE, whichever relay
# or door saw it. Not counted, because one request can cause them on a healthy replica:
# INTERNAL and UNKNOWN (an expert's handler failing on one prompt, or raising an exception gRPC maps
# to UNKNOWN), DATA_LOSS (gRPC's own library never produces it: only an application sends it, about
# one request's data), and the client's own INVALID_ARGUMENT, DEADLINE_EXCEEDED or CANCELLED.
FAILURE_CODES = frozenset({grpc.StatusCode.UNAVAILABLE})


# Keepalive on channels that carry Generate: detects a dead expert behind a quiet stream in about a
# minute. A server answers pings more often than every 5 minutes (gRPC's default
# min_ping_interval_without_data) on a connection where it sent no data with GOAWAY too_many_pings
# after 2 strikes, so a connection that may stay data-idle for minutes must ping less often.
KEEPALIVE_MS = 60_000
# Channels that only carry the health Watch (the native relay has its own Generate channels):
# the Watch sends nothing while the status holds, so they ping at the servers' default allowance.
HEALTH_ONLY_KEEPALIVE_MS = 300_000


def channel_options(max_message_bytes: int, reconnect_max_s: float = 5.0,
                    keepalive_ms: int = KEEPALIVE_MS) -> list[tuple[str, int]]:
    """Options for every upstream channel: explicit message bounds and keepalive on long streams."""
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.keepalive_time_ms", keepalive_ms),
        ("grpc.keepalive_timeout_ms", 20_000),
        ("grpc.keepalive_permit_without_calls", 0),
        ("grpc.http2.max_pings_without_data", 0),
        # Reconnect quickly after an expert restarts (the default backoff grows to 2 minutes).
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", int(1000 * min(max(reconnect_max_s, 0.2), 5.0))),
    ]


@dataclass(frozen=True)
class UpstreamSettings:
    """The RouterConfig settings the pool uses."""

    max_message_bytes: int = declared_default("max_message_bytes")
    health_interval_s: float = declared_default("health_interval_s")
    dns_refresh_s: float = declared_default("dns_refresh_s")
    eject_after: int = declared_default("eject_after")
    eject_base_s: float = declared_default("eject_base_s")
    eject_max_s: float = declared_default("eject_max_s")
    max_ejected_percent: int = declared_default("max_ejected_percent")
    max_attempts: int = declared_default("max_attempts")
    # TLS to the experts (None: plaintext), and the same as PEM bytes (CA, certificate, key) for the
    # native relay's channels.
    credentials: grpc.ChannelCredentials | None = None
    tls_pem: tuple[bytes | None, bytes | None, bytes | None] | None = None
    # Keepalive of the pool's grpcio channels (HEALTH_ONLY_KEEPALIVE_MS under the native relay).
    keepalive_ms: int = KEEPALIVE_MS

    @classmethod
    def from_config(cls, cfg) -> UpstreamSettings:
        credentials = tls_pem = None
        if getattr(cfg, "upstream_tls", False):
            from service_base.tls import channel_credentials, read_pem

            credentials = channel_credentials(cfg.upstream_tls_ca, cfg.upstream_tls_cert, cfg.upstream_tls_key)
            tls_pem = (read_pem(cfg.upstream_tls_ca, "server CA"),
                       read_pem(cfg.upstream_tls_cert, "client certificate") if cfg.upstream_tls_cert else None,
                       read_pem(cfg.upstream_tls_key, "client private key") if cfg.upstream_tls_key else None)
        from router_svc import native_relay

        health_only = getattr(cfg, "relay", "python") == "native" and native_relay.available()
        return cls(**{name: getattr(cfg, name) for name in _FROM_ROUTER_CONFIG},
                   credentials=credentials, tls_pem=tls_pem,
                   keepalive_ms=HEALTH_ONLY_KEEPALIVE_MS if health_only else KEEPALIVE_MS)



# The UpstreamSettings fields copied from RouterConfig as they are (their defaults come from SETTINGS).
_FROM_ROUTER_CONFIG = ("max_message_bytes", "health_interval_s", "dns_refresh_s", "eject_after", "eject_base_s",
                       "eject_max_s", "max_ejected_percent", "max_attempts")


class Replica:
    """One endpoint of an expert: its channel, health watch, ejection state and outstanding requests."""

    def __init__(self, expert: str, address: str, settings: UpstreamSettings, metrics: RouterMetrics, *,
                 server_name: str | None = None, may_eject: Callable[[Replica], bool] | None = None) -> None:
        self.expert = expert
        self.address = address
        self.server_name = server_name
        self._settings = settings
        self._metrics = metrics
        # The pool's ejection cap: asked before a passive ejection (None: no cap).
        self._may_eject = may_eject
        self._held_by_cap = False
        options = channel_options(settings.max_message_bytes, settings.health_interval_s, settings.keepalive_ms)
        if settings.credentials is None:
            self.channel = grpc.aio.insecure_channel(address, options=options)
        else:
            # A replica found by DNS is dialled by IP; its certificate names the DNS name.
            if server_name:
                options.append(("grpc.ssl_target_name_override", server_name))
            self.channel = grpc.aio.secure_channel(address, settings.credentials, options=options)
        self._generate = self.channel.unary_stream(
            GENERATE_PATH, request_serializer=None, response_deserializer=None)
        self._health = health_pb2_grpc.HealthStub(self.channel)
        self._service = EXPERT_SERVICE
        # None until the first health answer: unknown replicas are tried (the retry covers a wrong guess).
        self.serving: bool | None = None
        # Set while no stream holds the replica: a retired replica closes its channel on it.
        self._idle = asyncio.Event()
        self.outstanding = 0
        self.failures = 0
        self.ejections = 0
        self.ejected_until = 0.0
        self.last_error = ""
        self.first_status = asyncio.Event()
        self._watcher: asyncio.Task[None] | None = None
        self._closing = False

    @property
    def outstanding(self) -> int:
        """Streams (and attempts) holding this replica now."""
        return self._outstanding

    @outstanding.setter
    def outstanding(self, value: int) -> None:
        self._outstanding = value
        if value:
            self._idle.clear()
        else:
            self._idle.set()

    async def wait_idle(self) -> None:
        """Returns once no stream holds the replica."""
        while self._outstanding:
            await self._idle.wait()

    @property
    def healthy(self) -> bool:
        return self.serving is not False and (not self.ejected_until or time.monotonic() >= self.ejected_until)

    @property
    def ejected(self) -> bool:
        return bool(self.ejected_until) and time.monotonic() < self.ejected_until

    def generate(self, request: bytes, timeout: float | None,
                 metadata: Sequence[tuple[str, str]] | None = None) -> grpc.aio.UnaryStreamCall:
        return self._generate(request, timeout=timeout, metadata=metadata)

    # Passive health -------------------------------------------------------------------------------

    def record_success(self) -> None:
        self.failures = 0
        self.ejections = 0
        self._held_by_cap = False

    def record_failure(self, reason: str) -> None:
        """One more consecutive failure; at ``eject_after`` of them the replica is ejected."""
        self.last_error = reason
        self.failures += 1
        if self.failures < self._settings.eject_after or self.ejected:
            return
        if self._may_eject is not None and not self._may_eject(self):
            if not self._held_by_cap:  # once per run of failures, not once per failed request
                self._held_by_cap = True
                log.warning("expert %r replica %s stays in rotation after %d failures (%s): ejecting it "
                            "would exceed max_ejected_percent=%d", self.expert, self.address, self.failures,
                            reason, self._settings.max_ejected_percent)
            return
        self.eject(reason)

    def eject(self, reason: str) -> None:
        """Out of rotation for base * 2^(ejections so far), capped."""
        settings = self._settings
        backoff = min(settings.eject_base_s * (2 ** min(self.ejections, 30)), settings.eject_max_s)
        self.ejections += 1
        self.failures = 0
        self.ejected_until = time.monotonic() + backoff
        self.last_error = reason
        self._held_by_cap = False
        self._metrics.ejection(self.expert)
        log.warning("expert %r replica %s ejected for %.1f s: %s", self.expert, self.address, backoff, reason)

    # Active health --------------------------------------------------------------------------------

    def _set_serving(self, serving: bool, reason: str = "") -> None:
        if serving != self.serving:
            if serving:
                if self.serving is False:
                    log.info("expert %r replica %s is serving again", self.expert, self.address)
                self.last_error = ""
            elif self.serving is not False:
                log.warning("expert %r replica %s is not serving: %s", self.expert, self.address, reason)
        if not serving:
            self.last_error = reason
        self.serving = serving
        self.first_status.set()

    def start(self) -> None:
        """Starts the health watch; a replica already watched keeps its one watcher."""
        if self._watcher is None:
            self._watcher = asyncio.create_task(self._watch_forever(),
                                                name=f"health-{self.expert}-{self.address}")

    async def _watch_forever(self) -> None:
        backoff = WATCH_INITIAL_BACKOFF_S
        cap = self._settings.health_interval_s
        while True:
            try:
                await self._watch_once()
                reason = "health watch ended"
            except grpc.aio.AioRpcError as err:
                if self._closing:
                    return
                if err.code() == grpc.StatusCode.UNIMPLEMENTED:
                    await self._poll_forever()  # an expert without Watch: fall back to Check
                    return
                reason = f"{err.code().name}: {err.details()}"
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.exception("health watch of %s failed", self.address)
                reason = f"health watch failed: {exc}"
            else:
                backoff = WATCH_INITIAL_BACKOFF_S
            self._set_serving(False, reason)
            await asyncio.sleep(backoff * random.uniform(0.8, 1.2))
            backoff = min(backoff * 2, cap)

    async def _watch_once(self) -> None:
        call = self._health.Watch(health_pb2.HealthCheckRequest(service=self._service))
        try:
            async for response in call:
                if response.status == health_pb2.HealthCheckResponse.SERVICE_UNKNOWN and self._service:
                    self._service = ""  # the expert reports only the server-wide status
                    return await self._watch_once()
                self._set_serving(response.status == SERVING,
                                  f"health {health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)}")
        finally:
            call.cancel()

    async def _poll_forever(self) -> None:
        while True:
            try:
                response = await self._health.Check(health_pb2.HealthCheckRequest(service=self._service),
                                                    timeout=PROBE_TIMEOUT_S)
                self._set_serving(response.status == SERVING, "health check says not serving")
            except grpc.aio.AioRpcError as err:
                self._set_serving(False, f"{err.code().name}: {err.details()}")
            await asyncio.sleep(self._settings.health_interval_s)

    async def close(self, grace: float | None = None) -> None:
        self._closing = True
        if self._watcher is not None:
            await cancel_and_wait(self._watcher)
        await self.channel.close(grace)


@dataclass(frozen=True)
class ReplicaStatus:
    """A snapshot of one replica for ListExperts."""

    address: str
    healthy: bool
    outstanding: int


class ExpertPool:
    """The replicas of one expert: a fixed list, or whatever its DNS name resolves to now."""

    def __init__(self, expert: UpstreamExpert, settings: UpstreamSettings, *,
                 metrics: RouterMetrics | None = None, resolver: Resolver = resolve,
                 rng: random.Random | None = None) -> None:
        self.name = expert.name
        self.spec = expert
        self._settings = settings
        self._metrics = metrics or RouterMetrics()
        self._rng = rng or random.Random()
        self.replicas: list[Replica] = []
        self._retiring: set[asyncio.Task[None]] = set()
        self._turn = 0
        self._started = False
        self._dns: DnsWatcher | None = None
        self._server_name: str | None = None
        if expert.dns:
            host, port = parse_address(f"experts.{expert.name}.dns", expert.dns)
            self._server_name = host
            self._dns = DnsWatcher(host, port, settings.dns_refresh_s, self.set_addresses, resolver=resolver,
                                   what=f"expert {expert.name!r}")
        else:
            self.set_addresses(expert.addresses)

    @property
    def healthy(self) -> bool:
        return any(replica.healthy for replica in self.replicas)

    def _may_eject(self, replica: Replica) -> bool:
        """Whether ejecting ``replica`` keeps the ejected share within ``max_ejected_percent``."""
        percent = self._settings.max_ejected_percent
        if percent <= 0:
            return False
        allowed = max(1, len(self.replicas) * percent // 100)
        ejected = sum(1 for other in self.replicas if other is not replica and other.ejected)
        return ejected < allowed

    def set_addresses(self, addresses: Iterable[str]) -> None:
        """New replicas join; missing ones leave rotation now and close after their last stream."""
        wanted = list(dict.fromkeys(addresses))
        current = {replica.address: replica for replica in self.replicas}
        kept = []
        for address in wanted:
            replica = current.pop(address, None)
            if replica is None:
                replica = Replica(self.name, address, self._settings, self._metrics,
                                  server_name=self._server_name, may_eject=self._may_eject)
                if self._started:
                    replica.start()
            kept.append(replica)
        self.replicas = kept
        for gone in current.values():
            task = asyncio.get_running_loop().create_task(self._retire(gone))
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)

    async def _retire(self, replica: Replica) -> None:
        await replica.wait_idle()
        await replica.close()

    async def start(self) -> None:
        """Resolves (DNS) and starts watching health; waits briefly for the first health answers."""
        self._started = True
        if self._dns is not None:
            await self._dns.start()
        for replica in self.replicas:
            replica.start()
        waits = [asyncio.ensure_future(replica.first_status.wait()) for replica in self.replicas]
        if waits:
            _, pending = await asyncio.wait(waits, timeout=FIRST_HEALTH_WAIT_S)
            for task in pending:
                task.cancel()

    def pick(self, exclude: Iterable[Replica] = ()) -> Replica | None:
        """A healthy replica with few outstanding requests, or None."""
        excluded = set(map(id, exclude))
        candidates = [r for r in self.replicas if id(r) not in excluded and r.healthy]
        if not candidates:
            return None
        if len(candidates) > P2C_THRESHOLD:
            first, second = self._rng.sample(candidates, 2)
            return first if first.outstanding <= second.outstanding else second
        n = len(self.replicas)
        turn = self._turn
        self._turn = (turn + 1) % n
        order = {id(r): (i - turn) % n for i, r in enumerate(self.replicas)}
        return min(candidates, key=lambda r: (r.outstanding, order[id(r)]))

    def unavailable(self, reason: str | None = None) -> ExpertUnavailable:
        if reason is None:
            if not self.replicas:
                dns_error = self._dns.last_error if self._dns is not None else ""
                reason = "no replica" + (f" ({dns_error})" if dns_error else "")
            else:
                errors = sorted({r.last_error for r in self.replicas if r.last_error})
                reason = "no healthy replica" + (f" ({'; '.join(errors)})" if errors else "")
        where = [r.address for r in self.replicas] or [self.spec.describe()]
        return ExpertUnavailable(self.name, where, reason)

    @property
    def outstanding(self) -> int:
        return sum(replica.outstanding for replica in self.replicas)

    async def close(self, grace: float | None = None) -> None:
        if self._dns is not None:
            await self._dns.close()
        replicas, self.replicas = self.replicas, []
        await asyncio.gather(*(replica.close(grace) for replica in replicas))
        if self._retiring:
            await asyncio.gather(*self._retiring, return_exceptions=True)


class UpstreamPool:
    """Every configured expert's replicas, and the opening of a Generate call on one of them."""

    def __init__(self, experts: Sequence[UpstreamExpert], *, max_message_bytes: int | None = None,
                 health_interval_s: float | None = None, settings: UpstreamSettings | None = None,
                 metrics: RouterMetrics | None = None, resolver: Resolver = resolve) -> None:
        if settings is None:
            settings = UpstreamSettings()
        changes = {key: value for key, value in (("max_message_bytes", max_message_bytes),
                                                  ("health_interval_s", health_interval_s)) if value is not None}
        if changes:
            settings = UpstreamSettings(**{**settings.__dict__, **changes})
        self.settings = settings
        self.metrics = metrics or RouterMetrics()
        self.experts: dict[str, ExpertPool] = {
            e.name: ExpertPool(e, settings, metrics=self.metrics, resolver=resolver) for e in experts}

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.experts)

    def expert(self, name: str) -> ExpertPool:
        try:
            return self.experts[name]
        except KeyError:
            raise UnknownExpert(name, self.names) from None

    def replicas(self) -> list[Replica]:
        return [replica for pool in self.experts.values() for replica in pool.replicas]

    async def start(self) -> None:
        """Resolves DNS names and starts the health watches (waiting briefly for first answers)."""
        await asyncio.gather(*(pool.start() for pool in self.experts.values()))

    @property
    def outstanding(self) -> int:
        return sum(pool.outstanding for pool in self.experts.values())

    async def close(self, grace: float | None = None) -> None:
        await asyncio.gather(*(pool.close(grace) for pool in self.experts.values()))

    def status(self) -> list[tuple[str, list[ReplicaStatus]]]:
        return [
            (name, [ReplicaStatus(r.address, r.healthy, r.outstanding) for r in pool.replicas])
            for name, pool in self.experts.items()
        ]

    async def try_replicas(self, expert: str, timeout: float | None,
                           attempt: Callable[[Replica, float | None], Awaitable[Any]]) -> tuple[Any, Replica, int]:
        """Calls ``attempt(replica, seconds left)`` on replicas of ``expert`` until one does not fail.

        ``attempt`` returns an UpstreamFailure when the replica failed before its first frame, else
        whatever the caller needs (the replica's ``outstanding`` count stays raised for it: release
        it with ``release_replica``). The retry rule is the same for both relays: UNAVAILABLE and
        RESOURCE_EXHAUSTED try another replica, up to ``max_attempts`` and within the deadline.
        Returns (result, replica, attempts); raises ExpertUnavailable or UpstreamError.
        """
        pool = self.expert(expert)
        deadline = None if timeout is None else time.monotonic() + timeout
        tried: list[Replica] = []
        last: UpstreamFailure | None = None
        for _ in range(self.settings.max_attempts):
            replica = pool.pick(exclude=tried)
            if replica is None:
                break
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                break
            tried.append(replica)
            replica.outstanding += 1
            try:
                result = await attempt(replica, remaining)
            except BaseException:
                replica.outstanding -= 1
                raise
            if not isinstance(result, UpstreamFailure):
                return result, replica, len(tried)
            replica.outstanding -= 1
            code = result.code
            self.metrics.upstream_error(expert, code)
            if code in FAILURE_CODES:
                replica.record_failure(result.details or code.name)
            if code in RETRIED_CODES:
                last = result
                if len(tried) < self.settings.max_attempts:
                    log.info("expert %r replica %s: %s before the first frame; trying another replica",
                             expert, replica.address, code.name)
                continue
            raise result.error()
        if last is not None and last.code == grpc.StatusCode.RESOURCE_EXHAUSTED:
            raise last.error()  # every replica tried was busy: the expert's own status
        if last is not None:
            reason = f"{len(tried)} replica(s) failed: {last.code.name}: {last.details}"
            raise pool.unavailable(reason)
        raise pool.unavailable()


@dataclass(frozen=True)
class UpstreamFailure:
    """An upstream call that ended with an error status before its first frame."""

    code: grpc.StatusCode
    details: str
    trailing_metadata: tuple = ()

    def error(self) -> UpstreamError:
        return UpstreamError(self.code, self.details, self.trailing_metadata)


async def first_frame(replica: Replica, remaining: float | None, *, request: bytes,
                      metadata: Sequence[tuple[str, str]] | None
                      ) -> tuple[grpc.aio.UnaryStreamCall, Any] | UpstreamFailure:
    """One attempt of ``try_replicas`` for a relay in Python: starts ``request`` on ``replica`` and
    waits for its first frame; returns the call and that frame, or why it failed before it."""
    call = replica.generate(request, remaining, metadata)
    try:
        first = await call.read()
    except grpc.aio.AioRpcError as err:
        return UpstreamFailure(err.code(), err.details() or "", tuple(err.trailing_metadata() or ()))
    except BaseException:
        call.cancel()
        raise
    return call, first


def release_replica(replica: Replica, code: grpc.StatusCode | None) -> None:
    """Ends one stream's hold on ``replica``; ``code`` is its final status (None: the client went away)."""
    replica.outstanding -= 1
    if code is grpc.StatusCode.OK:
        replica.record_success()
    elif code in FAILURE_CODES:
        replica.record_failure(f"{code.name} mid-stream")


def upstream_error(err: grpc.aio.AioRpcError) -> UpstreamError:
    """The expert's own status, details and trailing metadata, to pass through to the client."""
    return UpstreamError(err.code(), err.details() or "", tuple(err.trailing_metadata() or ()))
