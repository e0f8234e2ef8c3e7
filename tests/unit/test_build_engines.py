"""`make build-engines` without a GPU: manifest validation, shape checks, up-to-date skipping and
the environment check (the ModelOpt and trtllm-build stages are replaced by recording stubs)."""

from __future__ import annotations

import copy
import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from expert_svc.build_engines import __main__ as cli
from expert_svc.build_engines.gguf_header import read_gguf_metadata, write_gguf_metadata
from expert_svc.build_engines.manifest import ManifestError, parse_manifest
from expert_svc.build_engines.pipeline import (
    BuildError,
    Outcome,
    execute,
    missing_requirements,
    run_stage2,
    summary_table,
    trtllm_build_command,
    with_group_size,
    with_kv_cache_quantization,
    write_perplexity,
)

LLAMA3_8B = {"hidden_size": 4096, "intermediate_size": 14336, "num_attention_heads": 32,
             "num_key_value_heads": 8, "max_position_embeddings": 131072}
LLAMA3_70B = {"hidden_size": 8192, "intermediate_size": 28672, "num_attention_heads": 64,
              "num_key_value_heads": 8, "max_position_embeddings": 131072}
SMOLLM2_135M = {"hidden_size": 576, "intermediate_size": 1536, "num_attention_heads": 9,
                "num_key_value_heads": 3, "max_position_embeddings": 8192}
LLAMA2_7B = {"hidden_size": 4096, "intermediate_size": 11008, "num_attention_heads": 32,
             "num_key_value_heads": 32, "max_position_embeddings": 4096}


def _source(tmp_path: Path, name: str, config: dict) -> str:
    d = tmp_path / name
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], **config}))
    (d / "model.safetensors").write_bytes(b"\0")
    return str(d)


@pytest.fixture
def calib(tmp_path: Path) -> str:
    path = tmp_path / "calibration.jsonl"
    path.write_text("\n".join(json.dumps({"text": f"sample {i} about code and math"}) for i in range(8)) + "\n")
    return str(path)


@pytest.fixture
def llama8b(tmp_path: Path) -> str:
    return _source(tmp_path, "Meta-Llama-3.1-8B-Instruct", LLAMA3_8B)


def _expert(source: str, calib: str, out: str, **overrides) -> dict:
    entry = {"name": "code", "source": source, "quantization": "int4_awq", "group_size": 128, "tp_size": 1,
             "max_batch_size": 8, "max_input_len": 1024, "max_seq_len": 2048, "calibration": calib,
             "output_dir": out}
    entry.update(overrides)
    return {k: v for k, v in entry.items() if v is not None}


def _problems(data: dict) -> list[str]:
    with pytest.raises(ManifestError) as caught:
        parse_manifest(data, "m.yaml")
    return caught.value.problems


# --- validation ---------------------------------------------------------------------------------------

def test_valid_manifest_with_defaults(llama8b, calib, tmp_path):
    (build,) = parse_manifest({
        "defaults": {"source": llama8b, "calibration": calib, "max_batch_size": 16, "max_input_len": 100,
                     "max_seq_len": 200},
        "experts": [{"name": "code", "quantization": "int4_awq", "output_dir": str(tmp_path / "o")}],
    })
    assert (build.group_size, build.tp_size, build.max_batch_size, build.dtype) == (128, 1, 16, "bfloat16")
    assert build.shape.intermediate_size == 14336
    assert build.engine_dir == os.path.join(str(tmp_path / "o"), "engine")


def test_every_bad_key_is_named(llama8b, tmp_path):
    data = {
        "experts": [
            {"name": "bad name!", "source": llama8b, "quantization": "int3", "tp_size": 0,
             "max_batchsize": 8, "max_input_len": 4096, "max_seq_len": 2048, "output_dir": ""},
            {"name": "fp8", "source": llama8b, "quantization": "fp8", "group_size": 64, "max_batch_size": 8,
             "max_input_len": 10, "max_seq_len": 20, "output_dir": str(tmp_path / "x"), "dtype": "fp32"},
            {"name": "gone", "source": str(tmp_path / "missing"), "quantization": "none", "max_batch_size": 1,
             "max_input_len": 1, "max_seq_len": 2, "output_dir": str(tmp_path / "y")},
        ],
        "output": "typo",
    }
    problems = "\n".join(_problems(data))
    for expected in [
        "output: unknown key",
        "experts[0].name: required: 1-64 letters",
        "experts[0].quantization: must be one of fp8, int4_awq, w4a8_awq, none, got 'int3'",
        "experts[0].tp_size: must be a positive integer, got 0",
        "experts[0].max_batchsize: unknown key; did you mean 'max_batch_size'?",
        "experts[0].max_batch_size: required",
        "experts[0].max_input_len: (4096) must be below max_seq_len (2048)",
        "experts[0].output_dir: required",
        "experts[1].group_size: applies to int4_awq and w4a8_awq only, not 'fp8'",
        "experts[1].calibration: required for fp8: a local .txt or .jsonl file",
        "experts[1].dtype: must be one of bfloat16, float16, got 'fp32'",
        "experts[2].source:",
    ]:
        assert expected in problems, expected


