"""Replica choice: healthy replicas only, fewest outstanding requests first, ties rotate."""
from __future__ import annotations

import asyncio

import grpc
import pytest

from router_svc.config import UpstreamExpert
from router_svc.errors import ExpertUnavailable, UnknownExpert, UpstreamError
from router_svc.upstream import (
    ExpertPool,
    UpstreamFailure,
    UpstreamPool,
    UpstreamSettings,
    channel_options,
    release_replica,
)

SETTINGS = UpstreamSettings(max_message_bytes=1 << 20)


@pytest.fixture
async def pool():
    # Channels connect lazily: nothing touches the network until a call is made.
    expert_pool = ExpertPool(UpstreamExpert("math", ("10.0.0.1:1", "10.0.0.2:1", "10.0.0.3:1")), SETTINGS)
    yield expert_pool
    for replica in expert_pool.replicas:
        await replica.close()


async def test_pick_prefers_fewest_outstanding(pool: ExpertPool) -> None:
    a, b, c = pool.replicas
    a.outstanding, b.outstanding, c.outstanding = 3, 1, 2
    assert pool.pick() is b
    b.outstanding = 5
    assert pool.pick() is c


async def test_ties_rotate(pool: ExpertPool) -> None:
    picks = [pool.pick().address for _ in range(6)]
    assert picks == ["10.0.0.1:1", "10.0.0.2:1", "10.0.0.3:1"] * 2


async def test_unhealthy_and_excluded_replicas_are_skipped(pool: ExpertPool) -> None:
    a, b, c = pool.replicas
    a.outstanding = 0
    b.outstanding = c.outstanding = 9
    a.eject("connection refused")
    assert pool.pick() in (b, c)
    assert pool.pick(exclude=[b]) is c
    assert pool.pick(exclude=[b, c]) is None
    assert pool.healthy
    b.eject("x")
    c.eject("y")
    assert not pool.healthy and pool.pick() is None
    error = pool.unavailable()
    assert isinstance(error, ExpertUnavailable) and error.code == grpc.StatusCode.UNAVAILABLE
    assert "expert 'math' is unavailable at 10.0.0.1:1, 10.0.0.2:1, 10.0.0.3:1" in str(error)
    assert "connection refused" in str(error)


@pytest.mark.parametrize("code", [grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DATA_LOSS,
                                  grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.DEADLINE_EXCEEDED])
async def test_request_level_errors_never_eject_a_replica(pool: ExpertPool, code: grpc.StatusCode) -> None:
    a = pool.replicas[0]
    for _ in range(3 * SETTINGS.eject_after):
        a.outstanding += 1
        release_replica(a, code)
    assert a.healthy and a.ejections == 0 and a.outstanding == 0


async def test_transport_failures_eject_a_replica(pool: ExpertPool) -> None:
    a = pool.replicas[0]
    for _ in range(SETTINGS.eject_after):
        a.outstanding += 1
        release_replica(a, grpc.StatusCode.UNAVAILABLE)
    assert not a.healthy and a.ejections == 1


async def test_internal_before_the_first_frame_does_not_eject() -> None:
    upstream = UpstreamPool([UpstreamExpert("math", ("10.0.0.1:1",))], settings=SETTINGS)
    replica = upstream.expert("math").replicas[0]

    async def bad_prompt(_replica, _remaining):
        return UpstreamFailure(grpc.StatusCode.INTERNAL, "generation failed on this prompt")

    try:
        for _ in range(3 * SETTINGS.eject_after):
            with pytest.raises(UpstreamError):
                await upstream.try_replicas("math", None, bad_prompt)
        assert replica.healthy and replica.ejections == 0 and replica.outstanding == 0
    finally:
        await upstream.close()


def failing_pool(addresses: int, percent: int, caplog: pytest.LogCaptureFixture) -> ExpertPool:
    caplog.set_level("WARNING", logger="router_svc.upstream")
    settings = UpstreamSettings(max_message_bytes=1 << 20, eject_after=1, max_ejected_percent=percent)
    replicas = tuple(f"10.0.0.{i}:1" for i in range(1, addresses + 1))
    return ExpertPool(UpstreamExpert("math", replicas), settings)


def fail(replica, times: int = 1) -> None:
    for _ in range(times):
        replica.outstanding += 1
        release_replica(replica, grpc.StatusCode.UNAVAILABLE)


