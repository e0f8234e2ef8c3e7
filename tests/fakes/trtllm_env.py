"""Helpers for tests of the trtllm engine: install the FAKE tensorrt_llm, write model directories."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

FAKES = Path(__file__).resolve().parent


def drop_tensorrt_llm_modules() -> None:
    for name in [m for m in sys.modules if m == "tensorrt_llm" or m.startswith("tensorrt_llm.")]:
        del sys.modules[name]


def use_fake_tensorrt_llm(monkeypatch: Any) -> Iterator[Any]:
    """Generator for a fixture: the FAKE tensorrt_llm is importable while it runs; yields its
    control module (`behaviour`, `instances`)."""
    drop_tensorrt_llm_modules()
    monkeypatch.syspath_prepend(str(FAKES))
    import tensorrt_llm
    from tensorrt_llm import _fake_control

    assert tensorrt_llm.__fake__ is True
    _fake_control.reset()
    yield _fake_control
    _fake_control.reset()
    drop_tensorrt_llm_modules()


def _write(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data), encoding="utf-8")


def write_tokenizer_files(directory: Path) -> None:
    _write(directory / "tokenizer_config.json", {"eos_token": "<|eot_id|>"})
    _write(directory / "generation_config.json", {"eos_token_id": [128001, 128008, 128009]})


def write_engine_dir(d: Path) -> Path:
    """What trtllm-build writes for an FP8 Llama 3 at tensor parallelism 2 (tiny limits)."""
    d.mkdir()
    _write(d / "config.json", {
        "version": "1.2.0",
        "pretrained_config": {
            "architecture": "LlamaForCausalLM",
            "dtype": "bfloat16",
            "quantization": {"quant_algo": "FP8", "kv_cache_quant_algo": "FP8"},
            "mapping": {"world_size": 2, "tp_size": 2, "pp_size": 1},
        },
        "build_config": {"max_batch_size": 64, "max_input_len": 40, "max_seq_len": 64, "max_num_tokens": 8192},
    })
    (d / "rank0.engine").write_bytes(b"\0")
    (d / "rank1.engine").write_bytes(b"\0")
    write_tokenizer_files(d)
    return d


def write_hf_dir(d: Path) -> Path:
    """A ModelOpt unified HF checkpoint quantized to INT4-AWQ."""
    d.mkdir()
    _write(d / "config.json", {"architectures": ["LlamaForCausalLM"], "max_position_embeddings": 8192,
                               "num_key_value_heads": 8})
    _write(d / "hf_quant_config.json", {"producer": {"name": "modelopt"},
                                        "quantization": {"quant_algo": "W4A16_AWQ", "group_size": 128}})
    (d / "model.safetensors").write_bytes(b"\0")
    write_tokenizer_files(d)
    return d
