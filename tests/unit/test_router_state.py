"""A replaced configuration generation closes when its last call ends: woken by that call, not polled."""
from __future__ import annotations

import asyncio

from router_svc.servicer import RouterState


async def turns(n: int = 20) -> None:
    """A few turns of the event loop: enough for a woken waiter, far less than any polling interval."""
    for _ in range(n):
        await asyncio.sleep(0)


async def test_wait_idle_returns_when_the_last_call_ends() -> None:
    # Only the call count matters here: the generation's parts are not used.
    state = RouterState(cfg=None, chooser=None, upstream=None, batcher=None)
    assert state.active == 0
    await asyncio.wait_for(state.wait_idle(), timeout=5)  # idle from the start
    state.active += 1
    state.active += 1
    waiter = asyncio.create_task(state.wait_idle())
    await turns()
    assert not waiter.done()
    state.active -= 1
    await turns()
    assert not waiter.done()  # one call still uses it
    state.active -= 1
    await turns()
    assert waiter.done()
    await waiter


async def test_a_call_that_starts_and_ends_again_keeps_the_waiter_correct() -> None:
    state = RouterState(cfg=None, chooser=None, upstream=None, batcher=None)
    state.active += 1
    waiter = asyncio.create_task(state.wait_idle())
    await turns()
    state.active -= 1
    state.active += 1  # a new call before the waiter ran: it must keep waiting
    await turns()
    assert not waiter.done()
    state.active -= 1
    await turns()
    assert waiter.done()