async def test_ejection_is_capped_at_a_share_of_the_pool(caplog: pytest.LogCaptureFixture) -> None:
    pool = failing_pool(4, 50, caplog)
    try:
        a, b, c, d = pool.replicas
        fail(a)
        fail(b)
        assert not a.healthy and not b.healthy  # 2 of 4: the cap
        fail(c, times=5)
        assert c.healthy and c.ejections == 0 and pool.pick(exclude=[d]) is c  # over the cap: stays in
        held = [r for r in caplog.records if "max_ejected_percent=50" in r.getMessage()]
        assert len(held) == 1 and "10.0.0.3:1" in held[0].getMessage()  # logged once, not per failure
        a.ejected_until = b.ejected_until = 0.0  # a's and b's backoff ended
        fail(c)
        assert not c.healthy and c.ejections == 1  # room again under the cap
    finally:
        await pool.close()


def test_the_cap_comes_from_the_router_config() -> None:
    from router_svc.config import RouterConfig

    cfg = RouterConfig(experts=(UpstreamExpert("general", ("h:1",)),), max_ejected_percent=20)
    assert UpstreamSettings.from_config(cfg).max_ejected_percent == 20


@pytest.mark.parametrize(("addresses", "percent", "ejected"), [(1, 50, 1), (3, 50, 1), (3, 100, 3), (5, 0, 0),
                                                                (10, 10, 1), (10, 30, 3)])
async def test_ejection_cap_rounds_down_but_allows_one(addresses: int, percent: int, ejected: int,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    pool = failing_pool(addresses, percent, caplog)
    try:
        for replica in pool.replicas:
            fail(replica, times=2)
        assert sum(replica.ejected for replica in pool.replicas) == ejected
    finally:
        await pool.close()


async def test_unknown_expert_lists_the_known_ones() -> None:
    upstream = UpstreamPool([UpstreamExpert("math", ("h:1",)), UpstreamExpert("law", ("h:2",))],
                            max_message_bytes=1 << 20, health_interval_s=1.0)
    try:
        with pytest.raises(UnknownExpert, match="unknown expert 'poetry'; known experts: math, law"):
            upstream.expert("poetry")
        assert [name for name, _ in upstream.status()] == ["math", "law"]
    finally:
        await upstream.close()


def test_channel_options_bound_messages() -> None:
    options = dict(channel_options(12345))
    assert options["grpc.max_send_message_length"] == options["grpc.max_receive_message_length"] == 12345
    assert options["grpc.keepalive_time_ms"] > 0


async def test_power_of_two_choices_with_many_replicas() -> None:
    import random

    from router_svc.upstream import P2C_THRESHOLD

    addresses = tuple(f"10.0.1.{i}:1" for i in range(P2C_THRESHOLD + 4))
    pool = ExpertPool(UpstreamExpert("math", addresses), SETTINGS, rng=random.Random(3))
    try:
        for i, replica in enumerate(pool.replicas):
            replica.outstanding = i
        picks = [pool.pick() for _ in range(400)]
        # Each pick is the lesser of two random replicas: never the busiest, often the idle ones.
        assert pool.replicas[-1] not in picks
        assert len({id(p) for p in picks}) >= len(addresses) - 2
        counts = [sum(p is r for p in picks) for r in pool.replicas]
        assert counts[0] > counts[-2]
    finally:
        await pool.close()


async def test_set_addresses_keeps_known_replicas_and_retires_the_rest() -> None:
    pool = ExpertPool(UpstreamExpert("math", dns="math.test:1"), SETTINGS)
    pool.set_addresses(["10.0.0.1:1", "10.0.0.2:1"])
    first = pool.replicas[0]
    first.outstanding = 1  # a stream in flight on it
    pool.set_addresses(["10.0.0.2:1", "10.0.0.3:1"])
    assert [r.address for r in pool.replicas] == ["10.0.0.2:1", "10.0.0.3:1"]
    assert first not in pool.replicas
    for _ in range(20):
        await asyncio.sleep(0)
    assert not first._closing  # still open for its stream
    first.outstanding = 0
    # Woken by the last stream's end, not a polling interval: a few turns of the event loop suffice.
    for _ in range(20):
        if first._closing:
            break
        await asyncio.sleep(0)
    assert first._closing
    await pool.close()


async def test_unknown_dns_name_is_unavailable_with_the_reason() -> None:
    from router_svc.upstream import UpstreamSettings

    async def failing(host: str, port: int):
        raise OSError(-2, "Name or service not known")

    pool = ExpertPool(UpstreamExpert("math", dns="nowhere.test:1"), UpstreamSettings(), resolver=failing)
    await pool.start()
    try:
        error = pool.unavailable()
        assert "expert 'math' is unavailable at dns:///nowhere.test:1" in str(error)
        assert "DNS lookup of nowhere.test failed: Name or service not known" in str(error)
    finally:
        await pool.close()
