"""`expert-router generate`: stream one answer to the terminal, then the chosen expert and timings."""
from __future__ import annotations

import argparse

DEFAULT_TARGET = "127.0.0.1:50051"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("prompt", help="the prompt to answer")
    parser.add_argument("--target", default=DEFAULT_TARGET, metavar="HOST:PORT",
                        help=f"router address (default {DEFAULT_TARGET})")
    parser.add_argument("--direct", action="store_true",
                        help="TARGET is an expert: call its Expert service instead of the Router")
    parser.add_argument("--expert", default="", help="send to this expert instead of the classifier's choice")
    parser.add_argument("--system", default="", help="a system message to send with the prompt")
    parser.add_argument("--max-tokens", type=int, default=0, help="completion limit (default: the expert's)")
    parser.add_argument("--temperature", type=float, help="sampling temperature (0 = greedy)")
    parser.add_argument("--seed", type=int, help="sampling seed")
    parser.add_argument("--timeout", type=float, default=300.0, help="deadline in seconds (default 300)")


def run(args: argparse.Namespace) -> int:
    import sys
    import time

    import grpc

    from expert_router.v1 import expert_router_pb2 as pb
    from expert_router.v1 import expert_router_pb2_grpc as pb_grpc

    if args.max_tokens < 0:
        print("error: --max-tokens must be >= 0", file=sys.stderr)
        return 2
    sampling = pb.SamplingParams(max_tokens=args.max_tokens)
    if args.temperature is not None:
        sampling.temperature = args.temperature
    if args.seed is not None:
        sampling.seed = args.seed
    request = pb.GenerateRequest(sampling=sampling, expert=args.expert)
    if args.system:
        request.messages.extend([pb.ChatMessage(role="system", content=args.system),
                                 pb.ChatMessage(role="user", content=args.prompt)])
    else:
        request.prompt = args.prompt

    with grpc.insecure_channel(args.target) as channel:
        stub = pb_grpc.ExpertStub(channel) if args.direct else pb_grpc.RouterStub(channel)
        started = time.perf_counter()
        call = stub.Generate(request, timeout=args.timeout)
        first_token_at = None
        last = None
        try:
            for frame in call:
                if frame.text and first_token_at is None:
                    first_token_at = time.perf_counter()
                sys.stdout.write(frame.text)
                sys.stdout.flush()
                last = frame
        except grpc.RpcError as err:
            sys.stdout.write("\n")
            print(f"error: {err.code().name}: {err.details()}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            call.cancel()
            raise
        finished = time.perf_counter()
        metadata = dict(call.initial_metadata())

    sys.stdout.write("\n")
    expert = metadata.get("x-expert", args.target if args.direct else "?")
    how = metadata.get("x-expert-source", "direct" if args.direct else "")
    score = metadata.get("x-expert-score")
    cascade = metadata.get("x-expert-cascade")
    parts = [f"expert: {expert}" + (f" ({how}" + (f", score {float(score):.3f}" if score else "")
                                    + (f", rescored by {cascade}" if cascade else "") + ")"
                                    if how else "")]
    if first_token_at is not None:
        parts.append(f"TTFT {1000 * (first_token_at - started):.0f} ms")
    if last is not None and last.usage.completion_tokens:
        tokens = last.usage.completion_tokens
        parts.append(f"{tokens} tokens")
        # Rate after the first token: decode speed, not prompt processing.
        if first_token_at is not None and tokens > 1 and finished > first_token_at:
            parts.append(f"{(tokens - 1) / (finished - first_token_at):.1f} tokens/s")
        reason = pb.FinishReason.Name(last.finish_reason).removeprefix("FINISH_REASON_").lower()
        parts.append(f"finish {reason}")
    print(" | ".join(parts), file=sys.stderr)
    return 0
