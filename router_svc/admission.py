"""Admission control: bounded in-flight streams per expert and overall, with an optional FIFO queue.

Over the bound a request is refused at once with RESOURCE_EXHAUSTED and a ``retry-after-ms``
trailing metadata hint, unless the queue has room: then it waits up to ``queue_timeout_s`` for a
slot. Slots go to waiters in arrival order; a waiter whose expert is still full does not hold up
waiters for other experts. Everything runs on the event loop, so plain integers suffice.
"""
from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass

from router_svc.errors import Overloaded


@dataclass(frozen=True)
class AdmissionLimits:
    """0 means no bound."""

    max_in_flight: int = 0
    max_in_flight_per_expert: int = 0
    queue_size: int = 0
    queue_timeout_s: float = 1.0
    retry_after_ms: int = 200

    @classmethod
    def from_config(cls, cfg) -> AdmissionLimits:
        return cls(cfg.max_in_flight, cfg.max_in_flight_per_expert, cfg.queue_size, cfg.queue_timeout_s,
                   cfg.retry_after_ms)


class Permit:
    """One admitted stream; ``release()`` exactly once (idempotent)."""

    __slots__ = ("_admission", "_released", "expert")

    def __init__(self, admission: Admission, expert: str) -> None:
        self._admission = admission
        self.expert = expert
        self._released = False

    def move(self, expert: str) -> bool:
        """Moves the permit to another expert if that expert has room (no queueing); True on success."""
        if expert == self.expert:
            return True
        if not self._admission.transfer(self.expert, expert):
            return False
        self.expert = expert
        return True

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._admission.release(self.expert)


class Admission:
    """Counts streams in flight and decides who may start one."""

    def __init__(self, limits: AdmissionLimits) -> None:
        self.limits = limits
        self.total = 0
        self.per_expert: dict[str, int] = {}
        self._waiters: deque[tuple[str, asyncio.Future[None]]] = deque()

    @property
    def queued(self) -> int:
        return len(self._waiters)

    def reconfigure(self, limits: AdmissionLimits) -> None:
        """New bounds apply to new requests; streams already admitted keep their slot."""
        self.limits = limits
        self._grant()

    def transfer(self, source: str, target: str) -> bool:
        """Moves one admitted stream from ``source`` to ``target`` if ``target`` is under its own
        bound (no queueing: the stream is already running); True on success."""
        bound = self.limits.max_in_flight_per_expert
        if bound and self.per_expert.get(target, 0) >= bound:
            return False
        self._count(target, 1, total=False)
        self._count(source, -1, total=False)
        self._grant()
        return True

    def release(self, expert: str) -> None:
        """Ends one admitted stream to ``expert`` and lets waiters in (through Permit.release)."""
        self._count(expert, -1)
        self._grant()

    def _count(self, expert: str, delta: int, *, total: bool = True) -> None:
        if total:
            self.total += delta
        self.per_expert[expert] = self.per_expert.get(expert, 0) + delta

    def _full(self, expert: str) -> str | None:
        """Which bound stops a new stream for ``expert`` now, or None."""
        limits = self.limits
        if limits.max_in_flight and self.total >= limits.max_in_flight:
            return "max_in_flight"
        if limits.max_in_flight_per_expert and self.per_expert.get(expert, 0) >= limits.max_in_flight_per_expert:
            return "max_in_flight_per_expert"
        return None

    def _grant(self) -> None:
        if not self._waiters:
            return
        waiting = deque()
        while self._waiters:
            expert, future = self._waiters.popleft()
            if future.done():
                continue
            if self._full(expert) is None:
                self._count(expert, 1)
                future.set_result(None)
            else:
                waiting.append((expert, future))
        self._waiters = waiting

    def refuse_if_full(self) -> None:
        """Raises Overloaded when the overall bound and the queue are both full.

        Called before classification, so that under overload a refused request costs no
        classifier work and takes no place in the micro-batch ahead of admitted ones.
        """
        limits = self.limits
        if (limits.max_in_flight and self.total >= limits.max_in_flight
                and len(self._waiters) >= limits.queue_size):
            raise self._overloaded("", "max_in_flight", waited=False)

    async def acquire(self, expert: str) -> Permit:
        """A permit for one stream to ``expert``; raises Overloaded when over the bound."""
        bound = self._full(expert)
        if bound is None:
            self._count(expert, 1)
            return Permit(self, expert)
        limits = self.limits
        if len(self._waiters) >= limits.queue_size:
            raise self._overloaded(expert, bound, waited=False)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((expert, future))
        try:
            async with asyncio.timeout(limits.queue_timeout_s):
                await asyncio.shield(future)
        except TimeoutError:
            if future.done() and not future.cancelled():
                return Permit(self, expert)  # granted as the timer fired: keep the slot
            future.cancel()
            self._forget(expert, future)
            raise self._overloaded(expert, self._full(expert) or bound, waited=True) from None
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self._count(expert, -1)
                self._grant()
            future.cancel()
            self._forget(expert, future)
            raise
        return Permit(self, expert)

    def _forget(self, expert: str, future: asyncio.Future[None]) -> None:
        try:
            self._waiters.remove((expert, future))
        except ValueError:
            pass

    def _overloaded(self, expert: str, bound: str, *, waited: bool) -> Overloaded:
        limits = self.limits
        if bound == "max_in_flight":
            what = f"the router is at capacity ({limits.max_in_flight} streams in flight, max_in_flight)"
        else:
            what = (f"expert {expert!r} is at capacity ({limits.max_in_flight_per_expert} streams in flight, "
                    f"max_in_flight_per_expert)")
        if waited:
            what += f" and no slot freed within {limits.queue_timeout_s:g} s in the queue"
        elif limits.queue_size:
            what += f" and the queue is full ({limits.queue_size} waiting)"
        return Overloaded(f"{what}; retry in {limits.retry_after_ms} ms",
                          retry_after_ms=limits.retry_after_ms, reason=bound)
