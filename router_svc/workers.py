"""``--workers N``: N router processes on one port (SO_REUSEPORT), supervised by this process.

The parent binds the listen address first with SO_REUSEPORT and keeps that socket (never listening,
so the kernel gives it no connections): port 0 becomes a real port every worker then binds too, and
the port stays reserved while a worker restarts. The kernel spreads new connections across the
workers' listening sockets.

The parent forwards SIGTERM/SIGINT and SIGHUP to the workers, restarts a worker that dies (one that
fails within ``EARLY_EXIT_S`` of its start stops everything: a crash loop helps nobody), serves the
metrics endpoint for all of them (prometheus-client multiprocess mode) and exits 0 once every
worker has drained and exited 0.
"""
from __future__ import annotations

import asyncio
import logging
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Sequence

from router_svc.config import RouterConfig, parse_address, relay_threads
from service_base.lifetime import child_env

log = logging.getLogger("router_svc.workers")

EARLY_EXIT_S = 5.0
RESTART_DELAY_S = 0.5


def reserve_port(listen: str) -> tuple[socket.socket, str]:
    """Binds ``listen`` with SO_REUSEPORT (not listening); returns the socket and HOST:PORT with the real port."""
    host, port = parse_address("listen", listen, allow_port_zero=True)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(f"cannot listen on {listen}: {exc.strerror or exc}") from None
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if family == socket.AF_INET6 else host
    return sock, f"{shown}:{bound}"


class Supervisor:
    def __init__(self, cfg: RouterConfig, argv: Sequence[str], listen: str, metrics_dir: str,
                 http_listen: str | None = None) -> None:
        self._cfg = cfg
        self._argv = list(argv)
        self._listen = listen
        self._http_listen = http_listen
        self._metrics_dir = metrics_dir
        self._processes: dict[int, asyncio.subprocess.Process] = {}
        self._started_at: dict[int, float] = {}
        self._stopping = False
        self.failed = False

    def _command(self, index: int) -> list[str]:
        # Each worker runs "--workers 1": it is told its share of the cores for its native relay's threads.
        http = ["--http-listen", self._http_listen] if self._http_listen else []
        return [sys.executable, "-m", "router_svc", *self._argv, "--listen", self._listen, *http, "--workers", "1",
                "--relay-threads", str(relay_threads(self._cfg)), "--worker-index", str(index)]

    async def _spawn(self, index: int) -> None:
        # The worker sets PR_SET_PDEATHSIG itself at start (service_base.lifetime): SIGTERM when the
        # supervisor dies, however it dies.
        env = {**child_env(), "PROMETHEUS_MULTIPROC_DIR": self._metrics_dir}
        process = await asyncio.create_subprocess_exec(*self._command(index), env=env,
                                                       stdin=asyncio.subprocess.DEVNULL)
        self._processes[index] = process
        self._started_at[index] = time.monotonic()
        log.info("worker %d started (pid %d)", index, process.pid)

    def signal_all(self, signum: int) -> None:
        for process in self._processes.values():
            if process.returncode is None:
                try:
                    process.send_signal(signum)
                except ProcessLookupError:
                    pass

    def stop(self) -> None:
        if not self._stopping:
            self._stopping = True
            log.info("stopping: workers drain for up to %.1f s", self._cfg.grace_s)
        self.signal_all(signal.SIGTERM)

    async def _keep(self, index: int) -> int:
        """Runs worker ``index`` until the supervisor stops; returns its last exit status."""
        while True:
            process = self._processes[index]
            status = await process.wait()
            self._mark_dead(process.pid)
            if self._stopping:
                # A worker still starting when SIGTERM came dies of it: it had nothing to drain.
                return 0 if status == -signal.SIGTERM else status
            lived = time.monotonic() - self._started_at[index]
            if lived < EARLY_EXIT_S and status != 0:
                log.error("worker %d (pid %d) exited with status %d after %.1f s; stopping all workers",
                          index, process.pid, status, lived)
                self.failed = True
                self.stop()
                return status
            log.warning("worker %d (pid %d) exited with status %d; restarting it", index, process.pid, status)
            await asyncio.sleep(RESTART_DELAY_S)
            if self._stopping:
                return status
            await self._spawn(index)

    def _mark_dead(self, pid: int) -> None:
        from prometheus_client import multiprocess

        try:
            multiprocess.mark_process_dead(pid, self._metrics_dir)
        except OSError:
            pass

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.stop)
        loop.add_signal_handler(signal.SIGHUP, self.signal_all, signal.SIGHUP)
        try:
            for index in range(self._cfg.workers):
                await self._spawn(index)
            statuses = await asyncio.gather(*(self._keep(index) for index in range(self._cfg.workers)))
        finally:
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(signum)
            self.stop()
            for process in self._processes.values():
                if process.returncode is None:
                    await process.wait()
        if self.failed or any(statuses):
            return 1
        log.info("all %d workers stopped", self._cfg.workers)
        return 0


def supervise(cfg: RouterConfig, argv: Sequence[str]) -> int:
    """Runs ``cfg.workers`` router processes on ``cfg.listen`` until SIGTERM; the exit status."""
    reserved, listen = reserve_port(cfg.listen)
    # The HTTP door's port is shared the same way (and ``:0`` resolved once for every worker).
    http_reserved, http_listen = reserve_port(cfg.http_listen) if cfg.http_listen else (None, None)
    metrics_dir = tempfile.mkdtemp(prefix="router-metrics-")
    metrics_server = None
    try:
        if cfg.metrics_listen:
            from router_svc.metrics import MetricsServer, multiprocess_registry

            metrics_server = MetricsServer(cfg.metrics_listen, multiprocess_registry(metrics_dir))
        log.info("supervising %d router workers on %s", cfg.workers, listen)
        return asyncio.run(Supervisor(cfg, argv, listen, metrics_dir, http_listen).run())
    finally:
        if metrics_server is not None:
            metrics_server.close()
        reserved.close()
        if http_reserved is not None:
            http_reserved.close()
        shutil.rmtree(metrics_dir, ignore_errors=True)
