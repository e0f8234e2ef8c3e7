"""The synthetic engine and the stop-string matcher, driven directly (no gRPC)."""

import asyncio
import contextlib

import pytest

from expert_svc.engines.base import StopMatcher
from expert_svc.engines.synthetic import VOCABULARY, SyntheticEngine
from expert_svc.types import ChatMessage, EngineRequest, FinishReason, SamplingParams
from tests.helpers import eventually


def make_request(prompt="tell me something", request_id="r", **sampling):
    sampling.setdefault("max_tokens", 8)
    return EngineRequest(request_id=request_id, sampling=SamplingParams(**sampling), prompt=prompt)


async def run(engine, request):
    return [d async for d in engine.generate(request)]


@pytest.fixture
async def engine():
    e = SyntheticEngine(ttft_ms=1.0, tokens_per_second=2000.0)
    await e.start()
    yield e
    await e.close()


async def test_one_word_per_frame_and_usage_on_last(engine):
    deltas = await run(engine, make_request(max_tokens=6))
    assert len(deltas) == 6
    assert all(d.finish_reason is None for d in deltas[:-1])
    last = deltas[-1]
    assert last.finish_reason is FinishReason.LENGTH
    assert (last.prompt_tokens, last.completion_tokens) == (3, 6)
    words = "".join(d.text for d in deltas).split(" ")
    assert len(words) == 6 and set(words) <= set(VOCABULARY)
    assert [VOCABULARY[d.token_ids[0]] for d in deltas] == words
    assert engine.stats.finished == 1 and engine.stats.aborted == 0 and engine.stats.active == 0


async def test_text_is_deterministic_and_depends_on_the_prompt(engine):
    a = "".join(d.text for d in await run(engine, make_request("alpha", max_tokens=20)))
    b = "".join(d.text for d in await run(engine, make_request("alpha", max_tokens=20)))
    c = "".join(d.text for d in await run(engine, make_request("beta", max_tokens=20)))
    assert a == b and a != c


async def test_chat_messages_and_system_prompt_count_as_prompt_tokens():
    engine = SyntheticEngine(ttft_ms=0, tokens_per_second=5000, system_prompt="you are terse")
    req = EngineRequest("r", SamplingParams(max_tokens=2), messages=(ChatMessage("user", "one two"),))
    assert (await run(engine, req))[-1].prompt_tokens == 5


async def test_stop_string_ends_generation_without_emitting_it(engine):
    full = "".join(d.text for d in await run(engine, make_request(max_tokens=20)))
    stop = " ".join(full.split(" ")[3:5])  # spans two frames
    deltas = await run(engine, make_request(max_tokens=20, stop=(stop,)))
    text = "".join(d.text for d in deltas)
    assert deltas[-1].finish_reason is FinishReason.STOP
    assert text == full[: full.index(stop)] and stop not in text
    assert deltas[-1].completion_tokens == 5


async def test_ttft_and_rate_are_honoured():
    engine = SyntheticEngine(ttft_ms=100.0, tokens_per_second=50.0)
    loop = asyncio.get_running_loop()
    start = loop.time()
    deltas = await run(engine, make_request(max_tokens=6))
    elapsed = loop.time() - start
    # 100 ms to the first token, then 5 intervals of 20 ms: at least 200 ms in all.
    assert elapsed >= 0.19 and len(deltas) == 6


async def test_cancelling_the_consumer_aborts_the_engine_request():
    engine = SyntheticEngine(ttft_ms=0.0, tokens_per_second=20.0)
    got = []

    async def consume():
        async for d in engine.generate(make_request(max_tokens=1000, request_id="victim")):
            got.append(d)

    task = asyncio.create_task(consume())
    await eventually(lambda: len(got) >= 2)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert engine.stats.aborted_request_ids == ["victim"]
    assert engine.stats.active == 0
    count = len(got)
    # Nothing must happen now, which no condition can signal: wait the time in which four more
    # tokens would be due if it were still generating.
    await asyncio.sleep(0.2)
    assert len(got) == count < 1000


async def test_closing_the_stream_early_aborts(engine):
    stream = engine.generate(make_request(max_tokens=100, request_id="closed"))
    await anext(stream)
    await stream.aclose()
    assert engine.stats.aborted == 1 and engine.stats.active == 0


async def test_a_thousand_concurrent_streams():
    engine = SyntheticEngine(ttft_ms=10.0, tokens_per_second=100.0)
    results = await asyncio.gather(*(run(engine, make_request(f"p{i}", max_tokens=5)) for i in range(1000)))
    assert all(len(r) == 5 and r[-1].completion_tokens == 5 for r in results)
    assert engine.stats.finished == 1000 and engine.stats.active == 0


async def test_prompt_filling_the_context_yields_an_empty_length_finish():
    engine = SyntheticEngine(ttft_ms=0, tokens_per_second=1000, context_length=16)
    deltas = await run(engine, make_request(" ".join(["w"] * 16), max_tokens=8))
    assert [(d.text, d.finish_reason, d.completion_tokens) for d in deltas] == [("", FinishReason.LENGTH, 0)]


def test_stop_matcher_holds_back_possible_prefixes():
    m = StopMatcher(("STOP",))
    assert m.feed("abc ST") == ("abc ", False)
    assert m.feed("AR") == ("STAR", False)
    assert m.feed("x S") == ("x ", False)
    assert m.feed("TOP tail") == ("", True)


def test_stop_matcher_flushes_and_picks_the_earliest_stop():
    m = StopMatcher(("b", "zz"))
    assert m.feed("az") == ("a", False)
    assert m.flush() == "z"
    assert StopMatcher(("cd", "b")).feed("abcd") == ("a", True)
    assert StopMatcher(()).feed("anything") == ("anything", False)
