"""The OpenAI-compatible HTTP door: the real ``openai`` client and raw HTTP against a real router and experts.

Every server is real and bound to port 0: synthetic experts (expert_svc) and the router with
``http_listen``; the client is the ``openai`` package itself (its own request building, SSE parsing
and error mapping), and aiohttp for the bad-input table, where each row must get OpenAI's error
shape with the right status and leave the server serving.
"""
from __future__ import annotations

import asyncio
import json
import ssl
from pathlib import Path

import aiohttp
import openai
import pytest

from expert_router.v1 import expert_router_pb2 as pb
from expert_router.v1 import expert_router_pb2_grpc as pb_grpc
from tests.helpers import eventually

CHAT = "/v1/chat/completions"
MATH_PROMPT = "Solve the equation x^2 = 9"


@pytest.fixture
async def three_experts(start_expert):
    return {name: await start_expert(name) for name in ("math", "code", "general")}


@pytest.fixture
async def http_router(start_router, three_experts):
    return await start_router({name: [e.address] for name, e in three_experts.items()}, http_listen="127.0.0.1:0")


def openai_client(router, api_key: str = "unused", **kwargs) -> openai.AsyncOpenAI:
    # No retries: each test sees the router's first answer.
    return openai.AsyncOpenAI(base_url=f"http://{router.http.address}/v1", api_key=api_key, max_retries=0, **kwargs)


async def grpc_text(router, channels, **fields) -> str:
    stub = pb_grpc.RouterStub(channels(router.address))
    return "".join([frame.text async for frame in stub.Generate(pb.GenerateRequest(**fields))])


async def test_chat_completion_routes_by_classifier(http_router, three_experts, channels) -> None:
    client = openai_client(http_router)
    raw = await client.chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": MATH_PROMPT}], max_tokens=6, seed=3)
    completion = raw.parse()

    assert raw.headers["x-expert"] == "math" and float(raw.headers["x-expert-score"]) > 0.5
    assert len(raw.headers["x-request-id"]) == 32
    assert completion.model == "math" and completion.object == "chat.completion"
    choice = completion.choices[0]
    assert choice.finish_reason == "length" and choice.message.role == "assistant"
    assert (completion.usage.completion_tokens, completion.usage.total_tokens) == (
        6, 6 + completion.usage.prompt_tokens)
    # The same request through the gRPC door gives the same text: both doors reach the same expert.
    expected = await grpc_text(http_router, channels, messages=[pb.ChatMessage(role="user", content=MATH_PROMPT)],
                               sampling=pb.SamplingParams(max_tokens=6, seed=3))
    assert choice.message.content == expected != ""
    assert three_experts["math"].engine.stats.started == 2
    assert three_experts["code"].engine.stats.started == three_experts["general"].engine.stats.started == 0


async def test_chat_stream_ends_with_usage_and_done(http_router) -> None:
    client = openai_client(http_router)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": MATH_PROMPT}]
    whole = await client.chat.completions.create(model="auto", messages=messages, max_completion_tokens=8, seed=1)
    raw = await client.chat.completions.with_raw_response.create(
        model="auto", messages=messages, max_completion_tokens=8, seed=1, stream=True,
        stream_options={"include_usage": True})
    assert raw.headers["content-type"].startswith("text/event-stream") and raw.headers["x-expert"] == "math"
    chunks = [chunk async for chunk in raw.parse()]

    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 8
    assert all(c.usage is None for c in chunks[:-1])
    assert {c.id for c in chunks} == {chunks[0].id} and chunks[0].model == "math"


async def test_raw_stream_is_server_sent_events_ending_in_done(http_router) -> None:
    async with aiohttp.ClientSession() as session, session.post(
            f"http://{http_router.http.address}{CHAT}",
            json={"model": "general", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3,
                  "stream": True}) as response:
        body = (await response.read()).decode()
    events = [line for line in body.split("\n\n") if line]
    assert all(event.startswith("data: ") for event in events)
    assert events[-1] == "data: [DONE]"
    payloads = [json.loads(event[6:]) for event in events[:-1]]
    assert payloads[-1]["choices"][0]["finish_reason"] == "length"
    assert "usage" not in payloads[-1]  # only with stream_options.include_usage
    assert response.headers["x-expert-source"] == "explicit"


