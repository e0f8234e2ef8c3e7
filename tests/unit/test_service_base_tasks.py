"""cancel_and_wait: the task's own cancellation is absorbed, the caller's is not."""
from __future__ import annotations

import asyncio

import pytest

from service_base.tasks import cancel_and_wait


async def test_the_tasks_cancellation_is_absorbed() -> None:
    task = asyncio.create_task(asyncio.sleep(3600))
    await asyncio.sleep(0)
    await cancel_and_wait(task)
    assert task.cancelled()
    await cancel_and_wait(task)  # already done: nothing to wait for


async def test_a_cancellation_of_the_caller_propagates() -> None:
    release = asyncio.Event()

    async def slow_to_stop() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            await release.wait()  # cleanup that takes a while, as closing a channel does
            raise

    background = asyncio.create_task(slow_to_stop())
    steps: list[str] = []

    async def shutdown() -> None:
        await cancel_and_wait(background)
        steps.append("carried on after being cancelled")

    stopping = asyncio.create_task(shutdown())
    while not background.cancelling():  # the shutdown has asked the task to stop and now waits
        await asyncio.sleep(0)
    stopping.cancel()  # the shutdown itself is cancelled while it waits
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await stopping
    assert stopping.cancelled() and steps == [] and background.cancelled()


async def test_an_error_the_task_ends_with_propagates() -> None:
    async def fails_on_cancel() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            raise RuntimeError("cleanup failed") from None

    task = asyncio.create_task(fails_on_cancel())
    await asyncio.sleep(0)
    with pytest.raises(RuntimeError, match="cleanup failed"):
        await cancel_and_wait(task)
