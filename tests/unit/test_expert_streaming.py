"""--stream-interval: `coalesce` regroups deltas, and the servicer applies it over gRPC."""

from __future__ import annotations

import pytest

from expert_svc.config import ExpertConfig, config_from_args
from expert_svc.streaming import coalesce
from expert_svc.types import Delta, FinishReason
from tests.helpers import request, running_expert, synthetic_config


async def _stream(deltas):
    for d in deltas:
        yield d


def _tokens(n: int) -> list[Delta]:
    deltas = [Delta(f" t{i}", (i,)) for i in range(n - 1)]
    return [*deltas, Delta(f" t{n - 1}", (n - 1,), FinishReason.LENGTH, 5, n)]


async def _coalesced(deltas, interval):
    return [d async for d in coalesce(_stream(deltas), interval)]


@pytest.mark.parametrize("n, interval, sizes", [
    (10, 1, [1] * 10),
    (10, 4, [1, 4, 4, 1]),
    (9, 4, [1, 4, 4]),
    (1, 8, [1]),
    (3, 8, [1, 2]),
])
async def test_first_token_alone_then_groups_of_n_and_the_rest_with_the_end(n, interval, sizes):
    out = await _coalesced(_tokens(n), interval)
    assert [len(d.token_ids) for d in out] == sizes
    assert "".join(d.text for d in out) == "".join(f" t{i}" for i in range(n))
    assert [t for d in out for t in d.token_ids] == list(range(n))
    assert out[-1].finish_reason is FinishReason.LENGTH and (out[-1].prompt_tokens, out[-1].completion_tokens) == (5, n)
    assert all(d.finish_reason is None for d in out[:-1])


async def test_empty_leading_deltas_do_not_count_as_the_first_token():
    deltas = [Delta(""), Delta("a", (1,)), Delta("b", (2,)), Delta("c", (3,), FinishReason.STOP, 1, 3)]
    out = await _coalesced(deltas, 2)
    assert [d.text for d in out] == ["a", "bc"]


def test_stream_interval_flag_and_bounds():
    assert config_from_args(["--name", "x", "--listen", "127.0.0.1:0"]).stream_interval == 1
    assert config_from_args(["--name", "x", "--listen", "127.0.0.1:0", "--stream-interval", "8"]).stream_interval == 8
    with pytest.raises(ValueError, match="stream_interval"):
        ExpertConfig(name="x", stream_interval=0)


async def test_servicer_sends_one_frame_per_interval_with_the_same_text():
    prompt = "count the tokens"
    async with running_expert(synthetic_config(stream_interval=1)) as (_, stub):
        single = [f async for f in stub.Generate(request(prompt, max_tokens=10))]
    async with running_expert(synthetic_config(stream_interval=4)) as (_, stub):
        grouped = [f async for f in stub.Generate(request(prompt, max_tokens=10))]
    assert len(single) == 10 and len(grouped) == 4
    assert "".join(f.text for f in single) == "".join(f.text for f in grouped)
    assert [list(f.token_ids) for f in grouped] == [
        [t for f in single[0:1] for t in f.token_ids],
        [t for f in single[1:5] for t in f.token_ids],
        [t for f in single[5:9] for t in f.token_ids],
        [t for f in single[9:10] for t in f.token_ids],
    ]
    assert grouped[-1].usage.completion_tokens == single[-1].usage.completion_tokens == 10