async def test_completions_pin_an_expert_by_model_name(http_router, three_experts) -> None:
    client = openai_client(http_router)
    completion = await client.completions.create(model="code", prompt=MATH_PROMPT, max_tokens=4, temperature=0.5,
                                                 top_p=0.9, stop=["never"])
    assert completion.object == "text_completion" and completion.model == "code"
    assert completion.choices[0].text and completion.usage.completion_tokens == 4
    stream = await client.completions.create(model="code", prompt=MATH_PROMPT, max_tokens=4, stream=True)
    streamed = "".join([chunk.choices[0].text async for chunk in stream])
    assert streamed == completion.choices[0].text
    assert three_experts["code"].engine.stats.started == 2 and three_experts["math"].engine.stats.started == 0


async def test_models_lists_auto_and_every_expert(http_router) -> None:
    models = await openai_client(http_router).models.list()
    assert [m.id for m in models.data] == ["auto", "math", "code", "general"]
    assert {m.owned_by for m in models.data} == {"expert-router"}


async def test_openai_client_error_mapping(http_router) -> None:
    client = openai_client(http_router)
    user = [{"role": "user", "content": "hi"}]
    with pytest.raises(openai.NotFoundError) as info:
        await client.chat.completions.create(model="poetry", messages=user)
    assert info.value.code == "model_not_found" and info.value.param == "model"
    assert "'poetry' does not exist; models: auto, math, code, general" in info.value.message
    with pytest.raises(openai.BadRequestError) as info:
        await client.chat.completions.create(model="auto", messages=user, n=2)
    assert info.value.param == "n" and info.value.type == "invalid_request_error"
    with pytest.raises(openai.BadRequestError) as info:
        await client.chat.completions.create(model="auto", messages=user, top_p=0)
    assert info.value.param == "top_p"
    with pytest.raises(openai.BadRequestError) as info:  # the router's own rules apply too
        await client.chat.completions.create(model="auto", messages=[{"role": "user", "content": "  "}])
    assert "every message is empty" in info.value.message
    with pytest.raises(openai.BadRequestError) as info:
        await client.chat.completions.create(model="auto", messages=user, tools=[{"type": "function", "function": {
            "name": "f", "parameters": {}}}])
    assert info.value.param == "tools" and info.value.code == "unsupported_parameter"
    with pytest.raises(openai.BadRequestError) as info:  # streamed requests are validated before the stream
        await client.chat.completions.create(model="auto", messages=user, stream=True, temperature=9)
    assert info.value.param == "temperature"


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "tokens.yaml"
    path.write_text("tokens:\n"
                    "  - {name: app, token: app-token-0123456789, rate: 1, burst: 2}\n"
                    "  - {name: lister, token: lister-token-0123456789, rpcs: [ListExperts]}\n")
    return path


async def test_bearer_tokens_and_rate_limits(token_file, start_router, start_expert) -> None:
    expert = await start_expert("general")
    router = await start_router({"general": [expert.address]}, http_listen="127.0.0.1:0",
                                auth_tokens=str(token_file))
    user = [{"role": "user", "content": "hi"}]
    with pytest.raises(openai.AuthenticationError) as info:
        await openai_client(router, api_key="not-a-listed-token").chat.completions.create(model="auto", messages=user)
    assert "not valid for this router" in info.value.message and info.value.code == "unknown"
    with pytest.raises(openai.PermissionDeniedError) as info:
        await openai_client(router, api_key="lister-token-0123456789").chat.completions.create(
            model="auto", messages=user)
    assert "may not call Generate" in info.value.message
    assert [m.id for m in (await openai_client(router, api_key="lister-token-0123456789").models.list()).data] == [
        "auto", "general"]

    client = openai_client(router, api_key="app-token-0123456789")
    for _ in range(2):  # the burst
        await client.chat.completions.create(model="auto", messages=user, max_tokens=1)
    with pytest.raises(openai.RateLimitError) as info:
        await client.chat.completions.create(model="auto", messages=user, max_tokens=1)
    assert "over its rate limit" in info.value.message
    assert info.value.response.headers["Retry-After"] == "1"
    assert 0 < int(info.value.response.headers["retry-after-ms"]) <= 1000

    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://{router.http.address}/health") as response:  # open, like gRPC health
            assert response.status == 200
        async with session.post(f"http://{router.http.address}{CHAT}", json={"model": "auto", "messages": user},
                                headers={"Authorization": "Basic abc"}) as response:
            assert response.status == 401 and response.headers["WWW-Authenticate"] == "Bearer"
            assert "Authorization: Bearer <token>" in (await response.json())["error"]["message"]