def test_empty_manifest_is_refused():
    assert _problems({"experts": []}) == ["experts: required: a non-empty list of experts"]


def test_duplicate_names_and_outputs(llama8b, calib, tmp_path):
    out = str(tmp_path / "same")
    problems = _problems({"experts": [_expert(llama8b, calib, out), _expert(llama8b, calib, out)]})
    assert any("name 'code' is used more than once" in p for p in problems)
    assert any("is shared by several experts" in p for p in problems)


def test_bad_calibration_line_is_named(llama8b, tmp_path):
    calib = tmp_path / "c.jsonl"
    calib.write_text('{"text": "ok"}\n{"label": 3}\n')
    problems = _problems({"experts": [_expert(llama8b, str(calib), str(tmp_path / "o"))]})
    assert problems == [f'experts[0].calibration: {calib}: line 2 has no "text" (or "prompt"/"content") string']


def test_calibration_must_be_local_text(llama8b, tmp_path):
    problems = _problems({"experts": [_expert(llama8b, str(tmp_path / "nope.jsonl"), str(tmp_path / "o"))]})
    assert problems == [f"experts[0].calibration: {tmp_path / 'nope.jsonl'} does not exist"]


# --- group size and tensor parallelism ------------------------------------------------------------------

def test_group_size_must_divide_every_input_width(tmp_path, calib):
    smol = _source(tmp_path, "smollm2", SMOLLM2_135M)
    problems = _problems({"experts": [_expert(smol, calib, str(tmp_path / "o"), group_size=128)]})
    assert problems == [
        "experts[0].group_size: 128 does not divide the input width of q/k/v/gate/up_proj (hidden_size): 576",
        "experts[0].group_size: 128 does not divide the input width of o_proj (num_attention_heads x head_dim): 576",
    ]
    (build,) = parse_manifest({"experts": [_expert(smol, calib, str(tmp_path / "o"), group_size=64)]})
    assert build.group_size == 64


def test_group_size_must_divide_each_gpus_shard(tmp_path, calib):
    llama2 = _source(tmp_path, "llama2", LLAMA2_7B)
    problems = _problems({"experts": [_expert(llama2, calib, str(tmp_path / "o"), tp_size=4)]})
    assert problems == [("experts[0].group_size: 128 does not divide the input width of down_proj "
                         "(intermediate_size): 11008 / tp_size 4 = 2752")]
    parse_manifest({"experts": [_expert(llama2, calib, str(tmp_path / "o"), tp_size=2)]})


def test_group_size_must_be_a_power_of_two(llama8b, calib, tmp_path):
    problems = _problems({"experts": [_expert(llama8b, calib, str(tmp_path / "o"), group_size=100)]})
    assert problems == ["experts[0].group_size: must be a power of two such as 64 or 128, got 100"]


@pytest.mark.parametrize("tp, ok", [(1, True), (2, True), (4, True), (8, True), (3, False), (16, False)])
def test_tp_size_must_divide_the_kv_heads(llama8b, calib, tmp_path, tp, ok):
    data = {"experts": [_expert(llama8b, calib, str(tmp_path / "o"), quantization="fp8", group_size=None,
                                tp_size=tp)]}
    if ok:
        assert parse_manifest(data)[0].tp_size == tp
    else:
        assert _problems(data) == [f"experts[0].tp_size: {tp} must divide num_key_value_heads (8) of {llama8b}"]


