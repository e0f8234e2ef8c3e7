"""`python -m expert_svc` as a child process for fault tests: start, find its address, kill."""

from __future__ import annotations

import asyncio
import contextlib
import re
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

SERVING = re.compile(r"serving .* on (\S+:\d+)")
STARTUP_TIMEOUT_S = 30.0


@dataclass
class ExpertProcess:
    """A running expert process and the address it reported."""

    process: asyncio.subprocess.Process
    address: str
    stderr_drain: asyncio.Task | None = None

    def kill(self) -> None:
        if self.process.returncode is None:
            self.process.kill()

    async def close(self) -> None:
        """Kill the process (if still running) and reap it."""
        self.kill()
        await self.process.wait()
        if self.stderr_drain is not None:
            await self.stderr_drain


async def start_expert_process(
    name: str, *flags: str, listen: str = "127.0.0.1:0", prefix: Sequence[str] = ()
) -> ExpertProcess:
    """Start a synthetic expert (extra `flags` appended; `prefix` runs it under another command,
    such as `ip netns exec NS`) and wait until it logs the address it serves on."""
    argv = [
        *prefix, sys.executable, "-m", "expert_svc", "--engine", "synthetic", "--name", name,
        "--listen", listen, "--grace-s", "0.5", *flags,
    ]
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    seen: list[str] = []
    try:
        async with asyncio.timeout(STARTUP_TIMEOUT_S):
            while True:
                line = (await proc.stderr.readline()).decode(errors="replace")
                if not line:
                    await proc.wait()
                    raise RuntimeError(f"expert {name} exited with {proc.returncode}: {''.join(seen)}")
                seen.append(line)
                if match := SERVING.search(line):
                    break
    except BaseException:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        raise
    # Keep draining stderr so a chatty child never blocks on a full pipe.
    drain = asyncio.get_running_loop().create_task(_drain(proc.stderr))
    return ExpertProcess(proc, match.group(1), drain)


async def _drain(stream: asyncio.StreamReader) -> None:
    with contextlib.suppress(Exception):
        while await stream.read(65536):
            pass


@contextlib.asynccontextmanager
async def expert_processes(*specs: tuple[str, Sequence[str]]) -> AsyncIterator[list[ExpertProcess]]:
    """Start several expert processes at once; kill whatever is left on exit."""
    results = await asyncio.gather(
        *(start_expert_process(name, *flags) for name, flags in specs), return_exceptions=True
    )
    started = [r for r in results if isinstance(r, ExpertProcess)]
    try:
        for r in results:
            if isinstance(r, BaseException):
                raise r
        yield started
    finally:
        for p in started:
            p.kill()
        for p in started:
            await p.close()
