"""The worker side of the load generator: virtual users on one asyncio loop in one process.

Each worker process keeps one event loop for its whole life (grpc.aio binds to it), receives a
`LevelTask` over a pipe, runs that level's users over its own channels, and sends back the
column-wise request records. Response frames are parsed (upb, about a microsecond each) only to
tell token frames from others and to read the final usage.

A method starting with ``http:`` (``http:/v1/chat/completions``) drives the router's OpenAI HTTP
door instead: the requests are JSON bodies, each user's stream is read as server-sent events over
a pooled aiohttp session (one per ``users_per_channel`` users, like the gRPC channels), and each
event becomes a frame with the same fields the gRPC path reads.
"""
from __future__ import annotations

import asyncio
import json
import math
import random
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection

import grpc

from router_svc.loadgen.stats import OK, RequestRecords

ROUTER_GENERATE = "/expert_router.v1.Router/Generate"
EXPERT_GENERATE = "/expert_router.v1.Expert/Generate"
ROUTER_LIST_EXPERTS = "/expert_router.v1.Router/ListExperts"
# Slots per worker in the shared progress array: finished requests, failed requests, tokens.
PROGRESS_SLOTS = 3
HTTP_PREFIX = "http:"
HTTP_CHAT = HTTP_PREFIX + "/v1/chat/completions"

CHANNEL_OPTIONS = [
    # A separate TCP connection per channel: otherwise grpc shares one subchannel per target and
    # every user of a process would ride one HTTP/2 connection.
    ("grpc.use_local_subchannel_pool", 1),
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
]


class HttpStatusError(Exception):
    """The HTTP door refused a request (``HTTP_<status>``) or sent an error event mid-stream."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


class _Usage:
    __slots__ = ("completion_tokens",)

    def __init__(self, completion_tokens: int) -> None:
        self.completion_tokens = completion_tokens


class _HttpFrame:
    """One server-sent event, with the fields ``one_request`` reads from a GenerateResponse."""

    __slots__ = ("finish_reason", "text", "token_ids", "usage")

    def __init__(self, text: str, finish_reason: str | None = None, usage: _Usage | None = None) -> None:
        self.text = text
        self.token_ids = ()
        self.finish_reason = finish_reason
        self.usage = usage


def _http_call(session, url: str):
    """``call(body, timeout=)``: an async iterator of frames from one streamed OpenAI request."""
    import aiohttp

    headers = {"Content-Type": "application/json"}

    async def call(body: bytes, timeout: float):
        async with session.post(url, data=body, headers=headers,
                                timeout=aiohttp.ClientTimeout(total=timeout)) as response:
            if response.status != 200:
                raise HttpStatusError(f"HTTP_{response.status}")
            finish = None
            async for line in response.content:
                if not line.startswith(b"data: "):
                    continue
                payload = line[6:].strip()
                if payload == b"[DONE]":
                    return
                chunk = json.loads(payload)
                if "error" in chunk:
                    raise HttpStatusError("HTTP_STREAM_ERROR")
                choices = chunk.get("choices")
                if choices:
                    choice = choices[0]
                    text = choice["delta"].get("content") if "delta" in choice else choice.get("text")
                    finish = choice.get("finish_reason") or finish
                    if text:
                        yield _HttpFrame(text)
                usage = chunk.get("usage")
                if usage:  # the last event (stream_options.include_usage): finish reason and usage together
                    yield _HttpFrame("", finish or "stop", _Usage(usage["completion_tokens"]))

    return call


@dataclass(frozen=True)
class LevelTask:
    """One worker's share of a load level. Times are monotonic-clock seconds (time.perf_counter)."""

    targets: tuple[str, ...]
    method: str
    requests: tuple[bytes, ...]
    users: int  # closed loop: users in this worker; 0 in open-loop mode
    user_offset: int  # index of this worker's first user among all users
    total_users: int
    rate: float  # open loop: requests/s for this worker; 0 in closed-loop mode
    start_at: float
    ramp_s: float
    window: tuple[float, float]
    stop_at: float  # no new request after this (inf with requests_per_user)
    requests_per_user: int  # 0: until stop_at
    think_s: float
    timeout_s: float
    users_per_channel: int = 100
    open_loop_channels: int = 4
    seed: int = 0


