"""Prometheus metrics of the router, and the HTTP endpoint that serves them.

Each router has its own ``CollectorRegistry`` (several routers can live in one test process). With
``--workers N`` the workers write to prometheus-client's multiprocess files (the parent sets
``PROMETHEUS_MULTIPROC_DIR`` for them) and the parent alone serves the aggregate.

The relay loop stays cheap: labelled children are bound once per expert, and per-frame numbers
(frames, inter-token gaps) are counted in local variables and added once per stream
(``add_observations``). Measured on this machine: a bound ``Histogram.observe`` costs ~2.7 us
(~9.7 us in multiprocess mode), a local bucket count ~0.3 us.

prometheus-client (0.26) has no public way to add many observations at once, so ``add_observations``
adds to a Histogram child's bucket and sum values itself. That reaches into the library's
internals, deliberately: the public alternatives are one ``observe`` per frame (the cost above) or a
custom collector, which the multiprocess mode of ``--workers`` cannot serve. The unit tests check the
result against ``observe`` in both modes, and it falls back to ``observe`` if the internals change.
"""
from __future__ import annotations

import bisect
import logging
import socketserver
import threading
from collections.abc import Sequence
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app

log = logging.getLogger("router_svc.metrics")

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
ITL_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56)
CLASSIFY_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1)
# The cascade model costs milliseconds to tens of milliseconds per prompt, plus its queue.
CASCADE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56)
# Bucket upper bounds as Histogram stores them (the last is +Inf), for local counting.
ITL_BOUNDS = (*ITL_BUCKETS, float("inf"))


def itl_bucket(gap: float) -> int:
    """The index of the ITL bucket ``gap`` falls in (same rule as Histogram.observe: value <= bound)."""
    return bisect.bisect_left(ITL_BOUNDS, gap)


def add_observations(child, counts: Sequence[int], total: float) -> None:
    """Adds per-bucket counts observed locally to a Histogram child in one step per non-empty bucket."""
    buckets = getattr(child, "_buckets", None)
    if buckets is None or len(buckets) != len(counts) or not hasattr(child, "_sum"):
        # prometheus-client changed its internals: observe each bucket's upper bound (approximate sum).
        for bound, count in zip(ITL_BOUNDS, counts):
            for _ in range(count):
                child.observe(bound if bound != float("inf") else ITL_BUCKETS[-1])
        return
    for i, count in enumerate(counts):
        if count:
            buckets[i].inc(count)
    child._sum.inc(total)


class ExpertMetrics:
    """One expert's labelled children, bound once."""

    __slots__ = ("_name", "_parent", "_requests", "frames", "in_flight", "itl", "ttft")

    def __init__(self, parent: RouterMetrics, name: str) -> None:
        self._parent = parent
        self._name = name
        self.ttft = parent.ttft.labels(name)
        self.itl = parent.inter_token.labels(name)
        self.frames = parent.frames.labels(name)
        self.in_flight = parent.in_flight.labels(name)
        self._requests: dict[grpc.StatusCode, object] = {}

    def request_done(self, code: grpc.StatusCode) -> None:
        child = self._requests.get(code)
        if child is None:
            child = self._requests[code] = self._parent.requests.labels(self._name, code.name)
        child.inc()


