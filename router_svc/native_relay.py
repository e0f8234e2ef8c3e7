"""The native data plane: Router.Generate relayed by gRPC's C++ library, decisions made here in Python.

Why compiled code: Python's grpc.aio spends about 100 µs of CPU per relayed message however little
the handler does (docs/profiles/router.md measured a bare 20-line relay at 99-104 µs/frame), 5-6x
what nginx spends. The relay in ``router_svc/native/relay.cc`` moves frames on gRPC's C++ library
(1.51, Debian's libgrpc++) with the async completion-queue API: ``AsyncGenericService`` and
``GenericStub::PrepareCall``, one completion queue and one thread per relay thread, one small state
machine per call. That API was measured at 43-60 µs/frame for a bare pass-through relay where the
callback API (``CallbackGenericService``) took 63-79 µs/frame and fell behind nginx's tokens/s at
300 users, so the completion-queue API it is. Two of gRPC's filters are off on the relay's server
and channels: retries (the router retries before the first frame itself; gRPC's retry filter only
copied every batch of each upstream stream) and per-message compression (frames pass through as the
expert's bytes); each cost less in every round of a side-by-side run at 300 users (retries off: 37.3
against 39.2 µs/frame; then compression off too: 32.0 against 34.5). This relay, measured by
`make bench`'s script on 2 cores shared with a training job (docs/benchmarks.md; medians of five
runs in docs/profiles/router.md): 36-66 µs of router CPU per relayed frame from 100 users on,
2.1-2.7x nginx's 17-22 µs and a third to a half of the Python relay's 115-139 µs; 0.93x nginx's
tokens/s at 300 users and 0.92x at 1,000 (two runs of five fell to 0.63-0.68x there), where the
Python relay kept 0.46-0.55x. ``benchmarks/syscalls_per_frame.py`` found fewer system calls per
frame than nginx's (1.5 against 2.5): the rest of the gap is gRPC core's user-space work per
completion-queue operation.

How the two gRPC runtimes share the process: libgrpc++ 1.51 and
grpcio 1.85 each carry their own gRPC core; loaded into one process, both serve (the extension is
built with hidden visibility and Python loads extensions with RTLD_LOCAL, so their symbols never
meet). Two servers cannot share one port without SO_REUSEPORT splitting connections between them
at random, so the native server owns the public port and the Python grpc.aio server listens on a
private Unix socket (in a 0700 folder). Generate is relayed natively; every other method (Classify,
ListExperts, health, reflection) is forwarded by the same C++ relay code, unparsed, metadata and
deadline included, to the Python server, whose token interceptor and handlers answer as they do
without the native relay. Those methods are rare next to Generate's frames, and the hop is cheap:
Classify took 0.66-0.71 ms p50 through the forward against 0.42-0.43 ms with grpc.aio on the port
(measured in-process, 500 calls), so one relay code path was preferred to a second server stack.
Both runtimes in one process serve: every native-relay test runs them side by side.

Python is asked a bounded number of times per request and never per frame:
- ``start``: the request's bytes, metadata, peer and deadline. ``RouterServicer.generate_native``
  authenticates, validates, classifies, admits and picks a replica, then answers ``proceed``
  (the replica's channel, the metadata to forward, the client's initial metadata) or ``finish``
  (a status, details and trailing metadata such as ``retry-after-ms``);
- ``failed``: the upstream ended with an error before its first frame; Python answers with
  another replica or expert, or with the status to finish;
- ``done``: the final status and the counters kept natively (frames, bytes, time to first token,
  the inter-token gaps in ``ITL_BOUNDS`` buckets): metrics, the log line, the admission slot.
C++ posts events to a queue and wakes the event loop through an eventfd (``loop.add_reader``);
relay threads never take the GIL. Python answers through a ``grpc::Alarm`` on the call's own
completion queue, so each call's state is touched by one thread only and the frame path has no lock.
The alarm is set with an already-expired deadline: gRPC rounds an alarm's deadline up to the next
millisecond, so one set to "now" waited in the timer heap and cost 0.65-0.85 ms of every request's
time to first token (docs/profiles/router.md has the step-by-step breakdown).

Memory per stream is bounded by construction: the relay reads the next upstream frame only once
the client took the previous one, so it holds at most two frames per stream and a client that stops
reading stops its expert through HTTP/2 flow control. ``_relay.Relay.held_bytes()`` reports the
bytes held now (tests/integration/test_router_relay.py checks the bound).

Shutdown (``_relay.Relay.shutdown``, run off the event loop by ``NativeRelay.stop``) goes in the order
gRPC needs: the native server first (after the grace it cancels every call), then every call still
waiting for Python is answered UNAVAILABLE by the relay itself (Python's later answers are refused),
then it waits for the last call to end, and only then shuts its completion queues and joins its
threads. A call's handler starts operations on its queue (the upstream's Finish after a failed read,
then the client's), and gRPC aborts the process (``assertion failed: grpc_cq_begin_op`` in call.cc)
when one starts on a queue that was shut down and has drained; shutting the queues first did that
whenever a router stopped with streams in flight and a cancellation was still on its way through a
call. ``_relay.Relay.live_calls()`` counts the calls the relay holds; it is 0 once shutdown returns.
"""
from __future__ import annotations

