"""`make bench` (second part): the OpenAI HTTP door against the gRPC door of the same router.

Starts synthetic experts (20 ms to first token, 50 tokens/s per stream, as benchmarks/standard.py)
and one router (`python -m router_svc --http-listen ...`, default workers) in front of them, then
loads the router's two doors in turn at each level (1, 10, 100, 300 closed-loop users): gRPC
`Router/Generate` with the chat messages, and streamed `POST /v1/chat/completions` with the same
messages, `max_tokens` and `stream_options.include_usage`. Both doors share the process, the
experts and the classifier, so the differences are the HTTP door's own cost: added time to first
token (HTTP percentile minus gRPC percentile) and the router's CPU per token. Each level runs
``--repeats`` times (the two doors interleaved each time, so drift on a shared machine hits both
alike); the report quotes the median over the repeats of each difference and ratio.

Writes docs/bench/http.json and the section "The OpenAI HTTP door" of docs/benchmarks.md (between
markers, so benchmarks/standard.py and this script each keep their own part).

    python benchmarks/http_overhead.py            # 1, 10, 100, 300 users, 8 s each, 3 repeats: ~5 minutes
    python benchmarks/http_overhead.py --quick    # 1, 10, 100 users, 3 s each, once
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import shlex
import statistics
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent)]

from standard import (
    EXPERT_NAMES,
    SYNTHETIC_TOKENS_PER_S,
    SYNTHETIC_TTFT_MS,
    Processes,
    _f,
    classifier_argument,
    expert_argv,
    free_port,
    router_argv,
    start_service,
)

from router_svc.loadgen import client, prompts, report
from router_svc.loadgen.runner import LoadGenerator, ProgressLine
from router_svc.loadgen.stats import LevelSummary, difference

LEVELS = (1, 10, 100, 300)
BEGIN = "<!-- http-door:begin (written by benchmarks/http_overhead.py) -->"
END = "<!-- http-door:end -->"
DOORS = ("gRPC", "HTTP")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 1, 10, 100 users, 3 s per level")
    parser.add_argument("--levels", help="comma-separated user counts (default 1,10,100,300)")
    parser.add_argument("--duration", type=float, help="measured seconds per level and repeat (default 8)")
    parser.add_argument("--repeats", type=int, help="runs of each level, doors interleaved (default 3)")
    parser.add_argument("--warmup", type=float, help="ramp-up seconds per level (default 1.5)")
    parser.add_argument("--max-tokens", type=int, default=32, help="completion tokens per request (default 32)")
    parser.add_argument("--expert-procs", type=int, default=2, help="synthetic expert processes (default 2)")
    parser.add_argument("--processes", type=int, help="load generator processes (default: the cores)")
    parser.add_argument("--classifier", metavar="DIR", help="router classifier artifact (default: packaged)")
    parser.add_argument("--out-dir", default=str(ROOT / "docs"), help="where benchmarks.md and bench/ are")
    args = parser.parse_args(argv)
    args.levels = ([int(x) for x in args.levels.split(",")] if args.levels
                   else [1, 10, 100] if args.quick else list(LEVELS))
    args.duration = args.duration or (3.0 if args.quick else 8.0)
    args.repeats = args.repeats or (1 if args.quick else 3)
    args.warmup = args.warmup if args.warmup is not None else (0.5 if args.quick else 1.5)
    return args


def build_requests(max_tokens: int) -> tuple[list[bytes], list[bytes]]:
    """The same conversations for both doors: GenerateRequest bytes and chat-completion JSON bodies."""
    from expert_router.v1 import expert_router_pb2 as pb

    grpc_requests, http_requests = [], []
    for p in prompts.builtin_prompts():
        messages = list(p.messages) if p.messages else [("user", p.prompt)]
        tokens = p.max_tokens or max_tokens
        grpc_requests.append(pb.GenerateRequest(
            messages=[pb.ChatMessage(role=r, content=c) for r, c in messages],
            sampling=pb.SamplingParams(max_tokens=tokens, temperature=0.0)).SerializeToString())
        http_requests.append(json.dumps({
            "model": "auto", "messages": [{"role": r, "content": c} for r, c in messages], "max_tokens": tokens,
            "temperature": 0.0, "stream": True, "stream_options": {"include_usage": True}}).encode())
    return grpc_requests, http_requests


def wait_http(address: str, timeout_s: float) -> None:
    import time
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(f"http://{address}/health", timeout=1.0) as response:
                if response.status == 200:
                    return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the HTTP door at {address} did not answer /health") from None
        time.sleep(0.1)


def cpu_per_token_us(summary: LevelSummary) -> float | None:
    cpu = summary.watched_cpu_s.get("router")
    return None if cpu is None or not summary.tokens else 1e6 * cpu / summary.tokens


def _median(values) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def comparison(levels: Sequence[int], series: dict[str, list[LevelSummary]]) -> list[dict[str, object]]:
    """One row per level: medians over the repeats (series hold ``repeats`` summaries per level, in order)."""
    rows = []
    for users in levels:
        grpc_runs = [s for s in series["gRPC"] if s.users == users]
        http_runs = [s for s in series["HTTP"] if s.users == users]
        pairs = list(zip(grpc_runs, http_runs, strict=True))
        rows.append({
            "users": users, "repeats": len(pairs),
            "added_ttft_p50_ms": _median(difference(h.ttft_ms["p50"], g.ttft_ms["p50"]) for g, h in pairs),
            "added_ttft_p99_ms": _median(difference(h.ttft_ms["p99"], g.ttft_ms["p99"]) for g, h in pairs),
            "grpc_cpu_us_per_token": _median(cpu_per_token_us(g) for g in grpc_runs),
            "http_cpu_us_per_token": _median(cpu_per_token_us(h) for h in http_runs),
            "http_grpc_cpu_ratio": _median(
                None if not cpu_per_token_us(g) or cpu_per_token_us(h) is None
                else cpu_per_token_us(h) / cpu_per_token_us(g) for g, h in pairs),
            "errors_grpc": sum(sum(g.errors.values()) for g in grpc_runs),
            "errors_http": sum(sum(h.errors.values()) for h in http_runs),
            "requests_http": sum(h.requests for h in http_runs),
            "tokens_per_s_grpc": _median(g.tokens_per_s for g in grpc_runs),
            "tokens_per_s_http": _median(h.tokens_per_s for h in http_runs),
            "machine_busy_http": _median(h.machine_busy for h in http_runs),
        })
    return rows


def targets(rows: Sequence[dict[str, object]]) -> list[tuple[str, str, str]]:
    out = []
    by_users = {row["users"]: row for row in rows}
    if 10 in by_users:
        p50 = by_users[10]["added_ttft_p50_ms"]
        out.append(("added TTFT over the gRPC door at 10 users: p50 <= 1 ms", f"{_f(p50)} ms",
                    "met" if p50 is not None and p50 <= 1.0 else "missed"))
    if 300 in by_users:
        row = by_users[300]
        out.append(("300 users with 0 errors", f"{row['errors_http']} errors of {row['requests_http']} requests",
                    "met" if row["errors_http"] == 0 and row["requests_http"] else "missed"))
    return out


def section(meta: dict, rows: Sequence[dict[str, object]], series: dict[str, list[LevelSummary]]) -> str:
    lines = [
        BEGIN,
        "## The OpenAI HTTP door",
        "",
        (f"Generated by `{meta['command']}` (`make bench`) on {meta['started']}, on the machine above (shared "
         "with other work)."),
        "",
        (f"One router process tree (`python -m router_svc --http-listen ...`, {meta['workers']} workers) over "
         f"{meta['expert_procs']} synthetic expert processes ({SYNTHETIC_TTFT_MS:g} ms to first token, "
         f"{SYNTHETIC_TOKENS_PER_S:g} tokens/s per stream, {meta['max_tokens']} tokens per request); classifier: "
         f"{meta['classifier']}. At each level the gRPC door (`Router/Generate`, chat messages) and the HTTP "
         "door (streamed `POST /v1/chat/completions` with the same messages, `stream_options.include_usage`) "
         f"are loaded in turn, closed-loop, {meta['warmup_s']:g} s ramp-up then {meta['duration_s']:g} s "
         f"measured, {meta['repeats']} time(s) per level; the summary quotes medians over the repeats. Added TTFT: HTTP percentile minus gRPC percentile, each from request sent to the first "
         "token at the client. CPU per token: the router's CPU time (all its processes, from /proc) over the "
         "level divided by the tokens delivered. The HTTP door parses every expert frame and writes it as a "
         "JSON event; the gRPC door forwards the frame's bytes."),
        "",
        ("| users | added TTFT p50 / p99 ms | router CPU µs/token gRPC / HTTP | HTTP/gRPC CPU "
         "| tokens/s gRPC / HTTP | errors gRPC / HTTP | machine busy (HTTP level) |"),
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        g, h = row["grpc_cpu_us_per_token"], row["http_cpu_us_per_token"]
        cpu_ratio = row["http_grpc_cpu_ratio"]
        busy = row["machine_busy_http"]
        lines.append(
            f"| {row['users']} | {_f(row['added_ttft_p50_ms'])} / {_f(row['added_ttft_p99_ms'])} "
            f"| {_f(g, 1)} / {_f(h, 1)} | {_f(cpu_ratio)}x | {row['tokens_per_s_grpc']:.0f} / "
            f"{row['tokens_per_s_http']:.0f} | {row['errors_grpc']} / {row['errors_http']} "
            f"| {'-' if busy is None else f'{100 * busy:.0f}%'} |")
    checks = targets(rows)
    if checks:
        lines += ["", "| target | measured | verdict |", "|---|---|---|"]
        lines += [f"| {t} | {m} | {v} |" for t, m, v in checks]
    for door in DOORS:
        lines += ["", f"### Through the {door} door", "", report.format_table(series[door])]
    lines += ["", "Raw numbers: [bench/http.json](bench/http.json).", END]
    return "\n".join(lines)


def write_section(path: Path, text: str) -> None:
    """Replaces the marked section of benchmarks.md (or appends it)."""
    current = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n"
    if BEGIN in current and END in current:
        before, _, rest = current.partition(BEGIN)
        _, _, after = rest.partition(END)
        current = before + text + after
    else:
        current = current.rstrip("\n") + "\n\n" + text + "\n"
    path.write_text(current, encoding="utf-8")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    out_dir = Path(args.out_dir)
    (out_dir / "bench").mkdir(parents=True, exist_ok=True)
    started = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    command = "python benchmarks/http_overhead.py" + ("" if argv is None and len(sys.argv) == 1
                                                      else " " + shlex.join(sys.argv[1:] if argv is None else argv))
    tmp = tempfile.mkdtemp(prefix="bench-http-")
    procs = Processes(tmp)
    progress = ProgressLine()
    series: dict[str, list[LevelSummary]] = {}
    from router_svc.config import default_workers

    with contextlib.ExitStack() as stack:
        stack.callback(procs.close)
        print(f"starting {args.expert_procs} synthetic expert process(es); logs in {tmp}", file=sys.stderr)
        addresses = [f"127.0.0.1:{free_port()}" for _ in range(args.expert_procs)]
        for i, address in enumerate(addresses):
            start_service(procs, f"synthetic{i}", expert_argv(f"synthetic{i}", address, "synthetic",
                                                              args.max_tokens, 4096), address, 30)
        experts = {name: addresses[i % len(addresses)] for i, name in enumerate(EXPERT_NAMES)}
        classifier, classifier_note = classifier_argument(args.classifier, tmp)
        address, http_address = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
        argv_router = router_argv(address, experts, classifier) + ["--http-listen", http_address]
        proc = start_service(procs, "router", argv_router, address, 60)
        wait_http(http_address, 30)
        grpc_requests, http_requests = build_requests(args.max_tokens)
        doors = [("gRPC", address, client.ROUTER_GENERATE, grpc_requests),
                 ("HTTP", http_address, client.HTTP_CHAT, http_requests)]
        generator = stack.enter_context(LoadGenerator(args.processes))
        for users, repeat in ((u, r) for u in args.levels for r in range(args.repeats)):
            for name, target, method, requests in doors:
                summary = generator.run_level(
                    targets=[target], method=method, requests=requests, users=users, duration_s=args.duration,
                    warmup_s=args.warmup, timeout_s=120.0, label=f"{users} users (run {repeat + 1})",
                    watch_pids={"router": proc.pid}, on_progress=progress)
                progress.done(f"{name:>4} {users:>5} users: TTFT p50 {_f(summary.ttft_ms['p50'], 1)} ms "
                              f"p99 {_f(summary.ttft_ms['p99'], 1)} ms, {summary.tokens_per_s:.0f} tokens/s, "
                              f"router CPU {_f(cpu_per_token_us(summary), 1)} µs/token, "
                              f"errors {sum(summary.errors.values())}")
                series.setdefault(name, []).append(summary)

    meta = {"command": command, "started": started, "machine": report.machine_description(),
            "expert_procs": args.expert_procs, "max_tokens": args.max_tokens, "duration_s": args.duration,
            "warmup_s": args.warmup, "loadgen_processes": generator.processes, "classifier": classifier_note,
            "workers": default_workers(), "repeats": args.repeats}
    rows = comparison(args.levels, series)
    checks = targets(rows)
    report.write_json(str(out_dir / "bench" / "http.json"), dict(meta, levels=list(args.levels), rows=rows,
                                                                 targets=checks), series)
    write_section(out_dir / "benchmarks.md", section(meta, rows, series))
    print(f"wrote {out_dir / 'benchmarks.md'} (HTTP section) and {out_dir / 'bench' / 'http.json'}", file=sys.stderr)
    for target, measured, verdict in checks:
        print(f"{verdict:>8}  {target}: {measured}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
