"""Live configuration: SIGHUP or a change of the config file reloads the router in place.

The file's identity (mtime, size, inode) is polled every ``poll_s``; Kubernetes updates a mounted
ConfigMap by swapping a symlink, which changes all three. A reload re-reads the file and the flags
(flags still win), validates everything, loads the classifier and builds the new upstream pool
before anything is swapped: a bad config is logged and counted, and the running one stays.
"""
from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable

from router_svc.config import ConfigError, RouterConfig

log = logging.getLogger("router_svc.reload")


def file_identity(path: str) -> tuple[int, int, int] | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_mtime_ns, info.st_size, info.st_ino


class ConfigReloader:
    """Reloads ``router`` from ``load_config()`` on request and when ``watch_path`` changes."""

    def __init__(self, router, load_config: Callable[[], RouterConfig], *, watch_path: str | None = None,
                 poll_s: float = 1.0) -> None:
        self._router = router
        self._load_config = load_config
        self._watch_path = watch_path
        self._poll_s = poll_s
        self._identity = file_identity(watch_path) if watch_path else None
        self._tasks: set[asyncio.Task[bool]] = set()
        self._watcher: asyncio.Task[None] | None = None
        self.reloads = 0
        self.failures = 0

    def start(self) -> None:
        if self._watch_path:
            self._watcher = asyncio.create_task(self._watch(), name="config-watch")

    def request(self, reason: str) -> None:
        """Schedules a reload (callable from a signal handler)."""
        task = asyncio.get_running_loop().create_task(self.reload(reason))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def reload(self, reason: str) -> bool:
        """One reload attempt; True when the new config is in use."""
        metrics = self._router.metrics
        try:
            cfg = await asyncio.to_thread(self._load_config)
            await self._router.apply(cfg)
        except (ConfigError, OSError, ValueError) as exc:
            self.failures += 1
            metrics.reloads.labels("error").inc()
            log.error("config reload (%s) rejected, keeping the running config: %s", reason, exc)
            return False
        except Exception:
            self.failures += 1
            metrics.reloads.labels("error").inc()
            log.exception("config reload (%s) failed, keeping the running config", reason)
            return False
        self.reloads += 1
        metrics.reloads.labels("ok").inc()
        log.info("config reloaded (%s): generation %d; experts: %s", reason, self._router.state.generation,
                 ", ".join(f"{e.name}={e.describe()}" for e in cfg.experts))
        return True

    async def _watch(self) -> None:
        assert self._watch_path is not None
        while True:
            await asyncio.sleep(self._poll_s)
            identity = file_identity(self._watch_path)
            if identity is not None and identity != self._identity:
                self._identity = identity
                await self.reload(f"{self._watch_path} changed")

    async def close(self) -> None:
        tasks = [t for t in (self._watcher, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
