"""The Expert gRPC service over the trtllm engine and the FAKE tensorrt_llm: a real grpc.aio server
on port 0, the project's servicer, and a client stub."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import grpc
import pytest

from expert_router.v1 import expert_router_pb2 as pb
from expert_router.v1 import expert_router_pb2_grpc as pb_grpc
from expert_svc.convert import RequestLimits
from expert_svc.engines.trtllm import TrtllmEngine
from expert_svc.servicer import ExpertServicer
from tests.fakes.llama3_tokenizer import FakeLlama3Tokenizer
from tests.fakes.trtllm_env import write_engine_dir, write_hf_dir
from tests.helpers import eventually


@pytest.fixture
def engine_dir(tmp_path: Path) -> Path:
    return write_engine_dir(tmp_path / "llama3-8b-fp8-engine")


@pytest.fixture
def hf_dir(tmp_path: Path) -> Path:
    return write_hf_dir(tmp_path / "llama3-8b-int4-awq")


def _engine(model_dir: Path, **kwargs) -> TrtllmEngine:
    return TrtllmEngine(model_dir=str(model_dir), tokenizer=FakeLlama3Tokenizer(), gpu_probe=lambda: None, **kwargs)


@contextlib.asynccontextmanager
async def _serve(engine, *, max_concurrency: int = 4):
    await engine.start()
    server = grpc.aio.server()
    limits = RequestLimits(context_length=engine.info().context_length, default_max_tokens=16)
    pb_grpc.add_ExpertServicer_to_server(ExpertServicer("code", engine, limits, max_concurrency), server)
    port = server.add_insecure_port("127.0.0.1:0")
    assert port != 0
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield pb_grpc.ExpertStub(channel)
    finally:
        await server.stop(0)
        await engine.close()


def _request(prompt="Write a sort function", **sampling) -> pb.GenerateRequest:
    return pb.GenerateRequest(request_id="req-1", prompt=prompt, sampling=pb.SamplingParams(**sampling))


async def test_generate_streams_deltas_and_usage(fake_trtllm, engine_dir):
    async with _serve(_engine(engine_dir)) as stub:
        frames = [f async for f in stub.Generate(_request())]
    assert [f.text for f in frames] == ["Hello", " world", "!", ""]
    assert frames[-1].finish_reason == pb.FINISH_REASON_STOP
    assert all(f.finish_reason == pb.FINISH_REASON_UNSPECIFIED for f in frames[:-1])
    assert list(frames[0].token_ids) == [9906]
    call = fake_trtllm.instances[0].requests[0]
    assert frames[-1].usage.prompt_tokens == len(call["inputs"]) and frames[-1].usage.completion_tokens == 3
    params = call["sampling_params"]
    assert params.add_special_tokens is False and set(params.stop_token_ids) == {128001, 128008, 128009}


async def test_sampling_reaches_tensorrt_llm(fake_trtllm, engine_dir):
    async with _serve(_engine(engine_dir)) as stub:
        [f async for f in stub.Generate(_request(max_tokens=5, temperature=0.7, top_p=0.9, top_k=40, seed=11,
                                                 stop=["\n\n"]))]
    params = fake_trtllm.instances[0].requests[0]["sampling_params"]
    assert (params.max_tokens, params.top_k, params.seed, params.stop) == (5, 40, 11, ["\n\n"])
    assert params.temperature == pytest.approx(0.7) and params.top_p == pytest.approx(0.9)


async def test_client_cancel_aborts_the_generation(fake_trtllm, engine_dir):
    fake_trtllm.behaviour.tokens = [(i + 1, f" w{i}") for i in range(1000)]
    fake_trtllm.behaviour.step_delay_s = 0.01
    async with _serve(_engine(engine_dir)) as stub:
        call = stub.Generate(_request(max_tokens=20))
        await call.read()
        call.cancel()
        llm = fake_trtllm.instances[0]
        await eventually(lambda: llm.aborted_request_ids)
    assert llm.aborted_request_ids == [llm.results[0].request_id]


async def test_deadline_aborts_the_generation(fake_trtllm, engine_dir):
    fake_trtllm.behaviour.tokens = [(i + 1, f" w{i}") for i in range(1000)]
    fake_trtllm.behaviour.step_delay_s = 0.01
    async with _serve(_engine(engine_dir)) as stub:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            [f async for f in stub.Generate(_request(max_tokens=20), timeout=0.1)]
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        llm = fake_trtllm.instances[0]
        await eventually(lambda: llm.aborted_request_ids)
    assert llm.results[0].aborted()


async def test_stop_string_is_not_returned(fake_trtllm, engine_dir):
    fake_trtllm.behaviour.tokens = [(1, "Hello"), (2, " EN"), (3, "D"), (4, " more")]
    async with _serve(_engine(engine_dir)) as stub:
        frames = [f async for f in stub.Generate(_request(stop=["END"]))]
    assert "".join(f.text for f in frames) == "Hello "
    assert frames[-1].finish_reason == pb.FINISH_REASON_STOP


async def test_prompt_too_long_is_invalid_argument(fake_trtllm, engine_dir):
    async with _serve(_engine(engine_dir)) as stub:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            [f async for f in stub.Generate(_request("word " * 60))]
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "at most 40" in caught.value.details()


async def test_engine_failure_is_internal(fake_trtllm, engine_dir):
    fake_trtllm.behaviour.fail_at_step = 1
    async with _serve(_engine(engine_dir)) as stub:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            [f async for f in stub.Generate(_request())]
    assert caught.value.code() == grpc.StatusCode.INTERNAL
    assert "TensorRT-LLM failed while generating" in caught.value.details()


async def test_get_info_reports_quantization_and_tensor_parallelism(fake_trtllm, engine_dir):
    async with _serve(_engine(engine_dir, max_concurrency=32), max_concurrency=32) as stub:
        info = await stub.GetInfo(pb.GetInfoRequest())
    assert (info.name, info.engine, info.quantization) == ("code", "trtllm", "FP8")
    assert (info.tensor_parallel_size, info.context_length, info.max_concurrency) == (2, 64, 32)


async def test_health_answers_not_serving_while_the_model_loads_then_serving(fake_trtllm, hf_dir, monkeypatch):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from expert_svc import server
    from expert_svc.config import ExpertConfig

    fake_trtllm.behaviour.construct_delay_s = 1.0  # LLM(...) blocks its thread, as a real load does
    cfg = ExpertConfig(name="code", engine="trtllm", model=str(hf_dir), listen="127.0.0.1:0")
    monkeypatch.setattr(server, "create_engine", lambda _cfg: _engine(hf_dir))
    running = await server.bind(cfg)
    loading = asyncio.create_task(server.load(running))
    try:
        async with grpc.aio.insecure_channel(running.address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            during = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=0.5)
            assert not loading.done()
            assert during.status == health_pb2.HealthCheckResponse.NOT_SERVING
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                [f async for f in pb_grpc.ExpertStub(channel).Generate(_request(), timeout=0.5)]
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
            await asyncio.wait_for(loading, 10)
            after = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
            assert after.status == health_pb2.HealthCheckResponse.SERVING
            # No --max-concurrency: the limit is the batch TensorRT-LLM was configured for.
            assert running.servicer.max_concurrency == 2048
    finally:
        await running.stop(0)


async def test_engine_path_frames_are_coalesced_by_the_servicer(fake_trtllm, engine_dir):
    fake_trtllm.behaviour.tokens = [(i + 1, f" w{i}") for i in range(10)] + [(128009, "")]
    engine = _engine(engine_dir, stream_interval=4)
    await engine.start()
    server = grpc.aio.server()
    limits = RequestLimits(context_length=engine.info().context_length, default_max_tokens=16)
    servicer = ExpertServicer("code", engine, limits, 4, stream_interval=4)
    pb_grpc.add_ExpertServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            frames = [f async for f in pb_grpc.ExpertStub(channel).Generate(_request(max_tokens=20))]
    finally:
        await server.stop(0)
        await engine.close()
    assert [len(f.token_ids) for f in frames] == [1, 4, 4, 1]
    assert "".join(f.text for f in frames) == "".join(f" w{i}" for i in range(10))
    assert frames[-1].finish_reason == pb.FINISH_REASON_STOP and frames[-1].usage.completion_tokens == 10