class _Level:
    def __init__(self, task: LevelTask, progress, slot: int) -> None:
        from expert_router.v1 import expert_router_pb2 as pb

        self.task = task
        self.records = RequestRecords()
        self._progress = progress
        self._slot = slot * PROGRESS_SLOTS
        self._parse = pb.GenerateResponse.FromString
        self._channels: list[grpc.aio.Channel] = []
        self._sessions: list = []

    def channel_call(self, target: str):
        if self.task.method.startswith(HTTP_PREFIX):
            import aiohttp

            session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
            self._sessions.append(session)
            return _http_call(session, f"http://{target}{self.task.method[len(HTTP_PREFIX):]}")
        channel = grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS)
        self._channels.append(channel)
        return channel.unary_stream(self.task.method, request_serializer=None,
                                    response_deserializer=self._parse)

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close()
        for session in self._sessions:
            await session.close()

    async def wait_connected(self, deadline: float) -> None:
        timeout = max(deadline - time.perf_counter(), 0.05)
        waits = [asyncio.wait_for(ch.channel_ready(), timeout) for ch in self._channels]
        # A target that is down must still be measured (its errors counted), so failures pass.
        await asyncio.gather(*waits, return_exceptions=True)

    async def one_request(self, call, request: bytes) -> None:
        task = self.task
        window_start, window_end = task.window
        started = time.perf_counter()
        token_times: list[float] = []
        counted = 0
        usage_tokens = 0
        frames = 0
        window_tokens = 0
        status = OK
        try:
            async for frame in call(request, timeout=task.timeout_s):
                now = time.perf_counter()
                frames += 1
                n = len(frame.token_ids) or (1 if frame.text else 0)
                if n:
                    token_times.append(now)
                    counted += n
                    if window_start <= now <= window_end:
                        window_tokens += n
                if frame.finish_reason:
                    usage_tokens = frame.usage.completion_tokens
        except grpc.aio.AioRpcError as err:
            status = err.code().name
        except HttpStatusError as err:
            status = err.name
        except Exception as err:  # the HTTP path's connection errors (aiohttp.ClientError) and timeouts
            if not self.task.method.startswith(HTTP_PREFIX):
                raise
            status = type(err).__name__
        finished = time.perf_counter()
        records = self.records
        records.window_tokens += window_tokens
        measured = started >= window_start
        records.add(started=started, ttft=(token_times[0] - started) if token_times else math.nan,
                    e2e=finished - started, tokens=usage_tokens or counted, frames=frames, status=status,
                    token_times=token_times if measured else ())
        progress, slot = self._progress, self._slot
        if progress is not None:
            progress[slot] += 1
            if status != OK:
                progress[slot + 1] += 1
            progress[slot + 2] += usage_tokens or counted

    async def closed_user(self, call, index: int) -> None:
        task = self.task
        requests = task.requests
        delay = task.start_at + task.ramp_s * index / max(task.total_users, 1) - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        sent = 0
        while True:
            if task.requests_per_user and sent >= task.requests_per_user:
                return
            if time.perf_counter() >= task.stop_at:
                return
            # Users walk the prompt list from different offsets, so a level mixes every expert.
            await self.one_request(call, requests[(index + sent) % len(requests)])
            sent += 1
            if task.think_s > 0:
                await asyncio.sleep(task.think_s)

    async def run_closed(self) -> None:
        task = self.task
        per_target: dict[str, int] = {}
        channel_calls: dict[tuple[str, int], object] = {}
        users = []
        for i in range(task.users):
            index = task.user_offset + i
            target = task.targets[index % len(task.targets)]
            slot = per_target.get(target, 0) // task.users_per_channel
            per_target[target] = per_target.get(target, 0) + 1
            key = (target, slot)
            if key not in channel_calls:
                channel_calls[key] = self.channel_call(target)
            users.append((channel_calls[key], index))
        await self.wait_connected(task.start_at)
        coros = [self.closed_user(call, index) for call, index in users]
        await self._run_bounded(coros)

    async def run_open(self) -> None:
        task = self.task
        calls = [self.channel_call(target) for target in task.targets for _ in range(task.open_loop_channels)]
        await self.wait_connected(task.start_at)
        rng = random.Random(task.seed)
        inflight: set[asyncio.Task] = set()
        next_at = task.start_at
        sent = 0
        loop = asyncio.get_running_loop()
        while next_at < task.stop_at:
            delay = next_at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            request = task.requests[(task.user_offset + sent) % len(task.requests)]
            t = loop.create_task(self.one_request(calls[sent % len(calls)], request))
            inflight.add(t)
            t.add_done_callback(inflight.discard)
            sent += 1
            # Poisson arrivals: exponential gaps on an absolute schedule, so lateness does not drift.
            next_at += rng.expovariate(task.rate)
        await self._run_bounded([_wait_all(inflight)])

    async def _run_bounded(self, coros) -> None:
        """Runs the coroutines; in-flight requests get `timeout_s` after stop_at, then are cancelled."""
        task = self.task
        tasks = [asyncio.ensure_future(c) for c in coros]
        if math.isinf(task.stop_at):
            await asyncio.gather(*tasks)
            return
        limit = task.stop_at + task.timeout_s + 1.0 - time.perf_counter()
        _, pending = await asyncio.wait(tasks, timeout=max(limit, 0.1))
        for t in pending:
            t.cancel()
        await asyncio.gather(*pending, return_exceptions=True)


