"""The engine interface every expert backend implements."""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator

from ..types import Delta, EngineInfo, EngineRequest, EngineStats


class Engine(abc.ABC):
    """Serves one model.

    `generate` is an async generator. Closing it early (the consumer stops iterating, its task is
    cancelled, or a deadline passes) aborts the request inside the engine: implementations stop
    generating in their `finally` block and count it in `stats.aborted`.
    """

    name: str = "engine"

    def __init__(self) -> None:
        self.stats = EngineStats()
        self._ready = False

    @property
    def ready(self) -> bool:
        """True once the model is loaded and until `close()`."""
        return self._ready

    @property
    def coalesces_frames(self) -> bool:
        """True when the engine itself groups tokens by the configured stream interval (then the
        servicer sends its deltas as they come)."""
        return False

    def preflight(self) -> object:
        """Checks that need only files and settings, before anything heavy is imported or loaded;
        raises EngineStartupError with what is wrong and what to do."""
        return None

    @abc.abstractmethod
    async def start(self) -> None:
        """Load the model; returns when the engine can serve."""

    @abc.abstractmethod
    def generate(self, request: EngineRequest) -> AsyncIterator[Delta]:
        """Stream the completion of one request; the last delta has a finish reason and usage."""

    @abc.abstractmethod
    def info(self) -> EngineInfo:
        """Describe the model served."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release the model; in-flight generations end."""


class StopMatcher:
    """Finds stop strings in streamed text without ever emitting a part of one.

    Text that could be the beginning of a stop string is held back until the next piece shows
    whether it is one.
    """

    def __init__(self, stops: tuple[str, ...]) -> None:
        self._stops = stops
        self._pending = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """Returns (text safe to emit, whether a stop string matched)."""
        if not self._stops:
            return text, False
        buf = self._pending + text
        first = min((i for i in (buf.find(s) for s in self._stops) if i >= 0), default=-1)
        if first >= 0:
            self._pending = ""
            return buf[:first], True
        hold = 0
        for s in self._stops:
            for n in range(min(len(s) - 1, len(buf)), hold, -1):
                if buf.endswith(s[:n]):
                    hold = n
                    break
        self._pending = buf[len(buf) - hold :]
        return buf[: len(buf) - hold], False

    def flush(self) -> str:
        """The held-back text, once the stream ends without a match."""
        pending, self._pending = self._pending, ""
        return pending