async def test_admission_overload_is_429_with_retry_after(start_router, start_expert) -> None:
    expert = await start_expert("general", ttft_ms=5.0, tokens_per_second=20.0)
    router = await start_router({"general": [expert.address]}, http_listen="127.0.0.1:0", max_in_flight=1,
                                retry_after_ms=1500)
    client = openai_client(router)
    user = [{"role": "user", "content": "hi"}]
    first = await client.chat.completions.create(model="auto", messages=user, max_tokens=40, stream=True)
    await first.__anext__()  # the first stream holds the only slot
    with pytest.raises(openai.RateLimitError) as info:
        await client.chat.completions.create(model="auto", messages=user, max_tokens=1)
    assert "at capacity" in info.value.message
    assert info.value.response.headers["Retry-After"] == "2"
    await first.close()


async def test_client_disconnect_aborts_the_generation(start_router, start_expert) -> None:
    expert = await start_expert("general", ttft_ms=5.0, tokens_per_second=20.0)
    router = await start_router({"general": [expert.address]}, http_listen="127.0.0.1:0")
    async with aiohttp.ClientSession() as session:
        response = await session.post(
            f"http://{router.http.address}{CHAT}", headers={"x-request-id": "http-disconnect-1"},
            json={"model": "auto", "messages": [{"role": "user", "content": "tell a long story"}],
                  "max_tokens": 500, "stream": True})
        await response.content.readline()  # the stream has begun
        assert expert.engine.stats.active == 1
        response.close()  # drops the connection mid-stream
    await eventually(lambda: expert.engine.stats.aborted == 1)
    assert expert.engine.stats.aborted_request_ids == ["http-disconnect-1"]
    await eventually(lambda: router.state.active == 0 and router.admission.total == 0)
    assert router.upstream.status()[0][1][0].outstanding == 0


async def test_client_disconnect_before_the_first_token_aborts_too(start_router, start_expert) -> None:
    expert = await start_expert("general", ttft_ms=3000.0, tokens_per_second=20.0)
    router = await start_router({"general": [expert.address]}, http_listen="127.0.0.1:0")
    async with aiohttp.ClientSession() as session:
        task = asyncio.ensure_future(session.post(
            f"http://{router.http.address}{CHAT}", headers={"x-request-id": "http-disconnect-2"},
            json={"model": "auto", "messages": [{"role": "user", "content": "hi"}], "stream": False}))
        await eventually(lambda: expert.engine.stats.active == 1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    await eventually(lambda: expert.engine.stats.aborted == 1)
    assert expert.engine.stats.aborted_request_ids == ["http-disconnect-2"]


async def test_tls_serves_https_with_the_router_certificate(start_router, start_expert, tmp_path: Path) -> None:
    from tests.certs import make_pki

    pki = make_pki(tmp_path)
    expert = await start_expert("general")
    router = await start_router({"general": [expert.address]}, http_listen="127.0.0.1:0",
                                tls_cert=str(pki.server.cert), tls_key=str(pki.server.key))
    context = ssl.create_default_context(cafile=str(pki.ca.cert))
    async with aiohttp.ClientSession() as session:
        async with session.post(f"https://{router.http.address}{CHAT}", ssl=context,
                                json={"model": "auto", "messages": [{"role": "user", "content": "hi"}],
                                      "max_tokens": 2}) as response:
            assert response.status == 200
            assert (await response.json())["usage"]["completion_tokens"] == 2
        with pytest.raises(aiohttp.ClientError):  # plaintext to a TLS port
            async with session.get(f"http://{router.http.address}/health") as response:
                await response.read()


async def test_metrics_and_health(http_router) -> None:
    from prometheus_client import generate_latest

    client = openai_client(http_router)
    await client.chat.completions.create(model="auto", messages=[{"role": "user", "content": MATH_PROMPT}],
                                         max_tokens=2)
    with pytest.raises(openai.NotFoundError):
        await client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}])
    text = generate_latest(http_router.metrics.registry).decode()
    assert 'router_requests_total{code="OK",expert="math"} 1.0' in text
    assert 'router_requests_total{code="NOT_FOUND",expert=""} 1.0' in text
    async with aiohttp.ClientSession() as session, session.get(f"http://{http_router.http.address}/health") as response:
        body = await response.json()
    assert response.status == 200 and body == {"status": "ok", "experts": {"math": True, "code": True,
                                                                           "general": True}}


