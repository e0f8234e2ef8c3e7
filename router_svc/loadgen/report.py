"""Reports of load levels: a text table, the JSON document and PNG plots (matplotlib, imported lazily)."""
from __future__ import annotations

import json
import os
import platform
from collections.abc import Mapping, Sequence

from router_svc.loadgen.stats import LevelSummary


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def format_table(levels: Sequence[LevelSummary]) -> str:
    """A markdown table, one row per level."""
    head = ("| load | requests | errors | TTFT p50 / p90 / p99 ms | ITL p50 / p99 ms | E2E p50 / p99 ms "
            "| tokens/s | requests/s | loadgen cores | machine busy |")
    rows = [head, "|" + "---|" * (head.count("|") - 1)]
    for s in levels:
        errors = ", ".join(f"{k} {v}" for k, v in s.errors.items()) or "0"
        busy = "-" if s.machine_busy is None else f"{100 * s.machine_busy:.0f}%"
        rows.append(
            f"| {s.label} | {s.requests} | {errors} "
            f"| {_ms(s.ttft_ms['p50'])} / {_ms(s.ttft_ms['p90'])} / {_ms(s.ttft_ms['p99'])} "
            f"| {_ms(s.itl_ms['p50'])} / {_ms(s.itl_ms['p99'])} "
            f"| {_ms(s.e2e_ms['p50'])} / {_ms(s.e2e_ms['p99'])} "
            f"| {s.tokens_per_s:.0f} | {s.requests_per_s:.1f} | {s.loadgen_cores:.2f} | {busy} |")
    return "\n".join(rows)


def machine_description() -> dict[str, object]:
    """CPU model, cores and memory of this machine, from /proc where available."""
    model = platform.processor() or ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    memory_gib = None
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            memory_gib = round(int(handle.readline().split()[1]) / 1024 / 1024, 1)
    except (OSError, ValueError, IndexError):
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu": model, "cores": cores, "memory_gib": memory_gib,
            "kernel": platform.release(), "python": platform.python_version()}


def write_json(path: str, meta: Mapping[str, object], series: Mapping[str, Sequence[LevelSummary]]) -> None:
    """Writes ``{"meta": ..., "series": {name: [level, ...]}}``."""
    document = {"meta": dict(meta), "series": {name: [s.to_dict() for s in levels]
                                               for name, levels in series.items()}}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(document, handle, indent=1, sort_keys=False)
        handle.write("\n")


def plot(series: Mapping[str, Sequence[LevelSummary]], prefix: str) -> list[str]:
    """Two small PNGs: latency (TTFT and ITL percentiles) and throughput against load.

    Returns the paths written. Raises ImportError when matplotlib is not installed.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(os.path.dirname(os.path.abspath(prefix)) or ".", exist_ok=True)
    paths = []

    def x_of(levels: Sequence[LevelSummary]) -> list[float]:
        return [s.users if s.users is not None else s.rate for s in levels]

    open_loop = any(s.users is None for levels in series.values() for s in levels)
    xlabel = "offered load (requests/s)" if open_loop else "concurrent users"

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6), dpi=80)
    for name, levels in series.items():
        xs = x_of(levels)
        for ax, key, title in ((axes[0], "ttft_ms", "TTFT"), (axes[1], "itl_ms", "inter-token latency"),
                               (axes[2], "e2e_ms", "end-to-end latency")):
            line, = ax.plot(xs, [getattr(s, key)["p50"] for s in levels], marker="o", label=f"{name} p50")
            ax.plot(xs, [getattr(s, key)["p99"] for s in levels], marker="x", linestyle="--",
                    color=line.get_color(), label=f"{name} p99")
            ax.set_title(title)
    for ax in axes:
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("ms")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    path = f"{prefix}-latency.png"
    fig.savefig(path)
    plt.close(fig)
    paths.append(path)

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), dpi=80)
    for name, levels in series.items():
        xs = x_of(levels)
        axes[0].plot(xs, [s.tokens_per_s for s in levels], marker="o", label=name)
        axes[1].plot(xs, [s.requests_per_s for s in levels], marker="o", label=name)
    for ax, title in ((axes[0], "output tokens/s"), (axes[1], "requests/s")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    path = f"{prefix}-throughput.png"
    fig.savefig(path)
    plt.close(fig)
    paths.append(path)
    return paths
