"""``native_relay.start_now``: a Generate decision starts in the relay's event callback, not a loop turn later.

The helper hands a half-run coroutine to an asyncio task, so these tests pin down that the task
still behaves as an ordinary one: the result, exceptions, cancellation at the await, the current
task and timeouts inside the first step, and contextvars kept per call.
"""
from __future__ import annotations

import asyncio
import contextvars

import pytest

from router_svc.native_relay import start_now

request_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_var", default="unset")


def run_in_callback(make_coro) -> tuple[list[str], asyncio.Task]:
    """Starts ``make_coro(steps)`` with start_now from a plain loop callback (as ``_drain`` is)."""

    async def main() -> tuple[list[str], asyncio.Task]:
        loop = asyncio.get_running_loop()
        steps: list[str] = []
        started = loop.create_future()

        def callback() -> None:
            started.set_result(start_now(loop, make_coro(steps)))
            steps.append("callback returned")

        loop.call_soon(callback)
        task = await started
        try:
            await task
        except BaseException:  # noqa: BLE001 - the tests look at the task itself
            pass
        return steps, task

    return asyncio.run(main())


def test_the_first_step_runs_inside_the_callback_and_the_rest_in_the_task() -> None:
    async def decision(steps: list[str]) -> str:
        steps.append("first step")
        await asyncio.sleep(0.01)
        steps.append("after the wait")
        return "proceeded"

    steps, task = run_in_callback(decision)
    assert steps == ["first step", "callback returned", "after the wait"]
    assert task.result() == "proceeded"


def test_a_coroutine_that_never_waits_ends_in_its_first_step() -> None:
    async def refused(steps: list[str]) -> str:
        steps.append("refused at once")
        return "finished"

    steps, task = run_in_callback(refused)
    assert steps == ["refused at once", "callback returned"]
    assert task.result() == "finished"


def test_an_exception_in_the_first_step_becomes_the_tasks() -> None:
    async def broken(steps: list[str]) -> None:
        steps.append("raising")
        raise ValueError("a bug in the decision")

    steps, task = run_in_callback(broken)
    assert steps == ["raising", "callback returned"]
    with pytest.raises(ValueError, match="a bug in the decision"):
        task.result()


def test_the_task_is_current_in_the_first_step_so_timeouts_work_there() -> None:
    async def waits_too_long(steps: list[str]) -> None:
        steps.append("current" if asyncio.current_task() is not None else "no task")
        try:
            async with asyncio.timeout(0.01):  # needs the current task: it cancels it on expiry
                await asyncio.sleep(5)
        except TimeoutError:
            steps.append("timed out")

    steps, task = run_in_callback(waits_too_long)
    assert steps == ["current", "callback returned", "timed out"]
    assert task.done() and not task.cancelled()


def test_a_cancellation_reaches_the_coroutine_at_its_await() -> None:
    async def main() -> list[str]:
        loop = asyncio.get_running_loop()
        steps: list[str] = []
        forever = loop.create_future()

        async def waiting() -> None:
            try:
                steps.append("waiting")
                await forever
            except asyncio.CancelledError:
                steps.append("cancelled at the await")
                raise
            finally:
                steps.append("cleaned up")

        holder: list[asyncio.Task] = []
        loop.call_soon(lambda: holder.append(start_now(loop, waiting())))
        await asyncio.sleep(0)
        task = holder[0]
        task.cancel()  # before the task's own first turn has run
        with pytest.raises(asyncio.CancelledError):
            await task
        assert task.cancelled()
        return steps

    assert asyncio.run(main()) == ["waiting", "cancelled at the await", "cleaned up"]


def test_each_call_gets_its_own_context() -> None:
    async def main() -> list[str]:
        loop = asyncio.get_running_loop()
        seen: list[str] = []

        async def sets(name: str) -> None:
            seen.append(request_var.get())
            request_var.set(name)
            await asyncio.sleep(0)
            seen.append(request_var.get())

        tasks: list[asyncio.Task] = []

        def callback() -> None:
            tasks.append(start_now(loop, sets("first")))
            tasks.append(start_now(loop, sets("second")))

        loop.call_soon(callback)
        await asyncio.sleep(0)
        await asyncio.gather(*tasks)
        seen.append(request_var.get())
        return seen

    assert asyncio.run(main()) == ["unset", "unset", "first", "second", "unset"]


def test_inside_a_task_it_is_an_ordinary_task() -> None:
    async def main() -> list[str]:
        steps: list[str] = []

        async def later() -> None:
            steps.append("ran")

        task = start_now(asyncio.get_running_loop(), later())
        steps.append("returned first")
        await task
        return steps

    assert asyncio.run(main()) == ["returned first", "ran"]
