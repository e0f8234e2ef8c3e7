"""`make bench`: the router's overhead against the same experts called directly and through nginx.

Starts synthetic experts (20 ms to first token, 50 tokens/s per stream), the router with its native
relay, the router with its Python relay (`--relay python`) and nginx `grpc_pass` in front of them,
then loads each at 1, 10, 100, 300 and 1,000 closed-loop users (interleaved per level, so drift on a
busy machine hits all alike), recording each proxy's CPU per relayed frame and its peak RSS; then
the real CPU model (llama.cpp, SmolLM2) directly and through the router at 1 and 4 users. Writes
docs/benchmarks.md and docs/bench/standard.json plus two PNG plots.

    python benchmarks/standard.py            # the full run, about 8-10 minutes
    python benchmarks/standard.py --quick    # a smoke run: 1, 10, 100 users, 3 s each
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import shlex
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Self

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent)]

from nginx_proxy import NginxGrpcProxy, ensure_nginx

from router_svc.commands.bench import build_requests
from router_svc.loadgen import client, prompts, report
from router_svc.loadgen.runner import LoadGenerator, ProgressLine
from router_svc.loadgen.stats import LevelSummary, difference, ratio

LEVELS = (1, 10, 100, 300, 1000)
# The proxies measured against direct, in table order; router_py is the router with --relay python.
PROXIES = ("router", "router_py", "nginx")
SYNTHETIC_TTFT_MS = 20.0
SYNTHETIC_TOKENS_PER_S = 50.0
# The six default experts, in the classifier's label order.
EXPERT_NAMES = ("code", "math", "science", "medicine", "law", "general")
# The section of benchmarks.md that benchmarks/http_overhead.py writes (kept when this script rewrites the file).
HTTP_SECTION_BEGIN = "<!-- http-door:begin"
HTTP_SECTION_END = "<!-- http-door:end -->"
SATURATED = 0.9  # machine busy fraction above which a level is "saturated" for the tokens/s target


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 1, 10, 100 users, 3 s per level")
    parser.add_argument("--levels", help="comma-separated user counts (default 1,10,100,300,1000)")
    parser.add_argument("--duration", type=float, help="measured seconds per level (default 12)")
    parser.add_argument("--warmup", type=float, help="ramp-up seconds per level (default 1.5)")
    parser.add_argument("--max-tokens", type=int, default=32, help="completion tokens per request (default 32)")
    parser.add_argument("--expert-procs", type=int, default=2,
                        help="synthetic expert processes serving the six experts (default 2)")
    parser.add_argument("--processes", type=int, help="load generator processes (default: the cores)")
    parser.add_argument("--classifier", metavar="DIR", help="router classifier artifact (default: packaged)")
    parser.add_argument("--skip", action="append", default=[],
                        choices=("nginx", "router", "router_py", "llamacpp"),
                        help="leave a configuration out (repeatable)")
    parser.add_argument("--router-args", default="",
                        help="extra flags for both routers, e.g. '--workers 1 --relay-threads 2'")
    parser.add_argument("--out-dir", default=str(ROOT / "docs"),
                        help="where benchmarks.md and bench/ go (default docs/)")
    parser.add_argument("--render", metavar="JSON",
                        help="measure nothing: rewrite benchmarks.md and the plots from a saved standard.json")
    args = parser.parse_args(argv)
    args.levels = ([int(x) for x in args.levels.split(",")] if args.levels
                   else [1, 10, 100] if args.quick else list(LEVELS))
    args.duration = args.duration or (3.0 if args.quick else 12.0)
    args.warmup = args.warmup if args.warmup is not None else (0.5 if args.quick else 1.5)
    return args


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Processes:
    """Child services with their logs in a temporary folder; stopped in reverse order."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self._procs: list[tuple[str, subprocess.Popen]] = []

    def spawn(self, name: str, argv: Sequence[str]) -> subprocess.Popen:
        log = open(os.path.join(self.directory, f"{name}.log"), "wb")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(list(argv), stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        log.close()
        self._procs.append((name, proc))
        return proc

    def log_tail(self, name: str, lines: int = 15) -> str:
        try:
            with open(os.path.join(self.directory, f"{name}.log"), encoding="utf-8", errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""

    def stop(self, proc: subprocess.Popen) -> None:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def close(self) -> None:
        for _, proc in reversed(self._procs):
            self.stop(proc)
        self._procs.clear()


def wait_serving(address: str, proc: subprocess.Popen, timeout_s: float) -> None:
    """Waits until the gRPC health service at `address` says SERVING; raises RuntimeError otherwise."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"exited with status {proc.returncode}")
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.1)
    raise RuntimeError(f"not serving on {address} after {timeout_s:.0f} s")


def start_service(procs: Processes, name: str, argv: Sequence[str], address: str, timeout_s: float):
    proc = procs.spawn(name, argv)
    try:
        wait_serving(address, proc, timeout_s)
    except RuntimeError as exc:
        procs.stop(proc)
        raise RuntimeError(f"{name} did not start: {exc}: {procs.log_tail(name, 1).strip()}") from None
    return proc


def classifier_argument(requested: str | None, directory: str) -> tuple[list[str], str]:
    """The router's --classifier flag and a note on which classifier the numbers used.

    Where no trained artifact is packaged yet, a stand-in with random weights and the trained one's
    shape (same featurizer, same 2^18 x 6 table) is written: it costs the router exactly as much.
    """
    if requested:
        return ["--classifier", requested], f"artifact at {requested}"
    from router_svc.classifier import DEFAULT_ARTIFACT_DIR, MODEL_FILE

    if (DEFAULT_ARTIFACT_DIR / MODEL_FILE).is_file():
        return [], "the packaged trained classifier"
    import hashlib
    import json

    import numpy as np

    from core import FeaturizerConfig
    from router_svc.training.export import build_model

    config = FeaturizerConfig()
    rng = np.random.default_rng(0)
    table = (rng.standard_normal((config.num_buckets, len(EXPERT_NAMES))) * 0.1).astype(np.float16)
    model = build_model(table, np.zeros(len(EXPERT_NAMES), np.float32), labels=EXPERT_NAMES).SerializeToString()
    out = Path(directory) / "standin-classifier"
    out.mkdir()
    (out / "model.onnx").write_bytes(model)
    (out / "metadata.json").write_text(json.dumps({
        "labels": list(EXPERT_NAMES), "featurizer": config.to_dict(), "version": "bench-standin",
        "onnx_sha256": hashlib.sha256(model).hexdigest()}))
    return ["--classifier", str(out)], ("a stand-in with random weights and the trained classifier's shape "
                                        "(no packaged artifact was present)")


def expert_argv(name: str, address: str, engine: str, max_tokens: int, max_concurrency: int) -> list[str]:
    argv = [sys.executable, "-m", "expert_svc", "--engine", engine, "--listen", address, "--name", name,
            "--max-concurrency", str(max_concurrency), "--max-tokens", str(max_tokens), "--grace-s", "1",
            "--log-level", "WARNING"]
    if engine == "synthetic":
        argv += ["--ttft-ms", f"{SYNTHETIC_TTFT_MS:g}", "--tokens-per-second", f"{SYNTHETIC_TOKENS_PER_S:g}"]
    return argv


def router_argv(address: str, experts: Mapping[str, str], classifier: list[str], relay: str = "native",
                extra: str = "") -> list[str]:
    argv = [sys.executable, "-m", "router_svc", "--listen", address, "--log-level", "WARNING", "--relay", relay,
            *classifier, *shlex.split(extra)]
    for name, upstream in experts.items():
        argv += ["--expert", f"{name}={upstream}"]
    return argv


def tree_rss_bytes(pid: int) -> int:
    """Resident memory of ``pid`` and its descendants (router workers), from /proc."""
    total, stack, seen = 0, [pid], set()
    while stack:
        current = stack.pop()
        if current in seen:
            continue
        seen.add(current)
        try:
            with open(f"/proc/{current}/status", encoding="ascii", errors="replace") as status:
                for line in status:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children", encoding="ascii") as children:
                    stack.extend(int(child) for child in children.read().split())
        except (OSError, ValueError):
            continue
    return total


class PeakRss:
    """Samples a process tree's RSS every 0.25 s while a level runs; ``peak`` is the largest seen."""

    def __init__(self, pid: int | None) -> None:
        self.pid = pid
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_rss_bytes(self.pid))
            self._stop.wait(0.25)

    def __enter__(self) -> Self:
        if self.pid is not None:
            self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        if self.pid is not None:
            self._stop.set()
            self._thread.join()


def overhead(direct: LevelSummary, other: LevelSummary) -> dict[str, float | None]:
    """What `other` adds to `direct` at one level: percentile differences and the throughput ratio."""
    return {
        "ttft_p50_ms": difference(other.ttft_ms["p50"], direct.ttft_ms["p50"]),
        "ttft_p99_ms": difference(other.ttft_ms["p99"], direct.ttft_ms["p99"]),
        "itl_p50_ms": difference(other.itl_ms["p50"], direct.itl_ms["p50"]),
        "itl_p99_ms": difference(other.itl_ms["p99"], direct.itl_ms["p99"]),
        "e2e_p50_ms": difference(other.e2e_ms["p50"], direct.e2e_ms["p50"]),
        "tokens_per_s_ratio": ratio(other.tokens_per_s, direct.tokens_per_s),
    }


def cpu_costs(summary: LevelSummary, name: str) -> dict[str, float | None]:
    cpu = summary.watched_cpu_s.get(name)
    if cpu is None:
        return {"cpu_s": None, "cpu_ms_per_request": None, "cpu_us_per_frame": None, "cores": None}
    return {"cpu_s": cpu,
            "cpu_ms_per_request": 1000 * cpu / summary.requests_total if summary.requests_total else None,
            "cpu_us_per_frame": 1e6 * cpu / summary.frames if summary.frames else None,
            "cores": cpu / summary.wall_s if summary.wall_s else None}


def _f(value: float | None, digits: int = 2, suffix: str = "") -> str:
    return "-" if value is None else f"{value:.{digits}f}{suffix}"


def targets_check(levels: Sequence[int], series: Mapping[str, Sequence[LevelSummary]],
                  rows: Mapping[int, Mapping[str, object]], peak_rss: Mapping[str, Mapping[str, int]]
                  ) -> list[tuple[str, str, str]]:
    """(target, measured, verdict) for each target of the native relay that this run can judge."""
    out = []
    if "router" in series and "nginx" in series:
        cells, missed = [], []
        for users in levels:
            r, n = (rows[users].get("router_cpu") or {}), (rows[users].get("nginx_cpu") or {})
            if r.get("cpu_us_per_frame") is None or not n.get("cpu_us_per_frame"):
                continue
            times = r["cpu_us_per_frame"] / n["cpu_us_per_frame"]
            cells.append(f"{users}: {times:.2f}x")
            if times > 2.0:
                missed.append(str(users))
        out.append(("router CPU per relayed frame <= 2x nginx's", ", ".join(cells),
                    "met" if cells and not missed else "missed at " + ", ".join(missed) + " users"))
        cells, missed = [], []
        for users in (300, 1000):
            if users not in rows:
                continue
            i = levels.index(users)
            router, nginx = series["router"][i], series["nginx"][i]
            times = ratio(router.tokens_per_s, nginx.tokens_per_s)
            errors = sum(router.errors.values())
            cells.append(f"{users}: {_f(times, 3)}x, {errors} errors")
            if times is None or times < 0.9 or errors:
                missed.append(str(users))
        if cells:
            out.append(("relayed tokens/s >= 0.9x nginx's at 300 and 1,000 users, 0 errors", "; ".join(cells),
                        "met" if not missed else "missed at " + ", ".join(missed) + " users"))
    if 100 in rows and rows[100].get("router"):
        r = rows[100]["router"]
        p50, p99 = r["ttft_p50_ms"], r["ttft_p99_ms"]
        ok = p50 is not None and p99 is not None and p50 <= 1.0 and p99 <= 5.0
        out.append(("router-added TTFT at 100 users: p50 <= 1 ms, p99 <= 5 ms",
                    f"p50 {_f(p50)} ms, p99 {_f(p99)} ms",
                    "met" if ok else "missed" if p50 is not None and p99 is not None else "not measured"))
    if 1 in rows and rows[1].get("router") and rows[1].get("nginx"):
        r, n = rows[1]["router"]["ttft_p50_ms"], rows[1]["nginx"]["ttft_p50_ms"]
        if r is not None and n is not None:
            out.append(("router-added TTFT p50 at 1 user within 0.5 ms of nginx's", f"{r:.2f} vs {n:.2f} ms",
                        "met" if r - n <= 0.5 else f"missed by {r - n - 0.5:.2f} ms"))
    top = str(max(levels))
    native, python = peak_rss.get("router", {}).get(top), peak_rss.get("router_py", {}).get(top)
    if native and python:
        out.append((f"router RSS at {top} streams no higher than the Python relay's",
                    f"{native / 2**20:.0f} MiB vs {python / 2**20:.0f} MiB",
                    "met" if native <= python else "missed"))
    return out


def write_markdown(path: Path, *, meta: Mapping[str, object], levels: Sequence[int],
                   series: Mapping[str, Sequence[LevelSummary]], rows: Mapping[int, Mapping[str, object]],
                   llama: Mapping[str, Sequence[LevelSummary]], notes: Sequence[str],
                   peak_rss: Mapping[str, Mapping[str, int]]) -> None:
    machine = meta["machine"]
    lines = [
        "# Benchmarks: the router's overhead",
        "",
        f"Generated by `{meta['command']}` (`make bench`) on {meta['started']}; the analysis of where the",
        "router's time goes is in [profiles/router.md](profiles/router.md).",
        "",
        (f"Machine: {machine['cpu']}, {machine['cores']} cores, {machine['memory_gib']} GiB, Linux "
         f"{machine['kernel']}, Python {machine['python']}; shared with other work, whose load shows in the "
         "'machine busy' column. Load generator, experts, router and nginx all run on these cores, so at "
         "high concurrency every configuration is CPU-bound: compare the rows of one level with each other, "
         "not with a machine that has cores to spare."),
        "",
        "## Setup",
        "",
        (f"- Synthetic experts: {meta['expert_procs']} `expert_svc --engine synthetic` processes serve the six "
         f"experts, {SYNTHETIC_TTFT_MS:g} ms to first token, {SYNTHETIC_TOKENS_PER_S:g} tokens/s per stream, "
         f"{meta['max_tokens']} tokens per request (one frame per token)."),
        "- direct: the load generator calls the experts' `Expert/Generate` itself, users spread round-robin.",
        "- nginx: Debian's nginx, `grpc_pass` round-robin over the same experts, no classification.",
        (f"- router: `python -m router_svc` over the same experts, with its native relay (gRPC's C++ library, "
         f"`--relay native`, the default); classifier: {meta['classifier']}. router (Python relay): the same "
         "with `--relay python`. Both with the default `--workers` (one process per core)."),
        (f"- Load: closed-loop users with no think time; {meta['warmup_s']:g} s ramp-up excluded, then "
         f"{meta['duration_s']:g} s measured per level; {meta['loadgen_processes']} load generator processes. "
         "Levels run interleaved (direct, nginx, router at each level)."),
        ("- TTFT: request sent to first token frame; ITL: gap between consecutive token frames; "
         "E2E: request sent to end of stream. Added latency = percentile through the proxy minus the same "
         "percentile direct. CPU: the process's threads' run time from /proc (schedstat) over the whole level, "
         "divided by the requests finished and the frames relayed in it. RSS: the proxy's process tree, "
         "sampled every 0.25 s, the peak of the level."),
        "",
    ]
    lines += [f"> {note}" for note in notes] + ([""] if notes else [])
    lines += ["## Native relay, Python relay and nginx against direct", "",
              ("| users | +TTFT p50 / p99 ms: native | Python relay | nginx "
               "| tokens/s vs direct: native / Python / nginx | CPU µs/frame: native / Python / nginx "
               "| native ÷ nginx CPU | router cores: native / Python | peak RSS MiB: native / Python "
               "| +ITL p99 ms native | machine busy direct / native |"),
              "|---|---|---|---|---|---|---|---|---|---|---|"]

    def ttft(name: str, row: Mapping[str, object]) -> str:
        cell = row.get(name) or {}
        return f"{_f(cell.get('ttft_p50_ms'))} / {_f(cell.get('ttft_p99_ms'))}"

    for users in levels:
        row = rows[users]
        cpu = {name: (row.get(f"{name}_cpu") or {}) for name in PROXIES}
        tps = " / ".join(_f((row.get(name) or {}).get("tokens_per_s_ratio"), 3) for name in PROXIES)
        per_frame = " / ".join(_f(cpu[name].get("cpu_us_per_frame"), 1) for name in PROXIES)
        native_cpu, nginx_cpu = cpu["router"].get("cpu_us_per_frame"), cpu["nginx"].get("cpu_us_per_frame")
        times = _f(native_cpu / nginx_cpu, 2, "x") if native_cpu and nginx_cpu else "-"
        cores = " / ".join(_f(cpu[name].get("cores")) for name in ("router", "router_py"))
        rss = " / ".join(_f(peak_rss.get(name, {}).get(str(users), 0) / 2**20 or None, 0)
                         for name in ("router", "router_py"))
        busy = [series[name][levels.index(users)].machine_busy if name in series else None
                for name in ("direct", "router")]
        lines.append(
            f"| {users} | {ttft('router', row)} | {ttft('router_py', row)} | {ttft('nginx', row)} | {tps} "
            f"| {per_frame} | {times} | {cores} | {rss} | {_f((row.get('router') or {}).get('itl_p99_ms'))} "
            f"| {' / '.join('-' if b is None else f'{100 * b:.0f}%' for b in busy)} |")
    checks = targets_check(levels, series, rows, peak_rss)
    if checks:
        lines += ["", "## Targets", "", "| target | measured | verdict |", "|---|---|---|"]
        lines += [f"| {t} | {m} | {v} |" for t, m, v in checks]
    for name, title in (("direct", "Direct to the synthetic experts"), ("nginx", "Through nginx grpc_pass"),
                        ("router", "Through the router (native relay)"),
                        ("router_py", "Through the router (Python relay)")):
        if name in series:
            lines += ["", f"## {title}", "", report.format_table(series[name])]
    if llama:
        lines += ["", "## The real CPU model (llama.cpp, SmolLM2-135M-Instruct Q4_1)", "",
                  (f"One `expert_svc --engine llamacpp` process (max concurrency 4) behind all six expert names; "
                   f"{meta['llama_max_tokens']} tokens per request, {meta['llama_duration_s']:g} s per level."), ""]
        for name, levels_ in llama.items():
            lines += [f"### {name}", "", report.format_table(levels_), ""]
    lines += ["", "## Plots", "", "![latency](bench/standard-latency.png)", "",
              "![throughput](bench/standard-throughput.png)", "",
              "Raw numbers: [bench/standard.json](bench/standard.json).", ""]
    # Other benchmark scripts own the sections from http_overhead.py's marked one to the end of the
    # file (the HTTP door, then --stream-interval): keep them all.
    previous = path.read_text(encoding="utf-8") if path.exists() else ""
    start, end = previous.find(HTTP_SECTION_BEGIN), previous.find(HTTP_SECTION_END)
    if 0 <= start < end:
        lines += [previous[start:].rstrip("\n"), ""]
    path.write_text("\n".join(lines), encoding="utf-8")


def write_outputs(out_dir: Path, meta: dict, levels: Sequence[int], series: Mapping[str, list[LevelSummary]],
                  llama: Mapping[str, list[LevelSummary]]) -> None:
    """Writes bench/standard.json, the plots and benchmarks.md, and prints the targets' verdicts."""
    notes = list(meta.get("notes", []))
    rows: dict[int, dict[str, object]] = {}
    for i, users in enumerate(levels):
        direct = series["direct"][i]
        row: dict[str, object] = {}
        for name in PROXIES:
            if name in series:
                row[name] = overhead(direct, series[name][i])
                row[f"{name}_cpu"] = cpu_costs(series[name][i], name)
        rows[users] = row
    peak_rss = meta.get("peak_rss_bytes", {})
    checks = targets_check(levels, series, rows, peak_rss)
    bench_dir = out_dir / "bench"
    bench_dir.mkdir(parents=True, exist_ok=True)
    report.write_json(str(bench_dir / "standard.json"),
                      dict(meta, levels=list(levels), llama_series=list(llama),
                           overhead={str(k): v for k, v in rows.items()}, targets=checks),
                      {**series, **llama})
    try:
        report.plot(series, str(bench_dir / "standard"))
    except ImportError:
        notes.append("Plots were not drawn: matplotlib is not installed (pip install matplotlib).")
    write_markdown(out_dir / "benchmarks.md", meta=meta, levels=levels, series=series, rows=rows,
                   llama=llama, notes=notes, peak_rss=peak_rss)
    print(f"wrote {out_dir / 'benchmarks.md'} and {bench_dir}/", file=sys.stderr)
    for target, measured, verdict in checks:
        print(f"{verdict:>8}  {target}: {measured}", file=sys.stderr)


def render(path: str, out_dir: Path) -> int:
    """Rewrites the outputs from a saved standard.json (after changing the report, not the numbers)."""
    import json

    document = json.loads(Path(path).read_text(encoding="utf-8"))
    meta = document["meta"]
    llama_names = set(meta.get("llama_series") or [n for n in document["series"] if "(llamacpp)" in n])
    series, llama = {}, {}
    for name, levels in document["series"].items():
        (llama if name in llama_names else series)[name] = [LevelSummary.from_dict(d) for d in levels]
    levels = meta.get("levels") or [s.users for s in series["direct"]]
    for key in ("levels", "llama_series", "overhead", "targets"):
        meta.pop(key, None)
    write_outputs(out_dir, meta, levels, series, llama)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    out_dir = Path(args.out_dir)
    if args.render:
        return render(args.render, out_dir)
    (out_dir / "bench").mkdir(parents=True, exist_ok=True)
    started = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    command = "python benchmarks/standard.py" + ("" if argv is None and len(sys.argv) == 1
                                                 else " " + shlex.join(sys.argv[1:] if argv is None else argv))
    notes: list[str] = []
    skip = set(args.skip)
    tmp = tempfile.mkdtemp(prefix="bench-standard-")
    procs = Processes(tmp)
    progress = ProgressLine()
    series: dict[str, list[LevelSummary]] = {}
    llama: dict[str, list[LevelSummary]] = {}
    classifier_note = "-"
    with contextlib.ExitStack() as stack:
        stack.callback(procs.close)
        print(f"starting {args.expert_procs} synthetic expert process(es); logs in {tmp}", file=sys.stderr)
        addresses = [f"127.0.0.1:{free_port()}" for _ in range(args.expert_procs)]
        for i, address in enumerate(addresses):
            start_service(procs, f"synthetic{i}", expert_argv(f"synthetic{i}", address, "synthetic",
                                                              args.max_tokens, 4096), address, 30)
        experts = {name: addresses[i % len(addresses)] for i, name in enumerate(EXPERT_NAMES)}
        configs: list[tuple[str, list[str], str, dict[str, int]]] = [
            ("direct", addresses, client.EXPERT_GENERATE, {})]
        if "nginx" not in skip:
            try:
                ensure_nginx()
                address = f"127.0.0.1:{free_port()}"
                proxy = stack.enter_context(NginxGrpcProxy(addresses, address))
                configs.append(("nginx", [address], client.EXPERT_GENERATE, {"nginx": proxy.pid}))
            except RuntimeError as exc:
                notes.append(f"nginx was not measured: {exc}")
        if "router" not in skip:
            classifier, classifier_note = classifier_argument(args.classifier, tmp)
            address = f"127.0.0.1:{free_port()}"
            try:
                proc = start_service(procs, "router", router_argv(address, experts, classifier, "native", args.router_args),
                                     address, 60)
                configs.append(("router", [address], client.ROUTER_GENERATE, {"router": proc.pid}))
            except RuntimeError as exc:
                notes.append(f"the router was not measured: {exc}".replace("\n", " "))
        if "router_py" not in skip:
            classifier, classifier_note = classifier_argument(args.classifier, tmp) if "router" in skip else (
                classifier, classifier_note)
            address = f"127.0.0.1:{free_port()}"
            try:
                proc = start_service(procs, "router_py", router_argv(address, experts, classifier, "python", args.router_args),
                                     address, 60)
                configs.append(("router_py", [address], client.ROUTER_GENERATE, {"router_py": proc.pid}))
            except RuntimeError as exc:
                notes.append(f"the router with its Python relay was not measured: {exc}".replace("\n", " "))
        for note in notes:
            print(f"note: {note}", file=sys.stderr)
        if "stand-in" in classifier_note:
            notes.append(f"Classifier: {classifier_note}.")

        requests = build_requests(prompts.builtin_prompts(), args.max_tokens)
        generator = stack.enter_context(LoadGenerator(args.processes))
        peak_rss: dict[str, dict[str, int]] = {}
        for users in args.levels:
            for name, targets, method, watch in configs:
                with PeakRss(watch.get(name)) as rss:
                    summary = generator.run_level(
                        targets=targets, method=method, requests=requests, users=users,
                        duration_s=args.duration, warmup_s=args.warmup, timeout_s=120.0,
                        label=f"{users} users", watch_pids=watch, on_progress=progress)
                if rss.peak:
                    peak_rss.setdefault(name, {})[str(users)] = rss.peak
                progress.done(f"{name:>6} {users:>5} users: TTFT p50 {_f(summary.ttft_ms['p50'], 1)} ms "
                              f"p99 {_f(summary.ttft_ms['p99'], 1)} ms, {summary.tokens_per_s:.0f} tokens/s, "
                              f"errors {sum(summary.errors.values())}, machine busy "
                              f"{_f(summary.machine_busy, 2)}")
                series.setdefault(name, []).append(summary)

        llama_max_tokens = 8 if args.quick else 32
        llama_duration = 3.0 if args.quick else 15.0
        if "llamacpp" not in skip:
            # Free the cores for the model: the synthetic stack has done its part.
            procs.close()
            address = f"127.0.0.1:{free_port()}"
            try:
                start_service(procs, "llamacpp", expert_argv("general", address, "llamacpp",
                                                             llama_max_tokens, 4), address, 120)
                llama_configs = [("direct (llamacpp)", [address], client.EXPERT_GENERATE, {})]
                if "router" not in skip and any(c[0] == "router" for c in configs):
                    router_address = f"127.0.0.1:{free_port()}"
                    proc = start_service(procs, "router-llamacpp",
                                         router_argv(router_address, dict.fromkeys(EXPERT_NAMES, address),
                                                     classifier), router_address, 60)
                    llama_configs.append(("router (llamacpp)", [router_address], client.ROUTER_GENERATE,
                                          {"router": proc.pid}))
                llama_requests = build_requests(prompts.builtin_prompts(), llama_max_tokens)
                # The model's first decodes allocate and fill caches: keep them out of the numbers.
                for _, targets, method, _ in llama_configs:
                    generator.run_level(targets=targets, method=method, requests=llama_requests, users=2,
                                        requests_per_user=1, timeout_s=120.0)
                for users in (1, 4):
                    for name, targets, method, watch in llama_configs:
                        summary = generator.run_level(
                            targets=targets, method=method, requests=llama_requests, users=users,
                            duration_s=llama_duration, warmup_s=args.warmup, timeout_s=120.0,
                            label=f"{users} users", watch_pids=watch, on_progress=progress)
                        progress.done(f"{name} {users} users: TTFT p50 {_f(summary.ttft_ms['p50'], 1)} ms, "
                                      f"{summary.tokens_per_s:.1f} tokens/s, errors {sum(summary.errors.values())}")
                        llama.setdefault(name, []).append(summary)
            except RuntimeError as exc:
                notes.append(f"the llama.cpp model was not measured: {exc}".replace("\n", " "))

    meta = {"command": command, "started": started, "machine": report.machine_description(),
            "expert_procs": args.expert_procs, "max_tokens": args.max_tokens, "duration_s": args.duration,
            "warmup_s": args.warmup, "loadgen_processes": generator.processes, "classifier": classifier_note,
            "llama_max_tokens": llama_max_tokens, "llama_duration_s": llama_duration, "notes": notes,
            "peak_rss_bytes": peak_rss,
            "synthetic": {"ttft_ms": SYNTHETIC_TTFT_MS, "tokens_per_s": SYNTHETIC_TOKENS_PER_S}}
    write_outputs(out_dir, meta, args.levels, series, llama)
    return 0


if __name__ == "__main__":
    sys.exit(main())
