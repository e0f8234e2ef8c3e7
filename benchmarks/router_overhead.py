"""A/B of the router's own overhead: direct vs router (classified) vs router (expert named), side by side.

Starts synthetic experts (20 ms to first token, 50 tokens/s per stream) and one single-process
router (``--workers 1``) per configuration, then runs the load generator (its own processes) at one
concurrency level against every configuration in turn, for several interleaved rounds, so that
drift on a shared machine hits all of them alike. Prints, per configuration, the medians across
rounds of: TTFT p50/p99 and what the router adds to the same round's direct numbers, ITL p99,
tokens/s against direct, and the router's CPU per relayed frame and per request (run time of all
its threads from /proc, over the whole level).

    python benchmarks/router_overhead.py                          # 100 users, 10 s, 3 rounds
    python benchmarks/router_overhead.py --baseline HEAD          # also the committed router, same run
    python benchmarks/router_overhead.py --tree exp=/tmp/variant  # a variant: DIR holds a router_svc/

``--baseline REF`` extracts ``router_svc/`` of a git revision into a temporary folder and runs that
copy (everything else - compiled core, stubs, experts - is the working tree's), so an optimisation
is judged against the code it replaces in one run. ``--tree NAME=DIR`` does the same for any folder
containing a ``router_svc`` package.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Sequence
from io import BytesIO
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent)]

from standard import (
    EXPERT_NAMES,
    Processes,
    expert_argv,
    free_port,
    start_service,
)

from router_svc.loadgen import client, prompts
from router_svc.loadgen.runner import LoadGenerator, ProgressLine


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=100, help="closed-loop users (default 100)")
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per level (default 10)")
    parser.add_argument("--warmup", type=float, default=1.5, help="ramp-up seconds per level (default 1.5)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--max-tokens", type=int, default=32, help="completion tokens per request (default 32)")
    parser.add_argument("--expert-procs", type=int, default=2, help="synthetic expert processes (default 2)")
    parser.add_argument("--processes", type=int, default=2, help="load generator processes (default 2)")
    parser.add_argument("--modes", default="classified,explicit",
                        help="router request kinds to run: classified, explicit (default both)")
    parser.add_argument("--baseline", metavar="REF", action="append", default=[],
                        help="also run router_svc/ as of this git revision (repeatable)")
    parser.add_argument("--tree", metavar="NAME=DIR", action="append", default=[],
                        help="also run the router_svc package found in DIR (repeatable)")
    parser.add_argument("--other-modes", help="request kinds for --baseline/--tree routers (default: --modes)")
    parser.add_argument("--no-current", action="store_true", help="leave the working tree's router out")
    parser.add_argument("--no-direct", action="store_true",
                        help="leave direct out (no 'added' columns then)")
    parser.add_argument("--router-log-level", default="WARNING",
                        help="the routers' --log-level (default WARNING, as in make bench; INFO logs each request)")
    parser.add_argument("--router-arg", action="append", default=[],
                        help="an extra argument for every router (repeatable, e.g. --router-arg=--max-batch=1)")
    parser.add_argument("--json", metavar="OUT", help="write every round's numbers as JSON")
    return parser.parse_args(argv)


def extract_revision(ref: str, directory: str) -> str:
    """router_svc/ as of git revision ``ref``, unpacked under ``directory``; returns that folder."""
    out = os.path.join(directory, f"rev-{ref.replace('/', '_')}")
    os.makedirs(out)
    archive = subprocess.run(["git", "archive", "--format=tar", ref, "router_svc"], cwd=ROOT,
                             capture_output=True, check=True).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(out, filter="data")
    return out


def router_argv(address: str, experts: dict[str, str], classifier_dir: str, log_level: str,
                extra: Sequence[str]) -> list[str]:
    argv = [sys.executable, "-m", "router_svc", "--workers", "1", "--listen", address, "--log-level", log_level,
            "--classifier", classifier_dir, *extra]
    for name, upstream in experts.items():
        argv += ["--expert", f"{name}={upstream}"]
    return argv


def explicit_requests(max_tokens: int, classifier_dir: str) -> list[bytes]:
    """The built-in prompts, each naming the expert the classifier would pick for it (same spread)."""
    from expert_router.v1 import expert_router_pb2 as pb
    from router_svc.classifier import Classifier
    from router_svc.servicer import classification_text

    classifier = Classifier.load(classifier_dir)
    items = prompts.builtin_prompts()
    texts = [classification_text(p.prompt, [pb.ChatMessage(role=r, content=c) for r, c in p.messages])
             for p in items]
    chosen = [classifier.labels[i] for i in classifier.predict_batch(texts).argmax(axis=1)]
    out = []
    for i, (p, expert) in enumerate(zip(items, chosen)):
        request = pb.GenerateRequest(request_id=f"bench-{i}", expert=expert,
                                     sampling=pb.SamplingParams(max_tokens=p.max_tokens or max_tokens,
                                                                temperature=0.0))
        if p.messages:
            request.messages.extend(pb.ChatMessage(role=r, content=c) for r, c in p.messages)
        else:
            request.prompt = p.prompt
        out.append(request.SerializeToString())
    return out


def median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def main(argv: Sequence[str] | None = None) -> int:
    from router_svc.commands.bench import build_requests

    args = parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    other_modes = [m.strip() for m in (args.other_modes or args.modes).split(",") if m.strip()]
    classifier_dir = str(ROOT / "router_svc" / "classifier_data")
    tmp = tempfile.mkdtemp(prefix="bench-router-overhead-")
    trees: list[tuple[str, str]] = [] if args.no_current else [("current", str(ROOT))]
    for ref in args.baseline:
        trees.append((f"base:{ref}", extract_revision(ref, tmp)))
    for item in args.tree:
        name, _, directory = item.partition("=")
        if not directory or not os.path.isdir(os.path.join(directory, "router_svc")):
            print(f"error: --tree {item}: expected NAME=DIR with DIR/router_svc", file=sys.stderr)
            return 2
        trees.append((name, directory))

    procs = Processes(tmp)
    progress = ProgressLine()
    rows: list[dict[str, object]] = []
    with contextlib.ExitStack() as stack:
        stack.callback(procs.close)
        addresses = [f"127.0.0.1:{free_port()}" for _ in range(args.expert_procs)]
        for i, address in enumerate(addresses):
            start_service(procs, f"synthetic{i}", expert_argv(f"synthetic{i}", address, "synthetic",
                                                              args.max_tokens, 4096), address, 30)
        experts = {name: addresses[i % len(addresses)] for i, name in enumerate(EXPERT_NAMES)}
        classified = build_requests(prompts.builtin_prompts(), args.max_tokens)
        explicit = explicit_requests(args.max_tokens, classifier_dir)
        configs: list[tuple[str, list[str], str, list[bytes], int | None]] = []
        if not args.no_direct:
            configs.append(("direct", addresses, client.EXPERT_GENERATE, classified, None))
        for tree_name, directory in trees:
            # One router process per (tree, mode): no state (batcher, channels) shared between rows.
            for mode in (modes if directory == str(ROOT) else other_modes):
                address = f"127.0.0.1:{free_port()}"
                name = f"{tree_name}/{mode}"
                argv = router_argv(address, experts, classifier_dir, args.router_log_level, args.router_arg)
                proc = procs.spawn(name.replace("/", "_").replace(":", "_"), argv) if directory == str(ROOT) \
                    else _spawn_in(procs, name, argv, directory)
                _wait(procs, name, proc, address)
                configs.append((name, [address], client.ROUTER_GENERATE,
                                explicit if mode == "explicit" else classified, proc.pid))
        print(f"machine: {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}; logs in {tmp}", file=sys.stderr)
        generator = stack.enter_context(LoadGenerator(args.processes))
        for rnd in range(args.rounds):
            order = configs[rnd % len(configs):] + configs[:rnd % len(configs)]
            for name, targets, method, requests, pid in order:
                watch = {"router": pid} if pid else {}
                summary = generator.run_level(
                    targets=targets, method=method, requests=requests, users=args.users,
                    duration_s=args.duration, warmup_s=args.warmup, timeout_s=120.0,
                    label=f"{name} r{rnd + 1}", watch_pids=watch, on_progress=progress)
                cpu = summary.watched_cpu_s.get("router")
                row = {
                    "config": name, "round": rnd + 1, "ttft_p50": summary.ttft_ms["p50"],
                    "ttft_p99": summary.ttft_ms["p99"], "itl_p99": summary.itl_ms["p99"],
                    "e2e_p50": summary.e2e_ms["p50"], "tokens_per_s": summary.tokens_per_s,
                    "errors": sum(summary.errors.values()), "requests": summary.requests_total,
                    "frames": summary.frames, "router_cpu_s": cpu, "wall_s": summary.wall_s,
                    "cpu_us_per_frame": 1e6 * cpu / summary.frames if cpu is not None and summary.frames else None,
                    "cpu_ms_per_request": (1e3 * cpu / summary.requests_total
                                           if cpu is not None and summary.requests_total else None),
                    "router_cores": cpu / summary.wall_s if cpu is not None and summary.wall_s else None,
                    "loadgen_cores": summary.loadgen_cores, "machine_busy": summary.machine_busy,
                }
                rows.append(row)
                progress.done(f"r{rnd + 1} {name:>24}: TTFT p50 {fmt(row['ttft_p50'])} p99 {fmt(row['ttft_p99'])} ms"
                              f", {fmt(row['cpu_us_per_frame'])} us/frame, {fmt(row['cpu_ms_per_request'], 2)} "
                              f"ms/req, busy {fmt(summary.machine_busy, 2)}, errors {row['errors']}")

    direct = {r["round"]: r for r in rows if r["config"] == "direct"}
    for r in rows:
        d = direct.get(r["round"])
        r["added_p50"] = r["ttft_p50"] - d["ttft_p50"] if d and r["ttft_p50"] is not None else None
        r["added_p99"] = r["ttft_p99"] - d["ttft_p99"] if d and r["ttft_p99"] is not None else None
        r["tokens_ratio"] = r["tokens_per_s"] / d["tokens_per_s"] if d and d["tokens_per_s"] else None

    print(f"\n{args.users} users, {args.duration:g} s x {args.rounds} rounds, {args.max_tokens} tokens/request; "
          f"medians across rounds (added = minus the same round's direct)\n")
    header = ("| configuration | TTFT p50 / p99 ms | added p50 / p99 ms | ITL p99 ms | tokens/s vs direct "
              "| CPU us/frame | CPU ms/request | router cores | machine busy | errors |")
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for name, *_ in configs:
        mine = [r for r in rows if r["config"] == name]
        m = {key: median([r[key] for r in mine]) for key in (
            "ttft_p50", "ttft_p99", "added_p50", "added_p99", "itl_p99", "tokens_ratio", "cpu_us_per_frame",
            "cpu_ms_per_request", "router_cores", "machine_busy")}
        print(f"| {name} | {fmt(m['ttft_p50'])} / {fmt(m['ttft_p99'])} | {fmt(m['added_p50'], 2)} / "
              f"{fmt(m['added_p99'], 1)} | {fmt(m['itl_p99'])} | {fmt(m['tokens_ratio'], 3)} | "
              f"{fmt(m['cpu_us_per_frame'])} | {fmt(m['cpu_ms_per_request'], 2)} | {fmt(m['router_cores'], 2)} | "
              f"{fmt(m['machine_busy'], 2)} | {sum(r['errors'] for r in mine)} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))
    return 0


def _spawn_in(procs: Processes, name: str, argv: list[str], directory: str) -> subprocess.Popen:
    """Runs ``argv`` with ``directory`` first on the path, so its router_svc shadows the working tree's."""
    log = open(os.path.join(procs.directory, f"{name.replace('/', '_').replace(':', '_')}.log"), "wb")  # noqa: SIM115
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=directory)
    log.close()
    procs._procs.append((name, proc))
    return proc


def _wait(procs: Processes, name: str, proc: subprocess.Popen, address: str) -> None:
    from standard import wait_serving

    try:
        wait_serving(address, proc, 60)
    except RuntimeError as exc:
        raise RuntimeError(f"{name} did not start: {exc}") from None
    time.sleep(0.2)


if __name__ == "__main__":
    sys.exit(main())
