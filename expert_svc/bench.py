"""Throughput of one expert through its gRPC API: `python -m expert_svc.bench [--engine llamacpp]
[--streams 1,4] [--max-tokens 128] [--threads N]`. Prints completion tokens per second, summed
over concurrent streams, as counted by the engine's own usage report."""

from __future__ import annotations

import argparse
import asyncio
import time

import grpc

from expert_router.v1 import expert_router_pb2 as pb
from expert_router.v1 import expert_router_pb2_grpc as pb_grpc

from .config import ExpertConfig
from .server import start

PROMPTS = (
    "Explain how a hash table works.",
    "Write a short story about a lighthouse keeper.",
    "What causes the seasons on Earth?",
    "Describe the water cycle in detail.",
)


async def one_stream(stub: pb_grpc.ExpertStub, prompt: str, max_tokens: int) -> tuple[int, float]:
    start_t = time.perf_counter()
    ttft = 0.0
    tokens = 0
    request = pb.GenerateRequest(
        prompt=prompt, sampling=pb.SamplingParams(max_tokens=max_tokens, temperature=0.0)
    )
    async for frame in stub.Generate(request):
        if not ttft and frame.text:
            ttft = time.perf_counter() - start_t
        if frame.finish_reason:
            tokens = frame.usage.completion_tokens
    return tokens, ttft


async def run(args: argparse.Namespace) -> None:
    streams = [int(s) for s in args.streams.split(",")]
    cfg = ExpertConfig(
        name="bench",
        engine=args.engine,
        max_concurrency=max(streams),
        threads=args.threads,
        default_max_tokens=args.max_tokens,
    )
    expert = await start(cfg)
    try:
        async with grpc.aio.insecure_channel(expert.address) as channel:
            stub = pb_grpc.ExpertStub(channel)
            await one_stream(stub, "warm up", 8)
            for n in streams:
                t0 = time.perf_counter()
                results = await asyncio.gather(
                    *(one_stream(stub, PROMPTS[i % len(PROMPTS)], args.max_tokens) for i in range(n))
                )
                wall = time.perf_counter() - t0
                tokens = sum(r[0] for r in results)
                ttft = sum(r[1] for r in results) / n
                print(
                    f"engine={args.engine} threads={cfg.effective_threads} streams={n} tokens={tokens} "
                    f"wall={wall:.2f}s tokens/s={tokens / wall:.1f} mean_ttft={ttft * 1000:.0f}ms"
                )
    finally:
        await expert.stop(grace=1.0)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m expert_svc.bench", description=__doc__)
    parser.add_argument("--engine", default="llamacpp", choices=("llamacpp", "synthetic"))
    parser.add_argument("--streams", default="1,4")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
