"""The trtllm engine driven directly against the FAKE tensorrt_llm in tests/fakes (no GPU needed)."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import threading
from pathlib import Path

import pytest

from expert_svc.engines import trtllm
from expert_svc.engines.trtllm import (
    ModelFormat,
    TrtllmEngine,
    TrtllmStartupError,
    inspect_model_dir,
    sampling_kwargs,
)
from expert_svc.errors import EngineFailedError, EngineUnavailableError, InvalidRequestError
from expert_svc.types import ChatMessage, EngineRequest, FinishReason, SamplingParams
from tests.fakes.llama3_tokenizer import FakeLlama3Tokenizer
from tests.fakes.trtllm_env import drop_tensorrt_llm_modules, write_engine_dir, write_hf_dir


@pytest.fixture
def engine_dir(tmp_path: Path) -> Path:
    return write_engine_dir(tmp_path / "llama3-8b-fp8-engine")


@pytest.fixture
def hf_dir(tmp_path: Path) -> Path:
    return write_hf_dir(tmp_path / "llama3-8b-int4-awq")


def _engine(model_dir: Path, **kwargs) -> TrtllmEngine:
    kwargs.setdefault("tokenizer", FakeLlama3Tokenizer())
    kwargs.setdefault("gpu_probe", lambda: None)
    return TrtllmEngine(model_dir=str(model_dir), **kwargs)


def _request(prompt: str = "Say hello", *, max_tokens: int = 16, request_id: str = "r1", **sampling) -> EngineRequest:
    return EngineRequest(request_id=request_id, sampling=SamplingParams(max_tokens=max_tokens, **sampling),
                         prompt=prompt)


async def _collect(engine: TrtllmEngine, request: EngineRequest):
    return [d async for d in engine.generate(request)]


# --- the model directory ---------------------------------------------------------------------------

def test_engine_dir_is_recognised_with_its_quantization_tp_and_limits(engine_dir):
    layout = inspect_model_dir(engine_dir)
    assert layout.format is ModelFormat.TRT_ENGINE
    assert (layout.quantization, layout.kv_cache_quantization) == ("FP8", "FP8")
    assert layout.tensor_parallel_size == 2
    assert (layout.context_length, layout.max_input_len, layout.max_batch_size) == (64, 40, 64)


def test_hf_checkpoint_reports_modelopt_quantization(hf_dir):
    layout = inspect_model_dir(hf_dir)
    assert layout.format is ModelFormat.HF_CHECKPOINT
    assert layout.quantization == "W4A16_AWQ"
    assert layout.context_length == 8192


def test_hf_checkpoint_without_quantization_reports_none(hf_dir):
    (hf_dir / "hf_quant_config.json").unlink()
    assert inspect_model_dir(hf_dir).quantization == "none"


def test_engine_missing_a_rank_is_named(engine_dir):
    (engine_dir / "rank1.engine").unlink()
    with pytest.raises(TrtllmStartupError, match="rank1.engine"):
        inspect_model_dir(engine_dir)


def test_tensorrt_llm_checkpoint_is_not_served(engine_dir):
    for f in engine_dir.glob("rank*.engine"):
        f.unlink()
    (engine_dir / "rank0.safetensors").write_bytes(b"\0")
    with pytest.raises(TrtllmStartupError, match="trtllm-build"):
        inspect_model_dir(engine_dir)


@pytest.mark.parametrize("files", [{}, {"config.json": "{}"}])
def test_directory_without_a_model_is_refused(tmp_path, files):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(TrtllmStartupError, match="config.json|safetensors"):
        inspect_model_dir(tmp_path)


# --- backend selection and start-up -----------------------------------------------------------------

async def test_engine_dir_loads_with_the_tensorrt_backend(fake_trtllm, engine_dir):
    engine = _engine(engine_dir, kv_cache_fraction=0.8, max_batch_size=32, max_num_tokens=4096)
    await engine.start()
    (llm,) = fake_trtllm.instances
    assert type(llm).__module__ == "tensorrt_llm.llmapi.llm" and type(llm).__name__ == "_TrtLLM"
    assert llm.model == str(engine_dir) and llm.tokenizer_arg == str(engine_dir)
    assert llm.kwargs["kv_cache_config"].free_gpu_memory_fraction == 0.8
    assert llm.kwargs["max_batch_size"] == 32 and llm.kwargs["max_num_tokens"] == 4096
    assert "tensor_parallel_size" not in llm.kwargs and llm.tensor_parallel_size == 1
    info = engine.info()
    assert (info.engine, info.quantization, info.tensor_parallel_size, info.context_length) == (
        "trtllm", "FP8", 2, 64)
    assert info.model == "llama3-8b-fp8-engine"
    await engine.close()
    assert llm.shutdown_called


async def test_hf_checkpoint_loads_with_the_pytorch_backend(fake_trtllm, hf_dir, tmp_path):
    engine = _engine(hf_dir, tensor_parallel_size=2, context_length=4096)
    await engine.start()
    (llm,) = fake_trtllm.instances
    assert type(llm).__name__ == "LLM"
    assert llm.tensor_parallel_size == 2 and llm.kwargs["max_seq_len"] == 4096
    info = engine.info()
    assert (info.quantization, info.tensor_parallel_size, info.context_length) == ("W4A16_AWQ", 2, 4096)
    await engine.close()


async def test_batch_size_above_the_engine_build_limit_is_refused(fake_trtllm, engine_dir):
    with pytest.raises(TrtllmStartupError, match="built with max_batch_size 64, below --max-batch-size 65"):
        await _engine(engine_dir, max_batch_size=65).start()
    assert fake_trtllm.instances == []


async def test_tp_flag_that_disagrees_with_the_engine_is_refused(fake_trtllm, engine_dir):
    with pytest.raises(TrtllmStartupError, match="tensor parallelism 2"):
        await _engine(engine_dir, tensor_parallel_size=4).start()


async def test_engine_dir_without_tokenizer_needs_the_tokenizer_flag(fake_trtllm, engine_dir, hf_dir):
    (engine_dir / "tokenizer_config.json").unlink()
    with pytest.raises(TrtllmStartupError, match="--tokenizer"):
        await TrtllmEngine(model_dir=str(engine_dir), gpu_probe=lambda: None).start()
    engine = _engine(engine_dir, tokenizer_dir=str(hf_dir))
    await engine.start()
    assert fake_trtllm.instances[0].tokenizer_arg == str(hf_dir)


async def test_load_failure_is_a_startup_error(fake_trtllm, hf_dir):
    fake_trtllm.behaviour.fail_on_construct = "CUDA out of memory"
    with pytest.raises(TrtllmStartupError, match="could not load .* CUDA out of memory"):
        await _engine(hf_dir).start()


def test_bad_settings_are_rejected_at_construction(hf_dir):
    with pytest.raises(ValueError, match="kv_cache_fraction"):
        _engine(hf_dir, kv_cache_fraction=1.5)
    with pytest.raises(ValueError, match="max_batch_size"):
        _engine(hf_dir, max_batch_size=0)


# --- missing TensorRT-LLM or GPU -------------------------------------------------------------------

@pytest.mark.skipif(importlib.util.find_spec("tensorrt_llm") is not None,
                    reason="a real tensorrt_llm is installed here")
async def test_missing_tensorrt_llm_and_gpu_say_what_and_how(hf_dir):
    drop_tensorrt_llm_modules()
    engine = _engine(hf_dir, gpu_probe=lambda: "no NVIDIA driver (libcuda.so.1 does not load)")
    with pytest.raises(TrtllmStartupError) as caught:
        await engine.start()
    message = str(caught.value)
    assert "TensorRT-LLM (the Python package tensorrt_llm is not installed)" in message
    assert "libcuda.so.1" in message
    assert "NGC TensorRT-LLM release container" in message
    assert "NVIDIA's own Python package index" in message
    assert "docs/deploy-gpu.md" in message


async def test_missing_gpu_alone_is_named(fake_trtllm, hf_dir):
    engine = _engine(hf_dir, gpu_probe=lambda: "no NVIDIA driver (libcuda.so.1 does not load)")
    with pytest.raises(TrtllmStartupError) as caught:
        await engine.start()
    message = str(caught.value)
    assert "an NVIDIA GPU: no NVIDIA driver" in message and "--gpus all" in message
    assert "not installed" not in message
    assert fake_trtllm.instances == []


def test_gpu_probe_on_this_machine_returns_a_reason_or_none():
    reason = trtllm.missing_gpu()
    assert reason is None or isinstance(reason, str) and reason


# --- streaming -----------------------------------------------------------------------------------------

async def test_stream_yields_text_deltas_then_stop_with_usage(fake_trtllm, engine_dir):
    tokenizer = FakeLlama3Tokenizer()
    engine = _engine(engine_dir, tokenizer=tokenizer)
    await engine.start()
    deltas = await _collect(engine, _request())
    assert [d.text for d in deltas] == ["Hello", " world", "!", ""]
    assert [d.token_ids for d in deltas[:3]] == [(9906,), (1917,), (0,)]
    last = deltas[-1]
    assert last.finish_reason is FinishReason.STOP and all(d.finish_reason is None for d in deltas[:-1])
    (call,) = fake_trtllm.instances[0].requests
    assert last.prompt_tokens == len(call["inputs"]) and last.completion_tokens == 3
    assert engine.stats.finished == 1 and engine.stats.aborted == 0 and engine.stats.active == 0


async def test_prompt_is_the_llama3_chat_template_with_one_begin_of_text(fake_trtllm, engine_dir):
    tokenizer = FakeLlama3Tokenizer()
    engine = _engine(engine_dir, tokenizer=tokenizer, system_prompt="You write code.")
    await engine.start()
    await _collect(engine, _request("Sort a list"))
    (encoded,) = tokenizer.encode_calls
    assert encoded["add_special_tokens"] is False
    assert encoded["text"] == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou write code.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nSort a list<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    (call,) = fake_trtllm.instances[0].requests
    assert call["streaming"] is True
    assert call["inputs"][0] == 128000 and call["inputs"].count(128000) == 1
    params = call["sampling_params"]
    assert params.add_special_tokens is False


async def test_tokenizer_chat_template_wins_over_the_builtin_format(fake_trtllm, engine_dir):
    tokenizer = FakeLlama3Tokenizer(chat_template="{{ messages }}")
    engine = _engine(engine_dir, tokenizer=tokenizer)
    await engine.start()
    await _collect(engine, EngineRequest(request_id="c", sampling=SamplingParams(max_tokens=4),
                                         messages=(ChatMessage("user", "hi"),)))
    assert tokenizer.encode_calls[0]["text"] == "<|begin_of_text|>[user]hi[assistant]"


async def test_stop_token_ids_come_from_tokenizer_and_generation_config(fake_trtllm, engine_dir):
    engine = _engine(engine_dir)
    await engine.start()
    await _collect(engine, _request())
    params = fake_trtllm.instances[0].requests[0]["sampling_params"]
    assert set(params.stop_token_ids) == {128001, 128008, 128009}


async def test_max_tokens_ends_with_length(fake_trtllm, engine_dir):
    engine = _engine(engine_dir)
    await engine.start()
    deltas = await _collect(engine, _request(max_tokens=2))
    assert "".join(d.text for d in deltas) == "Hello world"
    assert deltas[-1].finish_reason is FinishReason.LENGTH and deltas[-1].completion_tokens == 2
    assert fake_trtllm.instances[0].requests[0]["sampling_params"].max_tokens == 2


async def test_max_tokens_is_clamped_to_the_context_left(fake_trtllm, engine_dir):
    engine = _engine(engine_dir)  # max_seq_len 64
    await engine.start()
    await _collect(engine, _request("hi", max_tokens=1000))
    call = fake_trtllm.instances[0].requests[0]
    assert call["sampling_params"].max_tokens == 64 - len(call["inputs"])


async def test_prompt_longer_than_the_engine_accepts_is_invalid(fake_trtllm, engine_dir):
    engine = _engine(engine_dir)  # max_input_len 40
    await engine.start()
    with pytest.raises(InvalidRequestError, match="at most 40"):
        await _collect(engine, _request("word " * 60))
    assert fake_trtllm.instances[0].requests == []


async def test_stop_string_split_across_tokens_is_never_emitted_and_aborts(fake_trtllm, engine_dir):
    fake_trtllm.behaviour.tokens = [(1, "Hello"), (2, " EN"), (3, "D"), (4, " more"), (5, " text")]
    engine = _engine(engine_dir)
    await engine.start()
    deltas = await _collect(engine, _request(stop=("END",)))
    assert "".join(d.text for d in deltas) == "Hello "
    assert deltas[-1].finish_reason is FinishReason.STOP
    (result,) = fake_trtllm.instances[0].results
    assert result.aborted()  # the GPU is told to stop generating
    assert fake_trtllm.instances[0].requests[0]["sampling_params"].stop == ["END"]


async def test_stop_string_aborts_even_when_the_consumer_leaves_at_the_last_frame(fake_trtllm, engine_dir):
    fake_trtllm.behaviour.tokens = [(1, "Hello"), (2, " END"), (3, " more"), (4, " text")]
    engine = _engine(engine_dir)
    await engine.start()
    stream = engine.generate(_request(stop=("END",)))
    delta = await anext(stream)
    while delta.finish_reason is None:
        delta = await anext(stream)
    assert delta.finish_reason is FinishReason.STOP
    await stream.aclose()  # the servicer closes the stream right after the finish frame
    assert fake_trtllm.instances[0].results[0].aborted()


async def test_stop_string_matched_by_the_runtime_ends_with_stop(fake_trtllm, engine_dir):
    fake_trtllm.behaviour.tokens = [(1, "Hi"), (2, " ST"), (3, "OP"), (4, " no")]
    engine = _engine(engine_dir)
    await engine.start()
    deltas = await _collect(engine, _request(stop=("OP",)))
    assert "".join(d.text for d in deltas) == "Hi ST"
    assert deltas[-1].finish_reason is FinishReason.STOP
    assert not fake_trtllm.instances[0].results[0].aborted()


async def test_engine_failure_mid_stream_is_an_engine_error_and_aborts(fake_trtllm, engine_dir):
    fake_trtllm.behaviour.fail_at_step = 1
    engine = _engine(engine_dir)
    await engine.start()
    with pytest.raises(EngineFailedError, match="fake engine failure"):
        await _collect(engine, _request())
    assert fake_trtllm.instances[0].results[0].aborted()


async def test_generate_after_close_is_unavailable(fake_trtllm, engine_dir):
    engine = _engine(engine_dir)
    await engine.start()
    await engine.close()
    with pytest.raises(EngineUnavailableError):
        await _collect(engine, _request())


# --- cancellation ----------------------------------------------------------------------------------

def _slow(fake_trtllm) -> None:
    fake_trtllm.behaviour.tokens = [(i + 1, f" w{i}") for i in range(1000)]
    fake_trtllm.behaviour.step_delay_s = 0.01


async def test_cancelled_consumer_aborts_the_request(fake_trtllm, engine_dir):
    _slow(fake_trtllm)
    engine = _engine(engine_dir)
    await engine.start()
    first = asyncio.Event()

    async def consume():
        async for _ in engine.generate(_request(max_tokens=20, request_id="cancel-me")):
            first.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(first.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    llm = fake_trtllm.instances[0]
    assert llm.results[0].aborted() and llm.aborted_request_ids == [llm.results[0].request_id]
    assert engine.stats.aborted_request_ids == ["cancel-me"] and engine.stats.active == 0


async def test_deadline_aborts_the_request(fake_trtllm, engine_dir):
    _slow(fake_trtllm)
    engine = _engine(engine_dir)
    await engine.start()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await _collect(engine, _request(max_tokens=20))
    assert fake_trtllm.instances[0].results[0].aborted()


async def test_consumer_that_stops_reading_aborts_the_request(fake_trtllm, engine_dir):
    _slow(fake_trtllm)
    engine = _engine(engine_dir)
    await engine.start()
    stream = engine.generate(_request(max_tokens=20))
    await anext(stream)
    await stream.aclose()
    assert fake_trtllm.instances[0].results[0].aborted() and engine.stats.aborted == 1


async def test_finished_request_is_not_aborted(fake_trtllm, engine_dir):
    engine = _engine(engine_dir)
    await engine.start()
    await _collect(engine, _request())
    assert fake_trtllm.instances[0].aborted_request_ids == []


# --- sampling ----------------------------------------------------------------------------------------

def _kwargs(**sampling):
    return sampling_kwargs(SamplingParams(max_tokens=8, **sampling), max_tokens=8, stop_token_ids=(128009,))


def test_no_sampling_setting_is_greedy():
    kw = _kwargs()
    assert kw["top_k"] == 1 and "temperature" not in kw and "top_p" not in kw
    assert kw["max_tokens"] == 8 and kw["stop_token_ids"] == [128009] and kw["add_special_tokens"] is False


def test_temperature_zero_is_greedy_whatever_top_p():
    kw = _kwargs(temperature=0.0, top_p=0.5, top_k=40)
    assert kw["top_k"] == 1 and "top_p" not in kw and "temperature" not in kw


def test_sampling_always_sets_top_p():
    kw = _kwargs(temperature=0.7)
    assert (kw["temperature"], kw["top_p"]) == (0.7, 1.0) and "top_k" not in kw
    kw = _kwargs(top_p=0.9, top_k=40, seed=7, stop=("\n\n",))
    assert (kw["temperature"], kw["top_p"], kw["top_k"], kw["seed"], kw["stop"]) == (1.0, 0.9, 40, 7, ["\n\n"])


@pytest.mark.parametrize("sampling, field", [
    ({"temperature": -0.1}, "temperature"),
    ({"temperature": float("nan")}, "temperature"),
    ({"top_p": 0.0}, "top_p"),
    ({"top_p": 1.5}, "top_p"),
    ({"top_k": -1}, "top_k"),
    ({"seed": 1 << 64}, "seed"),
    ({"stop": ("",)}, "stop"),
])
def test_invalid_sampling_names_the_field(sampling, field):
    with pytest.raises(InvalidRequestError, match=field):
        _kwargs(**sampling)


def test_sampling_kwargs_are_accepted_by_the_sampling_params_signature(fake_trtllm):
    import tensorrt_llm

    params = tensorrt_llm.SamplingParams(**_kwargs(temperature=0.5, top_k=5, seed=3, stop=("x",)))
    assert (params.temperature, params.top_k, params.seed, params.stop) == (0.5, 5, 3, ["x"])
    assert tensorrt_llm.SamplingParams(**_kwargs())._greedy_decoding
    with pytest.raises(TypeError):
        tensorrt_llm.SamplingParams(8)  # keyword-only, like the real one
    assert tensorrt_llm.SamplingParams().max_tokens == 32


# --- behaviour read from upstream source -------------------------------------------------------------

async def test_text_held_back_before_an_upstream_stop_string_match_is_sent(fake_trtllm, engine_dir):
    # TensorRT-LLM cuts `text` before the stop string it found in the detokenized text; the "\n" the
    # engine held back (it might have begun "\nUser:") is answer text and must reach the client.
    fake_trtllm.behaviour.tokens = [(1, "Answer"), (2, "\n"), (3, "\nUser: and"), (4, " more")]
    engine = _engine(engine_dir)
    await engine.start()
    deltas = await _collect(engine, _request(stop=("\nUser:",)))
    assert "".join(d.text for d in deltas) == "Answer\n"
    assert all("User" not in d.text for d in deltas)
    assert deltas[-1].finish_reason is FinishReason.STOP
    # Upstream keeps the stop string's tokens in token_ids for a text match: they were generated.
    assert deltas[-1].completion_tokens == 3
    assert fake_trtllm.instances[0].results[0].aborted()  # upstream aborts the request itself


async def test_upstream_text_match_inside_one_piece_keeps_the_text_before_it(fake_trtllm, engine_dir):
    fake_trtllm.behaviour.tokens = [(1, "Hi"), (2, " there. END of"), (3, " story")]
    engine = _engine(engine_dir)
    await engine.start()
    deltas = await _collect(engine, _request(stop=("END",)))
    assert "".join(d.text for d in deltas) == "Hi there. "
    assert deltas[-1].finish_reason is FinishReason.STOP


def test_sampling_without_a_seed_gets_a_fresh_seed_per_request():
    seeds = {_kwargs(temperature=0.8)["seed"] for _ in range(20)}
    assert len(seeds) == 20 and all(isinstance(s, int) and 0 <= s < 2**64 for s in seeds)
    assert _kwargs(temperature=0.8, seed=5)["seed"] == 5
    kw = sampling_kwargs(SamplingParams(max_tokens=8, temperature=0.8), max_tokens=8,
                         stop_token_ids=(), seed_source=lambda: 1234)
    assert kw["seed"] == 1234


async def test_unseeded_requests_reach_tensorrt_llm_with_different_seeds(fake_trtllm, engine_dir):
    engine = _engine(engine_dir)
    await engine.start()
    for request_id in ("a", "b"):
        await _collect(engine, _request(temperature=0.7, request_id=request_id))
    seeds = [call["sampling_params"].seed for call in fake_trtllm.instances[0].requests]
    assert None not in seeds and seeds[0] != seeds[1]


def _write_trtllm_checkpoint(d: Path) -> Path:
    """What ModelOpt's export_tensorrt_llm_checkpoint writes: a flat config.json, rank0.safetensors."""
    d.mkdir()
    (d / "config.json").write_text(json.dumps({
        "architecture": "LlamaForCausalLM", "dtype": "bfloat16", "vocab_size": 49152,
        "mapping": {"world_size": 1, "tp_size": 1, "pp_size": 1},
        "quantization": {"quant_algo": "FP8", "kv_cache_quant_algo": None},
    }))
    (d / "rank0.safetensors").write_bytes(b"\0")
    (d / "tokenizer_config.json").write_text("{}")
    return d


