"""Expert configuration: flags, defaults and validation messages."""

import pytest

from expert_svc.config import ExpertConfig, check_files, config_from_args, default_threads, split_host_port


def test_defaults_need_only_a_name():
    cfg = ExpertConfig(name="code")
    assert cfg.engine == "llamacpp" and cfg.listen == "127.0.0.1:0"
    assert cfg.max_concurrency >= 1 and cfg.max_prompt_bytes == 256 * 1024
    assert cfg.effective_threads == default_threads() >= 1


def test_flags_flow_into_config():
    cfg = config_from_args(
        [
            "--engine",
            "synthetic",
            "--listen",
            "0.0.0.0:5000",
            "--name",
            "math",
            "--system-prompt",
            "Be exact.",
            "--max-concurrency",
            "64",
            "--ttft-ms",
            "3",
            "--tokens-per-second",
            "200",
            "--context-length",
            "4096",
            "--threads",
            "2",
            "--grace-s",
            "1.5",
            "--max-tokens",
            "10",
            "--log-level",
            "debug",
        ]
    )
    assert cfg == ExpertConfig(
        name="math",
        engine="synthetic",
        listen="0.0.0.0:5000",
        system_prompt="Be exact.",
        max_concurrency=64,
        ttft_ms=3.0,
        tokens_per_second=200.0,
        context_length=4096,
        threads=2,
        grace_s=1.5,
        default_max_tokens=10,
        log_level="DEBUG",
    )


def test_config_is_frozen():
    cfg = ExpertConfig(name="code")
    with pytest.raises(AttributeError):
        cfg.name = "other"


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({"name": ""}, "expert name"),
        ({"name": "has space"}, "expert name"),
        ({"name": "x", "engine": "vllm"}, "engine must be one of"),
        ({"name": "x", "listen": "localhost"}, "HOST:PORT"),
        ({"name": "x", "listen": "127.0.0.1:70000"}, "0..65535"),
        ({"name": "x", "max_concurrency": 0}, "max_concurrency"),
        ({"name": "x", "tokens_per_second": 0}, "tokens_per_second must be >"),
        ({"name": "x", "ttft_ms": float("nan")}, "ttft_ms must be a finite"),
        ({"name": "x", "ttft_ms": -1}, "ttft_ms must be >="),
        ({"name": "x", "threads": 0}, "threads"),
        ({"name": "x", "default_max_tokens": 5000}, "default_max_tokens"),
        ({"name": "x", "grace_s": -1}, "grace_s"),
        ({"name": "x", "engine": "synthetic", "model": "/m.gguf"}, "llamacpp and trtllm engines"),
        ({"name": "x", "log_level": "LOUD"}, "log level"),
        ({"name": "x", "otlp_endpoint": "collector"}, "otlp_endpoint: expected HOST:PORT"),
    ],
)
def test_invalid_config_raises_clear_value_error(fields, needle):
    with pytest.raises(ValueError) as info:
        ExpertConfig(**fields)
    assert needle in str(info.value)


def test_missing_files_are_named_at_start_not_at_construction(tmp_path):
    # Building a config reads nothing; check_files (run by __main__ and server.bind) looks at the files.
    cfg = ExpertConfig(name="x", model="/does/not/exist.gguf")
    with pytest.raises(ValueError, match="model file not found: /does/not/exist.gguf"):
        check_files(cfg)
    with pytest.raises(ValueError, match="model file not found"):
        check_files(config_from_args(["--name", "x", "--listen", "127.0.0.1:0", "--model", "/does/not/exist.gguf"]))
    with pytest.raises(ValueError, match="trtllm engine needs --model DIR"):
        check_files(ExpertConfig(name="x", engine="trtllm", model=str(tmp_path / "absent")))
    check_files(ExpertConfig(name="x", engine="trtllm", model=str(tmp_path)))


def test_split_host_port_handles_ipv6():
    assert split_host_port("[::1]:50061") == ("[::1]", 50061)


def test_trtllm_needs_a_model_directory(tmp_path) -> None:
    with pytest.raises(ValueError, match="trtllm engine needs --model DIR"):
        ExpertConfig(name="code", engine="trtllm")
    cfg = ExpertConfig(name="code", engine="trtllm", model=str(tmp_path), kv_cache_fraction=0.5)
    assert cfg.context_length is None  # read from the model once it is loaded
    with pytest.raises(ValueError, match="kv_cache_fraction"):
        ExpertConfig(name="code", engine="trtllm", model=str(tmp_path), kv_cache_fraction=0.0)


def test_trtllm_without_tensorrt_llm_exits_non_zero_naming_what_is_missing(tmp_path) -> None:
    import subprocess
    import sys

    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"")
    (tmp_path / "tokenizer_config.json").write_text("{}")
    result = subprocess.run(
        [sys.executable, "-m", "expert_svc", "--engine", "trtllm", "--model", str(tmp_path),
         "--name", "code", "--listen", "127.0.0.1:0"],
        check=False, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 1
    assert "missing: TensorRT-LLM" in result.stderr
    assert "NGC" in result.stderr  # says how to get it


def test_max_concurrency_defaults_per_engine(tmp_path):
    assert ExpertConfig(name="x", engine="llamacpp").max_concurrency == 4
    assert ExpertConfig(name="x", engine="synthetic").max_concurrency == 4096
    # trtllm: left to the engine, which reads its max batch size from the model.
    assert ExpertConfig(name="x", engine="trtllm", model=str(tmp_path)).max_concurrency is None
    assert ExpertConfig(name="x", engine="trtllm", model=str(tmp_path), max_concurrency=16).max_concurrency == 16


def test_help_shows_the_per_engine_concurrency_default(capsys):
    with pytest.raises(SystemExit):
        config_from_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "default: llamacpp 4, its slots; trtllm the engine's max batch size; synthetic 4096" in text
    assert "--stream-interval N" in text
