"""Metrics: locally counted inter-token gaps add up to exactly what Histogram.observe would record."""
from __future__ import annotations

import random

from prometheus_client import CollectorRegistry, Histogram, generate_latest

from router_svc.metrics import ITL_BOUNDS, ITL_BUCKETS, RouterMetrics, add_observations, itl_bucket


def test_bulk_add_matches_observe() -> None:
    gaps = [random.Random(7).uniform(0, 3) for _ in range(500)] + list(ITL_BUCKETS)  # edges included
    direct_registry, bulk_registry = CollectorRegistry(), CollectorRegistry()
    direct = Histogram("itl", "x", buckets=ITL_BUCKETS, registry=direct_registry)
    bulk = Histogram("itl", "x", buckets=ITL_BUCKETS, registry=bulk_registry)
    for gap in gaps:
        direct.observe(gap)
    counts = [0] * len(ITL_BOUNDS)
    for gap in gaps:
        counts[itl_bucket(gap)] += 1
    add_observations(bulk, counts, sum(gaps))

    def lines(registry):
        return [line for line in generate_latest(registry).decode().splitlines() if "_created" not in line]

    assert lines(direct_registry) == lines(bulk_registry)


def test_router_metrics_bind_children_once_and_have_own_registry() -> None:
    first, second = RouterMetrics(), RouterMetrics()  # two routers in one process: no name clash
    assert first.expert("math") is first.expert("math")
    first.expert("math").frames.inc(3)
    assert first.registry.get_sample_value("router_frames_relayed_total", {"expert": "math"}) == 3
    assert second.registry.get_sample_value("router_frames_relayed_total", {"expert": "math"}) is None


MULTIPROCESS_CHECK = """
import random, sys
from prometheus_client import CollectorRegistry, Histogram, generate_latest, multiprocess
from router_svc.metrics import ITL_BOUNDS, ITL_BUCKETS, add_observations, itl_bucket

gaps = [random.Random(11).uniform(0, 3) for _ in range(300)] + list(ITL_BUCKETS)
direct = Histogram("itl_direct", "x", buckets=ITL_BUCKETS)
bulk = Histogram("itl_bulk", "x", buckets=ITL_BUCKETS)
for gap in gaps:
    direct.observe(gap)
counts = [0] * len(ITL_BOUNDS)
for gap in gaps:
    counts[itl_bucket(gap)] += 1
add_observations(bulk, counts, sum(gaps))
registry = CollectorRegistry()
multiprocess.MultiProcessCollector(registry)
text = generate_latest(registry).decode()
def lines(name):
    return sorted(line.replace(name, "itl") for line in text.splitlines() if line.startswith(name + "_"))
assert lines("itl_direct") == lines("itl_bulk") and len(lines("itl_bulk")) == len(ITL_BOUNDS) + 2, text
print("ok", len(lines("itl_bulk")))
"""


def test_bulk_add_matches_observe_in_multiprocess_mode(tmp_path) -> None:
    """With ``--workers`` the values live in prometheus-client's multiprocess files (another value
    class, chosen at import from PROMETHEUS_MULTIPROC_DIR): the bulk add must agree there too."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", MULTIPROCESS_CHECK], cwd=root, env=env, capture_output=True, check=False,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["ok", str(len(ITL_BOUNDS) + 2)]


def test_generate_done_accounts_refused_routed_and_relayed_requests() -> None:
    import grpc

    metrics = RouterMetrics()
    sample = metrics.registry.get_sample_value
    metrics.generate_done(None, False, grpc.StatusCode.INVALID_ARGUMENT, None, 0, (), 0.0)
    assert sample("router_requests_total", {"expert": "", "code": "INVALID_ARGUMENT"}) == 1

    # Routed, but no upstream stream was opened (e.g. no healthy replica): counted, nothing observed.
    metrics.generate_done("math", False, grpc.StatusCode.UNAVAILABLE, None, 0, (), 0.0)
    assert sample("router_requests_total", {"expert": "math", "code": "UNAVAILABLE"}) == 1
    assert sample("router_ttft_seconds_count", {"expert": "math"}) == 0

    # Relayed: the stream leaves in_flight, and its time to first token, frames and gaps are recorded.
    metrics.expert("math").in_flight.inc()
    gaps = [0] * len(ITL_BOUNDS)
    gaps[itl_bucket(0.02)] = 2
    metrics.generate_done("math", True, grpc.StatusCode.OK, 0.05, 3, gaps, 0.04)
    assert sample("router_in_flight_streams", {"expert": "math"}) == 0
    assert sample("router_ttft_seconds_count", {"expert": "math"}) == 1
    assert sample("router_frames_relayed_total", {"expert": "math"}) == 3
    assert sample("router_inter_token_seconds_count", {"expert": "math"}) == 2
    assert sample("router_requests_total", {"expert": "math", "code": "OK"}) == 1
