"""An expert lets a router ping every second on a connection that carries no data.

A router's health-watch channel sends no data for long stretches; its keepalive pings are what
notice a cut-off expert. gRPC's default server policy answers a client that pings more often than
every 5 minutes without data with GOAWAY ``too_many_pings`` after two strikes, so the expert sets
``grpc.http2.min_ping_interval_without_data_ms`` (the name gRPC reads; a misspelt option is
silently ignored, which is what this test guards against).
"""
from __future__ import annotations

import asyncio

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from expert_svc.server import start
from tests.helpers import synthetic_config

pytestmark = pytest.mark.slow

# Pings every 1.2 s with no data: several strikes within the watch below under gRPC's default policy.
PINGING_CLIENT = [
    ("grpc.keepalive_time_ms", 1_200),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
]
WATCH_S = 6.0


async def test_a_health_watch_with_keepalive_every_1_2_s_is_not_sent_away() -> None:
    expert = await start(synthetic_config(name="pinged"))
    try:
        async with grpc.aio.insecure_channel(expert.address, options=PINGING_CLIENT) as channel:
            call = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""))
            first = await call.read()
            assert first.status == health_pb2.HealthCheckResponse.SERVING

            async def read_on() -> object:
                return await call.read()

            # The watch stays open (nothing more to say) for the whole window: no GOAWAY, no UNAVAILABLE.
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(read_on(), timeout=WATCH_S)
            call.cancel()
    finally:
        await expert.stop(0)
