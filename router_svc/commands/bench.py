"""`expert-router bench`: load a Generate endpoint (router or expert) at several concurrency levels."""
from __future__ import annotations

import argparse

DEFAULT_USERS = "1,10,100,500,1000"


def _levels(text: str) -> list[int]:
    try:
        levels = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not levels or any(level < 1 for level in levels):
        raise argparse.ArgumentTypeError("every level must be a positive number of users")
    return levels


def _positive(kind):
    def parse(text: str):
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value
    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--target", required=True, metavar="HOST:PORT[,HOST:PORT...]",
                        help="Generate endpoint(s): a router, an expert, or a proxy; users are spread "
                             "round-robin over several")
    load = parser.add_mutually_exclusive_group()
    load.add_argument("--users", type=_levels, metavar="N,N,...",
                      help=f"closed-loop concurrency levels (default {DEFAULT_USERS})")
    load.add_argument("--rate", type=_positive(float), metavar="R",
                      help="open loop instead: Poisson arrivals at R requests/s")
    stop = parser.add_mutually_exclusive_group()
    stop.add_argument("--duration", type=_positive(float), default=10.0, metavar="S",
                      help="measured seconds per level, after the warm-up (default 10)")
    stop.add_argument("--requests-per-user", type=_positive(int), metavar="N",
                      help="instead of a duration: each user sends N requests")
    parser.add_argument("--warmup", type=float, default=1.0, metavar="S",
                        help="seconds of ramp-up left out of the statistics (default 1)")
    parser.add_argument("--think-ms", type=float, default=0.0, metavar="MS",
                        help="pause of each user between its requests (default 0)")
    parser.add_argument("--prompts", metavar="FILE.jsonl", help="prompts to send (default: a built-in set)")
    parser.add_argument("--max-tokens", type=_positive(int), default=64, metavar="N",
                        help="completion tokens per request unless the prompt file says (default 64)")
    parser.add_argument("--expert", default="", metavar="NAME",
                        help="ask the router for this expert instead of the classifier's choice")
    parser.add_argument("--service", choices=("auto", "router", "expert"), default="auto",
                        help="which service's Generate to call (default: ask the target)")
    parser.add_argument("--processes", type=_positive(int), metavar="P",
                        help="load generator worker processes (default: the cores, at most 8)")
    parser.add_argument("--timeout", type=_positive(float), default=60.0, metavar="S",
                        help="deadline of each request (default 60)")
    parser.add_argument("--json", metavar="OUT.json", help="write the results as JSON")
    parser.add_argument("--plot", metavar="PREFIX",
                        help="write PREFIX-latency.png and PREFIX-throughput.png (needs matplotlib)")
    parser.add_argument("--quiet", action="store_true", help="no progress line")


def build_requests(prompts, max_tokens: int, expert: str = "") -> list[bytes]:
    """Serializes one GenerateRequest per prompt, ready to send as raw bytes."""
    from expert_router.v1 import expert_router_pb2 as pb

    out = []
    for i, p in enumerate(prompts):
        request = pb.GenerateRequest(
            request_id=f"bench-{i}", expert=expert,
            sampling=pb.SamplingParams(max_tokens=p.max_tokens or max_tokens, temperature=0.0))
        if p.messages:
            request.messages.extend(pb.ChatMessage(role=r, content=c) for r, c in p.messages)
        else:
            request.prompt = p.prompt
        out.append(request.SerializeToString())
    return out


def run(args: argparse.Namespace) -> int:
    import sys
    import time

    from router_svc.loadgen import client, prompts, report
    from router_svc.loadgen.runner import LoadGenerator, ProgressLine

    targets = [t.strip() for t in args.target.split(",") if t.strip()]
    if not targets:
        print("error: --target needs at least one HOST:PORT", file=sys.stderr)
        return 2
    try:
        prompt_set = prompts.load_jsonl(args.prompts) if args.prompts else prompts.builtin_prompts()
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    service = args.service
    if service == "auto":
        try:
            service = client.detect_service(targets[0])
        except ConnectionError as exc:
            print(f"error: cannot reach the target to tell router from expert ({exc}); "
                  "pass --service", file=sys.stderr)
            return 1
    method = client.ROUTER_GENERATE if service == "router" else client.EXPERT_GENERATE
    requests = build_requests(prompt_set, args.max_tokens, args.expert)
    users = [] if args.rate else (args.users or _levels(DEFAULT_USERS))
    progress = None if args.quiet else ProgressLine()
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    levels = []
    with LoadGenerator(args.processes) as generator:
        for load in (users or [args.rate]):
            summary = generator.run_level(
                targets=targets, method=method, requests=requests,
                users=0 if args.rate else load, rate=args.rate or 0.0,
                duration_s=args.duration, warmup_s=args.warmup,
                requests_per_user=args.requests_per_user or 0, think_s=args.think_ms / 1000.0,
                timeout_s=args.timeout, on_progress=progress)
            if progress is not None:
                progress.done(f"{summary.label}: {summary.ok} ok, {sum(summary.errors.values())} errors, "
                              f"TTFT p50 {summary.ttft_ms['p50'] or 0:.1f} ms, "
                              f"{summary.tokens_per_s:.0f} tokens/s")
            levels.append(summary)
    print(report.format_table(levels))
    if args.json:
        meta = {"command": " ".join(sys.argv), "started": started, "target": args.target,
                "service": service, "max_tokens": args.max_tokens, "think_ms": args.think_ms,
                "processes": generator.processes, "machine": report.machine_description()}
        report.write_json(args.json, meta, {args.target: levels})
    if args.plot:
        try:
            for path in report.plot({args.target: levels}, args.plot):
                print(f"wrote {path}", file=sys.stderr)
        except ImportError:
            print("error: --plot needs matplotlib (pip install matplotlib)", file=sys.stderr)
            return 1
    return 1 if all(s.ok == 0 for s in levels) else 0
