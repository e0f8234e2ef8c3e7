"""What OpenTelemetry tracing costs the router: tracing off vs on, side by side in one run.

Starts synthetic experts (20 ms to first token, 50 tokens/s per stream; tracing off, so only the
router's cost is measured) and, per relay, two single-process routers: one without
``--otlp-endpoint`` and one exporting to an OTLP/gRPC collector served by this script (a real
``opentelemetry.proto`` TraceService on a thread pool, which counts the spans it receives and
answers at once). The load generator (its own processes) then runs the same closed-loop level
against every router in turn, for several interleaved rounds, so drift on a shared machine hits
all of them alike. Prints, per router, the medians across rounds of TTFT p50/p99, the router's CPU
per request and per relayed frame (all its threads, from /proc), and the spans the collector got per traced
call (5 for a routed call: the root and four stages), once the routers have stopped and flushed.

    python benchmarks/otel_overhead.py                       # 100 users, 10 s, 3 rounds, both relays
    python benchmarks/otel_overhead.py --relays native --rounds 5
    python benchmarks/otel_overhead.py --breakdown               # CPU per call: making spans vs encoding them

``--breakdown`` needs no servers: it times, in this process, the router's five spans per call made
through ``service_base.tracing`` and handed to an exporter that drops them, with and without
encoding them to OTLP protobuf in batches of 512 (what the batch exporter's thread does before
sending).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent import futures
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent)]

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from router_overhead import _wait, fmt, median, router_argv
from standard import EXPERT_NAMES, Processes, expert_argv, free_port, start_service

from router_svc.loadgen import client, prompts
from router_svc.loadgen.runner import LoadGenerator, ProgressLine


class CountingCollector(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC trace collector that only counts the spans it receives (and the calls' root spans)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.spans = 0
        self.roots = 0

    def Export(self, request, context):
        spans = [span for resource in request.resource_spans for scope in resource.scope_spans
                 for span in scope.spans]
        roots = sum(1 for span in spans if span.name == "router.generate")
        with self._lock:
            self.spans += len(spans)
            self.roots += roots
        return trace_service_pb2.ExportTraceServiceResponse()


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=100, help="closed-loop users (default 100)")
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per level (default 10)")
    parser.add_argument("--warmup", type=float, default=1.5, help="ramp-up seconds per level (default 1.5)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--max-tokens", type=int, default=32, help="completion tokens per request (default 32)")
    parser.add_argument("--expert-procs", type=int, default=2, help="synthetic expert processes (default 2)")
    parser.add_argument("--processes", type=int, default=2, help="load generator processes (default 2)")
    parser.add_argument("--relays", default="native,python", help="router relays to measure (default both)")
    parser.add_argument("--breakdown", action="store_true",
                        help="only time making and encoding one call's spans in this process")
    return parser.parse_args(argv)


def span_breakdown(calls: int = 5000) -> None:
    """CPU per call for the router's five spans: made and dropped, then made and encoded to OTLP."""
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

    from service_base.tracing import start_tracing

    class Dropping(SpanExporter):
        """Drops spans; with ``encode``, first encodes them in batches of 512 as the batch exporter does."""

        def __init__(self, encode: bool) -> None:
            self.encode = encode
            self.batch: list = []

        def export(self, spans):
            if self.encode:
                self.batch.extend(spans)
                if len(self.batch) >= 512:
                    encode_spans(self.batch).SerializeToString()
                    self.batch = []
            return SpanExportResult.SUCCESS

    for encode in (False, True):
        tracing = start_tracing("expert-router", exporter=Dropping(encode), batch=False)
        started = time.process_time()
        for _ in range(calls):
            begun = time.perf_counter()
            root = tracing.start_server_span("router.generate", begun, ())
            tracing.headers(root)
            offset = tracing.clock()
            for name in ("router.classify", "router.admission", "router.upstream_open", "router.relay"):
                tracing.span(root, name, begun, begun + 0.001, offset,
                             {"expert_router.expert": "math", "expert_router.frames": 32})
            tracing.finish(root, begun + 0.002, offset, {"expert_router.request_id": "bench-1",
                                                         "rpc.grpc.status_code": 0})
        cost = (time.process_time() - started) / calls * 1e6
        what = "made and encoded to OTLP protobuf" if encode else "made, then dropped"
        print(f"five spans per call, {what}: {cost:.0f} us of CPU per call ({calls} calls)")