import asyncio
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import grpc

from router_svc.metrics import ITL_BOUNDS
from router_svc.upstream import UpstreamFailure

log = logging.getLogger("router_svc")

try:
    from router_svc import _relay
except ImportError as _error:  # built without gRPC's C++ library
    _relay = None
    UNAVAILABLE_REASON = f"the native relay is not built ({_error})"
else:
    UNAVAILABLE_REASON = ""

RELAYS = ("native", "python")
_said_unavailable = False


def available() -> bool:
    """Whether the native relay was built into this installation."""
    return _relay is not None


def choose_relay(wanted: str) -> str:
    """The relay to use for ``wanted``: native falls back to python (said once) where it is not built."""
    global _said_unavailable
    if wanted == "native" and _relay is None:
        if not _said_unavailable:
            log.warning("%s: using the Python relay (install libgrpc++-dev and pkg-config, then "
                        "reinstall, to build it)", UNAVAILABLE_REASON)
            _said_unavailable = True
        return "python"
    return wanted


@dataclass(frozen=True)
class StreamDone:
    """How a relayed stream ended, with the counters kept natively."""

    code: grpc.StatusCode
    frames: int = 0
    bytes: int = 0
    ttft: float | None = None
    gaps: tuple[int, ...] = ()
    gap_sum: float = 0.0
    captured: tuple[bytes, ...] | None = None


_CODES = {code.value[0]: code for code in grpc.StatusCode}
_GONE = StreamDone(grpc.StatusCode.CANCELLED)


class NativeCall:
    """One Generate call waiting in the native relay for Python's word."""

    __slots__ = ("_relay", "_waiter", "id", "metadata", "peer", "request", "started", "timeout")

    def __init__(self, relay: NativeRelay, call_id: int, request: bytes, metadata: list[tuple[str, Any]],
                 peer: str, timeout: float | None) -> None:
        self._relay = relay
        self._waiter: asyncio.Future | None = None
        self.id = call_id
        self.request = request
        self.metadata = metadata
        self.peer = peer
        self.timeout = timeout
        self.started = time.monotonic()

    def time_remaining(self) -> float | None:
        if self.timeout is None:
            return None
        return self.timeout - (time.monotonic() - self.started)

    async def proceed(self, channel: int, metadata: Sequence[tuple[str, Any]],
                      initial_metadata: Sequence[tuple[str, Any]], capture: bool = False
                      ) -> UpstreamFailure | StreamDone:
        """Relays the request on ``channel``; returns how it ended, or why it failed before its first frame."""
        waiter = self._wait()
        if not self._relay.native.proceed(self.id, channel, metadata, initial_metadata, capture):
            return self._gone()
        return await waiter

    async def finish(self, code: grpc.StatusCode, details: str,
                     trailing_metadata: Sequence[tuple[str, Any]] = ()) -> StreamDone:
        """Ends the call with an error status; returns how it ended (CANCELLED if the client left first)."""
        waiter = self._wait()
        if not self._relay.native.finish(self.id, code.value[0], details, trailing_metadata):
            return self._gone()
        return await waiter

    def _wait(self) -> asyncio.Future:
        self._waiter = asyncio.get_running_loop().create_future()
        self._relay.pending[self.id] = self
        return self._waiter

    def _gone(self) -> StreamDone:
        self._relay.pending.pop(self.id, None)
        return _GONE

    def resolve(self, outcome: UpstreamFailure | StreamDone) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(outcome)


