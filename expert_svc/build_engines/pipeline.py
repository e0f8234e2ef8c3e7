"""The two build stages, the up-to-date check, the environment check and the summary.

Stage 1 (ModelOpt, needs a GPU): load the source model, calibrate on the local file, quantize,
export a TensorRT-LLM checkpoint (`trtllm-checkpoint/`, for stage 2) and a unified HF checkpoint
(`hf/`, which TensorRT-LLM's PyTorch backend serves directly).
Stage 2 (TensorRT-LLM 1.2.x): `trtllm-build` turns the TensorRT-LLM checkpoint into `engine/`.

Each stage leaves a stamp (a digest of the manifest entry, the source's config and the
calibration file); a stage whose stamp matches and whose outputs exist is skipped.
"""

from __future__ import annotations

import copy
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

PIPELINE_VERSION = 1
STAMP_FILE = "build-stamp.json"
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
        gpu = gpu_probe()
        if gpu:
            missing.append(f"an NVIDIA GPU for ModelOpt calibration ({gpu})")
        for module, what in (("torch", "PyTorch with CUDA (torch)"),
                             ("transformers", "Hugging Face transformers"),
                             ("modelopt", "NVIDIA ModelOpt (pip install 'expert-router[gpu]', package nvidia-modelopt)")):
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
        elif 1 not in stages and gpu_probe():
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


def stage1_outputs_exist(build: ExpertBuild) -> bool:
    return (os.path.isfile(os.path.join(build.hf_dir, "config.json"))
            and os.path.isfile(os.path.join(build.checkpoint_dir, "config.json"))
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


def modelopt_config(mtq: Any, build: ExpertBuild) -> Any:
    if build.quantization == "fp8":
        return mtq.FP8_DEFAULT_CFG
    if build.quantization == "int4_awq":
        return with_group_size(mtq.INT4_AWQ_CFG, build.group_size)
    if build.quantization == "w4a8_awq":
        return with_group_size(mtq.W4A8_AWQ_BETA_CFG, build.group_size)
    raise BuildError(f"no ModelOpt config for {build.quantization!r}")


def run_stage1(build: ExpertBuild, log: Callable[[str], None]) -> None:
    """Quantize with ModelOpt and export both checkpoints (GPU; imports torch and modelopt)."""
    import modelopt.torch.quantization as mtq
    import torch
    import transformers
    from modelopt.torch.export import export_hf_checkpoint
    from transformers import AutoModelForCausalLM, AutoTokenizer
    try:  # moved in ModelOpt 0.48; the old path still works (with a warning) until 0.49
        from modelopt.torch.export.trtllm import export_tensorrt_llm_checkpoint
    except ImportError:
        from modelopt.torch.export import export_tensorrt_llm_checkpoint

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
    model.eval()

    if build.quantization != "none":
        texts = read_calibration(build.calibration)[: build.calibration_samples]
        device = next(model.parameters()).device
        batches = [tokenizer(t, return_tensors="pt", truncation=True, max_length=build.calibration_max_len)
                   .input_ids for t in texts]

        def forward_loop(m: Any) -> None:
            with torch.no_grad():
                for ids in progress(batches, f"{build.name}: calibrating"):
                    m(ids.to(device))

        log(f"{build.name}: quantizing to {build.quantization} on {len(batches)} calibration samples")
        model = mtq.quantize(model, modelopt_config(mtq, build), forward_loop=forward_loop)

    for directory in (build.checkpoint_dir, build.hf_dir):
        shutil.rmtree(directory, ignore_errors=True)
    log(f"{build.name}: exporting the TensorRT-LLM checkpoint (tp {build.tp_size})")
    # The TensorRT-LLM export goes first: the unified HF export packs the quantized weights into
    # the modules in place.
    export_tensorrt_llm_checkpoint(model, decoder_type="llama", dtype=dtype, export_dir=build.checkpoint_dir,
                                   inference_tensor_parallel=build.tp_size)
    log(f"{build.name}: exporting the unified HF checkpoint")
    if build.quantization == "none":
        model.save_pretrained(build.hf_dir)
    else:
        export_hf_checkpoint(model, export_dir=build.hf_dir)
    tokenizer.save_pretrained(build.hf_dir)  # the exporters write weights and config only
    del model
    torch.cuda.empty_cache()


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
        src = os.path.join(build.hf_dir, name)
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
    for build in builds:
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
    headers = ["expert", "quantization", "tp", *[f"stage {s}" for s in stages], "time", "output"]
    rows = []
    for o in outcomes:
        b = o.build
        quant = b.quantization + (f" g{b.group_size}" if b.group_size else "")
        rows.append([b.name, quant, str(b.tp_size), *[o.stages.get(s, "-") for s in stages],
                     f"{o.seconds:.0f}s", b.engine_dir if 2 in stages else b.hf_dir])
    widths = [max(len(str(c)) for c in col) for col in zip(headers, *rows)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in rows]
    return "\n".join(lines)
