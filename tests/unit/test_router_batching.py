"""The micro-batcher: concurrent requests share classifier calls; a lone request is not delayed
(and is scored on the loop once the classifier has proved fast)."""
from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from router_svc.batching import MicroBatcher


class FakeClassifier:
    """Scores text by length; records batch sizes and can hold a batch until released."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()  # set once a batch is running (held at the gate if closed)
        self.threads: set[str] = set()

    def predict_batch(self, texts):
        self.threads.add(threading.current_thread().name)
        self.entered.set()
        self.gate.wait(5)
        self.batches.append(list(texts))
        return np.asarray([[len(t), 1.0] for t in texts], dtype=np.float32)


async def test_lone_request_is_scored_at_once_off_the_loop() -> None:
    fake = FakeClassifier()
    batcher = MicroBatcher(fake.predict_batch)
    try:
        started = time.perf_counter()
        row = await batcher.score("abc")
        assert time.perf_counter() - started < 0.5
        assert row.dtype == np.float32 and row.tolist() == [3.0, 1.0]
        assert fake.batches == [["abc"]]
        assert threading.main_thread().name not in fake.threads
    finally:
        await batcher.close()


async def test_requests_arriving_during_a_batch_share_the_next_one() -> None:
    fake = FakeClassifier()
    batcher = MicroBatcher(fake.predict_batch, max_batch=4)
    try:
        fake.gate.clear()
        first = asyncio.create_task(batcher.score("a"))
        assert await asyncio.to_thread(fake.entered.wait, 5)  # the first batch runs, held at the gate
        rest = [asyncio.create_task(batcher.score("b" * n)) for n in range(1, 7)]
        await asyncio.sleep(0)  # one turn of the loop: each task above queues its prompt and waits
        fake.gate.set()
        rows = await asyncio.gather(first, *rest)
        assert [row[0] for row in rows] == [1, 1, 2, 3, 4, 5, 6]
        assert [len(b) for b in fake.batches] == [1, 4, 2]
        assert batcher.largest_batch == 4
    finally:
        await batcher.close()


async def test_classifier_failure_reaches_every_request_of_the_batch() -> None:
    def broken(texts):
        raise RuntimeError("model file corrupt")

    batcher = MicroBatcher(broken)
    try:
        results = await asyncio.gather(batcher.score("a"), batcher.score("b"), return_exceptions=True)
        assert all(isinstance(r, RuntimeError) and "corrupt" in str(r) for r in results)
    finally:
        await batcher.close()


async def test_wrong_shape_is_an_error() -> None:
    batcher = MicroBatcher(lambda texts: np.zeros((len(texts) + 1, 2), dtype=np.float32))
    try:
        with pytest.raises(RuntimeError, match="shape"):
            await batcher.score("a")
    finally:
        await batcher.close()


async def test_cancelled_request_is_skipped_and_close_refuses_new_work() -> None:
    fake = FakeClassifier()
    batcher = MicroBatcher(fake.predict_batch)
    fake.gate.clear()
    first = asyncio.create_task(batcher.score("first"))
    assert await asyncio.to_thread(fake.entered.wait, 5)
    gone = asyncio.create_task(batcher.score("gone"))
    kept = asyncio.create_task(batcher.score("kept"))
    await asyncio.sleep(0)  # one turn of the loop: both tasks queue their prompts and wait
    gone.cancel()
    fake.gate.set()
    await first
    assert (await kept)[0] == 4
    assert ["kept"] in fake.batches and not any("gone" in b for b in fake.batches)
    await batcher.close()
    with pytest.raises(RuntimeError, match="closed"):
        await batcher.score("late")


async def test_a_fast_classifier_scores_lone_prompts_inline_a_slow_one_never() -> None:
    from router_svc import batching

    fast = FakeClassifier()
    batcher = MicroBatcher(fast.predict_batch)
    try:
        for _ in range(batching.INLINE_AFTER):  # measured off the loop first
            await batcher.score("warm")
        assert threading.main_thread().name not in fast.threads and batcher.inline == 0
        row = await batcher.score("abcd")
        assert row.tolist() == [4.0, 1.0]
        assert threading.main_thread().name in fast.threads and batcher.inline == 1
        # Too long a prompt goes to the thread even now.
        await batcher.score("x" * (batching.INLINE_MAX_CHARS + 1))
        assert batcher.inline == 1
    finally:
        await batcher.close()

    def slow(texts):
        deadline = time.thread_time() + 2 * batching.INLINE_BUDGET_S
        while time.thread_time() < deadline:  # CPU, as a large model would burn
            pass
        threads.add(threading.current_thread().name)
        return np.ones((len(texts), 2), dtype=np.float32)

    threads: set[str] = set()
    batcher = MicroBatcher(slow)
    try:
        for _ in range(batching.INLINE_AFTER + 4):
            await batcher.score("a")
        assert batcher.inline == 0 and threading.main_thread().name not in threads
    finally:
        await batcher.close()
