"""Expert server lifecycle: bind, load the engine, report health, drain on shutdown."""

from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from expert_router.v1 import expert_router_pb2 as pb
from service_base.tls import server_credentials
from service_base.tracing import Tracing, start_tracing

from .config import ExpertConfig, check_files, split_host_port
from .convert import RequestLimits
from .engines import Engine, create_engine
from .servicer import ExpertServicer, add_expert_servicer

log = logging.getLogger(__name__)

EXPERT_SERVICE = pb.DESCRIPTOR.services_by_name["Expert"].full_name
_WILDCARD_HOSTS = {"0.0.0.0", "[::]", "::", ""}
# Clients (routers) may send keepalive pings this often without being told "too many pings".
MIN_CLIENT_PING_INTERVAL_MS = 1000


@dataclass
class RunningExpert:
    """A started expert: its bound address, engine and servicer, and a way to stop it."""

    config: ExpertConfig
    server: grpc.aio.Server
    engine: Engine
    servicer: ExpertServicer
    health: health.aio.HealthServicer
    port: int
    # OpenTelemetry (service_base.tracing), when cfg.otlp_endpoint is set; else None.
    tracing: Tracing | None = None
    _stopped: bool = field(default=False, repr=False)

    @property
    def address(self) -> str:
        """Where a client on this machine reaches the expert, "HOST:PORT"."""
        host, _ = split_host_port(self.config.listen)
        return f"{'127.0.0.1' if host in _WILDCARD_HOSTS else host}:{self.port}"

    async def stop(self, grace: float | None = None) -> None:
        """Report NOT_SERVING, let in-flight streams finish for up to `grace` seconds (default:
        the configured grace), cancel what remains, then release the engine."""
        if self._stopped:
            return
        self._stopped = True
        grace = self.config.grace_s if grace is None else grace
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
        await self.engine.close()
        if self.tracing is not None:  # the spans still buffered go out before the process ends
            await asyncio.to_thread(self.tracing.shutdown)
        log.info("expert %s stopped", self.config.name)


def server_options(cfg: ExpertConfig) -> list[tuple[str, int]]:
    """gRPC server options: explicit message limits both ways, and a keepalive policy that lets a
    router ping every second, so it notices a dead or cut-off expert in seconds, not minutes."""
    return [
        ("grpc.max_receive_message_length", cfg.max_message_bytes),
        ("grpc.max_send_message_length", cfg.max_message_bytes),
        ("grpc.so_reuseport", 0),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", MIN_CLIENT_PING_INTERVAL_MS),
    ]


def _request_limits(cfg: ExpertConfig, context_length: int | None) -> RequestLimits:
    # Before a trtllm model has loaded its context length is unknown; requests then get
    # UNAVAILABLE from the servicer, so any valid bound will do until `load` replaces it.
    return RequestLimits(
        context_length=context_length or max(cfg.default_max_tokens, RequestLimits().context_length),
        default_max_tokens=cfg.default_max_tokens,
        max_prompt_bytes=cfg.max_prompt_bytes,
    )


def preflight(cfg: ExpertConfig) -> None:
    """What can be checked before binding and loading (the trtllm model directory and the flags
    that must agree with it); raises EngineStartupError naming what is wrong and what to do."""
    create_engine(cfg).preflight()


async def bind(cfg: ExpertConfig, *, span_exporter: Any = None) -> RunningExpert:
    """Start serving with the engine not loaded yet: health answers NOT_SERVING, reflection and
    GetInfo answer, Generate answers UNAVAILABLE. `load` makes it SERVING.

    ``span_exporter`` (tests, benchmarks): trace to this OpenTelemetry exporter instead of
    ``cfg.otlp_endpoint``."""
    check_files(cfg)
    engine = create_engine(cfg)
    limits = _request_limits(cfg, cfg.context_length)
    tracing = start_tracing(f"expert-{cfg.name}", cfg.otlp_endpoint, exporter=span_exporter)
    servicer = ExpertServicer(
        cfg.name, engine, limits, cfg.max_concurrency, stream_interval=cfg.stream_interval, tracing=tracing
    )
    health_servicer = health.aio.HealthServicer()
    server = grpc.aio.server(options=server_options(cfg))
    add_expert_servicer(servicer, server)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if cfg.reflection:
        reflection.enable_server_reflection(
            (EXPERT_SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME), server
        )
    for service in ("", EXPERT_SERVICE):
        await health_servicer.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
    try:
        if cfg.tls_enabled:
            credentials = server_credentials(cfg.tls_cert, cfg.tls_key, cfg.tls_client_ca, cfg.mutual_tls)
            port = server.add_secure_port(cfg.listen, credentials)
        else:
            port = server.add_insecure_port(cfg.listen)
    except RuntimeError as exc:
        raise OSError(f"could not listen on {cfg.listen}: {exc}") from exc
    if port == 0:
        raise OSError(f"could not listen on {cfg.listen}: the address is in use or not available here")
    await server.start()
    return RunningExpert(cfg, server, engine, servicer, health_servicer, port, tracing)


async def load(running: RunningExpert) -> None:
    """Load the engine (the event loop keeps serving meanwhile), then report SERVING; on failure
    the server is stopped and the error raised."""
    cfg, engine, servicer = running.config, running.engine, running.servicer
    try:
        await engine.start()
    except BaseException:
        running._stopped = True
        await running.server.stop(None)
        await engine.close()
        if running.tracing is not None:
            running.tracing.shutdown()
        raise
    info = engine.info()
    if cfg.context_length is None:
        # The engine knows its context length only once the model is loaded (trtllm).
        servicer.limits = _request_limits(cfg, info.context_length)
    if servicer.max_concurrency is None:
        servicer.max_concurrency = info.max_concurrency
    for service in ("", EXPERT_SERVICE):
        await running.health.set(service, health_pb2.HealthCheckResponse.SERVING)
    log.info(
        "expert %s serving %s (%s, %s; %d concurrent requests) on %s",
        cfg.name,
        info.model,
        info.quantization,
        info.engine,
        servicer.max_concurrency,
        running.address,
    )


async def start(cfg: ExpertConfig, *, span_exporter: Any = None) -> RunningExpert:
    """Bind the server, load the engine, and report SERVING once the model is loaded."""
    running = await bind(cfg, span_exporter=span_exporter)
    await load(running)
    return running


async def serve(cfg: ExpertConfig) -> None:
    """Run an expert until SIGTERM or SIGINT, then drain in-flight streams within the grace bound."""
    running = await start(cfg)
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    try:
        await stopping.wait()
        log.info(
            "expert %s shutting down: draining %d stream(s) for up to %.1f s",
            cfg.name,
            running.servicer.active,
            cfg.grace_s,
        )
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await running.stop(cfg.grace_s)