# Raw HTTP: every bad-input row gets OpenAI's error shape and the server keeps serving. -------------

GOOD = {"model": "auto", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
BAD_INPUT = [
    # (name, method, path, body bytes, content type, status, param, fragment of the message)
    ("malformed JSON", "POST", CHAT, b'{"model": "auto", "messages": [', "application/json", 400, None,
     "not valid JSON"),
    ("not UTF-8", "POST", CHAT, b'{"model": "\xff"}', "application/json", 400, None, "not UTF-8"),
    ("a JSON array", "POST", CHAT, b"[1, 2]", "application/json", 400, None, "must be a JSON object, got a JSON array"),
    ("empty body", "POST", CHAT, b"", "application/json", 400, None, "not valid JSON"),
    ("messages not a list", "POST", CHAT, {**GOOD, "messages": "hi"}, "application/json", 400, "messages",
     "messages must be an array"),
    ("empty messages", "POST", CHAT, {**GOOD, "messages": []}, "application/json", 400, "messages",
     "messages is empty"),
    ("message without content", "POST", CHAT, {**GOOD, "messages": [{"role": "user"}]}, "application/json", 400,
     "messages[0].content", "got null"),
    ("unknown role", "POST", CHAT, {**GOOD, "messages": [{"role": "bot", "content": "x"}]}, "application/json",
     400, "messages[0].role", "must be one of"),
    ("image content", "POST", CHAT, {**GOOD, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "x"}}]}]}, "application/json", 400, "messages[0].content",
     "text part"),
    ("max_tokens a string", "POST", CHAT, {**GOOD, "max_tokens": "10"}, "application/json", 400, "max_tokens",
     "integer >= 1"),
    ("max_tokens 0", "POST", CHAT, {**GOOD, "max_tokens": 0}, "application/json", 400, "max_tokens",
     "integer >= 1"),
    ("temperature a string", "POST", CHAT, {**GOOD, "temperature": "hot"}, "application/json", 400, "temperature",
     "must be a number"),
    ("negative seed", "POST", CHAT, {**GOOD, "seed": -1}, "application/json", 400, "seed", "[0, 2^64)"),
    ("stop a number", "POST", CHAT, {**GOOD, "stop": 5}, "application/json", 400, "stop", "string or an array"),
    ("empty stop string", "POST", CHAT, {**GOOD, "stop": [""]}, "application/json", 400, None,
     "sampling.stop[0] is empty"),
    ("stream not a boolean", "POST", CHAT, {**GOOD, "stream": "yes"}, "application/json", 400, "stream",
     "true or false"),
    ("model missing", "POST", CHAT, {"messages": GOOD["messages"]}, "application/json", 400, "model",
     "model is required"),
    ("model a number", "POST", CHAT, {**GOOD, "model": 3}, "application/json", 400, "model", "must be a string"),
    ("unknown field", "POST", CHAT, {**GOOD, "temprature": 0.5}, "application/json", 400, "temprature",
     "Unrecognized request argument supplied: temprature"),
    ("n = 3", "POST", CHAT, {**GOOD, "n": 3}, "application/json", 400, "n", "n must be 1"),
    ("prompt too long", "POST", CHAT, {**GOOD, "messages": [{"role": "user", "content": "x" * 5000}]},
     "application/json", 400, None, "at most 4096 bytes"),
    ("huge body", "POST", CHAT, {**GOOD, "messages": [{"role": "user", "content": "x" * 70_000}]},
     "application/json", 413, None, "over 65536 bytes"),
    ("form content type", "POST", CHAT, GOOD, "application/x-www-form-urlencoded", 415, None,
     "Content-Type must be application/json"),
    ("no content type", "POST", CHAT, GOOD, None, 415, None, "Content-Type must be application/json"),
    ("completions without prompt", "POST", "/v1/completions", {"model": "auto"}, "application/json", 400, "prompt",
     "prompt must be a string"),
    ("completions with several prompts", "POST", "/v1/completions", {"model": "auto", "prompt": ["a", "b"]},
     "application/json", 400, "prompt", "one string"),
    ("GET on a POST endpoint", "GET", CHAT, b"", None, 405, None, "takes POST"),
    ("unknown path", "POST", "/v1/embeddings", GOOD, "application/json", 404, None, "no such endpoint"),
    ("bad request id", "POST", CHAT, GOOD, "application/json", 400, "x-request-id", "printable ASCII"),
]


