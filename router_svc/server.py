"""Router lifecycle: build the grpc.aio server from a RouterConfig, serve, reload, and drain on SIGTERM.

``start(cfg)`` returns a RunningRouter (tests use it with ``listen="127.0.0.1:0"``); ``serve(cfg)`` is
what one router process runs: start, reload on SIGHUP or a change of the config file, and on
SIGTERM/SIGINT: health NOT_SERVING, stop accepting, drain in-flight streams within ``cfg.grace_s``,
close the upstream channels.
"""
from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable, Sequence

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry, Counter

from router_svc.admission import Admission, AdmissionLimits
from router_svc.auth import TokenAuth, load_tokens
from router_svc.batching import MicroBatcher
from router_svc.cascade import CascadeModel, CascadeScorer
from router_svc.config import RESTART_ONLY, ConfigError, RouterConfig, check_files, relay_threads
from router_svc.metrics import MetricsServer, RouterMetrics
from router_svc.native_relay import NativeRelay, choose_relay
from router_svc.servicer import SERVICE_NAME, ExpertChooser, RouterServicer, RouterState, ScoringClassifier
from router_svc.upstream import UpstreamPool, UpstreamSettings
from service_base.tracing import Tracing, start_tracing

log = logging.getLogger("router_svc")

ClassifierFactory = Callable[[str | None], ScoringClassifier]
# The router's OpenTelemetry service.name.
TRACE_SERVICE_NAME = "expert-router"


class BindError(OSError):
    """The listen address could not be bound."""


def server_options(cfg: RouterConfig, *, reuse_port: bool = False) -> list[tuple[str, int]]:
    return [
        ("grpc.max_send_message_length", cfg.max_message_bytes),
        ("grpc.max_receive_message_length", cfg.max_message_bytes),
        # Off unless several workers share the port on purpose: a second `make run` then fails loudly
        # instead of silently splitting traffic with a stale process.
        ("grpc.so_reuseport", 1 if reuse_port else 0),
        # Let clients keep long-lived channels alive with pings every 10 s or more (gRPC's name for
        # this argument: GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS).
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
    ]


def listen_credentials(cfg: RouterConfig) -> grpc.ServerCredentials | None:
    """TLS (mutual TLS with a client CA) for the router's port; None serves plaintext."""
    if not cfg.tls:
        return None
    from service_base.tls import server_credentials

    try:
        return server_credentials(cfg.tls_cert, cfg.tls_key, cfg.tls_client_ca, cfg.mutual_tls)
    except ValueError as exc:  # a file missing, not PEM, or a key not matching its certificate
        raise ConfigError(str(exc)) from None


def token_auth(cfg: RouterConfig, metrics: RouterMetrics) -> TokenAuth | None:
    """The token interceptor for ``cfg.auth_tokens`` (None: no authentication)."""
    if cfg.auth_tokens is None:
        return None
    rejections = Counter("router_auth_rejections_total",
                         "Calls refused by token authentication, by reason "
                         "(missing, malformed, unknown, denied, rate_limited).",
                         ["reason"], registry=metrics.registry)
    auth = TokenAuth(load_tokens(cfg.auth_tokens), on_reject=lambda reason: rejections.labels(reason).inc())
    log.info("token authentication on: %d token(s) from %s", len(auth.table), cfg.auth_tokens)
    return auth


def load_classifier(directory: str | None) -> ScoringClassifier:
    from router_svc.classifier import Classifier

    return Classifier.load(directory)


def load_cascade(cfg: RouterConfig, labels: Sequence[str]) -> CascadeModel | None:
    """The cascade model ``cfg`` names, checked against the classifier's ``labels`` (None: no cascade).

    Raises CascadeError (a ValueError) naming the file and what is wrong: the start stops, a reload
    keeps the running state.
    """
    if cfg.cascade_dir is None:
        return None
    return CascadeModel.load(cfg.cascade_dir, labels=labels, threads=cfg.cascade_threads)