def test_flat_tensorrt_llm_checkpoint_is_told_to_go_through_trtllm_build(tmp_path):
    directory = _write_trtllm_checkpoint(tmp_path / "trtllm-checkpoint")
    with pytest.raises(TrtllmStartupError) as caught:
        inspect_model_dir(directory)
    message = str(caught.value)
    assert str(directory) in message and "TensorRT-LLM checkpoint" in message
    assert "trtllm-build first" in message and "\n" not in message


@pytest.mark.skipif(importlib.util.find_spec("tensorrt_llm") is not None,
                    reason="a real tensorrt_llm is installed here")
async def test_wrong_directory_is_named_before_tensorrt_llm_is_looked_for(tmp_path):
    drop_tensorrt_llm_modules()
    engine = _engine(tmp_path, gpu_probe=lambda: "no NVIDIA driver (libcuda.so.1 does not load)")
    with pytest.raises(TrtllmStartupError) as caught:
        await engine.start()
    message = str(caught.value)
    assert str(tmp_path) in message and "no config.json" in message
    assert "not installed" not in message


async def test_the_model_loads_in_a_worker_thread_while_the_loop_runs(fake_trtllm, hf_dir):
    fake_trtllm.behaviour.construct_delay_s = 0.4
    engine = _engine(hf_dir)
    loading = asyncio.create_task(engine.start())
    ticks = 0
    while not loading.done():
        await asyncio.sleep(0.01)
        ticks += 1
    await loading
    assert ticks >= 10  # the event loop kept running during the 0.4 s load
    assert fake_trtllm.instances[0].constructed_in_thread is not threading.main_thread()
    assert engine.ready


