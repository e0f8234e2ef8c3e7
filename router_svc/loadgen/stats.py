"""Load-generator statistics: per-request records, percentiles and the summary of one level.

Pure functions over numpy arrays, so every number the bench reports can be unit-tested without a
server. Latencies are kept in seconds inside records and reported in milliseconds.
"""
from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

PERCENTILES: tuple[int, ...] = (50, 90, 99)
OK = "OK"


def percentiles(values: Iterable[float] | np.ndarray, qs: Sequence[int] = PERCENTILES,
                scale: float = 1.0) -> dict[str, float | None]:
    """``{"p50": ..., "p90": ..., "p99": ..., "mean": ..., "max": ...}`` of the finite values times ``scale``;
    None everywhere when there are none. Linear interpolation between order statistics."""
    arr = np.asarray(values if isinstance(values, np.ndarray) else list(values), dtype=np.float64)
    arr = arr[np.isfinite(arr)]
    keys = [f"p{q}" for q in qs] + ["mean", "max"]
    if arr.size == 0:
        return dict.fromkeys(keys)
    arr = arr * scale
    out = {f"p{q}": float(v) for q, v in zip(qs, np.percentile(arr, list(qs)), strict=True)}
    out["mean"] = float(arr.mean())
    out["max"] = float(arr.max())
    return out


def inter_token_gaps(token_times: Sequence[float] | np.ndarray) -> np.ndarray:
    """Gaps between consecutive token-bearing frames of one stream (the first token's wait is TTFT,
    not an inter-token latency). Fewer than two frames give an empty array."""
    times = np.asarray(token_times, dtype=np.float64)
    if times.size < 2:
        return np.empty(0, dtype=np.float64)
    return np.diff(times)


def count_errors(codes: Iterable[str]) -> dict[str, int]:
    """Failed requests by gRPC status name (``OK`` is not an error), most frequent first."""
    counts = Counter(code for code in codes if code != OK)
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))


@dataclass
class RequestRecords:
    """Column-wise records of finished requests (one entry per request) plus all inter-token gaps.

    ``started`` and the window are monotonic-clock seconds, comparable across processes on Linux.
    ``ttft`` is NaN for a request that ended before its first token.
    """

    started: list[float] = field(default_factory=list)
    ttft: list[float] = field(default_factory=list)
    e2e: list[float] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    frames: list[int] = field(default_factory=list)
    status: list[str] = field(default_factory=list)
    gaps: list[np.ndarray] = field(default_factory=list)
    # Tokens whose frame arrived inside the measurement window (throughput's numerator).
    window_tokens: int = 0

    def add(self, *, started: float, ttft: float, e2e: float, tokens: int, frames: int, status: str,
            token_times: Sequence[float] = ()) -> None:
        self.started.append(started)
        self.ttft.append(ttft)
        self.e2e.append(e2e)
        self.tokens.append(tokens)
        self.frames.append(frames)
        self.status.append(status)
        if len(token_times) > 1:
            self.gaps.append(inter_token_gaps(token_times).astype(np.float32))

    def to_arrays(self) -> dict[str, object]:
        """A picklable, compact form to send from a worker process to the parent."""
        return {
            "started": np.asarray(self.started, dtype=np.float64),
            "ttft": np.asarray(self.ttft, dtype=np.float64),
            "e2e": np.asarray(self.e2e, dtype=np.float64),
            "tokens": np.asarray(self.tokens, dtype=np.int64),
            "frames": np.asarray(self.frames, dtype=np.int64),
            "status": list(self.status),
            "gaps": np.concatenate(self.gaps) if self.gaps else np.empty(0, dtype=np.float32),
            "window_tokens": self.window_tokens,
        }


def merge_arrays(parts: Sequence[Mapping[str, object]]) -> dict[str, object]:
    """Concatenates the ``to_arrays()`` of several workers."""
    merged: dict[str, object] = {}
    for key in ("started", "ttft", "e2e", "tokens", "frames", "gaps"):
        arrays = [np.asarray(p[key]) for p in parts]
        merged[key] = np.concatenate(arrays) if arrays else np.empty(0)
    merged["status"] = [code for p in parts for code in p["status"]]
    merged["window_tokens"] = int(sum(int(p["window_tokens"]) for p in parts))
    return merged


@dataclass
class LevelSummary:
    """What one load level measured; ``to_dict()`` is its JSON form."""

    label: str
    users: int | None
    rate: float | None
    window_s: float
    wall_s: float
    requests: int
    ok: int
    errors: dict[str, int]
    ttft_ms: dict[str, float | None]
    itl_ms: dict[str, float | None]
    e2e_ms: dict[str, float | None]
    tokens_per_s: float
    requests_per_s: float
    tokens: int
    frames: int
    # Every request that finished during the level, warm-up and drain included (for CPU per request).
    requests_total: int = 0
    loadgen_cpu_s: float = 0.0
    loadgen_processes: int = 1
    machine_busy: float | None = None
    watched_cpu_s: dict[str, float] = field(default_factory=dict)

    @property
    def loadgen_cores(self) -> float:
        return self.loadgen_cpu_s / self.wall_s if self.wall_s > 0 else 0.0

    def to_dict(self) -> dict[str, object]:
        out = asdict(self)
        out["loadgen_cores"] = round(self.loadgen_cores, 3)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> LevelSummary:
        names = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in names})


def summarize(arrays: Mapping[str, object], *, label: str, users: int | None, rate: float | None,
              window: tuple[float, float], wall_s: float) -> LevelSummary:
    """Summarizes merged records of one level.

    Latencies cover the requests that started inside ``window`` (requests started during warm-up are
    left out; requests started in the window are waited for, so slow ones are not dropped).
    Throughput is the tokens that arrived inside the window divided by its length, and requests/s the
    successful requests that finished inside it.
    """
    start, end = window
    window_s = max(end - start, 1e-9)
    started = np.asarray(arrays["started"], dtype=np.float64)
    e2e = np.asarray(arrays["e2e"], dtype=np.float64)
    status = np.asarray(arrays["status"], dtype=object)
    in_window = (started >= start) & (started <= end)
    ok = status == OK
    finished_in_window = ok & (started + e2e >= start) & (started + e2e <= end)
    measured_ok = in_window & ok
    errors = count_errors(status[in_window].tolist())
    return LevelSummary(
        label=label,
        users=users,
        rate=rate,
        window_s=round(window_s, 3),
        wall_s=round(wall_s, 3),
        requests=int(in_window.sum()),
        ok=int(measured_ok.sum()),
        errors=errors,
        ttft_ms=percentiles(np.asarray(arrays["ttft"])[measured_ok], scale=1000.0),
        itl_ms=percentiles(np.asarray(arrays["gaps"]), scale=1000.0),
        e2e_ms=percentiles(e2e[measured_ok], scale=1000.0),
        tokens_per_s=float(arrays["window_tokens"]) / window_s,
        requests_per_s=float(finished_in_window.sum()) / window_s,
        tokens=int(np.asarray(arrays["tokens"]).sum()),
        frames=int(np.asarray(arrays["frames"]).sum()),
        requests_total=int(status.size),
    )


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b, or None when either is missing or b is zero."""
    if a is None or b is None or b == 0 or not math.isfinite(a) or not math.isfinite(b):
        return None
    return a / b


def difference(a: float | None, b: float | None) -> float | None:
    """a - b, or None when either is missing."""
    if a is None or b is None:
        return None
    return a - b