async def build_state(cfg: RouterConfig, classifier: ScoringClassifier, metrics: RouterMetrics, *,
                      generation: int = 1, resolver=None, cascade_model: CascadeModel | None = None) -> RouterState:
    """The reloadable parts for ``cfg``, with upstream health already being watched."""
    kwargs = {} if resolver is None else {"resolver": resolver}
    upstream = UpstreamPool(cfg.experts, settings=UpstreamSettings.from_config(cfg), metrics=metrics, **kwargs)
    batcher = MicroBatcher(classifier.predict_batch, max_batch=cfg.max_batch)
    cascade = None
    if cascade_model is not None:
        cascade = CascadeScorer(cascade_model, threshold=cfg.cascade_below, max_pending=cfg.cascade_max_pending,
                                metrics=metrics)
    chooser = ExpertChooser(classifier, batcher, experts=cfg.expert_names, fallback=cfg.fallback,
                            min_confidence=cfg.min_confidence, failover_margin=cfg.failover_margin,
                            metrics=metrics, cascade=cascade)
    state = RouterState(cfg, chooser, upstream, batcher, generation, cascade)
    try:
        await upstream.start()
    except BaseException:
        await state.close()
        raise
    return state


# Settings a reload cannot change: the listening socket, its credentials and interceptors exist once
# (declared per setting in router_svc.config.SETTINGS).
FIXED_AT_START = RESTART_ONLY


def native_tls(cfg: RouterConfig) -> tuple[bytes, bytes, bytes | None, bool] | None:
    """The router port's TLS files as PEM bytes for the native server (None: plaintext)."""
    if not cfg.tls:
        return None
    from service_base.tls import read_pem

    try:
        ca = read_pem(cfg.tls_client_ca, "client CA") if cfg.tls_client_ca else None
        return read_pem(cfg.tls_cert, "TLS certificate"), read_pem(cfg.tls_key, "TLS private key"), ca, cfg.mutual_tls
    except ValueError as exc:  # a file missing, not PEM, or a key not matching its certificate
        raise ConfigError(str(exc)) from None


class RunningRouter:
    """A started router: its bound port, its current state, and the parts tests look at."""

    def __init__(self, server: grpc.aio.Server, port: int, servicer: RouterServicer, admission: Admission,
                 metrics: RouterMetrics, health_servicer: health.aio.HealthServicer,
                 classifier_factory: ClassifierFactory, metrics_server: MetricsServer | None,
                 auth: TokenAuth | None = None, native: NativeRelay | None = None) -> None:
        self.server = server
        # The native relay in front of ``server`` (which then listens on a private socket), or None.
        self.native = native
        self.relay = "native" if native is not None else "python"
        self.auth = auth
        self.port = port
        self.servicer = servicer
        self.admission = admission
        self.metrics = metrics
        self.health = health_servicer
        self.metrics_server = metrics_server
        self.classifier_factory = classifier_factory
        self.host = self.cfg.listen.rpartition(":")[0]
        self.address = f"{self.host}:{port}"
        self._retiring: set[asyncio.Task[None]] = set()
        self._reload_lock = asyncio.Lock()
        self._stopped = False
        self.resolver = None
        # OpenTelemetry (service_base.tracing), when cfg.otlp_endpoint is set; else None.
        self.tracing: Tracing | None = None
        # The OpenAI-compatible HTTP door (router_svc.http_api), when cfg.http_listen is set.
        self.http = None

    @property
    def state(self) -> RouterState:
        return self.servicer.state

    @property
    def cfg(self) -> RouterConfig:
        return self.servicer.state.cfg

    @property
    def upstream(self) -> UpstreamPool:
        return self.servicer.state.upstream

    @property
    def batcher(self) -> MicroBatcher:
        return self.servicer.state.batcher

    @property
    def chooser(self) -> ExpertChooser:
        return self.servicer.state.chooser

    async def apply(self, cfg: RouterConfig) -> None:
        """Swaps in ``cfg`` (experts, thresholds, classifier, limits) without touching streams in flight.

        Raises (and changes nothing) when the classifier or the token file cannot be loaded or the pool
        cannot be built. Settings fixed at start (listen, workers, metrics_listen, the server's TLS
        files, reflection, whether authentication is on) keep their values; the token file's
        contents are reloaded.
        """
        async with self._reload_lock:
            await asyncio.to_thread(check_files, cfg)
            old = self.servicer.state
            for key in FIXED_AT_START:
                if getattr(cfg, key) != getattr(old.cfg, key):
                    log.warning("%s changed from %r to %r: it takes effect at the next restart",
                                key, getattr(old.cfg, key), getattr(cfg, key))
            tokens = None
            if self.auth is not None and cfg.auth_tokens is not None:
                tokens = await asyncio.to_thread(load_tokens, cfg.auth_tokens)
            classifier = await asyncio.to_thread(self.classifier_factory, cfg.classifier_dir)
            cascade_model = await asyncio.to_thread(load_cascade, cfg, classifier.labels)
            state = await build_state(cfg, classifier, self.metrics, generation=old.generation + 1,
                                      resolver=self.resolver, cascade_model=cascade_model)
            self.servicer.state = state
            if state.cascade is not None:
                log.info("%s", state.cascade.describe())
            elif old.cascade is not None:
                log.info("cascade off (no cascade_model in the new configuration)")
            if tokens is not None:
                self.auth.replace(tokens)
                log.info("token file reloaded: %d token(s)", len(tokens))
            self.servicer.log_prompts = cfg.log_prompts
            self.admission.reconfigure(AdmissionLimits.from_config(cfg))
            task = asyncio.create_task(self._retire(old), name=f"retire-config-{old.generation}")
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)

    async def _retire(self, state: RouterState) -> None:
        """Closes an old generation once its last stream has ended (or at shutdown, when cancelled)."""
        try:
            await state.wait_idle()
        finally:
            await state.close()
            if self.native is not None:
                self.native.keep_channels({replica.address for replica in self.upstream.replicas()})

    async def stop(self, grace: float | None = None) -> None:
        """NOT_SERVING, refuse new calls, let in-flight streams finish within ``grace``, close upstreams."""
        if self._stopped:
            return
        self._stopped = True
        grace = self.cfg.grace_s if grace is None else grace
        await self.health.enter_graceful_shutdown()
        doors = [self.http.stop(grace)] if self.http is not None else []
        if self.native is not None:
            # The public port drains first; the Python server behind it has nothing left to wait for.
            await asyncio.gather(self.native.stop(grace), *doors)
            await self.server.stop(0)
        else:
            await asyncio.gather(self.server.stop(grace), *doors)
        for task in list(self._retiring):
            task.cancel()
        await asyncio.gather(*self._retiring, return_exceptions=True)
        await self.servicer.state.close()
        if self.metrics_server is not None:
            self.metrics_server.close()
        if self.tracing is not None:  # the spans still buffered go out before the process ends
            await asyncio.to_thread(self.tracing.shutdown)

    async def wait_for_termination(self) -> None:
        await self.server.wait_for_termination()