def test_max_seq_len_beyond_the_model_is_refused(tmp_path, calib):
    smol = _source(tmp_path, "smollm2", SMOLLM2_135M)
    problems = _problems({"experts": [_expert(smol, calib, str(tmp_path / "o"), group_size=64,
                                              max_seq_len=16384)]})
    assert problems == ["experts[0].max_seq_len: 16384 exceeds the model's max_position_embeddings (8192)"]


def test_gguf_source_shape_is_read_from_its_header(tmp_path, calib):
    gguf = tmp_path / "smollm2-135m-instruct-q4_1.gguf"
    write_gguf_metadata(str(gguf), {
        "general.architecture": "llama", "llama.embedding_length": 576, "llama.feed_forward_length": 1536,
        "llama.attention.head_count": 9, "llama.attention.head_count_kv": 3, "llama.context_length": 8192,
    })
    assert read_gguf_metadata(str(gguf), {"llama.embedding_length"}) == {"llama.embedding_length": 576}
    problems = _problems({"experts": [_expert(str(gguf), calib, str(tmp_path / "o"))]})
    assert "576" in problems[0] and problems[0].startswith("experts[0].group_size")
    (build,) = parse_manifest({"experts": [_expert(str(tmp_path), calib, str(tmp_path / "o"), group_size=64,
                                                   gguf_file=gguf.name, tp_size=3)]})
    assert (build.source_dir, build.gguf_file, build.shape.num_key_value_heads) == (str(tmp_path), gguf.name, 3)


def test_example_manifests_fit_llama3(tmp_path, calib):
    """The shipped manifests, pointed at Llama 3 configs, pass every check."""
    root = Path(__file__).resolve().parents[2] / "deploy" / "engines"
    for file, config, expected in [("llama3-8b.yaml", LLAMA3_8B, {("fp8", 1), ("int4_awq", 1)}),
                                   ("llama3-70b.yaml", LLAMA3_70B, {("fp8", 4), ("int4_awq", 2)})]:
        data = yaml.safe_load((root / file).read_text())
        data["defaults"]["source"] = _source(tmp_path, file, config)
        data["defaults"]["calibration"] = calib
        for entry in data["experts"]:
            entry["output_dir"] = str(tmp_path / entry["output_dir"])
        builds = parse_manifest(data, file)
        assert {(b.quantization, b.tp_size) for b in builds} == expected


# --- up-to-date skipping -------------------------------------------------------------------------------

