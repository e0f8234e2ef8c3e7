"""The load generator's arithmetic: percentiles, inter-token gaps, error counts and level summaries."""
from __future__ import annotations

import math
import os
import time

import numpy as np
import pytest

from router_svc.loadgen.report import format_table
from router_svc.loadgen.runner import process_cpu_seconds
from router_svc.loadgen.stats import (
    RequestRecords,
    count_errors,
    difference,
    inter_token_gaps,
    merge_arrays,
    percentiles,
    ratio,
    summarize,
)


def test_percentiles_interpolate_between_order_statistics():
    result = percentiles(range(1, 101))
    assert result["p50"] == pytest.approx(50.5)
    assert result["p90"] == pytest.approx(90.1)
    assert result["p99"] == pytest.approx(99.01)
    assert result["mean"] == pytest.approx(50.5)
    assert result["max"] == 100


def test_percentiles_scale_and_skip_non_finite():
    result = percentiles([0.010, math.nan, 0.020, math.inf, 0.030], scale=1000.0)
    assert result["p50"] == pytest.approx(20.0)
    assert result["max"] == pytest.approx(30.0)


def test_percentiles_of_nothing_are_none():
    assert percentiles([]) == {"p50": None, "p90": None, "p99": None, "mean": None, "max": None}
    assert percentiles([math.nan])["p50"] is None


def test_inter_token_gaps_are_differences_of_frame_times():
    gaps = inter_token_gaps([10.000, 10.020, 10.050, 10.051])
    assert gaps == pytest.approx([0.020, 0.030, 0.001])


@pytest.mark.parametrize("times", [[], [3.0]])
def test_inter_token_gaps_need_two_frames(times):
    assert inter_token_gaps(times).size == 0


def test_count_errors_by_status_code_leaves_out_ok():
    codes = ["OK", "UNAVAILABLE", "OK", "DEADLINE_EXCEEDED", "UNAVAILABLE", "RESOURCE_EXHAUSTED", "UNAVAILABLE"]
    counts = count_errors(codes)
    assert counts == {"UNAVAILABLE": 3, "DEADLINE_EXCEEDED": 1, "RESOURCE_EXHAUSTED": 1}
    assert next(iter(counts)) == "UNAVAILABLE"
    assert count_errors(["OK", "OK"]) == {}


def _records() -> RequestRecords:
    records = RequestRecords()
    # Warm-up request (started before the window at 100.0): left out of the latency statistics.
    records.add(started=99.5, ttft=0.500, e2e=1.0, tokens=5, frames=6, status="OK",
                token_times=[100.0, 100.1])
    records.add(started=100.0, ttft=0.020, e2e=0.220, tokens=5, frames=6, status="OK",
                token_times=[100.02, 100.07, 100.12, 100.17, 100.22])
    records.add(started=101.0, ttft=0.040, e2e=0.240, tokens=5, frames=6, status="OK",
                token_times=[101.04, 101.09, 101.14, 101.19, 101.24])
    records.add(started=102.0, ttft=math.nan, e2e=0.001, tokens=0, frames=0, status="UNAVAILABLE")
    # Started in the window, finished after it: counted in latency, not in requests/s.
    records.add(started=109.9, ttft=0.030, e2e=0.300, tokens=5, frames=6, status="OK",
                token_times=[109.93, 109.98])
    records.window_tokens = 40
    return records


def test_summarize_uses_the_window_for_latency_and_throughput():
    summary = summarize(_records().to_arrays(), label="5 users", users=5, rate=None,
                        window=(100.0, 110.0), wall_s=11.0)
    assert summary.requests == 4  # the warm-up request is out
    assert summary.ok == 3
    assert summary.requests_total == 5
    assert summary.errors == {"UNAVAILABLE": 1}
    assert summary.ttft_ms["p50"] == pytest.approx(30.0)
    assert summary.ttft_ms["max"] == pytest.approx(40.0)
    assert summary.e2e_ms["p50"] == pytest.approx(240.0)
    assert summary.itl_ms["p50"] == pytest.approx(50.0, abs=0.01)
    assert summary.tokens_per_s == pytest.approx(4.0)
    # Finished inside the 10 s window: the warm-up request (at 100.5) and the two after it.
    assert summary.requests_per_s == pytest.approx(0.3)
    assert summary.tokens == 20 and summary.frames == 24


def test_merge_concatenates_workers():
    a, b = _records(), RequestRecords()
    b.add(started=103.0, ttft=0.025, e2e=0.2, tokens=7, frames=8, status="CANCELLED", token_times=[1.0, 1.5])
    b.window_tokens = 2
    merged = merge_arrays([a.to_arrays(), b.to_arrays()])
    assert len(merged["started"]) == 6
    assert merged["status"][-1] == "CANCELLED"
    assert merged["window_tokens"] == 42
    assert merged["gaps"][-1] == pytest.approx(0.5)


def test_summary_round_trips_through_json_form():
    summary = summarize(_records().to_arrays(), label="x", users=5, rate=None, window=(100.0, 110.0), wall_s=11.0)
    summary.loadgen_cpu_s = 2.2
    data = summary.to_dict()
    assert data["loadgen_cores"] == pytest.approx(0.2)
    assert type(summary).from_dict(data).errors == {"UNAVAILABLE": 1}
    table = format_table([summary])
    assert "| x | 4 | UNAVAILABLE 1 |" in table


def test_ratio_and_difference_handle_missing_values():
    assert ratio(9.0, 10.0) == pytest.approx(0.9)
    assert ratio(1.0, 0.0) is None and ratio(None, 1.0) is None
    assert difference(21.5, 20.0) == pytest.approx(1.5)
    assert difference(None, 20.0) is None


def test_process_cpu_seconds_counts_this_process():
    before = process_cpu_seconds(os.getpid())
    deadline = time.process_time() + 0.05
    while time.process_time() < deadline:
        pass
    assert process_cpu_seconds(os.getpid()) - before >= 0.03


def test_gaps_are_stored_compactly():
    records = RequestRecords()
    records.add(started=0.0, ttft=0.1, e2e=1.0, tokens=3, frames=3, status="OK", token_times=[0.1, 0.2, 0.3])
    assert records.to_arrays()["gaps"].dtype == np.float32