class GenerateHandler(Protocol):
    async def generate_native(self, call: NativeCall) -> None: ...


class NativeRelay:
    """The native server on the public port, the private socket behind it, and the event bridge."""

    def __init__(self, handler: GenerateHandler) -> None:
        if _relay is None:
            raise RuntimeError(UNAVAILABLE_REASON)
        self.native = _relay.Relay()
        self.handler = handler
        self.pending: dict[int, NativeCall] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._channels: dict[tuple, int] = {}
        self._folder = tempfile.mkdtemp(prefix="expert-router-")  # 0700: only this user reaches the socket
        self.private_address = f"unix:{os.path.join(self._folder, 'router.sock')}"
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped = False

    def start(self, listen: str, *, threads: int, tls: tuple[bytes, bytes, bytes | None, bool] | None,
              max_message_bytes: int, reuse_port: bool) -> int:
        """Binds ``listen`` and starts relaying; returns the port. Raises OSError when the bind fails."""
        self._loop = asyncio.get_running_loop()
        port = self.native.start(listen, threads, self.private_address, tls, max_message_bytes, reuse_port,
                                 list(ITL_BOUNDS))
        self._loop.add_reader(self.native.fileno(), self._drain)
        return port

    def channel(self, address: str, *, max_message_bytes: int, reconnect_max_s: float,
                tls: tuple[bytes | None, bytes | None, bytes | None] | None, server_name: str | None) -> int:
        """A native channel handle for one replica (one per address and settings, reused)."""
        key = (address, max_message_bytes, reconnect_max_s, tls, server_name)
        handle = self._channels.get(key)
        if handle is None:
            ca, cert, key_pem = tls or (None, None, None)
            handle = self.native.channel(address, ca, cert, key_pem, server_name, tls is not None,
                                         max_message_bytes, int(1000 * min(max(reconnect_max_s, 0.2), 5.0)))
            self._channels[key] = handle
        return handle

    def keep_channels(self, addresses: set[str]) -> None:
        """Forgets channels to addresses no pool uses any more (after a reload); streams keep theirs."""
        for key in [key for key in self._channels if key[0] not in addresses]:
            self.native.drop_channel(self._channels.pop(key))

    def _drain(self) -> None:
        for event in self.native.drain():
            kind = event[0]
            if kind == "start":
                _, call_id, request, metadata, peer, timeout = event
                call = NativeCall(self, call_id, request, metadata, peer, timeout)
                task = self._loop.create_task(self.handler.generate_native(call))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
                continue
            call = self.pending.pop(event[1], None)
            if call is None:
                continue
            if kind == "failed":
                _, _, code, details, trailers = event
                call.resolve(UpstreamFailure(_CODES.get(code, grpc.StatusCode.UNKNOWN), details, tuple(trailers)))
            else:
                _, _, code, frames, size, ttft, gaps, gap_sum, captured = event
                call.resolve(StreamDone(_CODES.get(code, grpc.StatusCode.UNKNOWN), frames, size, ttft,
                                        tuple(gaps), gap_sum, None if captured is None else tuple(captured)))

    async def stop(self, grace: float) -> None:
        """Stops accepting, lets streams end within ``grace``, cancels the rest; then the bridge closes.

        The native shutdown returns once every native call has ended, Python's answer or not; calls
        Python was still deciding see their answer refused (``NativeCall.proceed`` returns CANCELLED).
        """
        if self._stopped:
            return
        self._stopped = True
        await asyncio.to_thread(self.native.shutdown, grace)
        if self._loop is not None:
            self._loop.remove_reader(self.native.fileno())
            self._drain()  # the last done events
        for call in list(self.pending.values()):
            call.resolve(_GONE)
        self.pending.clear()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        shutil.rmtree(self._folder, ignore_errors=True)
