"""Pure parts of the llamacpp engine: model discovery, model naming and the chat request body."""

from pathlib import Path

from expert_svc.engines.llamacpp import (
    chat_request_body,
    default_model_path,
    describe_model_file,
    error_from_chunk,
)
from expert_svc.errors import EngineFailedError, InvalidRequestError
from expert_svc.types import ChatMessage, EngineRequest, SamplingParams


def test_default_model_is_the_packaged_smollm2_gguf():
    path = default_model_path()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.stat().st_size > 50_000_000


def test_model_name_and_quantization_come_from_the_file_name():
    assert describe_model_file(Path("SmolLM2-135M-Instruct.Q4_1.gguf")) == ("SmolLM2-135M-Instruct", "Q4_1")
    assert describe_model_file(Path("llama-3-8b-instruct-q4_k_m.gguf")) == ("llama-3-8b-instruct", "Q4_K_M")
    assert describe_model_file(Path("model-f16.gguf")) == ("model", "F16")
    assert describe_model_file(Path("plain.gguf")) == ("plain", "unknown")


def test_plain_prompt_becomes_a_user_turn_after_the_system_prompt():
    req = EngineRequest(
        "r", SamplingParams(max_tokens=16, temperature=0.0, seed=2**33 + 5, stop=("x",)), prompt="hi"
    )
    body = chat_request_body(req, "You are a math expert.")
    assert body["messages"] == [
        {"role": "system", "content": "You are a math expert."},
        {"role": "user", "content": "hi"},
    ]
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert (body["max_tokens"], body["temperature"], body["seed"], body["stop"]) == (16, 0.0, 5, ["x"])
    assert "top_p" not in body


def test_request_system_turn_wins_over_the_expert_system_prompt():
    req = EngineRequest(
        "r", SamplingParams(max_tokens=4), messages=(ChatMessage("system", "mine"), ChatMessage("user", "q"))
    )
    body = chat_request_body(req, "expert default")
    assert [m["content"] for m in body["messages"]] == ["mine", "q"]
    assert "temperature" not in body and "stop" not in body


def test_engine_errors_map_to_the_error_table():
    assert isinstance(
        error_from_chunk({"code": 400, "message": "exceeds the available context size"}, "r"),
        InvalidRequestError,
    )
    assert isinstance(error_from_chunk({"code": 500, "message": "boom"}, "r"), EngineFailedError)
