"""Stopping a background task without swallowing the caller's own cancellation.

The usual ``task.cancel(); try: await task except CancelledError: pass`` cannot tell the task's
cancellation (expected: we asked for it) from a cancellation of the caller while it waits (which
must propagate, or a shutdown that was itself cancelled carries on as if nothing happened).
``Task.cancelling()`` (Python 3.11) tells them apart: it counts the cancel requests aimed at the
task that is running this code.
"""
from __future__ import annotations

import asyncio

__all__ = ["cancel_and_wait"]


async def cancel_and_wait(task: asyncio.Task) -> None:
    """Cancels ``task`` and waits until it has finished; re-raises only a cancellation of the caller.

    An exception the task ends with (other than its cancellation) propagates, as ``await task`` would.
    """
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise
