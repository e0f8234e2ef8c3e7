"""`expert-router experts`: the router's experts, their replicas and health."""
from __future__ import annotations

import argparse

DEFAULT_TARGET = "127.0.0.1:50051"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--target", default=DEFAULT_TARGET, metavar="HOST:PORT",
                        help=f"router address (default {DEFAULT_TARGET})")
    parser.add_argument("--timeout", type=float, default=5.0, help="deadline in seconds (default 5)")


def run(args: argparse.Namespace) -> int:
    import sys

    import grpc

    from expert_router.v1 import expert_router_pb2 as pb
    from expert_router.v1 import expert_router_pb2_grpc as pb_grpc

    with grpc.insecure_channel(args.target) as channel:
        try:
            listed = pb_grpc.RouterStub(channel).ListExperts(pb.ListExpertsRequest(), timeout=args.timeout)
        except grpc.RpcError as err:
            print(f"error: {err.code().name}: {err.details()}", file=sys.stderr)
            return 1
    rows = [("EXPERT", "HEALTH", "REPLICA", "OUTSTANDING")]
    for expert in listed.experts:
        name = expert.name + (" (fallback)" if expert.fallback else "")
        health = "healthy" if expert.healthy else "UNHEALTHY"
        for i, replica in enumerate(expert.replicas):
            rows.append((name if i == 0 else "", health if i == 0 else "",
                         f"{replica.address} {'up' if replica.healthy else 'down'}",
                         str(replica.outstanding)))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    return 0 if all(expert.healthy for expert in listed.experts) else 3
