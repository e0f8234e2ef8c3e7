"""What `--stream-interval N` buys and costs: frames, expert CPU and token latency, N=1 against N>1.

One synthetic expert process per setting (the same engine, the same load), driven by a grpc.aio
client in this process: `--streams` concurrent streams, each asking for `--tokens` tokens, repeated
in alternating phases (N=1, N=4, N=16, N=1, ...) so that a busy machine hurts every setting alike.
Measured per phase:
- frames per request (what the router relays);
- expert CPU per token: user+system time of the expert process (/proc/PID/stat) over the phase,
  divided by the tokens delivered;
- time to first token (the first token is never held back);
- frame gap: time between consecutive frames of a stream, as the client sees it;
- token delay: how much later each token arrives than it would at one frame per token. The synthetic
  engine produces token i of a stream at first-token time + i/rate, so the delay of token i is its
  arrival time minus that.
Medians over the phases of each setting are printed as a Markdown table.

    .venv/bin/python benchmarks/stream_interval.py --intervals 1,4,16 --streams 100 --tokens 64 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from expert_router.v1 import expert_router_pb2 as pb
from expert_router.v1 import expert_router_pb2_grpc as pb_grpc

SERVING = re.compile(r"serving .* on (\S+:\d+)")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process, from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


@dataclass
class Expert:
    interval: int
    proc: asyncio.subprocess.Process
    address: str


async def start_expert(interval: int, ttft_ms: float, rate: float) -> Expert:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "expert_svc", "--engine", "synthetic", "--name", f"n{interval}",
        "--listen", "127.0.0.1:0", "--ttft-ms", str(ttft_ms), "--tokens-per-second", str(rate),
        "--stream-interval", str(interval), "--max-concurrency", "4096",
        "--grace-s", "1", "--log-level", "INFO",
        cwd=ROOT, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    while True:
        line = await asyncio.wait_for(proc.stderr.readline(), 60)
        if not line:
            raise RuntimeError(f"the expert with --stream-interval {interval} exited before serving")
        match = SERVING.search(line.decode())
        if match:
            break
    asyncio.get_running_loop().create_task(_drain(proc.stderr))
    return Expert(interval, proc, match.group(1))


async def _drain(stream: asyncio.StreamReader) -> None:
    while await stream.readline():
        pass


@dataclass
class Phase:
    interval: int
    frames_per_request: float = 0.0
    cpu_us_per_token: float = 0.0
    ttft_ms: list[float] = field(default_factory=list)
    frame_gaps_ms: list[float] = field(default_factory=list)
    token_delays_ms: list[float] = field(default_factory=list)
    errors: int = 0


async def one_stream(stub: pb_grpc.ExpertStub, prompt: str, tokens: int, rate: float, phase: Phase) -> tuple[int, int]:
    started = time.perf_counter()
    first = None
    last_frame = None
    received = 0
    frames = 0
    request = pb.GenerateRequest(prompt=prompt, sampling=pb.SamplingParams(max_tokens=tokens))
    async for frame in stub.Generate(request, timeout=120):
        now = time.perf_counter()
        frames += 1
        n = len(frame.token_ids)
        if first is None and n:
            first = now
            phase.ttft_ms.append((now - started) * 1000)
        if last_frame is not None:
            phase.frame_gaps_ms.append((now - last_frame) * 1000)
        last_frame = now
        for i in range(received, received + n):
            phase.token_delays_ms.append(max(0.0, (now - (first + i / rate)) * 1000))
        received += n
    return frames, received


async def run_phase(expert: Expert, streams: int, tokens: int, rate: float, index: int) -> Phase:
    phase = Phase(expert.interval)
    async with grpc.aio.insecure_channel(expert.address) as channel:
        stub = pb_grpc.ExpertStub(channel)
        await stub.GetInfo(pb.GetInfoRequest(), timeout=10)
        cpu_before = cpu_seconds(expert.proc.pid)
        results = await asyncio.gather(
            *(one_stream(stub, f"phase {index} stream {s}", tokens, rate, phase) for s in range(streams)),
            return_exceptions=True,
        )
        cpu_after = cpu_seconds(expert.proc.pid)
    ok = [r for r in results if not isinstance(r, BaseException)]
    phase.errors = len(results) - len(ok)
    frames = sum(f for f, _ in ok)
    delivered = sum(t for _, t in ok)
    phase.frames_per_request = frames / max(1, len(ok))
    phase.cpu_us_per_token = (cpu_after - cpu_before) * 1e6 / max(1, delivered)
    return phase


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--intervals", default="1,4,16", help="stream intervals to compare (default 1,4,16)")
    parser.add_argument("--streams", type=int, default=100, help="concurrent streams per phase (default 100)")
    parser.add_argument("--tokens", type=int, default=64, help="tokens per stream (default 64)")
    parser.add_argument("--rate", type=float, default=50.0, help="synthetic tokens/s per stream (default 50)")
    parser.add_argument("--ttft-ms", type=float, default=20.0, help="synthetic time to first token (default 20)")
    parser.add_argument("--rounds", type=int, default=3, help="phases per interval, alternating (default 3)")
    args = parser.parse_args()
    intervals = [int(n) for n in args.intervals.split(",")]
    experts = [await start_expert(n, args.ttft_ms, args.rate) for n in intervals]
    phases: dict[int, list[Phase]] = {n: [] for n in intervals}
    try:
        for round_index in range(args.rounds):
            for expert in experts:
                phase = await run_phase(expert, args.streams, args.tokens, args.rate, round_index)
                phases[expert.interval].append(phase)
                print(f"round {round_index + 1} N={expert.interval}: {phase.frames_per_request:.1f} frames/request, "
                      f"{phase.cpu_us_per_token:.1f} us CPU/token, errors {phase.errors}", file=sys.stderr)
    finally:
        for expert in experts:
            expert.proc.terminate()
            await expert.proc.wait()

    print(f"{args.streams} concurrent streams x {args.tokens} tokens, synthetic expert at {args.rate:g} tokens/s "
          f"and {args.ttft_ms:g} ms to first token; medians of {args.rounds} alternating phases\n")
    print("| N | frames/request | expert CPU µs/token | TTFT p50 ms | frame gap p50 ms | token delay mean ms "
          "| token delay p99 ms | errors |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    base_cpu = statistics.median(p.cpu_us_per_token for p in phases[intervals[0]])
    for n in intervals:
        ps = phases[n]
        cpu = statistics.median(p.cpu_us_per_token for p in ps)
        print(f"| {n} | {statistics.median(p.frames_per_request for p in ps):.1f} "
              f"| {cpu:.1f} ({cpu / base_cpu:.2f}×) "
              f"| {statistics.median(pct(p.ttft_ms, 0.5) for p in ps):.1f} "
              f"| {statistics.median(pct(p.frame_gaps_ms, 0.5) for p in ps):.1f} "
              f"| {statistics.median(statistics.fmean(p.token_delays_ms) for p in ps):.1f} "
              f"| {statistics.median(pct(p.token_delays_ms, 0.99) for p in ps):.1f} "
              f"| {sum(p.errors for p in ps)} |")


if __name__ == "__main__":
    asyncio.run(main())
