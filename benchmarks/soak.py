"""Soak: steady streaming load through a real router for N minutes while its memory is sampled.

Starts synthetic expert processes and `python -m router_svc` (one worker, so one process to watch),
keeps `--concurrency` streams in flight from an asyncio client, and samples the router's resident
set size (VmRSS from /proc, the router and any children together) every `--sample-s` seconds. A
leak shows as RSS that keeps growing after warm-up; a healthy router levels off.

    .venv/bin/python benchmarks/soak.py                       # 10 minutes, 200 streams
    .venv/bin/python benchmarks/soak.py --minutes 1 --concurrency 50
    .venv/bin/python benchmarks/soak.py --direct              # no router: RSS of one expert instead
    .venv/bin/python benchmarks/soak.py --write-docs          # also update docs/reliability.md

Not part of CI: it takes minutes and its numbers depend on the machine (and on whoever shares it).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import os
import platform
import re
import signal
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from expert_router.v1 import expert_router_pb2 as pb
from expert_router.v1 import expert_router_pb2_grpc as pb_grpc

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(REPO, "docs", "reliability.md")
DOCS_BEGIN = "<!-- soak:begin -->"
DOCS_END = "<!-- soak:end -->"
SERVING = re.compile(r"serving .* on (\S+:\d+)")
LABELS = ("code", "math", "science", "medicine", "law", "general")
PROMPTS = (
    "Write a Python function that merges two sorted lists.",
    "Solve the equation 3x + 7 = 22 and explain each step.",
    "Why does photosynthesis need light, and what does chlorophyll do?",
    "What are the common symptoms of iron deficiency and how is it diagnosed?",
    "Is a verbal contract enforceable in court, and what must be proven?",
    "Suggest a name for a small bakery by the sea.",
    "Explain the time complexity of quicksort in the worst case.",
    "What is the integral of x times e to the x?",
)


@dataclass
class LoadStats:
    """What the client saw."""

    ok: int = 0
    frames: int = 0
    errors: collections.Counter = field(default_factory=collections.Counter)


def rss_bytes(pid: int) -> int:
    """VmRSS of `pid` and all its descendants (0 for a process that is gone)."""
    total = 0
    todo = [pid]
    while todo:
        current = todo.pop()
        try:
            with open(f"/proc/{current}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
                        break
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as f:
                    todo.extend(int(child) for child in f.read().split())
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def start_expert(name: str, args: argparse.Namespace, log_dir: str) -> tuple[asyncio.subprocess.Process, str]:
    log_path = os.path.join(log_dir, f"expert-{name}.log")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "expert_svc", "--engine", "synthetic", "--name", name,
        "--listen", "127.0.0.1:0", "--max-concurrency", "4096",
        "--tokens-per-second", str(args.tokens_per_second), "--ttft-ms", str(args.ttft_ms),
        "--log-level", "INFO", "--grace-s", "1",
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        cwd=REPO,
    )
    async with asyncio.timeout(60):
        while True:
            line = (await proc.stderr.readline()).decode(errors="replace")
            if not line:
                raise RuntimeError(f"expert {name} exited before serving (code {await proc.wait()})")
            if match := SERVING.search(line):
                break
    # The expert logs little after startup; hand the rest of its stderr to a file.
    asyncio.get_running_loop().create_task(_copy(proc.stderr, log_path))
    return proc, match.group(1)


def _open_log(path: str, mode: str = "ab"):
    # Opening a local log file is instant; no need to push it off the event loop.
    return open(path, mode)


async def _copy(stream: asyncio.StreamReader, path: str) -> None:
    with _open_log(path) as f, contextlib.suppress(Exception):
        while chunk := await stream.read(65536):
            f.write(chunk)


async def start_router(experts: dict[str, str], args: argparse.Namespace, log_dir: str):
    port = free_port()
    argv = [sys.executable, "-m", "router_svc", "--listen", f"127.0.0.1:{port}", "--workers", "1",
            "--max-in-flight", str(max(1024, args.concurrency * 2))]
    for label in LABELS:
        argv += ["--expert", f"{label}={experts[label]}"]
    argv += args.router_arg
    with _open_log(os.path.join(log_dir, "router.log")) as log:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log, cwd=REPO
        )
    address = f"127.0.0.1:{port}"
    await wait_serving(address, proc, os.path.join(log_dir, "router.log"))
    return proc, address


async def wait_serving(address: str, proc: asyncio.subprocess.Process, log_path: str) -> None:
    deadline = time.monotonic() + 60
    async with grpc.aio.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if proc.returncode is not None:
                break
            with contextlib.suppress(grpc.aio.AioRpcError):
                reply = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            await asyncio.sleep(0.2)
    with _open_log(log_path, "rb") as f:
        tail = f.read()[-3000:].decode(errors="replace")
    raise RuntimeError(f"router at {address} did not become SERVING (exit code {proc.returncode}):\n{tail}")


async def load_worker(stub, index: int, stop: asyncio.Event, stats: LoadStats, max_tokens: int) -> None:
    n = index
    while not stop.is_set():
        n += 1
        req = pb.GenerateRequest(
            request_id=f"soak-{index}-{n}", prompt=PROMPTS[n % len(PROMPTS)],
            sampling=pb.SamplingParams(max_tokens=max_tokens),
        )
        try:
            async for _ in stub.Generate(req, timeout=30):
                stats.frames += 1
            stats.ok += 1
        except grpc.aio.AioRpcError as exc:
            stats.errors[exc.code().name] += 1
            await asyncio.sleep(0.1)


def mib(value: int) -> str:
    return f"{value / 2**20:.1f} MiB"


async def soak(args: argparse.Namespace) -> dict:
    log_dir = tempfile.mkdtemp(prefix="soak-")
    procs: list[asyncio.subprocess.Process] = []
    try:
        expert_names = [f"soak{i}" for i in range(args.experts)]
        started = await asyncio.gather(*(start_expert(n, args, log_dir) for n in expert_names))
        procs += [p for p, _ in started]
        addresses = [a for _, a in started]
        if args.direct:
            watched, target, what = procs[0], addresses[0], "expert (direct, no router)"
        else:
            experts = {label: addresses[i % len(addresses)] for i, label in enumerate(LABELS)}
            router, target = await start_router(experts, args, log_dir)
            procs.append(router)
            watched, what = router, "router (1 worker)"
        print(f"soak: {args.minutes} min, {args.concurrency} streams, {what} pid {watched.pid} at {target}; "
              f"logs in {log_dir}", flush=True)

        stats = LoadStats()
        stop = asyncio.Event()
        samples: list[tuple[float, int]] = []
        options = [("grpc.max_receive_message_length", 4 * 2**20)]
        async with grpc.aio.insecure_channel(target, options=options) as channel:
            stub = pb_grpc.RouterStub(channel) if not args.direct else pb_grpc.ExpertStub(channel)
            workers = [asyncio.create_task(load_worker(stub, i, stop, stats, args.max_tokens))
                       for i in range(args.concurrency)]
            t0 = time.monotonic()
            end = t0 + args.minutes * 60
            last_ok = 0
            while time.monotonic() < end:
                if watched.returncode is not None:
                    raise RuntimeError(f"the watched process exited with {watched.returncode}")
                rss = rss_bytes(watched.pid)
                elapsed = time.monotonic() - t0
                samples.append((elapsed, rss))
                rate = (stats.ok - last_ok) / args.sample_s if samples[1:] else 0.0
                last_ok = stats.ok
                print(f"  t={elapsed:6.0f}s rss={mib(rss):>10}  streams ok={stats.ok:,} "
                      f"({rate:.0f}/s) errors={dict(stats.errors)}", flush=True)
                await asyncio.sleep(min(args.sample_s, max(0.0, end - time.monotonic())))
            samples.append((time.monotonic() - t0, rss_bytes(watched.pid)))
            stop.set()
            await asyncio.wait(workers, timeout=35)
        duration = time.monotonic() - t0
    finally:
        for p in procs:
            if p.returncode is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                await asyncio.wait_for(p.wait(), timeout=15)
            except TimeoutError:
                p.kill()
                await p.wait()

    warm = [rss for t, rss in samples if t >= args.warmup_s] or [samples[-1][1]]
    result = {
        "what": what,
        "minutes": args.minutes,
        "duration_s": duration,
        "concurrency": args.concurrency,
        "max_tokens": args.max_tokens,
        "tokens_per_second": args.tokens_per_second,
        "streams_ok": stats.ok,
        "frames": stats.frames,
        "errors": dict(stats.errors),
        "rss_start": samples[0][1],
        "rss_after_warmup": warm[0],
        "rss_end": samples[-1][1],
        "rss_max": max(rss for _, rss in samples),
        "samples": len(samples),
        "quarter_means": quarter_means([(t, rss) for t, rss in samples if t >= args.warmup_s]),
        "warmup_s": args.warmup_s,
        "command": "benchmarks/soak.py " + " ".join(sys.argv[1:]),
    }
    return result


def quarter_means(samples: list[tuple[float, int]]) -> list[int]:
    """Mean RSS over each quarter of the samples: a trend shows even when single samples jitter."""
    if len(samples) < 4:
        return []
    size = len(samples) / 4
    return [
        int(sum(rss for _, rss in samples[int(i * size):int((i + 1) * size)]) / len(samples[int(i * size):int((i + 1) * size)]))
        for i in range(4)
    ]


def summary(r: dict) -> str:
    growth = r["rss_end"] - r["rss_after_warmup"]
    return "\n".join([
        (
            f"Soak of the {r['what']}: {r['duration_s'] / 60:.1f} min, {r['concurrency']} concurrent streams "
            f"of {r['max_tokens']} tokens at {r['tokens_per_second']:g} tokens/s (synthetic experts); Python "
            f"{platform.python_version()} on {os.cpu_count()} cores, machine shared with other work."
        ),
        "",
        "| measure | value |",
        "|---|---|",
        f"| streams completed | {r['streams_ok']:,} ({r['streams_ok'] / r['duration_s']:.0f}/s) |",
        f"| frames relayed | {r['frames']:,} |",
        f"| errors | {r['errors'] or 'none'} |",
        f"| RSS at start (load just begun) | {mib(r['rss_start'])} |",
        f"| RSS after {r['warmup_s']:.0f} s warm-up | {mib(r['rss_after_warmup'])} |",
        f"| RSS at end | {mib(r['rss_end'])} |",
        f"| RSS max | {mib(r['rss_max'])} |",
        f"| growth from warm-up to end | {growth / 2**20:+.1f} MiB ({growth / max(1, r['rss_after_warmup']):+.1%}) |",
        f"| mean RSS per quarter after warm-up | {', '.join(mib(m) for m in r['quarter_means']) or 'too few samples'} |",
        "",
        f"Command: `.venv/bin/python {r['command']}` ({r['samples']} samples).",
    ])


def write_docs(text: str) -> None:
    with open(DOCS) as f:
        doc = f.read()
    start, end = doc.find(DOCS_BEGIN), doc.find(DOCS_END)
    if start < 0 or end < start:
        raise RuntimeError(f"{DOCS} has no {DOCS_BEGIN} ... {DOCS_END} section")
    doc = doc[: start + len(DOCS_BEGIN)] + "\n" + text + "\n" + doc[end:]
    with open(DOCS, "w") as f:
        f.write(doc)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="how long to load (default 10)")
    parser.add_argument("--concurrency", type=int, default=200, help="streams in flight (default 200)")
    parser.add_argument("--experts", type=int, default=2, help="synthetic expert processes (default 2)")
    parser.add_argument("--max-tokens", type=int, default=20, help="tokens per stream (default 20)")
    parser.add_argument("--tokens-per-second", type=float, default=40.0, help="per stream (default 40)")
    parser.add_argument("--ttft-ms", type=float, default=20.0, help="synthetic time to first token (default 20)")
    parser.add_argument("--sample-s", type=float, default=5.0, help="seconds between RSS samples (default 5)")
    parser.add_argument("--warmup-s", type=float, default=60.0, help="RSS baseline taken after this (default 60)")
    parser.add_argument("--direct", action="store_true", help="load one expert directly (no router)")
    parser.add_argument("--router-arg", action="append", default=[], help="extra router flag (repeatable)")
    parser.add_argument("--write-docs", action="store_true", help=f"write the summary into {DOCS}")
    args = parser.parse_args(argv)
    if args.minutes <= 0 or args.concurrency < 1 or args.experts < 1 or args.sample_s <= 0:
        parser.error("--minutes, --sample-s must be > 0; --concurrency, --experts >= 1")
    result = asyncio.run(soak(args))
    text = summary(result)
    print("\n" + text)
    if args.write_docs:
        write_docs(text)
        print(f"\nwritten to {DOCS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
