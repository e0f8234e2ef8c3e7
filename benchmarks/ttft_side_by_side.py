"""Router-added time to first token against nginx's, side by side at one level, several rounds.

The target "router-added TTFT p50 within 0.5 ms of nginx's" compares two small numbers that a shared
machine moves by as much; `make bench` measures them once per level. This script starts the
synthetic experts (20 ms to first token, 50 tokens/s), nginx `grpc_pass` and one router over them,
then runs direct, nginx and the router in turn for several interleaved rounds at one level and
prints each round's added TTFT (p50, p99, minus the same round's direct) and the router-minus-nginx
difference, with the median over rounds.

    python benchmarks/ttft_side_by_side.py --users 1 --rounds 3 --duration 12
    python benchmarks/ttft_side_by_side.py --users 1 --router-args "--workers 1"
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent)]

from nginx_proxy import NginxGrpcProxy, ensure_nginx
from standard import (
    EXPERT_NAMES,
    Processes,
    classifier_argument,
    expert_argv,
    free_port,
    router_argv,
    start_service,
)

from router_svc.commands.bench import build_requests
from router_svc.loadgen import client, prompts
from router_svc.loadgen.runner import LoadGenerator


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=1, help="closed-loop users (default 1)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--duration", type=float, default=12.0, help="measured seconds per phase (default 12)")
    parser.add_argument("--relay", default="native", choices=("native", "python"), help="the router's relay")
    parser.add_argument("--router-args", default="", help="extra router flags, e.g. '--workers 1'")
    args = parser.parse_args(argv)
    procs = Processes(tempfile.mkdtemp(prefix="ttft-side-by-side-"))
    try:
        addresses = [f"127.0.0.1:{free_port()}" for _ in range(2)]
        for i, address in enumerate(addresses):
            start_service(procs, f"synthetic{i}", expert_argv(f"synthetic{i}", address, "synthetic", 32, 4096),
                          address, 30)
        experts = {name: addresses[i % len(addresses)] for i, name in enumerate(EXPERT_NAMES)}
        classifier, _ = classifier_argument(None, procs.directory)
        router = f"127.0.0.1:{free_port()}"
        start_service(procs, "router", router_argv(router, experts, classifier, args.relay, args.router_args),
                      router, 60)
        ensure_nginx()
        nginx = f"127.0.0.1:{free_port()}"
        configs = (("direct", addresses, client.EXPERT_GENERATE), ("nginx", [nginx], client.EXPERT_GENERATE),
                   ("router", [router], client.ROUTER_GENERATE))
        requests = build_requests(prompts.builtin_prompts(), 32)
        rows = []
        with NginxGrpcProxy(addresses, nginx), LoadGenerator(2) as generator:
            for round_index in range(args.rounds):
                ttft = {}
                for name, targets, method in configs:
                    summary = generator.run_level(targets=targets, method=method, requests=requests,
                                                  users=args.users, duration_s=args.duration, warmup_s=1.0,
                                                  timeout_s=60.0)
                    if sum(summary.errors.values()):
                        print(f"round {round_index + 1} {name}: errors {dict(summary.errors)}", file=sys.stderr)
                    ttft[name] = (summary.ttft_ms["p50"], summary.ttft_ms["p99"])
                nginx_added = [ttft["nginx"][k] - ttft["direct"][k] for k in (0, 1)]
                router_added = [ttft["router"][k] - ttft["direct"][k] for k in (0, 1)]
                rows.append((nginx_added, router_added, router_added[0] - nginx_added[0]))
                print(f"round {round_index + 1}: added TTFT p50 / p99 ms: nginx {nginx_added[0]:.2f} / "
                      f"{nginx_added[1]:.2f}, router {router_added[0]:.2f} / {router_added[1]:.2f}; "
                      f"router - nginx p50 {rows[-1][2]:.2f}", flush=True)
    finally:
        procs.close()
    print(f"\n{args.users} users, {args.rounds} rounds of {args.duration:g} s, router {args.relay} relay "
          f"{args.router_args or '(default flags)'}: medians: nginx added p50 "
          f"{statistics.median(r[0][0] for r in rows):.2f} ms, router added p50 "
          f"{statistics.median(r[1][0] for r in rows):.2f} ms, router - nginx "
          f"{statistics.median(r[2] for r in rows):.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
