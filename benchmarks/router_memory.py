"""Where the router's memory goes at N open streams: native relay and Python relay, side by side.

Starts two synthetic experts (20 ms to first token, 50 tokens/s per stream; long answers so that
streams stay open) and one router per configuration, each with the default ``--workers`` (a
supervisor plus one worker per core, as in `make bench`), then, for each router in turn, holds
``--users`` closed-loop streams open and reads every process of its tree from /proc while they
run: RSS split into file-backed pages (shared libraries, the Python and classifier files) and
anonymous pages, the anonymous pages split into the main heap (``[heap]``, brk), glibc's per-thread
malloc arenas (anonymous mappings inside 64 MiB-aligned arena heaps), thread stacks and other
anonymous mappings (Python's arenas, onnxruntime, gRPC's own allocations), plus the thread count.
The peak RSS of the whole tree is sampled every 0.25 s as in benchmarks/standard.py.

    python benchmarks/router_memory.py                          # 1,000 streams, native and Python relay
    python benchmarks/router_memory.py --tree main=/path/to/checkout   # also a router_svc from elsewhere

``--tree NAME=DIR`` runs the router_svc package found in DIR (with its own built extension), so a
change is measured against the code it replaces in the same run.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence

sys.path[:0] = [os.path.dirname(os.path.dirname(os.path.abspath(__file__))), os.path.dirname(os.path.abspath(__file__))]

from standard import EXPERT_NAMES, PeakRss, Processes, expert_argv, free_port, router_argv, wait_serving

from router_svc.commands.bench import build_requests
from router_svc.loadgen import client, prompts
from router_svc.loadgen.runner import LoadGenerator, ProgressLine

ARENA_ALIGN = 64 << 20  # glibc's HEAP_MAX_SIZE on 64-bit: every non-main arena heap starts at such a boundary


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=1000, help="open streams (closed-loop users, default 1000)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of load per router (default 10)")
    parser.add_argument("--max-tokens", type=int, default=32, help="tokens per request (default 32)")
    parser.add_argument("--relays", default="native,python", help="relays of the working tree to run")
    parser.add_argument("--tree", metavar="NAME=DIR[:RELAY]", action="append", default=[],
                        help="also run DIR's router_svc with RELAY (default python) (repeatable)")
    parser.add_argument("--router-args", default="", help="extra flags for every router")
    return parser.parse_args(argv)


def tree_pids(pid: int) -> list[int]:
    out, stack = [], [pid]
    while stack:
        current = stack.pop()
        out.append(current)
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children", encoding="ascii") as f:
                    stack.extend(int(c) for c in f.read().split())
    return out


def memory_breakdown(pid: int) -> dict[str, float]:
    """RSS of one process in MiB, by kind of mapping (from /proc/PID/smaps)."""
    kinds = dict.fromkeys(("rss", "file", "anon", "heap", "arenas", "stacks", "other anon"), 0.0)
    arena_end = 0
    with open(f"/proc/{pid}/smaps", encoding="utf-8", errors="replace") as f:
        kind = None
        for line in f:
            first = line.split(maxsplit=1)[0]
            if "-" in first and not first.endswith(":"):
                parts = line.split()
                start, end = (int(x, 16) for x in parts[0].split("-"))
                path = parts[5] if len(parts) > 5 else ""
                if path.startswith("/"):
                    kind = "file"
                elif path == "[heap]":
                    kind = "heap"
                elif path.startswith("[stack"):
                    kind = "stacks"
                elif path:
                    kind = "file"  # [vdso], [vvar]: counted with the shared pages
                elif start % ARENA_ALIGN == 0 and end - start <= ARENA_ALIGN and "rw-p" in parts[1]:
                    kind, arena_end = "arenas", start + ARENA_ALIGN
                elif start < arena_end:
                    kind = "arenas"  # the rest of the same arena heap (its reserved, inaccessible tail)
                elif end - start in (8 << 20, (8 << 20) + 4096) and "rw-p" in parts[1]:
                    kind = "stacks"  # a thread's stack (glibc's default 8 MiB)
                else:
                    kind = "other anon"
            elif line.startswith("Rss:") and kind is not None:
                mib = int(line.split()[1]) / 1024
                kinds["rss"] += mib
                kinds[kind] += mib
                if kind != "file":
                    kinds["anon"] += mib
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        kinds["threads"] = next(int(line.split()[1]) for line in f if line.startswith("Threads:"))
    return kinds


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    tmp = tempfile.mkdtemp(prefix="bench-memory-")
    procs = Processes(tmp)
    progress = ProgressLine()
    configs: list[tuple[str, str, str]] = [(relay, root, relay) for relay in args.relays.split(",") if relay]
    for item in args.tree:
        name, _, rest = item.partition("=")
        directory, _, relay = rest.partition(":")
        configs.append((name, directory, relay or "python"))
    rows = []
    with contextlib.ExitStack() as stack:
        stack.callback(procs.close)
        addresses = [f"127.0.0.1:{free_port()}" for _ in range(2)]
        for i, address in enumerate(addresses):
            procs.spawn(f"synthetic{i}", expert_argv(f"synthetic{i}", address, "synthetic", args.max_tokens, 4096))
        for i, address in enumerate(addresses):
            wait_serving(address, procs._procs[i][1], 30)
        experts = {name: addresses[i % 2] for i, name in enumerate(EXPERT_NAMES)}
        routers = []
        for name, directory, relay in configs:
            address = f"127.0.0.1:{free_port()}"
            log = open(os.path.join(tmp, f"{name}.log"), "wb")  # noqa: SIM115 - closed below
            proc = subprocess.Popen(router_argv(address, experts, [], relay, args.router_args), stdout=log,
                                    stderr=subprocess.STDOUT, cwd=directory)
            log.close()
            procs._procs.append((name, proc))
            wait_serving(address, proc, 60)
            routers.append((name, address, proc))
        requests = build_requests(prompts.builtin_prompts(), args.max_tokens)
        generator = stack.enter_context(LoadGenerator(2))
        time.sleep(1.0)
        for name, address, proc in routers:
            idle = {pid: memory_breakdown(pid) for pid in tree_pids(proc.pid)}
            with PeakRss(proc.pid) as peak:
                import threading

                loaded: dict[int, dict[str, float]] = {}

                def sample(pid: int = proc.pid, loaded: dict = loaded) -> None:
                    time.sleep(0.5 + 1.5 + args.duration * 0.7)  # start delay, ramp-up, most of the level
                    loaded.update({p: memory_breakdown(p) for p in tree_pids(pid)})

                sampler = threading.Thread(target=sample)
                sampler.start()
                summary = generator.run_level(targets=[address], method=client.ROUTER_GENERATE, requests=requests,
                                              users=args.users, duration_s=args.duration, warmup_s=1.5,
                                              timeout_s=120.0, label=name, on_progress=progress)
                sampler.join()
            progress.done(f"{name}: {summary.tokens_per_s:.0f} tokens/s, errors {sum(summary.errors.values())}, "
                          f"peak tree RSS {peak.peak / 2**20:.0f} MiB")
            for label, snapshot in (("idle", idle), (f"{args.users} streams", loaded)):
                total = {key: sum(p[key] for p in snapshot.values()) for key in next(iter(snapshot.values()))}
                rows.append((name, label, len(snapshot), total, peak.peak / 2**20))
    print(f"\nMiB, summed over the router's processes (supervisor + workers); {args.router_args or 'default flags'}\n")
    print("| router | when | processes | RSS | file-backed | anonymous | [heap] | malloc arenas | stacks "
          "| other anon | threads | peak tree RSS |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, label, count, t, peak_mib in rows:
        print(f"| {name} | {label} | {count} | {t['rss']:.0f} | {t['file']:.0f} | {t['anon']:.0f} | {t['heap']:.0f} "
              f"| {t['arenas']:.0f} | {t['stacks']:.1f} | {t['other anon']:.0f} | {t['threads']:.0f} | {peak_mib:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