async def start(cfg: RouterConfig, *, classifier: ScoringClassifier | None = None,
                classifier_factory: ClassifierFactory | None = None, reuse_port: bool = False,
                registry: CollectorRegistry | None = None, serve_metrics: bool = True,
                resolver=None, span_exporter=None) -> RunningRouter:
    """Builds and starts the router.

    ``classifier`` (tests) is used for every configuration; otherwise ``classifier_factory``
    (default ``Classifier.load``) loads ``cfg.classifier_dir`` at start and at each reload.
    ``serve_metrics=False``: a worker whose parent serves the metrics endpoint.
    ``span_exporter`` (tests, benchmarks): trace to this OpenTelemetry exporter instead of
    ``cfg.otlp_endpoint``.
    """
    if classifier is not None:
        fixed = classifier
        classifier_factory = lambda _directory: fixed
    elif classifier_factory is None:
        classifier_factory = load_classifier
    await asyncio.to_thread(check_files, cfg)
    metrics = RouterMetrics(registry)
    first = await asyncio.to_thread(classifier_factory, cfg.classifier_dir)
    first_cascade = await asyncio.to_thread(load_cascade, cfg, first.labels)
    tracing = start_tracing(TRACE_SERVICE_NAME, cfg.otlp_endpoint, exporter=span_exporter)
    relay = choose_relay(cfg.relay)
    auth = token_auth(cfg, metrics)
    credentials = listen_credentials(cfg)
    tls = native_tls(cfg) if relay == "native" else None
    server = grpc.aio.server(options=server_options(cfg, reuse_port=reuse_port and relay == "python"),
                             interceptors=(auth,) if auth is not None else None)
    native = None
    if relay == "native":
        # The Python server answers what the native server forwards, on a private socket.
        state = await build_state(cfg, first, metrics, resolver=resolver, cascade_model=first_cascade)
        admission = Admission(AdmissionLimits.from_config(cfg))
        servicer = RouterServicer(state, admission, metrics, log_prompts=cfg.log_prompts, auth=auth,
                                  tracing=tracing)
        native = servicer.native = NativeRelay(servicer)
        try:
            port = server.add_insecure_port(native.private_address)
        except RuntimeError:
            port = 0
        if port == 0:
            await state.close()
            raise BindError(f"cannot listen on the private socket {native.private_address}")
    else:
        try:
            if credentials is None:
                port = server.add_insecure_port(cfg.listen)
            else:
                port = server.add_secure_port(cfg.listen, credentials)
        except RuntimeError:  # grpcio 1.85 raises where older releases returned 0
            port = 0
        if port == 0:
            raise BindError(f"cannot listen on {cfg.listen}: address in use or not available")
        state = await build_state(cfg, first, metrics, resolver=resolver, cascade_model=first_cascade)
        admission = Admission(AdmissionLimits.from_config(cfg))
        servicer = RouterServicer(state, admission, metrics, log_prompts=cfg.log_prompts, tracing=tracing)
    server.add_generic_rpc_handlers((servicer.generic_handler(),))
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if cfg.reflection:
        reflection.enable_server_reflection(
            (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
            server,
        )
    metrics_server = None
    try:
        if serve_metrics and cfg.metrics_listen:
            metrics_server = MetricsServer(cfg.metrics_listen, metrics.registry)
        await server.start()
        if native is not None:
            try:
                port = native.start(cfg.listen, threads=relay_threads(cfg), tls=tls,
                                    max_message_bytes=cfg.max_message_bytes, reuse_port=reuse_port)
            except OSError as exc:
                raise BindError(str(exc)) from None
    except BaseException:
        if native is not None:
            await native.stop(0)
        await server.stop(0)
        if metrics_server is not None:
            metrics_server.close()
        await state.close()
        if tracing is not None:
            tracing.shutdown()
        raise
    running = RunningRouter(server, port, servicer, admission, metrics, health_servicer, classifier_factory,
                            metrics_server, auth, native)
    running.resolver = resolver
    running.tracing = tracing
    if cfg.http_listen:  # before SERVING: a probe that sees SERVING finds both doors open
        from router_svc.http_api import HttpFrontDoor

        running.http = HttpFrontDoor(servicer, admission, metrics, auth)
        try:
            await running.http.start(cfg, reuse_port=reuse_port)
        except BaseException:
            running.http = None
            await running.stop(0)
            raise
    for service in ("", SERVICE_NAME):
        await health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
    security = "mutual TLS" if cfg.mutual_tls else "TLS" if cfg.tls else "plaintext"
    relay_text = f"native relay, {relay_threads(cfg)} thread(s)" if native is not None else "Python relay"
    log.info("router listening on %s; %s; experts: %s; %s%s", running.address, relay_text,
             ", ".join(f"{e.name}={e.describe()}" for e in cfg.experts), security,
             ", tokens required" if auth is not None else "")
    if running.state.cascade is not None:
        log.info("%s", running.state.cascade.describe())
    return running


async def serve(cfg: RouterConfig, *, load_config: Callable[[], RouterConfig] | None = None,
                watch_path: str | None = None, reuse_port: bool = False, serve_metrics: bool = True,
                ready: Callable[[RunningRouter], None] | None = None) -> None:
    """Runs the router until SIGTERM or SIGINT, then drains and returns.

    ``load_config`` rebuilds the config from its sources; with it, SIGHUP and a change of
    ``watch_path`` reload the router (a bad config is logged and the running one kept).
    """
    from router_svc.reload import ConfigReloader

    running = await start(cfg, reuse_port=reuse_port, serve_metrics=serve_metrics)
    reloader = None
    if load_config is not None:
        reloader = ConfigReloader(running, load_config, watch_path=watch_path, poll_s=cfg.reload_poll_s)
        reloader.start()
    stop_requested = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop_requested.set)
    if reloader is not None:
        loop.add_signal_handler(signal.SIGHUP, reloader.request, "SIGHUP")
    if ready is not None:
        ready(running)
    try:
        await stop_requested.wait()
        log.info("stopping: draining %d in-flight stream(s) for up to %.1f s",
                 running.state.active, running.cfg.grace_s)
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(signum)
        if reloader is not None:
            await reloader.close()
        await running.stop(running.cfg.grace_s)
        log.info("stopped")