@pytest.fixture
async def small_router(start_router, start_expert):
    expert = await start_expert("general")
    return await start_router({"general": [expert.address]}, http_listen="127.0.0.1:0", max_prompt_bytes=4096,
                              max_message_bytes=65536)


@pytest.mark.parametrize("row", BAD_INPUT, ids=[row[0] for row in BAD_INPUT])
async def test_bad_input_gets_openai_error_shape_and_server_lives(small_router, row) -> None:
    name, method, path, body, content_type, status, param, fragment = row
    if isinstance(body, dict):
        body = json.dumps(body).encode()
    headers = {"x-request-id": "é" * 3} if name == "bad request id" else {}
    if content_type:
        headers["Content-Type"] = content_type
    base = f"http://{small_router.http.address}"
    async with aiohttp.ClientSession(skip_auto_headers=("Content-Type",)) as session:
        async with session.request(method, base + path, data=body, headers=headers) as response:
            payload = await response.json(content_type=None)
            assert response.status == status, payload
            assert response.headers["Content-Type"].startswith("application/json")
        assert set(payload) == {"error"} and set(payload["error"]) == {"message", "type", "param", "code"}
        assert fragment in payload["error"]["message"]
        assert payload["error"]["param"] == param
        assert payload["error"]["type"] == ("invalid_request_error" if status < 404 or status in (405, 413, 415)
                                            else "not_found_error")
        # Still serving: health and a good request.
        async with session.get(base + "/health") as response:
            assert response.status == 200
        async with session.post(base + CHAT, data=json.dumps(GOOD), headers={"Content-Type": "application/json"}) \
                as response:
            assert response.status == 200 and (await response.json())["usage"]["completion_tokens"] == 2


async def test_load_generator_drives_the_http_door(start_router, start_expert) -> None:
    """The HTTP mode of the load generator (benchmarks/http_overhead.py): tokens, usage and error codes."""
    import time

    from router_svc.loadgen import client
    from router_svc.loadgen.client import LevelTask, run_task

    expert = await start_expert("general", ttft_ms=5.0, tokens_per_second=200.0)
    router = await start_router({"general": [expert.address]}, http_listen="127.0.0.1:0")
    good = json.dumps({**GOOD, "max_tokens": 5, "stream": True, "stream_options": {"include_usage": True}}).encode()
    bad = json.dumps({**GOOD, "model": "nope", "stream": True}).encode()

    def task(requests: tuple[bytes, ...]) -> LevelTask:
        start = time.perf_counter() + 0.05
        return LevelTask(targets=(router.http.address,), method=client.HTTP_CHAT, requests=requests, users=2,
                         user_offset=0, total_users=2, rate=0.0, start_at=start, ramp_s=0.0,
                         window=(start, start + 10), stop_at=float("inf"), requests_per_user=3, think_s=0.0,
                         timeout_s=10.0)

    result = await run_task(task((good,)))
    assert list(result["status"]) == ["OK"] * 6 and list(result["tokens"]) == [5] * 6
    assert all(ttft > 0.004 for ttft in result["ttft"])
    result = await run_task(task((bad,)))
    assert list(result["status"]) == ["HTTP_404"] * 6