class _Stages:
    """Stand-ins for the GPU stages: they write the files the real ones write."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, str]] = []
        self.exports: list[str] = []

    def stage1(self, build, log) -> None:
        self.calls.append((1, build.name))
        self.exports.append(build.export)
        if build.export == "hf":
            os.makedirs(build.hf_dir, exist_ok=True)
            Path(build.hf_dir, "config.json").write_text("{}")
            Path(build.hf_dir, "model.safetensors").write_bytes(b"\0")
            return
        os.makedirs(build.checkpoint_dir, exist_ok=True)
        Path(build.checkpoint_dir, "config.json").write_text("{}")
        for r in range(build.tp_size):
            Path(build.checkpoint_dir, f"rank{r}.safetensors").write_bytes(b"\0")

    def stage2(self, build, log) -> None:
        self.calls.append((2, build.name))
        os.makedirs(build.engine_dir, exist_ok=True)
        Path(build.engine_dir, "config.json").write_text("{}")
        for r in range(build.tp_size):
            Path(build.engine_dir, f"rank{r}.engine").write_bytes(b"\0")


def _run(builds, stages=(1, 2), **kwargs):
    fake = kwargs.pop("fake")
    return execute(builds, list(stages), stage1=fake.stage1, stage2=fake.stage2,
                   requirements=kwargs.pop("requirements", lambda s, b: []), log=lambda m: None, **kwargs)


def test_up_to_date_outputs_are_skipped(llama8b, calib, tmp_path):
    data = {"experts": [_expert(llama8b, calib, str(tmp_path / "a"), name="a"),
                        _expert(llama8b, calib, str(tmp_path / "b"), name="b", quantization="fp8",
                                group_size=None, tp_size=2)]}
    fake = _Stages()
    outcomes = _run(parse_manifest(data), fake=fake)
    assert fake.calls == [(1, "a"), (2, "a"), (1, "b"), (2, "b")]
    assert all(o.stages == {1: "built", 2: "built"} for o in outcomes)

    fake.calls.clear()
    outcomes = _run(parse_manifest(data), fake=fake, requirements=lambda s, b: ["should not be asked"])
    assert fake.calls == [] and all(o.stages == {1: "up to date", 2: "up to date"} for o in outcomes)

    Path(calib).write_text(json.dumps({"text": "new calibration text"}) + "\n")  # a source changed
    _run(parse_manifest(data), fake=fake)
    assert fake.calls == [(1, "a"), (2, "a"), (1, "b"), (2, "b")]

    fake.calls.clear()
    changed = copy.deepcopy(data)
    changed["experts"][0]["max_batch_size"] = 16  # only a's entry changed
    _run(parse_manifest(changed), fake=fake)
    assert fake.calls == [(1, "a"), (2, "a")]

    fake.calls.clear()
    _run(parse_manifest(changed), fake=fake, force=True)
    assert len(fake.calls) == 4


def test_missing_engine_files_are_rebuilt(llama8b, calib, tmp_path):
    data = {"experts": [_expert(llama8b, calib, str(tmp_path / "a"))]}
    fake = _Stages()
    (build,) = parse_manifest(data)
    _run([build], fake=fake)
    os.remove(os.path.join(build.engine_dir, "rank0.engine"))
    fake.calls.clear()
    _run([build], fake=fake)
    assert fake.calls == [(2, "code")]


def test_stage_one_exports_one_checkpoint_chosen_by_the_stages(llama8b, calib, tmp_path):
    (build,) = parse_manifest({"experts": [_expert(llama8b, calib, str(tmp_path / "a"))]})
    fake = _Stages()
    # --stages 1: the Hugging Face checkpoint alone (the PyTorch backend serves it).
    assert _run([build], stages=[1], fake=fake)[0].stages == {1: "built"}
    assert fake.exports == ["hf"] and Path(build.hf_dir).is_dir() and not Path(build.checkpoint_dir).exists()
    # An engine needs the TensorRT-LLM checkpoint: stage 2 alone says so, the full build re-runs stage 1.
    with pytest.raises(BuildError, match="run stage 1 first"):
        _run([build], stages=[2], fake=fake)
    assert _run([build], stages=[1, 2], fake=fake)[0].stages == {1: "built", 2: "built"}
    assert fake.exports == ["hf", "trtllm"]
    assert _run([build], stages=[2], fake=fake)[0].stages == {2: "up to date"}
    assert fake.calls == [(1, "code"), (1, "code"), (2, "code")]


def test_stage_two_without_a_checkpoint_fails_clearly(llama8b, calib, tmp_path):
    (build,) = parse_manifest({"experts": [_expert(llama8b, calib, str(tmp_path / "a"))]})
    with pytest.raises(BuildError, match="run stage 1 first"):
        _run([build], stages=[2], fake=_Stages())


def test_a_failing_expert_does_not_hide_the_others(llama8b, calib, tmp_path):
    data = {"experts": [_expert(llama8b, calib, str(tmp_path / "a"), name="a"),
                        _expert(llama8b, calib, str(tmp_path / "b"), name="b")]}
    fake = _Stages()
    real_stage1 = fake.stage1

    def stage1(build, log):
        if build.name == "a":
            raise RuntimeError("CUDA out of memory")
        real_stage1(build, log)

    fake.stage1 = stage1
    outcomes = _run(parse_manifest(data), fake=fake)
    assert outcomes[0].stages == {1: "failed", 2: "skipped"} and "CUDA out of memory" in outcomes[0].error
    assert outcomes[1].stages == {1: "built", 2: "built"}
    table = summary_table(outcomes, [1, 2])
    assert "failed" in table and "int4_awq g128" in table and "b" in table


# --- the machine --------------------------------------------------------------------------------------

def test_missing_gpu_modelopt_and_tensorrt_llm_are_all_named(llama8b, calib, tmp_path):
    (build,) = parse_manifest({"experts": [_expert(llama8b, calib, str(tmp_path / "a"))]})
    missing = missing_requirements([1, 2], [build], gpu_probe=lambda: "no NVIDIA driver (libcuda.so.1 does not load)",
                                   has_module=lambda name: name == "torch", which=lambda name: None)
    text = "; ".join(missing)
    assert "NVIDIA ModelOpt" in text and "nvidia-modelopt" in text and "accelerate" in text
    assert "Hugging Face transformers" in text
    assert "TensorRT-LLM 1.2.x (trtllm-build is not on PATH)" in text and "--stages 1" in text
    assert "PyTorch" not in text
    # Stage 1 runs on a CPU (slowly); only trtllm-build needs the GPU.
    assert "ModelOpt calibration" not in text
    stage2_only = missing_requirements([2], [build], gpu_probe=lambda: "no NVIDIA driver",
                                       has_module=lambda name: True, which=lambda name: "/usr/bin/" + name)
    assert stage2_only == ["an NVIDIA GPU for trtllm-build (no NVIDIA driver)"]
    assert missing_requirements([1], [build], gpu_probe=lambda: "no NVIDIA driver",
                                has_module=lambda name: True, which=lambda name: None) == []


def test_build_stops_before_any_work_when_the_machine_lacks_something(llama8b, calib, tmp_path):
    (build,) = parse_manifest({"experts": [_expert(llama8b, calib, str(tmp_path / "a"))]})
    fake = _Stages()
    with pytest.raises(BuildError, match="missing: an NVIDIA GPU"):
        _run([build], fake=fake, requirements=lambda s, b: ["an NVIDIA GPU for ModelOpt calibration (none)"])
    assert fake.calls == [] and not (tmp_path / "a").exists()


def test_gguf_sources_need_the_gguf_package(tmp_path, calib):
    gguf = tmp_path / "m.gguf"
    write_gguf_metadata(str(gguf), {"llama.embedding_length": 512, "llama.feed_forward_length": 1024,
                                    "llama.attention.head_count": 8})
    (build,) = parse_manifest({"experts": [_expert(str(gguf), calib, str(tmp_path / "o"), group_size=64)]})
    missing = missing_requirements([1], [build], gpu_probe=lambda: None, has_module=lambda n: n != "gguf",
                                   which=lambda n: "/usr/bin/" + n)
    assert missing == ["the gguf package (transformers needs it to load GGUF sources)"]


def test_cli_check_and_invalid_manifest(llama8b, calib, tmp_path, capsys):
    manifest = tmp_path / "m.yaml"
    manifest.write_text(yaml.safe_dump({"experts": [_expert(llama8b, calib, str(tmp_path / "o"))]}))
    assert cli.main(["--manifest", str(manifest), "--check"]) == 0
    assert "code: int4_awq, tp 1" in capsys.readouterr().out
    manifest.write_text(yaml.safe_dump({"experts": [_expert(llama8b, calib, str(tmp_path / "o"), tp_size=3)]}))
    assert cli.main(["--manifest", str(manifest)]) == 2
    assert "experts[0].tp_size: 3 must divide num_key_value_heads (8)" in capsys.readouterr().err
    assert cli.main(["--manifest", str(tmp_path / "none.yaml")]) == 2


# --- stage details ------------------------------------------------------------------------------------

def test_group_size_override_in_both_modelopt_config_shapes():
    old = {"quant_cfg": {"*weight_quantizer": [{"num_bits": 4, "block_sizes": {-1: 128, "type": "static"}},
                                               {"num_bits": (4, 3), "axis": None}],
                         "*input_quantizer": {"num_bits": (4, 3), "axis": None}}, "algorithm": "awq_lite"}
    new = {"quant_cfg": [{"quantizer_name": "*", "enable": False},
                         {"quantizer_name": "*weight_quantizer",
                          "cfg": {"num_bits": 4, "block_sizes": {-1: 128, "type": "static"}}}],
           "algorithm": {"method": "awq_lite", "alpha_step": 0.1}}
    assert with_group_size(old, 64)["quant_cfg"]["*weight_quantizer"][0]["block_sizes"] == {-1: 64, "type": "static"}
    assert with_group_size(new, 64)["quant_cfg"][1]["cfg"]["block_sizes"][-1] == 64
    assert old["quant_cfg"]["*weight_quantizer"][0]["block_sizes"][-1] == 128  # the original is untouched
    with pytest.raises(BuildError, match="no 4-bit"):
        with_group_size({"quant_cfg": {"*weight_quantizer": {"num_bits": (4, 3)}}}, 64)


def test_trtllm_build_command_and_tokenizer_copy(llama8b, calib, tmp_path):
    (build,) = parse_manifest({"experts": [_expert(llama8b, calib, str(tmp_path / "o"), max_num_tokens=4096)]})
    assert trtllm_build_command(build) == [
        "trtllm-build", "--checkpoint_dir", build.checkpoint_dir, "--output_dir", build.engine_dir,
        "--max_batch_size", "8", "--max_input_len", "1024", "--max_seq_len", "2048", "--max_num_tokens", "4096"]
    # The tokenizer is saved beside the TensorRT-LLM checkpoint (the only export of an engine build).
    os.makedirs(build.checkpoint_dir)
    Path(build.checkpoint_dir, "tokenizer.json").write_text("{}")

    def fake_run(command, stdout, stderr, check):
        os.makedirs(build.engine_dir)
        stdout.write("built\n")
        return subprocess.CompletedProcess(command, 0)

    run_stage2(build, lambda m: None, run=fake_run)
    assert Path(build.engine_dir, "tokenizer.json").is_file()

    def failing_run(command, stdout, stderr, check):
        stdout.write("[TensorRT-LLM][ERROR] out of memory\n")
        return subprocess.CompletedProcess(command, 1)

    with pytest.raises(BuildError, match="(?s)exit 1.*out of memory"):
        run_stage2(build, lambda m: None, run=failing_run)


def test_gemm_plugin_only_for_unquantized_engines(llama8b, calib, tmp_path):
    # TensorRT-LLM's FP8 tuning guide: leave the GEMM plugin off for quantized engines (its
    # default); it helps BF16/FP16 ones.
    (fp8, bf16) = parse_manifest({"experts": [
        _expert(llama8b, calib, str(tmp_path / "f"), name="f", quantization="fp8", group_size=None),
        _expert(llama8b, calib, str(tmp_path / "b"), name="b", quantization="none", group_size=None)]})
    assert "--gemm_plugin" not in trtllm_build_command(fp8)
    assert trtllm_build_command(bf16)[-2:] == ["--gemm_plugin", "auto"]


def test_fp8_kv_cache_is_a_manifest_option(llama8b, calib, tmp_path):
    (build,) = parse_manifest({"experts": [_expert(llama8b, calib, str(tmp_path / "o"), quantization="fp8",
                                                   group_size=None, kv_cache_quantization="fp8")]})
    assert build.kv_cache_quantization == "fp8"
    (default,) = parse_manifest({"experts": [_expert(llama8b, calib, str(tmp_path / "p"))]})
    assert default.kv_cache_quantization == "none"
    with pytest.raises(ManifestError, match="kv_cache_quantization: must be one of none, fp8, got 'int8'"):
        parse_manifest({"experts": [_expert(llama8b, calib, str(tmp_path / "q"), kv_cache_quantization="int8")]})
    with pytest.raises(ManifestError, match="kv_cache_quantization: fp8 needs a quantized build"):
        parse_manifest({"experts": [_expert(llama8b, calib, str(tmp_path / "r"), quantization="none",
                                            group_size=None, kv_cache_quantization="fp8")]})


def test_kv_cache_config_is_appended_in_both_modelopt_config_shapes():
    kv = {"quant_cfg": [{"quantizer_name": "*[kv]_bmm_quantizer", "cfg": {"num_bits": (4, 3), "axis": None}}]}
    new = {"quant_cfg": [{"quantizer_name": "*", "enable": False}], "algorithm": "max"}
    merged = with_kv_cache_quantization(new, kv)
    assert merged["quant_cfg"][-1]["quantizer_name"] == "*[kv]_bmm_quantizer" and len(new["quant_cfg"]) == 1
    old = {"quant_cfg": {"default": {"enable": False}}, "algorithm": "max"}
    kv_old = {"quant_cfg": {"*[kv]_bmm_quantizer": {"num_bits": (4, 3), "axis": None}}}
    assert "*[kv]_bmm_quantizer" in with_kv_cache_quantization(old, kv_old)["quant_cfg"]


def test_summary_shows_the_perplexity_before_and_after(llama8b, calib, tmp_path):
    (build,) = parse_manifest({"experts": [_expert(llama8b, calib, str(tmp_path / "o"))]})
    write_perplexity(build, 12.4213, 14.9811)
    table = summary_table([Outcome(build, {1: "built"}, 3.0)], [1])
    assert "12.42 -> 14.98" in table and "perplexity" in table.splitlines()[0]