async def test_hf_checkpoint_defaults_to_a_sane_context_not_max_position_embeddings(fake_trtllm, tmp_path):
    hf_dir = write_hf_dir(tmp_path / "llama31")
    config = json.loads((hf_dir / "config.json").read_text())
    (hf_dir / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 131072}))
    engine = _engine(hf_dir)
    await engine.start()
    llm = fake_trtllm.instances[0]
    assert llm.kwargs["max_seq_len"] == trtllm.DEFAULT_HF_CONTEXT_LENGTH == engine.info().context_length
    assert llm.kwargs["max_num_tokens"] == trtllm.DEFAULT_MAX_NUM_TOKENS


async def test_prompt_over_max_num_tokens_is_invalid_before_it_reaches_the_runtime(fake_trtllm, hf_dir):
    engine = _engine(hf_dir, max_num_tokens=64)
    await engine.start()
    with pytest.raises(InvalidRequestError, match="at most 64"):
        await _collect(engine, _request("word " * 100))
    assert fake_trtllm.instances[0].requests == []


async def test_request_refused_by_the_executor_is_invalid_argument(fake_trtllm, hf_dir):
    fake_trtllm.behaviour.refuse_with = "The prompt length exceeds the runtime's limit"
    engine = _engine(hf_dir)
    await engine.start()
    with pytest.raises(InvalidRequestError, match="refused the request: The prompt length exceeds"):
        await _collect(engine, _request())


