"""Which HTTP server the router's OpenAI door is built on: server CPU per streamed event, side by side.

Each candidate serves the same minimal streaming endpoint on the default asyncio loop (the loop
grpc.aio runs on in the router): ``POST /stream`` reads a small JSON body and answers with
``EVENTS`` server-sent events of the size of a chat-completion chunk, one write per event with a
short sleep between them, as relayed tokens arrive. A load process (aiohttp client) keeps
``--streams`` streams open in a closed loop; the server's CPU time (from /proc) over the run is
divided by the events delivered. Candidates:

- aiohttp's low-level server (``web.Server`` + ``ServerRunner``), the one the router uses;
- uvicorn with the httptools parser and a bare ASGI app (no framework on top).

Not part of ``make bench`` (uvicorn is not a dependency of the project):

    pip install uvicorn httptools aiohttp
    python benchmarks/http_server_choice.py --streams 1,50,200
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time

EVENTS = 32
GAP_S = 0.005
CHUNK = (b'data: {"id":"chatcmpl-0123456789abcdef","object":"chat.completion.chunk","created":1700000000,'
         b'"model":"general","choices":[{"index":0,"delta":{"content":" token"},"finish_reason":null,'
         b'"logprobs":null}]}\n\n')


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def serve_aiohttp(port: int) -> None:
    from aiohttp import web

    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        json.loads(await request.read())
        response = web.StreamResponse(headers={"Cache-Control": "no-cache"})
        response.content_type = "text/event-stream"
        await response.prepare(request)
        for _ in range(EVENTS):
            await asyncio.sleep(GAP_S)
            await response.write(CHUNK)
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async def main() -> None:
        runner = web.ServerRunner(web.Server(handle, handler_cancellation=True, access_log=None))
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port, backlog=1024).start()
        await asyncio.Event().wait()

    asyncio.run(main())


def serve_uvicorn(port: int) -> None:
    import uvicorn

    async def app(scope, receive, send) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        json.loads(body)
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]})
        for _ in range(EVENTS):
            await asyncio.sleep(GAP_S)
            await send({"type": "http.response.body", "body": CHUNK, "more_body": True})
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})

    uvicorn.run(app, host="127.0.0.1", port=port, loop="asyncio", http="httptools", lifespan="off",
                access_log=False, log_level="warning", backlog=1024)


SERVERS = {"aiohttp": serve_aiohttp, "uvicorn": serve_uvicorn}


async def load(port: int, streams: int, seconds: float) -> tuple[int, int]:
    """Streams in a closed loop for ``seconds``; returns (events, errors)."""
    import aiohttp

    url = f"http://127.0.0.1:{port}/stream"
    events = errors = 0
    stop_at = time.monotonic() + seconds

    async def user(session: aiohttp.ClientSession) -> None:
        nonlocal events, errors
        while time.monotonic() < stop_at:
            try:
                async with session.post(url, data=b'{"model": "auto"}',
                                        headers={"Content-Type": "application/json"}) as response:
                    async for line in response.content:
                        if line.startswith(b"data: {"):
                            events += 1
            except aiohttp.ClientError:
                errors += 1

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        await asyncio.gather(*(user(session) for _ in range(streams)))
    return events, errors


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
        fields = handle.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_listening(port: int, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def measure(server: str, streams: int, seconds: float) -> dict[str, float]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, __file__, "--serve", server, "--port", str(port)])
    try:
        wait_listening(port)
        asyncio.run(load(port, min(streams, 5), 1.0))  # warm-up
        before = cpu_seconds(proc.pid)
        started = time.monotonic()
        events, errors = asyncio.run(load(port, streams, seconds))
        wall = time.monotonic() - started
        cpu = cpu_seconds(proc.pid) - before
    finally:
        proc.terminate()
        proc.wait()
    return {"events": events, "errors": errors, "cpu_us_per_event": 1e6 * cpu / max(events, 1),
            "server_cores": cpu / wall, "events_per_s": events / wall}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", choices=sorted(SERVERS), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--streams", default="1,50,200", help="concurrent streams per level (default 1,50,200)")
    parser.add_argument("--seconds", type=float, default=8.0, help="measured seconds per run (default 8)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per server and level, interleaved (default 3)")
    args = parser.parse_args()
    if args.serve:
        SERVERS[args.serve](args.port)
        return 0
    print("| streams | server | server CPU µs/event (median of runs) | events/s | errors |")
    print("|---|---|---|---|---|")
    for streams in (int(s) for s in args.streams.split(",")):
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in SERVERS}
        for _ in range(args.repeats):
            for name in SERVERS:  # interleaved, so drift on a shared machine hits both alike
                runs[name].append(measure(name, streams, args.seconds))
        for name, results in runs.items():
            print(f"| {streams} | {name} | {statistics.median(r['cpu_us_per_event'] for r in results):.1f} "
                  f"| {statistics.median(r['events_per_s'] for r in results):.0f} "
                  f"| {sum(r['errors'] for r in results)} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
