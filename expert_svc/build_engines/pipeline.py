"""The two build stages, the up-to-date check, the environment check and the summary.

Stage 1 (ModelOpt): load the source model, calibrate on the local file, quantize, report the
perplexity of the unquantized and of the fake-quantized model on a fixed local text (what the
quantization cost), and export one checkpoint:
- `hf/`, the unified Hugging Face checkpoint that TensorRT-LLM's PyTorch backend serves directly
  (the default, and all that `--stages 1` produces);
- `trtllm-checkpoint/`, the input of trtllm-build, only when stage 2 is wanted.
One export per quantized model, as ModelOpt's own examples/llm_ptq/hf_ptq.py does: the unified HF
export packs the quantized weights into the modules in place, and the TensorRT-LLM export (which
ModelOpt marks legacy) needs accelerate's offloading hooks removed first, since layers offloaded
by `device_map="auto"` are meta tensors.
Stage 1 runs on a CPU too (slowly): the CI test quantizes SmolLM2-135M to FP8 and INT4-AWQ.
Stage 2 (TensorRT-LLM 1.2.x, a GPU): `trtllm-build` turns the TensorRT-LLM checkpoint into `engine/`.

Each stage leaves a stamp (a digest of the manifest entry, the checkpoint format, the source's
config and the calibration file); a stage whose stamp matches and whose outputs exist is skipped.
"""

from __future__ import annotations

import copy
import dataclasses
import glob
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..engines.trtllm import missing_gpu
from .manifest import ExpertBuild, calibration_text

PIPELINE_VERSION = 2
STAMP_FILE = "build-stamp.json"
PERPLEXITY_FILE = "perplexity.json"
# The fixed text every build's perplexity is measured on (shipped with the package).
PERPLEXITY_TEXT = os.path.join(os.path.dirname(__file__), "perplexity_text.txt")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "generation_config.json", "chat_template.jinja")


class BuildError(RuntimeError):
    """A stage failed or cannot run; the message says what is missing or what went wrong."""


# --- environment ------------------------------------------------------------------------------------

def missing_requirements(
    stages: Sequence[int],
    builds: Sequence[ExpertBuild],
    *,
    gpu_probe: Callable[[], str | None] = missing_gpu,
    has_module: Callable[[str], bool] = lambda name: importlib.util.find_spec(name) is not None,
    which: Callable[[str], str | None] = shutil.which,
) -> list[str]:
    """What this machine lacks for the stages that have work to do (empty when nothing)."""
    missing: list[str] = []
    if 1 in stages:
        # ModelOpt calibrates on a CPU too (SmolLM2-135M to FP8 in well under a minute); a GPU is
        # what makes an 8B or 70B model practical, so its absence is not an error here.
        for module, what in (("torch", "PyTorch (torch)"),
                             ("transformers", "Hugging Face transformers"),
                             ("accelerate", "accelerate (device_map='auto')"),
                             ("modelopt", ("NVIDIA ModelOpt (pip install 'expert-router[quantization]', "
                                           "package nvidia-modelopt)"))):
            if not has_module(module):
                missing.append(what)
        if any(b.gguf_file for b in builds) and not has_module("gguf"):
            missing.append("the gguf package (transformers needs it to load GGUF sources)")
    if 2 in stages:
        if which("trtllm-build") is None:
            missing.append(
                "TensorRT-LLM 1.2.x (trtllm-build is not on PATH): use NVIDIA's NGC TensorRT-LLM release "
                "container, or run with --stages 1 to produce only the checkpoints"
            )
        elif gpu_probe():
            missing.append(f"an NVIDIA GPU for trtllm-build ({gpu_probe()})")
    return missing


# --- up-to-date stamps -------------------------------------------------------------------------------

def _file_digest(path: str, h: Any) -> None:
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)


def build_digest(build: ExpertBuild) -> str:
    """Digest of everything that decides a build's outputs."""
    h = hashlib.sha256()
    h.update(json.dumps({"pipeline": PIPELINE_VERSION, **build.entry()}, sort_keys=True).encode())
    if build.source_config:
        _file_digest(build.source_config, h)
    else:
        st = os.stat(os.path.join(build.source_dir, build.gguf_file))
        h.update(f"gguf:{st.st_size}:{st.st_mtime_ns}".encode())
    if build.calibration:
        _file_digest(build.calibration, h)
    return h.hexdigest()


