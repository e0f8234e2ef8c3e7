"""The trtllm engine on a real GPU with the real TensorRT-LLM (NGC TensorRT-LLM container).

Set TRTLLM_TEST_MODEL to a model directory (a ModelOpt HF checkpoint, or an engine built by
`make build-engines`; TRTLLM_TEST_TOKENIZER when the engine directory has no tokenizer).
"""

from __future__ import annotations

import asyncio
import os

import pytest

from expert_svc.engines.trtllm import TrtllmEngine
from expert_svc.types import EngineRequest, FinishReason, SamplingParams

pytestmark = [pytest.mark.needs_trtllm, pytest.mark.slow]


@pytest.fixture
async def engine():
    model = os.environ.get("TRTLLM_TEST_MODEL")
    if not model:
        pytest.skip("set TRTLLM_TEST_MODEL to a model directory to run the TensorRT-LLM tests")
    engine = TrtllmEngine(model_dir=model, tokenizer_dir=os.environ.get("TRTLLM_TEST_TOKENIZER"),
                          kv_cache_fraction=0.3, max_batch_size=8)
    await engine.start()
    yield engine
    await engine.close()


def _request(prompt: str, max_tokens: int = 32, **sampling) -> EngineRequest:
    return EngineRequest(request_id="gpu", sampling=SamplingParams(max_tokens=max_tokens, **sampling), prompt=prompt)


@pytest.mark.timeout(600)
async def test_greedy_generation_streams_and_finishes(engine):
    deltas = [d async for d in engine.generate(_request("What is 2 + 2? Answer with one number.", temperature=0.0))]
    text = "".join(d.text for d in deltas)
    assert text.strip() and deltas[-1].finish_reason in (FinishReason.STOP, FinishReason.LENGTH)
    assert deltas[-1].prompt_tokens > 0 and 0 < deltas[-1].completion_tokens <= 32
    again = [d async for d in engine.generate(_request("What is 2 + 2? Answer with one number.", temperature=0.0))]
    assert "".join(d.text for d in again) == text  # greedy is deterministic


@pytest.mark.timeout(600)
async def test_cancel_aborts_on_the_gpu(engine):
    async def consume():
        async for _ in engine.generate(_request("Count from 1 to 1000.", max_tokens=512)):
            pass

    task = asyncio.create_task(consume())
    await asyncio.sleep(0.5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert engine.stats.aborted == 1
    # The slot is free again: a new request completes.
    deltas = [d async for d in engine.generate(_request("Say hi.", max_tokens=8))]
    assert deltas[-1].finish_reason is not None


async def test_info_reports_the_model(engine):
    info = engine.info()
    assert info.engine == "trtllm" and info.context_length > 0 and info.tensor_parallel_size >= 1