class RouterMetrics:
    """The router's metrics in one registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.requests = Counter("router_requests", "Generate requests finished, by expert and gRPC status code",
                                ["expert", "code"], registry=r)
        self.classification = Histogram("router_classification_seconds",
                                         "Time to score one prompt (queueing in the micro-batcher included)",
                                         buckets=CLASSIFY_BUCKETS, registry=r)
        self.ttft = Histogram("router_ttft_seconds",
                              "Time from request receipt to the first relayed frame, at the router",
                              ["expert"], buckets=LATENCY_BUCKETS, registry=r)
        self.inter_token = Histogram("router_inter_token_seconds", "Gaps between relayed frames of a stream",
                                     ["expert"], buckets=ITL_BUCKETS, registry=r)
        self.frames = Counter("router_frames_relayed", "Response frames relayed to clients", ["expert"],
                              registry=r)
        self.in_flight = Gauge("router_in_flight_streams", "Generate streams being relayed now", ["expert"],
                               registry=r, multiprocess_mode="livesum")
        self.upstream_errors = Counter("router_upstream_errors",
                                       "Upstream calls that ended in an error (retried ones included)",
                                       ["expert", "code"], registry=r)
        self.ejections = Counter("router_ejections", "Replicas ejected after consecutive failures", ["expert"],
                                 registry=r)
        self.failovers = Counter("router_failovers",
                                 "Requests sent to another expert because theirs had no healthy replica",
                                 ["expert", "to"], registry=r)
        self.rejections = Counter("router_admission_rejections",
                                  "Requests refused with RESOURCE_EXHAUSTED by admission control", ["reason"],
                                  registry=r)
        self.cascade_prompts = Counter(
            "router_cascade_prompts",
            "Low-confidence prompts sent to the cascade model (--cascade-model), by outcome: scored, "
            "skipped_busy (its bound was reached: the fast answer stood), error (it failed: the fast answer stood)",
            ["outcome"], registry=r)
        self.cascade_latency = Histogram("router_cascade_seconds",
                                         "Time to rescore one prompt with the cascade model (its queue included)",
                                         buckets=CASCADE_BUCKETS, registry=r)
        self.reloads = Counter("router_config_reloads", "Configuration reloads, by result", ["result"],
                               registry=r)
        self._experts: dict[str, ExpertMetrics] = {}

    def expert(self, name: str) -> ExpertMetrics:
        metrics = self._experts.get(name)
        if metrics is None:
            metrics = self._experts[name] = ExpertMetrics(self, name)
        return metrics

    def rejected_before_routing(self, code: grpc.StatusCode) -> None:
        self.requests.labels("", code.name).inc()

    def generate_done(self, expert: str | None, relayed: bool, code: grpc.StatusCode, ttft: float | None,
                      frames: int, gaps: Sequence[int], gap_sum: float) -> None:
        """One Generate's accounting, once at its end, whichever door and relay served it.

        ``expert``: where it was routed (None: refused before routing). ``relayed``: an upstream
        stream was opened for it, which counted it in ``in_flight``; only then do its time to first
        token, frames and inter-token gaps (``gaps`` in ``ITL_BOUNDS`` buckets) exist.
        """
        if expert is None:
            self.rejected_before_routing(code)
            return
        metrics = self.expert(expert)
        if relayed:
            metrics.in_flight.dec()
            if ttft is not None:
                metrics.ttft.observe(ttft)
            if frames:
                metrics.frames.inc(frames)
            if frames > 1:
                add_observations(metrics.itl, gaps, gap_sum)
        metrics.request_done(code)

    def upstream_error(self, expert: str, code: grpc.StatusCode) -> None:
        self.upstream_errors.labels(expert, code.name).inc()

    def ejection(self, expert: str) -> None:
        self.ejections.labels(expert).inc()


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args) -> None:
        pass


class _ThreadingWSGIServer(socketserver.ThreadingMixIn, WSGIServer):
    """One thread per scrape, so a client that connects and sends nothing blocks no one else."""

    daemon_threads = True


class MetricsServer:
    """``GET /metrics`` over HTTP in a daemon thread (prometheus-client's WSGI app)."""

    def __init__(self, listen: str, registry: CollectorRegistry) -> None:
        host, _, port = listen.rpartition(":")
        host = host.strip("[]")
        self._server = make_server(host, int(port), make_wsgi_app(registry), _ThreadingWSGIServer,
                                   handler_class=_QuietHandler)
        self.port = self._server.server_port
        self.address = f"{host}:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics-http", daemon=True)
        self._thread.start()
        log.info("metrics on http://%s/metrics", self.address)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def multiprocess_registry(path: str) -> CollectorRegistry:
    """A registry that aggregates the metrics the worker processes write under ``path``."""
    from prometheus_client import multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=path)
    return registry
