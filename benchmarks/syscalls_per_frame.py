"""System calls per relayed frame: the router's native relay next to nginx, under the same load.

The native relay's CPU per frame is 2-2.5x nginx's, and a perf profile put 40 % of it in the kernel.
This script says which system calls make that share: it starts two synthetic experts, nginx
``grpc_pass`` and the router (``--workers 1``, so one process holds every relay thread), loads each
in turn with closed-loop users, and while a proxy is loaded counts its system calls by kind with
``perf stat`` (syscall tracepoints: no ptrace, so the proxy runs at its normal speed, unlike under
strace), and its voluntary and involuntary context switches from /proc. Counts are divided by the
frames the load generator received in the same window.

    python benchmarks/syscalls_per_frame.py                       # 300 users, 10 s per proxy, 2 rounds
    python benchmarks/syscalls_per_frame.py --users 1000 --router-arg=--relay-threads=1

Needs ``perf`` with access to tracepoints (root, or kernel.perf_event_paranoid <= -1).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence

sys.path[:0] = [os.path.dirname(os.path.dirname(os.path.abspath(__file__))), os.path.dirname(os.path.abspath(__file__))]

from nginx_proxy import NginxGrpcProxy, ensure_nginx
from standard import EXPERT_NAMES, Processes, expert_argv, free_port, router_argv, start_service

from router_svc.commands.bench import build_requests
from router_svc.loadgen import client, prompts
from router_svc.loadgen.runner import LoadGenerator, ProgressLine

SYSCALLS = ("sendmsg", "recvmsg", "read", "write", "readv", "writev", "epoll_wait", "epoll_pwait", "futex",
            "poll", "ppoll", "getrusage", "clock_gettime", "eventfd2", "recvfrom", "sendto", "madvise", "mmap",
            "munmap", "brk", "epoll_ctl")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=300, help="closed-loop users (default 300)")
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per proxy (default 10)")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds (default 2)")
    parser.add_argument("--max-tokens", type=int, default=32, help="tokens (frames) per request (default 32)")
    parser.add_argument("--router-arg", action="append", default=[], help="an extra router argument (repeatable)")
    return parser.parse_args(argv)


def thread_ids(pids: Sequence[int]) -> list[int]:
    out = []
    for pid in pids:
        with contextlib.suppress(OSError):
            out += [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    return out


def context_switches(pids: Sequence[int]) -> tuple[int, int]:
    """Voluntary and involuntary context switches of every thread of ``pids`` so far."""
    voluntary = involuntary = 0
    for pid in pids:
        for tid in thread_ids([pid]):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{tid}/status", encoding="ascii") as f:
                for line in f:
                    if line.startswith("voluntary_ctxt_switches:"):
                        voluntary += int(line.split()[1])
                    elif line.startswith("nonvoluntary_ctxt_switches:"):
                        involuntary += int(line.split()[1])
    return voluntary, involuntary


def perf_counts(pids: Sequence[int], seconds: float) -> dict[str, int]:
    """System calls of ``pids`` (all their threads) by kind over ``seconds``, from perf stat."""
    events = ",".join(f"syscalls:sys_enter_{name}" for name in SYSCALLS) + ",raw_syscalls:sys_enter"
    result = subprocess.run(["perf", "stat", "-x", ",", "-e", events, "-t", ",".join(map(str, thread_ids(pids))),
                             "--", "sleep", f"{seconds:g}"], capture_output=True, text=True, check=False)
    counts = {}
    for line in result.stderr.splitlines():
        fields = line.split(",")
        if len(fields) > 2 and fields[0].isdigit():
            name = re.sub(r"^(syscalls:sys_enter_|raw_syscalls:sys_enter)", "", fields[2]) or "all"
            counts[name] = int(fields[0])
    if not counts:
        raise RuntimeError(f"perf stat counted nothing: {result.stderr.strip()[-300:]}")
    return counts


def children(pid: int) -> list[int]:
    out = []
    for tid in thread_ids([pid]):
        with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{tid}/children", encoding="ascii") as f:
            out += [int(c) for c in f.read().split()]
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    tmp = tempfile.mkdtemp(prefix="bench-syscalls-")
    procs = Processes(tmp)
    progress = ProgressLine()
    results: dict[str, list[dict[str, float]]] = {}
    with contextlib.ExitStack() as stack:
        stack.callback(procs.close)
        addresses = [f"127.0.0.1:{free_port()}" for _ in range(2)]
        for i, address in enumerate(addresses):
            start_service(procs, f"synthetic{i}", expert_argv(f"synthetic{i}", address, "synthetic",
                                                              args.max_tokens, 4096), address, 30)
        experts = {name: addresses[i % 2] for i, name in enumerate(EXPERT_NAMES)}
        ensure_nginx()
        nginx_address = f"127.0.0.1:{free_port()}"
        nginx = stack.enter_context(NginxGrpcProxy(addresses, nginx_address))
        router_address = f"127.0.0.1:{free_port()}"
        router = start_service(procs, "router", router_argv(router_address, experts, [], "native",
                                                            " ".join(["--workers", "1", *args.router_arg])),
                               router_address, 60)
        configs = [("nginx", nginx_address, client.EXPERT_GENERATE, [nginx.pid, *children(nginx.pid)]),
                   ("router", router_address, client.ROUTER_GENERATE, [router.pid])]
        requests = build_requests(prompts.builtin_prompts(), args.max_tokens)
        generator = stack.enter_context(LoadGenerator(2))
        warmup = 1.5
        for rnd in range(args.rounds):
            for name, address, method, pids in configs:
                measured: dict[str, object] = {}

                def count(pids: list[int] = pids, measured: dict[str, object] = measured) -> None:
                    time.sleep(warmup + 1.0)  # past the ramp-up
                    before = context_switches(pids)
                    measured["counts"] = perf_counts(pids, args.duration - 2.0)
                    after = context_switches(pids)
                    measured["switches"] = (after[0] - before[0], after[1] - before[1])

                counter = threading.Thread(target=count)
                counter.start()
                summary = generator.run_level(targets=[address], method=method, requests=requests, users=args.users,
                                              duration_s=args.duration, warmup_s=warmup, timeout_s=120.0,
                                              label=f"{name} r{rnd + 1}", on_progress=progress)
                counter.join()
                frames = summary.tokens_per_s * (args.duration - 2.0)
                row = {key: value / frames for key, value in measured["counts"].items()}
                row["voluntary switches"] = measured["switches"][0] / frames
                row["involuntary switches"] = measured["switches"][1] / frames
                results.setdefault(name, []).append(row)
                progress.done(f"r{rnd + 1} {name}: {summary.tokens_per_s:.0f} tokens/s, "
                              f"{row['all']:.2f} system calls per frame, errors {sum(summary.errors.values())}")
    names = sorted({key for rows in results.values() for row in rows for key in row},
                   key=lambda k: -max(statistics_median([r.get(k, 0.0) for r in rows]) for rows in results.values()))
    print(f"\n{args.users} users, per relayed frame, medians of {args.rounds} round(s)\n")
    print("| per frame | " + " | ".join(results) + " |")
    print("|---|" + "---:|" * len(results))
    for key in names:
        cells = [statistics_median([r.get(key, 0.0) for r in rows]) for rows in results.values()]
        if max(cells) >= 0.005:
            print(f"| {key} | " + " | ".join(f"{c:.3f}" for c in cells) + " |")
    return 0


def statistics_median(values: Sequence[float]) -> float:
    import statistics

    return statistics.median(values) if values else 0.0


if __name__ == "__main__":
    sys.exit(main())