async def test_sigterm_drain_lets_an_http_stream_finish(start_router, start_expert) -> None:
    expert = await start_expert("general", ttft_ms=5.0, tokens_per_second=40.0)
    router = await start_router({"general": [expert.address]}, http_listen="127.0.0.1:0")
    async with aiohttp.ClientSession() as session:
        response = await session.post(f"http://{router.http.address}{CHAT}", json={
            **GOOD, "max_tokens": 12, "stream": True})
        await response.content.readline()  # in flight
        stopping = asyncio.ensure_future(router.stop(5.0))
        body = (await response.read()).decode()
        await stopping
    assert body.endswith("data: [DONE]\n\n")
    assert expert.engine.stats.finished == 1 and expert.engine.stats.aborted == 0


async def test_expert_failing_mid_stream_ends_with_an_error_event(start_router, start_expert) -> None:
    expert = await start_expert("general", ttft_ms=5.0, tokens_per_second=20.0)
    router = await start_router({"general": [expert.address]}, http_listen="127.0.0.1:0")
    async with aiohttp.ClientSession() as session:
        response = await session.post(f"http://{router.http.address}{CHAT}", json={
            **GOOD, "max_tokens": 200, "stream": True})
        await response.content.readline()
        await expert.stop(0)  # the expert goes away mid-stream
        events = [e for e in (await response.read()).decode().split("\n\n") if e]
    assert response.status == 200
    error = json.loads(events[-1].removeprefix("data: "))["error"]
    # The expert's own status passes through (UNAVAILABLE: its server is stopping), as on the gRPC door.
    assert (error["type"], error["code"]) == ("server_error", "unavailable") and error["message"]
    assert "data: [DONE]" not in events
    async with aiohttp.ClientSession() as session, session.get(f"http://{router.http.address}/health") as health:
        assert health.status == 503  # its only expert is gone


async def test_reload_reaches_the_http_door(start_router, start_expert) -> None:
    from router_svc.config import parse_expert_flag

    general, math = await start_expert("general"), await start_expert("math")
    router = await start_router({"general": [general.address]}, http_listen="127.0.0.1:0")
    client = openai_client(router)
    assert [m.id for m in (await client.models.list()).data] == ["auto", "general"]
    await router.apply(router.cfg.with_overrides(experts=(parse_expert_flag(f"general={general.address}"),
                                                          parse_expert_flag(f"math={math.address}"))))
    assert [m.id for m in (await client.models.list()).data] == ["auto", "general", "math"]
    completion = await client.chat.completions.create(model="auto", messages=[{"role": "user",
                                                                             "content": MATH_PROMPT}], max_tokens=2)
    assert completion.model == "math" and math.engine.stats.started == 1


async def test_mutual_tls_requires_a_client_certificate(start_router, start_expert, tmp_path: Path) -> None:
    from tests.certs import make_pki

    pki = make_pki(tmp_path)
    expert = await start_expert("general")
    router = await start_router({"general": [expert.address]}, http_listen="127.0.0.1:0",
                                tls_cert=str(pki.server.cert), tls_key=str(pki.server.key),
                                tls_client_ca=str(pki.ca.cert))
    url = f"https://{router.http.address}/v1/models"
    without = ssl.create_default_context(cafile=str(pki.ca.cert))
    with_cert = ssl.create_default_context(cafile=str(pki.ca.cert))
    with_cert.load_cert_chain(str(pki.client.cert), str(pki.client.key))
    rogue = ssl.create_default_context(cafile=str(pki.ca.cert))
    rogue.load_cert_chain(str(pki.rogue_client.cert), str(pki.rogue_client.key))
    async with aiohttp.ClientSession() as session:
        for context in (without, rogue):
            with pytest.raises(aiohttp.ClientError):
                async with session.get(url, ssl=context) as response:
                    await response.read()
        async with session.get(url, ssl=with_cert) as response:
            assert response.status == 200 and (await response.json())["data"][1]["id"] == "general"