def main(argv: Sequence[str] | None = None) -> int:
    from router_svc.commands.bench import build_requests

    args = parse_args(argv)
    if args.breakdown:
        span_breakdown()
        return 0
    relays = [r.strip() for r in args.relays.split(",") if r.strip()]
    classifier_dir = str(ROOT / "router_svc" / "classifier_data")
    tmp = tempfile.mkdtemp(prefix="bench-otel-overhead-")
    collector = CountingCollector()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, server)
    collector_port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    procs = Processes(tmp)
    progress = ProgressLine()
    rows: list[dict[str, object]] = []
    with contextlib.ExitStack() as stack:
        stack.callback(server.stop, 0)
        stack.callback(procs.close)
        addresses = [f"127.0.0.1:{free_port()}" for _ in range(args.expert_procs)]
        for i, address in enumerate(addresses):
            start_service(procs, f"synthetic{i}", expert_argv(f"synthetic{i}", address, "synthetic",
                                                              args.max_tokens, 4096), address, 30)
        experts = {name: addresses[i % len(addresses)] for i, name in enumerate(EXPERT_NAMES)}
        requests = build_requests(prompts.builtin_prompts(), args.max_tokens)
        configs: list[tuple[str, str, int]] = []
        for relay in relays:
            for tracing in ("off", "on"):
                name = f"{relay}/tracing-{tracing}"
                address = f"127.0.0.1:{free_port()}"
                extra = ["--relay", relay]
                if tracing == "on":
                    extra += ["--otlp-endpoint", f"127.0.0.1:{collector_port}"]
                proc = procs.spawn(name.replace("/", "_"), router_argv(address, experts, classifier_dir, "WARNING",
                                                                        extra))
                _wait(procs, name, proc, address)
                configs.append((name, address, proc.pid))
        print(f"machine: {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}; logs in {tmp}", file=sys.stderr)
        generator = stack.enter_context(LoadGenerator(args.processes))
        for rnd in range(args.rounds):
            order = configs[rnd % len(configs):] + configs[:rnd % len(configs)]
            for name, address, pid in order:
                summary = generator.run_level(
                    targets=[address], method=client.ROUTER_GENERATE, requests=requests, users=args.users,
                    duration_s=args.duration, warmup_s=args.warmup, timeout_s=120.0,
                    label=f"{name} r{rnd + 1}", watch_pids={"router": pid}, on_progress=progress)
                cpu = summary.watched_cpu_s.get("router")
                row = {
                    "config": name, "round": rnd + 1, "ttft_p50": summary.ttft_ms["p50"],
                    "ttft_p99": summary.ttft_ms["p99"], "errors": sum(summary.errors.values()),
                    "requests": summary.requests_total, "tokens_per_s": summary.tokens_per_s,
                    "cpu_ms_per_request": 1e3 * cpu / summary.requests_total if cpu and summary.requests_total else None,
                    "cpu_us_per_frame": 1e6 * cpu / summary.frames if cpu and summary.frames else None,
                    "machine_busy": summary.machine_busy,
                }
                rows.append(row)
                progress.done(f"r{rnd + 1} {name:>20}: TTFT p50 {fmt(row['ttft_p50'])} p99 {fmt(row['ttft_p99'])} ms, "
                              f"{fmt(row['cpu_ms_per_request'], 3)} ms/req, {fmt(row['cpu_us_per_frame'])} us/frame, "
                              f"busy {fmt(summary.machine_busy, 2)}, errors {row['errors']}")
    traced = sum(r["requests"] for r in rows if str(r["config"]).endswith("tracing-on"))
    print(f"\n{args.users} users, {args.duration:g} s x {args.rounds} rounds, {args.max_tokens} tokens/request; "
          f"medians across rounds; OTLP/gRPC export to a collector in the benchmark process\n")
    header = ("| router | TTFT p50 / p99 ms | CPU ms/request | CPU us/frame | tokens/s | machine busy | errors |")
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for name, *_ in configs:
        mine = [r for r in rows if r["config"] == name]
        m = {key: median([r[key] for r in mine]) for key in (
            "ttft_p50", "ttft_p99", "cpu_ms_per_request", "cpu_us_per_frame", "tokens_per_s", "machine_busy")}
        print(f"| {name} | {fmt(m['ttft_p50'])} / {fmt(m['ttft_p99'])} | {fmt(m['cpu_ms_per_request'], 3)} | "
              f"{fmt(m['cpu_us_per_frame'])} | {fmt(m['tokens_per_s'], 0)} | {fmt(m['machine_busy'], 2)} | "
              f"{sum(r['errors'] for r in mine)} |")
    # Warm-up requests are traced too, so there are more root spans than measured requests.
    print(f"\ncollector: {collector.spans} spans in {collector.roots} traces "
          f"({collector.spans / max(collector.roots, 1):.2f} spans per call); the load generator counted "
          f"{traced} requests to the tracing routers in the measured windows")
    return 0


if __name__ == "__main__":
    sys.exit(main())
