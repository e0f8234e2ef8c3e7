"""Micro-batching of classifier calls across concurrent requests.

Requests queue their text; one worker thread runs ``predict_batch`` on everything queued at that
moment (up to ``max_batch``) and resolves each request's future with its row of scores. Nothing
waits for a batch to fill: an idle batcher scores a lone request at once, and only requests that
arrive while a batch is running are grouped into the next one.

The hop itself is not free: handing one prompt to the thread and back costs the event loop about
60-80 us of CPU (a task, three futures, two thread wake-ups) and, on an idle router, a few hundred
us of latency, while the trained model scores a short prompt in tens of microseconds when its tables are
in cache (docs/classifier-benchmark.md: 33 us median for featurize + classify) and up to
~0.6 ms when they are not. This is a measured exception to keeping onnxruntime off the loop
(docs/profiles/router.md). So a lone prompt of at most ``INLINE_MAX_CHARS`` is scored
on the loop when nothing is queued or running and the predictions measured so far cost at most
``INLINE_BUDGET_S`` of CPU each on average; anything slower - a larger model, a long prompt, a
batch in progress - still goes to the thread, where concurrent prompts are batched as before.
"""
from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from service_base.tasks import cancel_and_wait

PredictBatch = Callable[[Sequence[str]], np.ndarray]

# A lone prompt is scored inline only while one prediction is measured to cost at most this much CPU...
INLINE_BUDGET_S = 1e-3
# ...after at least this many measured predictions (the first ones run off the loop)...
INLINE_AFTER = 8
# ...and only for prompts up to this many characters (the featurizer's cost grows with the text).
INLINE_MAX_CHARS = 2048


class MicroBatcher:
    """Groups concurrent ``score`` calls into ``predict_batch`` calls run off the event loop
    (a lone short prompt on it, once the classifier has proved cheap: see the module docstring)."""

    def __init__(self, predict_batch: PredictBatch, *, max_batch: int = 64) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self._predict_batch = predict_batch
        self._max_batch = max_batch
        self._queue: deque[tuple[str, asyncio.Future[np.ndarray]]] = deque()
        self._worker: asyncio.Task[None] | None = None
        # One thread: batches run one after another, which is what lets the next one grow.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="classifier")
        self._closed = False
        self.batches = 0
        self.largest_batch = 0
        self.inline = 0  # prompts scored on the loop
        # Moving average of one prediction's CPU time (seconds), and how many fed it.
        self._cost_s = 0.0
        self._measured = 0
        self._running = False

    async def score(self, text: str) -> np.ndarray:
        """The classifier's scores for ``text`` (float32, one per label)."""
        if self._closed:
            raise RuntimeError("the classifier batcher is closed")
        if (not self._running and not self._queue and self._measured >= INLINE_AFTER
                and self._cost_s <= INLINE_BUDGET_S and len(text) <= INLINE_MAX_CHARS):
            started = time.thread_time()
            scores = self._predict([text])
            self._observe(time.thread_time() - started)
            self.inline += 1
            self.batches += 1
            self.largest_batch = max(self.largest_batch, 1)
            return scores[0]
        future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        self._queue.append((text, future))
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._drain(), name="classifier-batcher")
        return await future

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        while self._queue:
            batch = []
            while self._queue and len(batch) < self._max_batch:
                text, future = self._queue.popleft()
                if not future.done():  # the caller may have gone away (cancelled rpc)
                    batch.append((text, future))
            if not batch:
                continue
            texts = [text for text, _ in batch]
            self._running = True
            try:
                scores = await loop.run_in_executor(self._executor, self._timed_predict, texts)
            except asyncio.CancelledError:
                for _, future in batch:
                    future.cancel()
                raise
            except Exception as exc:  # noqa: BLE001 - a classifier failure goes to every request of the batch
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            finally:
                self._running = False
            self.batches += 1
            self.largest_batch = max(self.largest_batch, len(batch))
            for row, (_, future) in zip(scores, batch):
                if not future.done():
                    future.set_result(row)

    def _observe(self, seconds: float) -> None:
        self._cost_s = seconds if not self._measured else 0.8 * self._cost_s + 0.2 * seconds
        self._measured += 1

    def _timed_predict(self, texts: list[str]) -> np.ndarray:
        """``_predict`` in the worker thread; batches of one feed the cost estimate.

        The cost is the thread's CPU time, not wall time: on a busy router the wall time of a
        call in a second thread is mostly waiting for the GIL, which inline scoring does not pay.
        """
        started = time.thread_time()
        scores = self._predict(texts)
        if len(texts) == 1:
            self._observe(time.thread_time() - started)
        return scores

    def _predict(self, texts: list[str]) -> np.ndarray:
        scores = np.asarray(self._predict_batch(texts), dtype=np.float32)
        if scores.ndim != 2 or scores.shape[0] != len(texts):
            raise RuntimeError(f"classifier returned shape {scores.shape} for {len(texts)} texts")
        return np.ascontiguousarray(scores)

    async def close(self) -> None:
        """Stops the worker; queued requests are cancelled."""
        self._closed = True
        if self._worker is not None and not self._worker.done():
            await cancel_and_wait(self._worker)
        while self._queue:
            self._queue.popleft()[1].cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)