def read_stamp(build: ExpertBuild) -> dict[str, Any]:
    try:
        with open(os.path.join(build.output_dir, STAMP_FILE), encoding="utf-8") as f:
            stamp = json.load(f)
        return stamp if isinstance(stamp, dict) else {}
    except (OSError, ValueError):
        return {}


def write_stamp(build: ExpertBuild, stage: str, digest: str, seconds: float) -> None:
    stamp = read_stamp(build)
    stamp[stage] = {"digest": digest, "seconds": round(seconds, 1), "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
    if stage == "stage1":
        stamp.pop("stage2", None)  # a new checkpoint makes the old engine stale
    os.makedirs(build.output_dir, exist_ok=True)
    path = os.path.join(build.output_dir, STAMP_FILE)
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(stamp, f, indent=2)
    os.replace(path + ".tmp", path)


def checkpoint_format(stages: Sequence[int]) -> str:
    """The checkpoint stage 1 exports: the TensorRT-LLM one only when an engine is to be built."""
    return "trtllm" if 2 in stages else "hf"


def for_stages(builds: Sequence[ExpertBuild], stages: Sequence[int]) -> list[ExpertBuild]:
    fmt = checkpoint_format(stages)
    return [dataclasses.replace(b, export=fmt) for b in builds]


def stage1_outputs_exist(build: ExpertBuild) -> bool:
    if build.export == "hf":
        return (os.path.isfile(os.path.join(build.hf_dir, "config.json"))
                and bool(glob.glob(os.path.join(build.hf_dir, "*.safetensors"))))
    return (os.path.isfile(os.path.join(build.checkpoint_dir, "config.json"))
            and len(glob.glob(os.path.join(build.checkpoint_dir, "rank*.safetensors"))) == build.tp_size)


def stage2_outputs_exist(build: ExpertBuild) -> bool:
    return (os.path.isfile(os.path.join(build.engine_dir, "config.json"))
            and all(os.path.isfile(os.path.join(build.engine_dir, f"rank{r}.engine")) for r in range(build.tp_size)))


def is_up_to_date(build: ExpertBuild, stage: int, digest: str) -> bool:
    entry = read_stamp(build).get(f"stage{stage}") or {}
    exists = stage1_outputs_exist(build) if stage == 1 else stage2_outputs_exist(build)
    return entry.get("digest") == digest and exists


# --- progress ----------------------------------------------------------------------------------------

def progress(items: Sequence[Any], desc: str) -> Iterator[Any]:
    """tqdm when installed, else a line every tenth of the way."""
    try:
        from tqdm import tqdm
    except ImportError:
        total = len(items)
        step = max(1, total // 10)
        for i, item in enumerate(items, 1):
            yield item
            if i % step == 0 or i == total:
                print(f"{desc}: {i}/{total}", file=sys.stderr, flush=True)
        return
    yield from tqdm(items, desc=desc, unit="sample", file=sys.stderr)


# --- stage 1: ModelOpt --------------------------------------------------------------------------------

def read_calibration(path: str) -> list[str]:
    if path.endswith(".jsonl"):
        with open(path, encoding="utf-8") as f:
            return [t for t in (calibration_text(json.loads(line)) for line in f if line.strip()) if t]
    with open(path, encoding="utf-8") as f:
        return [block.strip() for block in f.read().split("\n\n") if block.strip()]


def with_group_size(config: Any, group_size: int) -> Any:
    """A copy of a ModelOpt INT4 config whose 4-bit block size is `group_size`.

    Walks the structure instead of indexing it: ModelOpt's config moved from a dict keyed by
    quantizer pattern to a list of entries, and W4A8's weight config is a list of two quantizers.
    """
    config = copy.deepcopy(config)
    found = 0

    def walk(node: Any) -> None:
        nonlocal found
        if isinstance(node, dict):
            if node.get("num_bits") == 4 and isinstance(node.get("block_sizes"), dict):
                node["block_sizes"][-1] = group_size
                found += 1
            for value in node.values():
                walk(value)
        elif isinstance(node, (list, tuple)):
            for value in node:
                walk(value)

    walk(config)
    if not found:
        raise BuildError("the ModelOpt config has no 4-bit block quantizer to set the group size on")
    return config


def with_kv_cache_quantization(config: Any, kv_config: Any) -> Any:
    """A copy of a ModelOpt config that also quantizes the KV cache (`mtq.FP8_KV_CFG`): its
    entries go last, so they win over the base config's "disable everything else" entry, as in
    ModelOpt's `update_quant_cfg_with_kv_cache_quant`. Handles both config shapes (a list of
    entries since ModelOpt 0.4x, a dict keyed by quantizer pattern before)."""
    config = copy.deepcopy(config)
    inner, extra = config["quant_cfg"], copy.deepcopy(kv_config["quant_cfg"])
    if isinstance(inner, dict):
        config["quant_cfg"] = {**inner, **extra}
    else:
        config["quant_cfg"] = list(inner) + list(extra)
    return config


def modelopt_config(mtq: Any, build: ExpertBuild) -> Any:
    if build.quantization == "fp8":
        config = mtq.FP8_DEFAULT_CFG
    elif build.quantization == "int4_awq":
        config = with_group_size(mtq.INT4_AWQ_CFG, build.group_size)
    elif build.quantization == "w4a8_awq":
        config = with_group_size(mtq.W4A8_AWQ_BETA_CFG, build.group_size)
    else:
        raise BuildError(f"no ModelOpt config for {build.quantization!r}")
    if build.kv_cache_quantization == "fp8":
        config = with_kv_cache_quantization(config, mtq.FP8_KV_CFG)
    return config


def perplexity(model: Any, tokenizer: Any, text: str, max_tokens: int = 512) -> float:
    """exp(mean next-token loss) of `model` on `text`: the same number before and after
    quantization shows what the quantization cost."""
    import torch

    ids = tokenizer(text, return_tensors="pt").input_ids[:, :max_tokens]
    device = next(model.parameters()).device
    with torch.no_grad():
        loss = model(ids.to(device), labels=ids.to(device)).loss
    return float(torch.exp(loss.float()))


def read_perplexity_text() -> str:
    with open(PERPLEXITY_TEXT, encoding="utf-8") as f:
        return f.read()


def write_perplexity(build: ExpertBuild, before: float, after: float | None) -> None:
    os.makedirs(build.output_dir, exist_ok=True)
    report = {"text": os.path.basename(PERPLEXITY_TEXT), "unquantized": round(before, 3),
              "quantized": None if after is None else round(after, 3), "quantization": build.quantization,
              "group_size": build.group_size, "kv_cache_quantization": build.kv_cache_quantization}
    with open(os.path.join(build.output_dir, PERPLEXITY_FILE), "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2)


def read_perplexity(build: ExpertBuild) -> dict[str, Any]:
    try:
        with open(os.path.join(build.output_dir, PERPLEXITY_FILE), encoding="utf-8") as f:
            data = json.load(f)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def run_stage1(build: ExpertBuild, log: Callable[[str], None]) -> None:
    """Quantize with ModelOpt and export the checkpoint `build.export` names (imports torch,
    transformers and modelopt; runs on a GPU, or slowly on a CPU)."""
    import modelopt.torch.quantization as mtq
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = torch.bfloat16 if build.dtype == "bfloat16" else torch.float16
    major, minor = (int(p) for p in transformers.__version__.split(".")[:2])
    dtype_kw = "dtype" if (major, minor) >= (4, 56) else "torch_dtype"
    extra = {"gguf_file": build.gguf_file} if build.gguf_file else {}
    log(f"{build.name}: loading {os.path.join(build.source_dir, build.gguf_file or '')}")
    tokenizer = AutoTokenizer.from_pretrained(build.source_dir, **extra)
    model = AutoModelForCausalLM.from_pretrained(build.source_dir, device_map="auto", **{dtype_kw: dtype}, **extra)
    if build.gguf_file:
        # Dequantized from GGUF on load; without this, saving fails with "quantized with GGUF and
        # is not serializable".
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
    if not getattr(model.config, "architectures", None):
        # A model loaded from GGUF has no architectures; ModelOpt's HF export reads them
        # (model_utils.is_multimodal_model iterates over them) and fails on None.
        model.config.architectures = [type(model).__name__]
    model.eval()

    text = read_perplexity_text()
    before = perplexity(model, tokenizer, text)
    after = None
    log(f"{build.name}: perplexity of the unquantized model ({build.dtype}): {before:.2f}")
    if build.quantization != "none":
        texts = read_calibration(build.calibration)[: build.calibration_samples]
        device = next(model.parameters()).device
        batches = [tokenizer(t, return_tensors="pt", truncation=True, max_length=build.calibration_max_len)
                   .input_ids for t in texts]

        def forward_loop(m: Any) -> None:
            with torch.no_grad():
                for ids in progress(batches, f"{build.name}: calibrating"):
                    m(ids.to(device))

        kv = " with an FP8 KV cache" if build.kv_cache_quantization == "fp8" else ""
        log(f"{build.name}: quantizing to {build.quantization}{kv} on {len(batches)} calibration samples")
        model = mtq.quantize(model, modelopt_config(mtq, build), forward_loop=forward_loop)
        after = perplexity(model, tokenizer, text)
        log(f"{build.name}: perplexity of the fake-quantized model ({build.quantization}): {after:.2f} "
            f"(unquantized {before:.2f})")
    write_perplexity(build, before, after)

    if build.export == "trtllm":
        export_trtllm_checkpoint(build, model, dtype, log)
        tokenizer.save_pretrained(build.checkpoint_dir)  # trtllm-build ignores it; stage 2 copies it
    else:
        shutil.rmtree(build.hf_dir, ignore_errors=True)
        log(f"{build.name}: exporting the unified HF checkpoint")
        if build.quantization == "none":
            model.save_pretrained(build.hf_dir)
        else:
            from modelopt.torch.export import export_hf_checkpoint

            export_hf_checkpoint(model, export_dir=build.hf_dir)
        tokenizer.save_pretrained(build.hf_dir)  # the exporters write weights and config only
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def export_trtllm_checkpoint(build: ExpertBuild, model: Any, dtype: Any, log: Callable[[str], None]) -> None:
    """ModelOpt's (legacy) TensorRT-LLM checkpoint export, after removing accelerate's hooks: with
    `device_map="auto"` offloaded layers are meta tensors that only the hooks know how to load."""
    try:  # moved in ModelOpt 0.48; the old path still works (with a warning) until 0.49
        from modelopt.torch.export.trtllm import export_tensorrt_llm_checkpoint
    except ImportError:
        from modelopt.torch.export import export_tensorrt_llm_checkpoint
    from accelerate.hooks import remove_hook_from_module

    remove_hook_from_module(model, recurse=True)
    shutil.rmtree(build.checkpoint_dir, ignore_errors=True)
    log(f"{build.name}: exporting the TensorRT-LLM checkpoint (tp {build.tp_size})")
    export_tensorrt_llm_checkpoint(model, decoder_type="llama", dtype=dtype, export_dir=build.checkpoint_dir,
                                   inference_tensor_parallel=build.tp_size)


# --- stage 2: trtllm-build ----------------------------------------------------------------------------

def trtllm_build_command(build: ExpertBuild) -> list[str]:
    command = [
        "trtllm-build",
        "--checkpoint_dir", build.checkpoint_dir,
        "--output_dir", build.engine_dir,
        "--max_batch_size", str(build.max_batch_size),
        "--max_input_len", str(build.max_input_len),
        "--max_seq_len", str(build.max_seq_len),
    ]
    if build.max_num_tokens:
        command += ["--max_num_tokens", str(build.max_num_tokens)]
    if build.quantization == "none":
        # TensorRT-LLM's tuning guide: the GEMM plugin helps BF16/FP16 engines; for quantized
        # ones (FP8 in particular) it recommends leaving it off, which is trtllm-build's default.
        command += ["--gemm_plugin", "auto"]
    return command


def run_stage2(build: ExpertBuild, log: Callable[[str], None],
               run: Callable[..., subprocess.CompletedProcess] = subprocess.run) -> None:
    """Build the TensorRT engine, then copy the tokenizer next to it so `--model engine/` suffices."""
    shutil.rmtree(build.engine_dir, ignore_errors=True)
    os.makedirs(build.output_dir, exist_ok=True)
    command = trtllm_build_command(build)
    log_path = os.path.join(build.output_dir, "trtllm-build.log")
    log(f"{build.name}: {' '.join(command)}  (log: {log_path})")
    with open(log_path, "w", encoding="utf-8") as out:
        completed = run(command, stdout=out, stderr=subprocess.STDOUT, check=False)
    if completed.returncode != 0:
        with open(log_path, encoding="utf-8", errors="replace") as f:
            tail = "".join(f.readlines()[-20:])
        raise BuildError(f"trtllm-build failed for {build.name} (exit {completed.returncode}); "
                         f"last lines of {log_path}:\n{tail}")
    for name in TOKENIZER_FILES:
        src = os.path.join(build.checkpoint_dir, name)
        if os.path.isfile(src):
            shutil.copy2(src, os.path.join(build.engine_dir, name))


# --- driver --------------------------------------------------------------------------------------------

@dataclass
class Outcome:
    """What happened to one expert."""

    build: ExpertBuild
    stages: dict[int, str] = field(default_factory=dict)  # stage -> built / up to date / skipped / failed
    seconds: float = 0.0
    error: str | None = None


def plan(builds: Sequence[ExpertBuild], stages: Sequence[int], force: bool) -> dict[str, list[int]]:
    """The stages each expert still needs (by name); empty lists are up to date."""
    todo: dict[str, list[int]] = {}
    for build in for_stages(builds, stages):
        digest = build_digest(build)
        needed = [s for s in stages if force or not is_up_to_date(build, s, digest)]
        if 2 in needed and 1 not in stages and not (stage1_outputs_exist(build)
                                                     and (read_stamp(build).get("stage1") or {}).get("digest") == digest):
            raise BuildError(f"{build.name}: stage 2 needs the stage-1 checkpoint in {build.checkpoint_dir}; "
                             "run stage 1 first (--stages all)")
        if 1 in needed and 2 in stages and 2 not in needed:
            needed.append(2)  # a new checkpoint makes the engine stale
        todo[build.name] = sorted(needed)
    return todo


def execute(
    builds: Sequence[ExpertBuild],
    stages: Sequence[int],
    *,
    force: bool = False,
    stage1: Callable[[ExpertBuild, Callable[[str], None]], None] = run_stage1,
    stage2: Callable[[ExpertBuild, Callable[[str], None]], None] = run_stage2,
    requirements: Callable[[Sequence[int], Sequence[ExpertBuild]], list[str]] = missing_requirements,
    log: Callable[[str], None] = lambda message: print(message, file=sys.stderr, flush=True),
) -> list[Outcome]:
    """Run what is out of date; raises BuildError before any work when the machine lacks something."""
    builds = for_stages(builds, stages)
    todo = plan(builds, stages, force)
    needed_stages = sorted({s for ss in todo.values() for s in ss})
    pending = [b for b in builds if todo[b.name]]
    if needed_stages:
        missing = requirements(needed_stages, pending)
        if missing:
            raise BuildError("cannot build here; missing: " + "; ".join(missing))
    outcomes: list[Outcome] = []
    for build in builds:
        outcome = Outcome(build)
        outcomes.append(outcome)
        digest = build_digest(build)
        started = time.monotonic()
        for stage in stages:
            if stage not in todo[build.name]:
                outcome.stages[stage] = "up to date"
                continue
            if outcome.error:
                outcome.stages[stage] = "skipped"
                continue
            stage_started = time.monotonic()
            try:
                (stage1 if stage == 1 else stage2)(build, log)
            except Exception as exc:  # noqa: BLE001 - one expert's failure must not hide the others' results
                outcome.stages[stage] = "failed"
                outcome.error = f"stage {stage}: {type(exc).__name__}: {exc}"
                log(f"{build.name}: {outcome.error}")
                continue
            write_stamp(build, f"stage{stage}", digest, time.monotonic() - stage_started)
            outcome.stages[stage] = "built"
        outcome.seconds = time.monotonic() - started
    return outcomes


def summary_table(outcomes: Iterable[Outcome], stages: Sequence[int]) -> str:
    headers = ["expert", "quantization", "tp", *[f"stage {s}" for s in stages], "perplexity", "time", "output"]
    rows = []
    for o in outcomes:
        b = o.build
        quant = b.quantization + (f" g{b.group_size}" if b.group_size else "")
        quant += " kv-fp8" if b.kv_cache_quantization == "fp8" else ""
        ppl = read_perplexity(b)
        before, after = ppl.get("unquantized"), ppl.get("quantized")
        shown = "-" if before is None else (f"{before:.2f}" if after is None else f"{before:.2f} -> {after:.2f}")
        rows.append([b.name, quant, str(b.tp_size), *[o.stages.get(s, "-") for s in stages], shown,
                     f"{o.seconds:.0f}s", b.engine_dir if 2 in stages else b.hf_dir])
    widths = [max(len(str(c)) for c in col) for col in zip(headers, *rows)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in rows]
    return "\n".join(lines)
