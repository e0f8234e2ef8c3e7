"""The parent side of the load generator: worker processes, levels, progress and CPU accounting.

`LoadGenerator` starts its worker processes once (spawned, so no grpc state is forked) and runs
one level after another on them. Users are split evenly over the workers; every worker starts
its users at the same monotonic instant, ramping them in over the warm-up so that 1,000 users do
not all open a stream in the same millisecond.
"""
from __future__ import annotations

import math
import multiprocessing as mp
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from multiprocessing.connection import wait
from typing import Self

from router_svc.loadgen.client import PROGRESS_SLOTS, LevelTask, worker_main
from router_svc.loadgen.stats import LevelSummary, merge_arrays, summarize

# Users begin this long after the tasks are sent: time to deliver them and open the channels.
START_DELAY_S = 0.5


def default_processes() -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(8, cores))


def process_cpu_seconds(pid: int, include_children: bool = True) -> float:
    """CPU seconds used so far by PID (and its live descendants), all threads.

    Reads the nanosecond run time of each thread from /proc/PID/task/*/schedstat; where that is
    missing, falls back to utime + stime of /proc/PID/stat (10 ms ticks).
    """
    total = 0.0
    for p in [pid] + (_descendants(pid) if include_children else []):
        total += _schedstat_seconds(p)
    return total


