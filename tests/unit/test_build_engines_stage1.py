"""Stage 1's order of operations against FAKES of transformers, ModelOpt and accelerate
(tests/fakes/stage1_libraries.py): a GGUF-loaded model gets its architectures before the HF
export, one checkpoint is exported per model, accelerate's hooks go before the TensorRT-LLM export,
and the perplexity before and after quantization is written. The real libraries run in
tests/integration/test_build_engines_modelopt.py."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from expert_svc.build_engines.manifest import parse_manifest
from expert_svc.build_engines.pipeline import run_stage1

# Importing torch takes half a minute on a busy 2-core machine: only when these tests run.
pytestmark = [pytest.mark.slow]


@pytest.fixture
def fakes(monkeypatch):
    pytest.importorskip("torch", reason="the fakes build a tiny torch model (make test installs it)")
    from tests.fakes import stage1_libraries

    return stage1_libraries.install(monkeypatch)


@pytest.fixture
def build(tmp_path):
    from expert_svc.build_engines.gguf_header import write_gguf_metadata

    gguf = tmp_path / "smol.gguf"
    write_gguf_metadata(str(gguf), {"llama.embedding_length": 576, "llama.feed_forward_length": 1536,
                                    "llama.attention.head_count": 9, "llama.attention.head_count_kv": 3})
    calibration = tmp_path / "calib.txt"
    calibration.write_text("one sample about code\n\nanother sample about law")
    (entry,) = parse_manifest({"experts": [{
        "name": "smol-fp8", "source": str(gguf), "quantization": "fp8", "kv_cache_quantization": "fp8",
        "max_batch_size": 2, "max_input_len": 64, "max_seq_len": 128, "calibration": str(calibration),
        "output_dir": str(tmp_path / "out")}]})
    return entry


def test_hf_export_alone_with_architectures_set_after_a_gguf_load(build, fakes):
    calls = fakes
    run_stage1(build, lambda message: None)
    steps = [name for name, _ in calls]
    assert steps == ["load", "quantize", "export_hf"]
    assert calls[0][1] == "smol.gguf"
    assert json.loads(Path(build.hf_dir, "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]
    assert Path(build.hf_dir, "tokenizer_config.json").is_file() and not Path(build.checkpoint_dir).exists()
    # The FP8 KV cache entry went into the ModelOpt config, last.
    assert calls[1][1]["quant_cfg"][-1]["quantizer_name"] == "*[kv]_bmm_quantizer"
    report = json.loads(Path(build.output_dir, "perplexity.json").read_text())
    assert report["unquantized"] > 1 and report["quantized"] != report["unquantized"]


def test_engine_path_exports_the_tensorrt_llm_checkpoint_alone_after_removing_hooks(build, fakes):
    calls = fakes
    run_stage1(dataclasses.replace(build, export="trtllm"), lambda message: None)
    steps = [name for name, _ in calls]
    assert steps == ["load", "quantize", "remove_hooks", "export_trtllm"]
    assert Path(build.checkpoint_dir, "rank0.safetensors").is_file()
    assert Path(build.checkpoint_dir, "tokenizer_config.json").is_file()  # stage 2 copies it to the engine
    assert not Path(build.hf_dir).exists()
