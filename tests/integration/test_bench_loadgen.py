"""The load generator against a real in-process synthetic expert: counts, rates and error codes."""
from __future__ import annotations

import asyncio
import json
import math

import pytest

from router_svc.commands import bench
from router_svc.loadgen import client
from router_svc.loadgen.client import LevelTask, run_task
from router_svc.loadgen.prompts import builtin_prompts
from router_svc.loadgen.runner import LoadGenerator
from router_svc.loadgen.stats import summarize
from tests.helpers import running_expert, synthetic_config

TTFT_MS = 10.0
TOKENS_PER_S = 200.0
MAX_TOKENS = 10


def _expert_config():
    return synthetic_config(ttft_ms=TTFT_MS, tokens_per_second=TOKENS_PER_S, max_concurrency=64)


def _requests():
    return bench.build_requests(builtin_prompts(), MAX_TOKENS)


def _task(target: str, *, users: int = 0, rate: float = 0.0, duration: float = 0.6, timeout: float = 5.0):
    import time

    start = time.perf_counter() + 0.1
    return LevelTask(targets=(target,), method=client.EXPERT_GENERATE, requests=tuple(_requests()),
                     users=users, user_offset=0, total_users=max(users, 1), rate=rate, start_at=start,
                     ramp_s=0.0, window=(start, start + duration), stop_at=start + duration,
                     requests_per_user=0, think_s=0.0, timeout_s=timeout)


@pytest.mark.slow
async def test_closed_loop_levels_over_worker_processes():
    async with running_expert(_expert_config()) as (expert, _):
        def levels():
            with LoadGenerator(processes=2) as generator:
                return [generator.run_level(targets=[expert.address], method=client.EXPERT_GENERATE,
                                            requests=_requests(), users=users, duration_s=1.0, warmup_s=0.3)
                        for users in (2, 6)]
        summaries = await asyncio.to_thread(levels)
    for users, summary in zip((2, 6), summaries, strict=True):
        assert summary.errors == {}
        assert summary.ok >= 1
        assert summary.tokens == summary.requests_total * MAX_TOKENS
        # Each user streams ~TOKENS_PER_S most of the time. The lower bounds only catch a generator
        # that does not load at all: a 2-core machine busy with other work can be several times slower.
        assert 0.15 * users * TOKENS_PER_S <= summary.tokens_per_s <= 1.2 * users * TOKENS_PER_S
        assert TTFT_MS * 0.9 <= summary.ttft_ms["p50"] < TTFT_MS + 250
        assert summary.itl_ms["p50"] == pytest.approx(1000 / TOKENS_PER_S, rel=0.5)
        assert summary.loadgen_processes == min(users, 2)
        assert summary.loadgen_cpu_s > 0
    assert summaries[1].tokens_per_s > 1.5 * summaries[0].tokens_per_s


async def test_open_loop_sends_at_the_requested_rate():
    async with running_expert(_expert_config()) as (expert, _):
        arrays = await run_task(_task(expert.address, rate=40.0, duration=1.0))
    summary = summarize(arrays, label="40/s", users=None, rate=40.0,
                        window=(arrays["started"].min(), arrays["started"].min() + 1.0), wall_s=1.0)
    assert summary.errors == {}
    assert 15 <= len(arrays["started"]) <= 80  # Poisson arrivals at 40/s over 1 s
    assert set(arrays["tokens"].tolist()) == {MAX_TOKENS}


async def test_target_down_counts_unavailable(unused_address):
    arrays = await run_task(_task(unused_address(), users=2, duration=0.3, timeout=2.0))
    assert len(arrays["status"]) >= 2
    assert set(arrays["status"]) == {"UNAVAILABLE"}
    assert all(math.isnan(t) for t in arrays["ttft"])
    assert arrays["window_tokens"] == 0


async def test_overloaded_expert_counts_resource_exhausted():
    async with running_expert(synthetic_config(ttft_ms=TTFT_MS, tokens_per_second=TOKENS_PER_S,
                                               max_concurrency=1)) as (expert, _):
        arrays = await run_task(_task(expert.address, users=4, duration=0.5))
    statuses = set(arrays["status"])
    assert "OK" in statuses and "RESOURCE_EXHAUSTED" in statuses


async def test_bench_command_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    parser = __import__("argparse").ArgumentParser()
    bench.add_arguments(parser)
    async with running_expert(_expert_config()) as (expert, _):
        args = parser.parse_args(["--target", expert.address, "--users", "3", "--requests-per-user", "2",
                                  "--max-tokens", "4", "--processes", "1", "--json", str(out), "--quiet"])
        code = await asyncio.to_thread(bench.run, args)
    assert code == 0
    document = json.loads(out.read_text())
    assert document["meta"]["service"] == "expert"
    (level,) = document["series"][expert.address]
    assert level["users"] == 3 and level["ok"] == 6 and level["errors"] == {}
    assert level["tokens"] == 6 * 4
