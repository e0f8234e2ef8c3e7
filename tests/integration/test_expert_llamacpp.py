"""The real llamacpp expert (SmolLM2-135M-Instruct on the CPU) over gRPC."""

import asyncio

import pytest

from expert_router.v1 import expert_router_pb2 as pb
from expert_svc.config import ExpertConfig
from tests.helpers import drain, eventually, request, running_expert

pytest.importorskip("xllamacpp")


def llamacpp_config(**overrides) -> ExpertConfig:
    values = {"name": "general", "engine": "llamacpp", "max_concurrency": 2, "context_length": 1024}
    values.update(overrides)
    return ExpertConfig(**values)


async def test_streams_a_short_greedy_answer_with_real_token_counts():
    async with running_expert(llamacpp_config(system_prompt="You answer in one short sentence.")) as (
        _expert,
        stub,
    ):
        info = await stub.GetInfo(pb.GetInfoRequest())
        ask = request("What is the capital of France?", max_tokens=16, temperature=0.0)
        first = await drain(stub.Generate(ask))
        second = await drain(stub.Generate(ask))
    assert (info.model, info.quantization, info.engine, info.context_length) == (
        "SmolLM2-135M-Instruct",
        "Q4_1",
        "llamacpp",
        1024,
    )
    text = "".join(f.text for f in first)
    assert text.strip() and "Paris" in text
    last = first[-1]
    assert last.finish_reason in (pb.FINISH_REASON_STOP, pb.FINISH_REASON_LENGTH)
    assert all(f.finish_reason == pb.FINISH_REASON_UNSPECIFIED for f in first[:-1])
    # The chat template and the system prompt are counted: far more tokens than the question's words.
    assert last.usage.prompt_tokens > 15
    assert 0 < last.usage.completion_tokens <= 16
    assert len([f for f in first if f.text]) <= last.usage.completion_tokens
    assert "".join(f.text for f in second) == text  # greedy decoding is reproducible


async def test_cancelled_stream_stops_generation_in_llamacpp():
    async with running_expert(llamacpp_config()) as (expert, stub):
        before = await expert.engine.metrics()
        call = stub.Generate(
            request("Write a very long story about a dragon and a knight.", max_tokens=1000, temperature=0.0)
        )
        frames = 0
        async for frame in call:
            assert frame.finish_reason == pb.FINISH_REASON_UNSPECIFIED
            frames += 1
            if frames == 3:
                break
        call.cancel()
        await eventually(lambda: expert.engine.stats.aborted == 1)

        async def slot_idle():
            return (await expert.engine.metrics()).get("requests_processing") == 0

        await eventually(slot_idle)
        after = await expert.engine.metrics()
        generated = after["tokens_predicted_total"] - before["tokens_predicted_total"]
        await asyncio.sleep(0.5)  # nothing must happen now, which no condition can signal
        assert (await expert.engine.metrics())["tokens_predicted_total"] == after["tokens_predicted_total"]
    # A few tokens past the cancel at most, nowhere near the 1000 asked for.
    assert 3 <= generated < 50


async def test_concurrent_streams_are_served_together():
    async with running_expert(llamacpp_config()) as (_, stub):
        results = await asyncio.gather(
            drain(stub.Generate(request("Name a color.", max_tokens=8, temperature=0.0))),
            drain(stub.Generate(request("Name an animal.", max_tokens=8, temperature=0.0))),
        )
    for frames in results:
        assert frames[-1].finish_reason != pb.FINISH_REASON_UNSPECIFIED
        assert 0 < frames[-1].usage.completion_tokens <= 8
