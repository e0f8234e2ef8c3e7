"""Medians over several `benchmarks/standard.py` runs: one run on a shared machine is too noisy to judge.

Each run of standard.py measures direct, nginx, the native relay and the Python relay side by side
(interleaved per level) and saves bench/standard.json. On 2 cores shared with other work a single
run's "added" latency can even come out negative (the direct phase landed on a busier moment than
the proxied ones), so targets are judged on the median over runs of each run's own comparison:
router-added TTFT p50/p99 per level, CPU µs per relayed frame and its ratio to nginx's, tokens/s
against nginx's, and peak RSS.

    python benchmarks/bench_medians.py docs/bench/standard.json /tmp/run2/bench/standard.json ...
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path

PROXIES = ("router", "router_py", "nginx")


def load(path: str) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def run_values(document: dict, users: int) -> dict[str, float] | None:
    """The figures one run gives for one level, or None when the run did not measure it."""
    meta, series = document["meta"], document["series"]
    levels = meta["levels"]
    if users not in levels:
        return None
    i = levels.index(users)
    row = meta["overhead"][str(users)]
    out: dict[str, float] = {}
    for name in PROXIES:
        if name in row:
            out[f"{name} +TTFT p50"] = row[name]["ttft_p50_ms"]
            out[f"{name} +TTFT p99"] = row[name]["ttft_p99_ms"]
        cpu = row.get(f"{name}_cpu") or {}
        if cpu.get("cpu_us_per_frame") is not None:
            out[f"{name} µs/frame"] = cpu["cpu_us_per_frame"]
        rss = meta.get("peak_rss_bytes", {}).get(name, {}).get(str(users))
        if rss:
            out[f"{name} RSS MiB"] = rss / 2**20
    if "router µs/frame" in out and "nginx µs/frame" in out:
        out["native ÷ nginx CPU"] = out["router µs/frame"] / out["nginx µs/frame"]
    nginx_tokens = series["nginx"][i]["tokens_per_s"] if "nginx" in series else None
    for name in ("router", "router_py"):
        if name in series and nginx_tokens:
            out[f"{name} tokens/s ÷ nginx"] = series[name][i]["tokens_per_s"] / nginx_tokens
            out[f"{name} errors"] = float(sum(series[name][i]["errors"].values()))
    return out


def medians(documents: Sequence[dict], users: int) -> tuple[int, dict[str, tuple[float, float, float]]]:
    """(runs that measured the level, {figure: (median, min, max)})."""
    runs = [values for values in (run_values(d, users) for d in documents) if values is not None]
    keys = sorted({key for values in runs for key in values})
    table = {}
    for key in keys:
        column = [values[key] for values in runs if key in values]
        table[key] = (statistics.median(column), min(column), max(column))
    return len(runs), table


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="standard.json files of the runs")
    parser.add_argument("--levels", default="1,100,300,1000", help="user counts to report (default 1,100,300,1000)")
    args = parser.parse_args(argv)
    documents = [load(path) for path in args.runs]
    for users in (int(x) for x in args.levels.split(",")):
        count, table = medians(documents, users)
        if not count:
            continue
        print(f"\n{users} users: medians of {count} runs [min - max]")
        print("| figure | median | range |\n|---|---:|---|")
        for key, (median, low, high) in table.items():
            print(f"| {key} | {median:.2f} | {low:.2f} - {high:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