async def _wait_all(tasks: set[asyncio.Task]) -> None:
    while tasks:
        await asyncio.gather(*list(tasks), return_exceptions=True)


async def run_task(task: LevelTask, progress=None, slot: int = 0) -> dict[str, object]:
    """Runs one worker's share of a level; returns the records' arrays and the worker's CPU seconds."""
    cpu_before = time.process_time()
    level = _Level(task, progress, slot)
    try:
        if task.rate > 0:
            await level.run_open()
        else:
            await level.run_closed()
    finally:
        await level.close()
    arrays = level.records.to_arrays()
    arrays["cpu_s"] = time.process_time() - cpu_before
    return arrays


def worker_main(slot: int, conn: Connection, progress) -> None:
    """Entry point of a worker process: run tasks from the pipe until it sends None."""
    asyncio.run(_serve(slot, conn, progress))


async def _serve(slot: int, conn: Connection, progress) -> None:
    loop = asyncio.get_running_loop()
    while True:
        try:
            task = await loop.run_in_executor(None, conn.recv)
        except EOFError:
            return
        if task is None:
            return
        for i in range(PROGRESS_SLOTS):
            progress[slot * PROGRESS_SLOTS + i] = 0
        try:
            result = await run_task(task, progress, slot)
        except Exception as exc:  # noqa: BLE001 - reported to the parent, which raises it
            result = {"error": f"{type(exc).__name__}: {exc}"}
        conn.send(result)


def detect_service(target: str, timeout_s: float = 5.0) -> str:
    """"router" when TARGET serves the Router service, "expert" when it answers UNIMPLEMENTED.

    Raises ConnectionError when the target cannot be reached.
    """
    with grpc.insecure_channel(target) as channel:
        list_experts = channel.unary_unary(ROUTER_LIST_EXPERTS, request_serializer=None,
                                           response_deserializer=None)
        try:
            list_experts(b"", timeout=timeout_s, wait_for_ready=True)
        except grpc.RpcError as err:
            if err.code() == grpc.StatusCode.UNIMPLEMENTED:
                return "expert"
            raise ConnectionError(f"{target}: {err.code().name}: {err.details()}") from None
    return "router"