async def test_max_num_tokens_above_the_engine_build_value_is_refused(fake_trtllm, engine_dir):
    with pytest.raises(TrtllmStartupError, match="built with max_num_tokens 8192, below --max-num-tokens 9000"):
        await _engine(engine_dir, max_num_tokens=9000).start()
    assert fake_trtllm.instances == []


async def test_max_concurrency_defaults_to_the_batch_the_engine_was_built_for(fake_trtllm, engine_dir, hf_dir):
    engine = _engine(engine_dir)
    await engine.start()
    assert engine.info().max_concurrency == 64  # build_config.max_batch_size
    hf_engine = _engine(hf_dir, max_batch_size=256)
    await hf_engine.start()
    assert hf_engine.info().max_concurrency == 256
    assert fake_trtllm.instances[1].kwargs["max_batch_size"] == 256
    assert _engine(hf_dir, max_concurrency=8).info().max_concurrency == 8


async def test_stream_interval_uses_tensorrt_llms_own_on_the_pytorch_backend(fake_trtllm, hf_dir):
    fake_trtllm.behaviour.tokens = [(i + 1, f" w{i}") for i in range(10)] + [(128009, "")]
    engine = _engine(hf_dir, stream_interval=4)
    await engine.start()
    assert engine.coalesces_frames
    deltas = await _collect(engine, _request(max_tokens=50))
    assert fake_trtllm.instances[0].kwargs["stream_interval"] == 4
    # A response at decoding step 1, then at every 4th step (4, 8), then at the end (step 11, whose
    # stop token is dropped).
    assert [len(d.token_ids) for d in deltas] == [1, 3, 4, 2]
    assert "".join(d.text for d in deltas) == "".join(f" w{i}" for i in range(10))


async def test_engine_path_leaves_stream_interval_to_the_servicer(fake_trtllm, engine_dir):
    engine = _engine(engine_dir, stream_interval=4)
    await engine.start()
    assert not engine.coalesces_frames
    assert "stream_interval" not in fake_trtllm.instances[0].kwargs  # _TrtLLM would refuse it
