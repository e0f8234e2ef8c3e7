"""Admission control: bounds overall and per expert, the FIFO queue, its timeout, and permit moves."""
from __future__ import annotations

import asyncio

import grpc
import pytest

from router_svc.admission import Admission, AdmissionLimits
from router_svc.errors import Overloaded


async def test_bounds_refuse_at_once_with_a_retry_hint() -> None:
    admission = Admission(AdmissionLimits(max_in_flight=2, max_in_flight_per_expert=1, retry_after_ms=150))
    math = await admission.acquire("math")
    with pytest.raises(Overloaded) as info:
        await admission.acquire("math")
    assert info.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert info.value.trailing_metadata == (("retry-after-ms", "150"),)
    assert "expert 'math' is at capacity (1 streams in flight, max_in_flight_per_expert)" in str(info.value)
    law = await admission.acquire("law")
    with pytest.raises(Overloaded, match="the router is at capacity"):
        await admission.acquire("code")
    math.release()
    math.release()  # idempotent
    assert (admission.total, admission.per_expert["math"]) == (1, 0)
    law.release()
    assert admission.total == 0


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_queue_is_fifo_and_skips_waiters_whose_expert_is_full() -> None:
    admission = Admission(AdmissionLimits(max_in_flight=2, max_in_flight_per_expert=1, queue_size=3,
                                          queue_timeout_s=5))
    held_math = await admission.acquire("math")
    held_law = await admission.acquire("law")
    order: list[str] = []

    async def wait(expert: str, tag: str):
        permit = await admission.acquire(expert)
        order.append(tag)
        return permit

    waiting = [asyncio.create_task(wait("math", "math-1")), asyncio.create_task(wait("code", "code-1")),
               asyncio.create_task(wait("code", "code-2"))]
    await asyncio.sleep(0)
    assert admission.queued == 3
    with pytest.raises(Overloaded, match="the queue is full"):
        await admission.acquire("code")
    held_law.release()  # a global slot: math-1 is first but math is still full, so code-1 goes
    await settle()
    assert order == ["code-1"]
    held_math.release()
    await settle()
    assert order == ["code-1", "math-1"]
    for task in waiting[:2]:
        (await task).release()
    (await waiting[2]).release()
    assert order == ["code-1", "math-1", "code-2"] and admission.total == 0


async def test_queue_timeout_and_cancel_leave_no_slot_behind() -> None:
    admission = Admission(AdmissionLimits(max_in_flight=1, queue_size=2, queue_timeout_s=0.05))
    held = await admission.acquire("math")
    with pytest.raises(Overloaded, match="no slot freed within 0.05 s"):
        await admission.acquire("math")
    assert admission.queued == 0
    admission.reconfigure(AdmissionLimits(max_in_flight=1, queue_size=2, queue_timeout_s=5))
    task = asyncio.create_task(admission.acquire("math"))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    held.release()
    assert admission.total == 0 and admission.queued == 0


async def test_permit_moves_only_to_an_expert_with_room() -> None:
    admission = Admission(AdmissionLimits(max_in_flight_per_expert=1))
    other = await admission.acquire("general")
    permit = await admission.acquire("math")
    assert not permit.move("general")
    other.release()
    assert permit.move("general") and permit.expert == "general"
    assert (admission.total, admission.per_expert["math"], admission.per_expert["general"]) == (1, 0, 1)
    permit.release()
    assert admission.total == 0


async def test_a_move_lets_a_waiter_for_the_freed_expert_in() -> None:
    admission = Admission(AdmissionLimits(max_in_flight=3, max_in_flight_per_expert=1, queue_size=1,
                                          queue_timeout_s=5.0))
    permit = await admission.acquire("math")
    waiter = asyncio.create_task(admission.acquire("math"))
    await settle()
    assert admission.queued == 1 and not waiter.done()
    assert permit.move("general")  # the stream fails over: its math slot is free now
    second = await asyncio.wait_for(waiter, 1.0)
    assert (admission.total, admission.per_expert["math"], admission.per_expert["general"]) == (2, 1, 1)
    second.release()
    permit.release()
    assert (admission.total, admission.per_expert["math"], admission.per_expert["general"]) == (0, 0, 0)


async def test_full_router_refuses_before_any_routing_work_unless_the_queue_has_room() -> None:
    admission = Admission(AdmissionLimits(max_in_flight=1, queue_size=1, queue_timeout_s=5))
    admission.refuse_if_full()  # room: no error
    held = await admission.acquire("math")
    admission.refuse_if_full()  # full, but a queue place is free: the request may wait
    waiter = asyncio.create_task(admission.acquire("law"))
    await asyncio.sleep(0)
    with pytest.raises(Overloaded, match="the router is at capacity .* and the queue is full"):
        admission.refuse_if_full()
    held.release()
    (await waiter).release()
    admission.refuse_if_full()
    assert admission.total == 0
