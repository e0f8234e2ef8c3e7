"""DNS discovery: a name becomes every address it resolves to, re-resolved on a period.

A Kubernetes headless Service answers with one A/AAAA record per ready pod, so resolving its name
gives the replicas of an expert. ``getaddrinfo`` blocks, so it runs in a thread; a failed lookup
keeps the last good answer (a DNS hiccup must not empty a healthy pool).
"""
from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable, Sequence

from service_base.tasks import cancel_and_wait

log = logging.getLogger("router_svc.discovery")

# (host, port) -> the replica addresses, "HOST:PORT" ("[v6]:PORT" for IPv6), sorted, no duplicates.
Resolver = Callable[[str, int], Awaitable[Sequence[str]]]


def format_address(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def resolve_blocking(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to, as ``HOST:PORT`` strings; raises OSError when none."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    return sorted({format_address(info[4][0], port) for info in infos})


async def resolve(host: str, port: int) -> list[str]:
    """``resolve_blocking`` off the event loop."""
    return await asyncio.to_thread(resolve_blocking, host, port)


class DnsWatcher:
    """Resolves ``host:port`` now and every ``refresh_s``, calling ``on_change`` with each new answer."""

    def __init__(self, host: str, port: int, refresh_s: float, on_change: Callable[[list[str]], None], *,
                 resolver: Resolver = resolve, what: str = "") -> None:
        self.host = host
        self.port = port
        self._refresh_s = refresh_s
        self._on_change = on_change
        self._resolver = resolver
        self._what = what or f"{host}:{port}"
        self._current: list[str] | None = None
        self._task: asyncio.Task[None] | None = None
        self.last_error = ""

    async def refresh(self) -> None:
        """One lookup; on success and a changed answer, ``on_change`` runs."""
        try:
            addresses = sorted(set(await self._resolver(self.host, self.port)))
        except OSError as exc:
            self.last_error = f"DNS lookup of {self.host} failed: {exc.strerror or exc}"
            log.warning("%s: %s; keeping %s", self._what, self.last_error, self._current or "no replicas")
            return
        self.last_error = ""
        if addresses != self._current:
            if self._current is not None:
                log.info("%s: %s now resolves to %s", self._what, self.host, ", ".join(addresses) or "nothing")
            self._current = addresses
            self._on_change(addresses)

    async def start(self) -> None:
        await self.refresh()
        self._task = asyncio.create_task(self._refresh_forever(), name=f"dns-{self.host}")

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(self._refresh_s)
            try:
                await self.refresh()
            except Exception:  # a bug in one refresh must not end discovery
                log.exception("%s: DNS refresh failed", self._what)

    async def close(self) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task)