def _schedstat_seconds(pid: int) -> float:
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0.0
    if tasks and os.path.exists(f"/proc/{pid}/task/{tasks[0]}/schedstat"):
        ns = 0
        for tid in tasks:
            try:
                with open(f"/proc/{pid}/task/{tid}/schedstat", encoding="ascii") as handle:
                    ns += int(handle.read().split()[0])
            except (OSError, ValueError, IndexError):
                continue  # the thread ended while we read
        return ns / 1e9
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            fields = handle.read().rpartition(")")[2].split()
    except OSError:
        return 0.0
    # After the command name, state is fields[0]: utime (14th field) is [11], stime (15th) is [12].
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii") as handle:
                ppid = int(handle.read().rpartition(")")[2].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    found, stack = [], [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def machine_cpu_ticks() -> tuple[int, int] | None:
    """(busy, total) jiffies over all cores from /proc/stat; None where there is no /proc."""
    try:
        with open("/proc/stat", encoding="ascii") as handle:
            values = [int(v) for v in handle.readline().split()[1:]]
    except OSError:
        return None
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    total = sum(values[:8])  # guest time is already inside user/nice
    return total - idle, total


class LoadGenerator:
    """Worker processes that run load levels; use as a context manager."""

    def __init__(self, processes: int | None = None) -> None:
        self.processes = processes or default_processes()
        if self.processes < 1:
            raise ValueError("processes must be >= 1")
        ctx = mp.get_context("spawn")
        self._progress = ctx.Array("d", self.processes * PROGRESS_SLOTS, lock=False)
        self._conns = []
        self._procs = []
        for slot in range(self.processes):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=worker_main, args=(slot, child, self._progress), daemon=True,
                               name=f"loadgen-{slot}")
            proc.start()
            child.close()
            self._conns.append(parent)
            self._procs.append(proc)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        for conn in self._conns:
            try:
                conn.send(None)
            except OSError:
                pass
        for proc in self._procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=2)
        self._conns, self._procs = [], []

    def run_level(self, *, targets: Sequence[str], method: str, requests: Sequence[bytes],
                  users: int = 0, rate: float = 0.0, duration_s: float = 10.0, warmup_s: float = 1.0,
                  requests_per_user: int = 0, think_s: float = 0.0, timeout_s: float = 60.0,
                  label: str = "", watch_pids: Mapping[str, int] | None = None,
                  on_progress: Callable[[str], None] | None = None) -> LevelSummary:
        """Runs one level: `users` closed-loop users, or open-loop arrivals at `rate` requests/s.

        With `requests_per_user` the level ends when every user has sent that many (no warm-up
        exclusion); otherwise users send until warm-up + duration and in-flight requests finish.
        """
        if (users > 0) == (rate > 0):
            raise ValueError("set exactly one of users (closed loop) or rate (open loop)")
        if not targets or not requests:
            raise ValueError("at least one target and one request are needed")
        if requests_per_user and rate > 0:
            raise ValueError("requests_per_user applies to closed-loop users only")
        workers = min(self.processes, users) if users else self.processes
        start_at = time.perf_counter() + START_DELAY_S
        if requests_per_user:
            window = (start_at, math.inf)
            stop_at = math.inf
            ramp = 0.0
        else:
            window = (start_at + warmup_s, start_at + warmup_s + duration_s)
            stop_at = window[1]
            ramp = min(warmup_s, 1.0)
        tasks = []
        offset = 0
        for w in range(workers):
            share = users // workers + (1 if w < users % workers else 0) if users else 0
            tasks.append(LevelTask(
                targets=tuple(targets), method=method, requests=tuple(requests), users=share,
                user_offset=offset if users else w, total_users=max(users, 1),
                rate=rate / workers if rate else 0.0, start_at=start_at, ramp_s=ramp, window=window,
                stop_at=stop_at, requests_per_user=requests_per_user, think_s=think_s,
                timeout_s=timeout_s, seed=w + 1))
            offset += share

        watch = dict(watch_pids or {})
        watched_before = {name: process_cpu_seconds(pid) for name, pid in watch.items()}
        machine_before = machine_cpu_ticks()
        cpu_before = time.process_time()
        wall_before = time.perf_counter()
        for w, task in enumerate(tasks):
            self._conns[w].send(task)
        results = self._collect(workers, label, users, rate, start_at, stop_at, on_progress)
        wall = time.perf_counter() - wall_before
        machine_after = machine_cpu_ticks()
        watched = {name: round(process_cpu_seconds(pid) - watched_before[name], 4)
                   for name, pid in watch.items()}

        failures = [r["error"] for r in results if "error" in r]
        if failures:
            raise RuntimeError(f"load generator worker failed: {failures[0]}")
        merged = merge_arrays(results)
        if requests_per_user:
            ends = merged["started"] + merged["e2e"]
            window = (start_at, float(ends.max()) if len(ends) else start_at)
        summary = summarize(merged, label=label or (f"{users} users" if users else f"{rate:g} req/s"),
                            users=users or None, rate=rate or None, window=window, wall_s=wall)
        summary.loadgen_cpu_s = round(sum(r["cpu_s"] for r in results) + time.process_time() - cpu_before, 4)
        summary.loadgen_processes = workers
        summary.watched_cpu_s = watched
        if machine_before and machine_after and machine_after[1] > machine_before[1]:
            summary.machine_busy = round((machine_after[0] - machine_before[0])
                                         / (machine_after[1] - machine_before[1]), 3)
        return summary

    def _collect(self, workers: int, label: str, users: int, rate: float, start_at: float,
                 stop_at: float, on_progress: Callable[[str], None] | None) -> list[dict]:
        conns = self._conns[:workers]
        results: dict[int, dict] = {}
        last_tokens, last_t = 0.0, time.perf_counter()
        while len(results) < workers:
            for conn in wait([c for i, c in enumerate(conns) if i not in results], timeout=0.5):
                index = conns.index(conn)
                try:
                    results[index] = conn.recv()
                except EOFError:
                    results[index] = {"error": f"worker {index} exited"}
            if on_progress is not None:
                done = sum(self._progress[i * PROGRESS_SLOTS] for i in range(workers))
                errors = sum(self._progress[i * PROGRESS_SLOTS + 1] for i in range(workers))
                tokens = sum(self._progress[i * PROGRESS_SLOTS + 2] for i in range(workers))
                now = time.perf_counter()
                rate_now = (tokens - last_tokens) / max(now - last_t, 1e-6)
                last_tokens, last_t = tokens, now
                elapsed = max(now - start_at, 0.0)
                total = "" if math.isinf(stop_at) else f"/{stop_at - start_at:.0f}"
                on_progress(f"{label or users or rate}: {elapsed:5.1f}{total} s  requests {int(done)}  "
                            f"errors {int(errors)}  tokens/s {rate_now:8.0f}")
        return [results[i] for i in range(workers)]


class ProgressLine:
    """A one-line progress display on stderr: rewritten in place on a terminal, every 5 s otherwise."""

    def __init__(self, stream=None, interval_s: float = 5.0) -> None:
        self._stream = stream or sys.stderr
        self._tty = self._stream.isatty()
        self._interval = interval_s
        self._last = 0.0
        self._width = 0

    def __call__(self, text: str) -> None:
        if self._tty:
            self._stream.write("\r" + text.ljust(self._width))
            self._width = len(text)
            self._stream.flush()
        elif time.monotonic() - self._last >= self._interval:
            self._last = time.monotonic()
            self._stream.write(text + "\n")
            self._stream.flush()

    def done(self, text: str = "") -> None:
        if self._tty:
            self._stream.write("\r" + text.ljust(self._width) + "\n")
            self._width = 0
        elif text:
            self._stream.write(text + "\n")
        self._stream.flush()
