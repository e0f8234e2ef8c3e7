"""Micro-batching of classifier calls across concurrent requests.

Requests queue their text; one worker thread runs ``predict_batch`` on everything queued at that
moment (up to ``max_batch``) and resolves each request's future with its row of scores. Nothing
waits for a batch to fill: an idle batcher scores a lone request at once, and only requests that
arrive while a batch is running are grouped into the next one. The event loop never blocks.
"""
from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

PredictBatch = Callable[[Sequence[str]], np.ndarray]


class MicroBatcher:
    """Groups concurrent ``score`` calls into ``predict_batch`` calls run off the event loop."""

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

    async def score(self, text: str) -> np.ndarray:
        """The classifier's scores for ``text`` (float32, one per label)."""
        if self._closed:
            raise RuntimeError("the classifier batcher is closed")
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
            try:
                scores = await loop.run_in_executor(self._executor, self._predict, texts)
            except asyncio.CancelledError:
                for _, future in batch:
                    future.cancel()
                raise
            except Exception as exc:  # noqa: BLE001 - a classifier failure goes to every request of the batch
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            self.batches += 1
            self.largest_batch = max(self.largest_batch, len(batch))
            for row, (_, future) in zip(scores, batch):
                if not future.done():
                    future.set_result(row)

    def _predict(self, texts: list[str]) -> np.ndarray:
        scores = np.asarray(self._predict_batch(texts), dtype=np.float32)
        if scores.ndim != 2 or scores.shape[0] != len(texts):
            raise RuntimeError(f"classifier returned shape {scores.shape} for {len(texts)} texts")
        return np.ascontiguousarray(scores)

    async def close(self) -> None:
        """Stops the worker; queued requests are cancelled."""
        self._closed = True
        if self._worker is not None and not self._worker.done():
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass
        while self._queue:
            self._queue.popleft()[1].cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)
