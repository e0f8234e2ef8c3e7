"""The production GPU engine: TensorRT-LLM's LLM API serving Llama 3 (FP8, INT4-AWQ, W4A8-AWQ, BF16).

What the model directory holds picks the backend:
- a TensorRT engine built by `trtllm-build` (config.json with "pretrained_config" and
  "build_config", plus rank<N>.engine): `tensorrt_llm._tensorrt_engine.LLM` (TensorRT-LLM 1.2.x;
  tensor parallelism and the size limits come from the engine);
- a Hugging Face checkpoint (config.json plus *.safetensors, ModelOpt-quantized ones with
  hf_quant_config.json): `tensorrt_llm.LLM`, the PyTorch backend.
A TensorRT-LLM *checkpoint* (ModelOpt's `export_tensorrt_llm_checkpoint`: a flat config.json with
`architecture` and `dtype`, beside rank<N>.safetensors) is neither: it must go through
`trtllm-build` first, and is refused with that advice.

tensorrt_llm is imported only in `start()`, after the model directory has been checked: it cannot
be installed from the public package index and does not import without a CUDA driver, so a wrong
directory is named on any machine, and every unit test runs against the fake in tests/fakes.
Prompts are rendered with the HF tokenizer's chat template and tokenized here, so the prompt
length is known, and checked, before anything reaches the GPU.

Behaviour read from TensorRT-LLM's source and relied on here:
- Stop strings are matched by TensorRT-LLM itself in the detokenized text
  (`executor/result.py`, `DetokenizedGenerationResultBase._handle_response`): `text` is cut before
  the match, `finish_reason` is "stop", `stop_reason` the string, and the request is aborted.
  `token_ids` are not trimmed for such a match, so `completion_tokens` counts the tokens of the
  stop string: they were generated. The engine still holds back text that may begin a stop
  string, so no frame ever carries a piece of one, and sends what it held back but what is not
  part of the match with the last frame.
- `seed=None` means the C++ runtime's default seed 0, so every unseeded request would sample the
  same way; a random seed is drawn per request instead. TensorRT-LLM 1.2's PyTorch backend ignores
  per-request seeds (docs/deploy-gpu.md).
- The per-request result queue binds to the event loop when `generate_async` is called, so the
  LLM is built in a worker thread while the server answers health checks with NOT_SERVING.
"""

from __future__ import annotations

import asyncio
import ctypes
import enum
import glob
import importlib
import importlib.util
import json
import logging
import math
import os
import secrets
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from typing import Any

from ..errors import EngineFailedError, EngineStartupError, EngineUnavailableError, InvalidRequestError
from ..types import Delta, EngineInfo, EngineRequest, FinishReason, SamplingParams
from . import llama3
from .base import Engine, StopMatcher

log = logging.getLogger(__name__)

HOW_TO_GET_TENSORRT_LLM = (
    "Run the expert inside NVIDIA's NGC TensorRT-LLM release container (TensorRT-LLM 1.2.x, CUDA and "
    "the GPU libraries preinstalled), or install the tensorrt-llm wheel from NVIDIA's own Python "
    "package index as TensorRT-LLM's installation guide describes (the package of that name on the "
    "public index is only a placeholder). See docs/deploy-gpu.md."
)
HOW_TO_GET_GPU = (
    "The trtllm engine needs an NVIDIA GPU and its driver (libcuda.so.1); in a container, start it "
    "with the GPUs exposed (docker run --gpus all ...). On a machine without a GPU use "
    "--engine llamacpp."
)

_FINISH_REASONS = {
    "stop": FinishReason.STOP,
    "length": FinishReason.LENGTH,
    "cancelled": FinishReason.CANCELLED,
    "timeout": FinishReason.ERROR,
}
# Prompts longer than this are rendered and tokenized off the event loop.
_INLINE_PROMPT_CHARS = 8192
_MAX_SEED = (1 << 64) - 1
# A Hugging Face checkpoint states the longest context it was trained for (131,072 tokens for
# Llama 3.1); serving that by default reserves KV cache for prompts nobody sends and lets prompts
# past max_num_tokens reach the runtime. Without --context-length, a Hugging Face checkpoint is
# served with at most this many tokens of prompt plus completion (Llama 3.0's native length).
DEFAULT_HF_CONTEXT_LENGTH = 8192
# trtllm-build's defaults, which the PyTorch backend's build configuration shares; set explicitly
# on the Hugging Face path so that the admission limit and the prompt check agree with the runtime.
DEFAULT_MAX_BATCH_SIZE = 2048
DEFAULT_MAX_NUM_TOKENS = 8192


class TrtllmStartupError(EngineStartupError):
    """The trtllm engine cannot start; the message says what is missing and how to get it."""


class ModelFormat(enum.Enum):
    """What a model directory holds, which decides the TensorRT-LLM backend."""

    TRT_ENGINE = "tensorrt-engine"
    HF_CHECKPOINT = "hf-checkpoint"


@dataclass(frozen=True, slots=True)
class ModelLayout:
    """What `inspect_model_dir` read from a model directory."""

    format: ModelFormat
    model_dir: str
    quantization: str
    kv_cache_quantization: str | None
    tensor_parallel_size: int
    context_length: int | None
    max_input_len: int | None
    max_batch_size: int | None
    has_tokenizer: bool
    max_num_tokens: int | None = None


def _read_json(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except OSError as exc:
        raise TrtllmStartupError(
            f"cannot read {path} ({exc.strerror or exc}): check the file's permissions and that the "
            "model volume is mounted"
        ) from exc
    except ValueError as exc:
        raise TrtllmStartupError(
            f"{path} is not valid JSON ({exc}): the model directory is damaged or incompletely copied"
        ) from exc
    if not isinstance(data, dict):
        raise TrtllmStartupError(f"{path} must hold a JSON object: the model directory is damaged")
    return data


def _positive_int(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        return None
    return value


def _has_tokenizer(directory: str) -> bool:
    return any(
        os.path.isfile(os.path.join(directory, name))
        for name in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")
    )


def _hf_quantization(model_dir: str, config: dict[str, Any]) -> tuple[str, str | None]:
    """quant_algo of a ModelOpt export (hf_quant_config.json), else of config.json."""
    quant_file = os.path.join(model_dir, "hf_quant_config.json")
    if os.path.isfile(quant_file):
        quant = _read_json(quant_file).get("quantization") or {}
        return quant.get("quant_algo") or "none", quant.get("kv_cache_quant_algo")
    quant = config.get("quantization_config") or {}
    if isinstance(quant, dict):
        algo = quant.get("quant_algo") or quant.get("quant_method")
        if algo:
            return str(algo).upper(), quant.get("kv_cache_quant_algo")
    return "none", None


def _is_trtllm_checkpoint(config: dict[str, Any]) -> bool:
    """A TensorRT-LLM checkpoint's flat config.json, as upstream's `get_model_format`
    (llmapi/llm_utils.py) recognises it: `architecture` and `dtype` at the top level."""
    return "pretrained_config" not in config and "architecture" in config and "dtype" in config


def _listing(model_dir: str) -> str:
    try:
        names = sorted(os.listdir(model_dir))
    except OSError as exc:
        return f"an unreadable directory ({exc.strerror or exc})"
    if not names:
        return "nothing"
    shown = ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")
    return shown


def inspect_model_dir(model_dir: str | os.PathLike[str]) -> ModelLayout:
    """Tell a TensorRT engine from an HF checkpoint and read what GetInfo reports; raises
    TrtllmStartupError with one line naming the directory, what was found and what to do."""
    model_dir = os.fspath(model_dir)
    config_path = os.path.join(model_dir, "config.json")
    if not os.path.isdir(model_dir):
        raise TrtllmStartupError(
            f"--model {model_dir} is not a directory: pass a trtllm-build engine directory or a "
            "Hugging Face checkpoint directory (make build-engines writes both)"
        )
    if not os.path.lexists(config_path):
        raise TrtllmStartupError(
            f"--model {model_dir} holds {_listing(model_dir)} but no config.json: it is neither a "
            "trtllm-build engine nor a Hugging Face checkpoint; build one with make build-engines "
            "(docs/deploy-gpu.md)"
        )
    config = _read_json(config_path)

    if _is_trtllm_checkpoint(config):
        raise TrtllmStartupError(
            f"--model {model_dir} is a TensorRT-LLM checkpoint (flat config.json with architecture "
            f"{config.get('architecture')!r}, dtype {config.get('dtype')!r}; "
            f"{len(glob.glob(os.path.join(model_dir, 'rank*.safetensors')))} rank*.safetensors), which "
            "TensorRT-LLM cannot serve as it is: build it with trtllm-build first (stage 2 of make "
            "build-engines), or serve the Hugging Face checkpoint that stage 1 exports"
        )

    if "pretrained_config" in config:
        pretrained = config.get("pretrained_config") or {}
        build = config.get("build_config") or {}
        mapping = pretrained.get("mapping") or {}
        tp = _positive_int(mapping.get("tp_size")) or 1
        pp = _positive_int(mapping.get("pp_size")) or 1
        world_size = _positive_int(mapping.get("world_size")) or tp * pp
        engines = sorted(os.path.basename(p) for p in glob.glob(os.path.join(model_dir, "rank*.engine")))
        if not engines:
            raise TrtllmStartupError(
                f"--model {model_dir} has an engine config.json but no rank<N>.engine files (found "
                f"{_listing(model_dir)}): rerun trtllm-build (stage 2 of make build-engines)"
            )
        missing = [f"rank{r}.engine" for r in range(world_size) if f"rank{r}.engine" not in engines]
        if missing:
            raise TrtllmStartupError(
                f"--model {model_dir} is an engine built for {world_size} GPUs (tp {tp}, pp {pp}) but "
                f"lacks {', '.join(missing)}: copy the whole trtllm-build output directory"
            )
        quant = pretrained.get("quantization") or {}
        return ModelLayout(
            format=ModelFormat.TRT_ENGINE,
            model_dir=model_dir,
            quantization=quant.get("quant_algo") or "none",
            kv_cache_quantization=quant.get("kv_cache_quant_algo"),
            tensor_parallel_size=tp,
            context_length=_positive_int(build.get("max_seq_len")),
            max_input_len=_positive_int(build.get("max_input_len")),
            max_batch_size=_positive_int(build.get("max_batch_size")),
            has_tokenizer=_has_tokenizer(model_dir),
            max_num_tokens=_positive_int(build.get("max_num_tokens")),
        )

    weights = glob.glob(os.path.join(model_dir, "*.safetensors")) + glob.glob(
        os.path.join(model_dir, "*.bin")
    )
    if not weights:
        raise TrtllmStartupError(
            f"--model {model_dir} has a config.json but neither rank<N>.engine files (a trtllm-build "
            f"engine) nor *.safetensors weights (a Hugging Face checkpoint); found {_listing(model_dir)}"
        )
    quantization, kv_quantization = _hf_quantization(model_dir, config)
    return ModelLayout(
        format=ModelFormat.HF_CHECKPOINT,
        model_dir=model_dir,
        quantization=quantization,
        kv_cache_quantization=kv_quantization,
        tensor_parallel_size=1,
        context_length=_positive_int(config.get("max_position_embeddings")),
        max_input_len=None,
        max_batch_size=None,
        has_tokenizer=_has_tokenizer(model_dir),
    )


def missing_gpu() -> str | None:
    """Why no NVIDIA GPU can be used here, or None when the driver loads and a device exists."""
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return "no NVIDIA driver (libcuda.so.1 does not load)"
    if os.path.isdir("/proc/driver/nvidia/gpus") and not os.listdir("/proc/driver/nvidia/gpus"):
        return "the NVIDIA driver is loaded but reports no GPU"
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return "CUDA_VISIBLE_DEVICES hides every GPU"
    return None


def import_tensorrt_llm(gpu_probe: Callable[[], str | None] = missing_gpu) -> Any:
    """Import tensorrt_llm, or raise TrtllmStartupError listing everything that is missing."""
    missing: list[str] = []
    if importlib.util.find_spec("tensorrt_llm") is None:
        missing.append("TensorRT-LLM (the Python package tensorrt_llm is not installed)")
    gpu_problem = gpu_probe()
    if gpu_problem:
        missing.append(f"an NVIDIA GPU: {gpu_problem}")
    if missing:
        hints = [HOW_TO_GET_TENSORRT_LLM] if importlib.util.find_spec("tensorrt_llm") is None else []
        if gpu_problem:
            hints.append(HOW_TO_GET_GPU)
        raise TrtllmStartupError(
            "the trtllm engine cannot start; missing: " + "; ".join(missing) + ". " + " ".join(hints)
        )
    try:
        return importlib.import_module("tensorrt_llm")
    except Exception as exc:  # a broken install fails in many ways (missing .so, CUDA mismatch)
        raise TrtllmStartupError(
            f"tensorrt_llm is installed but does not import ({type(exc).__name__}: {exc}). "
            + HOW_TO_GET_TENSORRT_LLM
        ) from exc


def load_hf_tokenizer(tokenizer_dir: str) -> Any:
    """The model's HF tokenizer (transformers is imported here: only GPU deployments need it)."""
    try:
        from transformers import AutoTokenizer
    except ImportError as exc:
        raise TrtllmStartupError(
            "the trtllm engine needs the transformers package for the chat template; it ships with "
            "TensorRT-LLM (NGC container or NVIDIA's package index)"
        ) from exc
    try:
        return AutoTokenizer.from_pretrained(tokenizer_dir)
    except Exception as exc:
        raise TrtllmStartupError(f"cannot load the tokenizer from {tokenizer_dir}: {exc}") from exc


def random_seed() -> int:
    """A fresh sampling seed for a request that brings none."""
    return secrets.randbits(63)


def sampling_kwargs(
    sampling: SamplingParams,
    *,
    max_tokens: int,
    stop_token_ids: tuple[int, ...],
    seed_source: Callable[[], int] = random_seed,
) -> dict[str, Any]:
    """Keyword arguments of `tensorrt_llm.SamplingParams` for one request.

    Greedy decoding is temperature 0, or no sampling setting at all: TensorRT-LLM decodes greedily
    when top_k is 1. When sampling, top_p is always set: left unset, TensorRT-LLM's runtime uses
    top_k 0 and top_p 0, which means greedy again. A sampled request without a seed gets one from
    `seed_source`: TensorRT-LLM's `seed=None` is the runtime's fixed default 0, which would make
    every unseeded request draw the same samples.
    """
    t, p, k = sampling.temperature, sampling.top_p, sampling.top_k
    if t is not None and (not math.isfinite(t) or t < 0):
        raise InvalidRequestError(f"sampling.temperature must be a finite number >= 0, got {t}")
    if p is not None and (not math.isfinite(p) or not 0 < p <= 1):
        raise InvalidRequestError(f"sampling.top_p must be in (0, 1], got {p}")
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise InvalidRequestError(f"sampling.top_k must be an integer >= 0, got {k!r}")
    if sampling.seed is not None and not 0 <= sampling.seed <= _MAX_SEED:
        raise InvalidRequestError(f"sampling.seed must be in 0..2**64-1, got {sampling.seed}")
    if max_tokens < 1:
        raise InvalidRequestError(f"max_tokens must be >= 1, got {max_tokens}")
    if any(not s for s in sampling.stop):
        raise InvalidRequestError("sampling.stop strings must not be empty")

    kwargs: dict[str, Any] = {
        "max_tokens": max_tokens,
        "stop_token_ids": list(stop_token_ids),
        # The chat template already begins with <|begin_of_text|>.
        "add_special_tokens": False,
    }
    greedy = t == 0 or (t is None and p is None and k == 0)
    if greedy:
        kwargs["top_k"] = 1
    else:
        kwargs["temperature"] = 1.0 if t is None else t
        kwargs["top_p"] = 1.0 if p is None else p
        if k > 0:
            kwargs["top_k"] = k
        kwargs["seed"] = sampling.seed if sampling.seed is not None else seed_source()
    if sampling.stop:
        kwargs["stop"] = list(sampling.stop)
    return kwargs


class TrtllmEngine(Engine):
    """Llama 3 on TensorRT-LLM: continuous batching, streaming, abort on cancel."""

    name = "trtllm"

    def __init__(
        self,
        *,
        model_dir: str,
        tokenizer_dir: str | None = None,
        kv_cache_fraction: float = 0.9,
        max_batch_size: int | None = None,
        max_num_tokens: int | None = None,
        tensor_parallel_size: int = 1,
        context_length: int | None = None,
        max_concurrency: int | None = None,
        system_prompt: str | None = None,
        model_name: str | None = None,
        tokenizer: Any = None,
        stream_interval: int = 1,
        gpu_probe: Callable[[], str | None] = missing_gpu,
    ) -> None:
        super().__init__()
        if not (isinstance(kv_cache_fraction, (int, float)) and 0 < kv_cache_fraction <= 1):
            raise ValueError(f"kv_cache_fraction must be in (0, 1], got {kv_cache_fraction!r}")
        for field, value in (
            ("max_batch_size", max_batch_size),
            ("max_num_tokens", max_num_tokens),
            ("context_length", context_length),
            ("max_concurrency", max_concurrency),
        ):
            if value is not None and _positive_int(value) is None:
                raise ValueError(f"{field} must be a positive integer, got {value!r}")
        if _positive_int(tensor_parallel_size) is None:
            raise ValueError(f"tensor_parallel_size must be a positive integer, got {tensor_parallel_size!r}")
        if _positive_int(stream_interval) is None:
            raise ValueError(f"stream_interval must be a positive integer, got {stream_interval!r}")
        self._model_dir = os.fspath(model_dir)
        self._tokenizer_dir = tokenizer_dir
        self._kv_cache_fraction = float(kv_cache_fraction)
        self._max_batch_size = max_batch_size
        self._max_num_tokens = max_num_tokens
        self._tensor_parallel_size = tensor_parallel_size
        self._context_length = context_length
        self._max_concurrency = max_concurrency
        self._system_prompt = system_prompt
        self._model_name = model_name or os.path.basename(os.path.normpath(self._model_dir))
        self._tokenizer = tokenizer
        self._stream_interval = stream_interval
        self._gpu_probe = gpu_probe
        self._layout: ModelLayout | None = None
        self._llm: Any = None
        self._sampling_params_cls: Any = None
        self._stop_token_ids: tuple[int, ...] = ()
        self._prompt_limit: int | None = None
        self._request_error_cls: type[BaseException] | None = None

    @property
    def stop_token_ids(self) -> tuple[int, ...]:
        return self._stop_token_ids

    @property
    def coalesces_frames(self) -> bool:
        # TensorRT-LLM's own `stream_interval` is an argument of the PyTorch backend only; an
        # engine built by trtllm-build streams every token and the servicer coalesces instead.
        return self._layout is not None and self._layout.format is ModelFormat.HF_CHECKPOINT

    def preflight(self) -> ModelLayout:
        """Every check that needs only the files and the flags, before tensorrt_llm is imported:
        raises TrtllmStartupError naming the directory, what was found and what to do."""
        layout = inspect_model_dir(self._model_dir)
        tokenizer_dir = self._tokenizer_dir or self._model_dir
        if self._tokenizer is None and not _has_tokenizer(tokenizer_dir):
            found = "an engine" if layout.format is ModelFormat.TRT_ENGINE else "a Hugging Face checkpoint"
            raise TrtllmStartupError(
                f"--model {layout.model_dir} is {found} without tokenizer files (tokenizer.json / "
                f"tokenizer_config.json){' in ' + tokenizer_dir if self._tokenizer_dir else ''}: pass "
                "--tokenizer with the Hugging Face checkpoint the model was built from"
            )
        if layout.format is ModelFormat.TRT_ENGINE:
            for flag, value, built in (
                ("--max-batch-size", self._max_batch_size, layout.max_batch_size),
                ("--max-num-tokens", self._max_num_tokens, layout.max_num_tokens),
            ):
                if value and built and value > built:
                    raise TrtllmStartupError(
                        f"--model {layout.model_dir} is an engine built with {flag.lstrip('-').replace('-', '_')} "
                        f"{built}, below {flag} {value} (the build limit): lower the flag or rebuild the engine"
                    )
            if self._tensor_parallel_size not in (1, layout.tensor_parallel_size):
                raise TrtllmStartupError(
                    f"--model {layout.model_dir} is an engine built for tensor parallelism "
                    f"{layout.tensor_parallel_size}, but --tensor-parallel-size is {self._tensor_parallel_size}: "
                    f"drop the flag (engines carry their own) or rebuild with tp_size {self._tensor_parallel_size}"
                )
        self._resolve_context_length(layout)
        return layout

    async def start(self) -> None:
        # The directory is checked first, so a wrong one is named on any machine; then what this
        # machine lacks (TensorRT-LLM, a GPU).
        layout = self.preflight()
        tensorrt_llm = import_tensorrt_llm(self._gpu_probe)
        tokenizer_dir = self._tokenizer_dir or self._model_dir
        context_length = self._resolve_context_length(layout)

        if self._tokenizer is None:
            self._tokenizer = await asyncio.to_thread(load_hf_tokenizer, tokenizer_dir)
        self._stop_token_ids = llama3.stop_token_ids(self._tokenizer, tokenizer_dir, layout.model_dir)

        from tensorrt_llm.llmapi import KvCacheConfig

        kwargs: dict[str, Any] = {
            "model": layout.model_dir,
            "tokenizer": tokenizer_dir,
            "kv_cache_config": KvCacheConfig(free_gpu_memory_fraction=self._kv_cache_fraction),
        }
        if layout.format is ModelFormat.TRT_ENGINE:
            # Tensor parallelism and the sequence limits are baked into the engine.
            from tensorrt_llm._tensorrt_engine import LLM as llm_cls

            max_batch_size = self._max_batch_size or layout.max_batch_size or DEFAULT_MAX_BATCH_SIZE
            max_num_tokens = self._max_num_tokens or layout.max_num_tokens or DEFAULT_MAX_NUM_TOKENS
            if self._max_batch_size is not None:
                kwargs["max_batch_size"] = self._max_batch_size
            if self._max_num_tokens is not None:
                kwargs["max_num_tokens"] = self._max_num_tokens
        else:
            llm_cls = tensorrt_llm.LLM
            max_batch_size = self._max_batch_size or DEFAULT_MAX_BATCH_SIZE
            max_num_tokens = self._max_num_tokens or DEFAULT_MAX_NUM_TOKENS
            kwargs["tensor_parallel_size"] = self._tensor_parallel_size
            kwargs["max_seq_len"] = context_length
            kwargs["max_batch_size"] = max_batch_size
            kwargs["max_num_tokens"] = max_num_tokens
            if self._stream_interval > 1:
                kwargs["stream_interval"] = self._stream_interval
        log.info(
            "loading %s (%s, %s) with TensorRT-LLM",
            layout.model_dir,
            layout.format.value,
            layout.quantization,
        )
        # Built in a worker thread, so the server keeps answering health checks (NOT_SERVING)
        # and reflection during a load that takes minutes: TensorRT-LLM binds a request's result
        # queue to the event loop when generate_async is called, not when the LLM is built
        # (trtllm-serve builds it before its loop even starts).
        try:
            self._llm = await asyncio.to_thread(llm_cls, **kwargs)
        except Exception as exc:
            raise TrtllmStartupError(
                f"TensorRT-LLM could not load {layout.model_dir}: {type(exc).__name__}: {exc}"
            ) from exc
        self._sampling_params_cls = tensorrt_llm.SamplingParams
        self._request_error_cls = _request_error_class()
        if layout.format is ModelFormat.HF_CHECKPOINT:
            layout = replace(layout, tensor_parallel_size=self._tensor_parallel_size)
        layout = replace(layout, max_batch_size=max_batch_size, max_num_tokens=max_num_tokens)
        self._layout = layout
        self._context_length = context_length
        # Without chunked prefill a prompt must fit in one batch step.
        self._prompt_limit = min(filter(None, (layout.max_input_len, max_num_tokens)))
        if self._max_concurrency is None:
            self._max_concurrency = max_batch_size
        self._ready = True

    def _resolve_context_length(self, layout: ModelLayout) -> int:
        if layout.format is ModelFormat.TRT_ENGINE and layout.context_length:
            if self._context_length and self._context_length > layout.context_length:
                raise TrtllmStartupError(
                    f"--model {layout.model_dir} is an engine built with max_seq_len {layout.context_length}, "
                    f"below --context-length {self._context_length}: lower the flag or rebuild the engine"
                )
            return self._context_length or layout.context_length
        if self._context_length:
            if layout.context_length and self._context_length > layout.context_length:
                raise TrtllmStartupError(
                    f"--context-length {self._context_length} exceeds the max_position_embeddings "
                    f"({layout.context_length}) of {layout.model_dir}: lower the flag"
                )
            return self._context_length
        if layout.format is ModelFormat.HF_CHECKPOINT:
            return min(layout.context_length or DEFAULT_HF_CONTEXT_LENGTH, DEFAULT_HF_CONTEXT_LENGTH)
        raise TrtllmStartupError(
            f"--model {layout.model_dir} is an engine whose config.json states no max_seq_len: pass "
            "--context-length"
        )

    def info(self) -> EngineInfo:
        layout = self._layout
        if layout is None:
            layout = inspect_model_dir(self._model_dir)
        return EngineInfo(
            engine=self.name,
            model=self._model_name,
            quantization=layout.quantization,
            context_length=self._context_length or layout.context_length or 0,
            max_concurrency=self._max_concurrency or layout.max_batch_size or DEFAULT_MAX_BATCH_SIZE,
            tensor_parallel_size=(
                layout.tensor_parallel_size
                if layout.format is ModelFormat.TRT_ENGINE
                else self._tensor_parallel_size
            ),
        )

    async def close(self) -> None:
        self._ready = False
        llm, self._llm = self._llm, None
        if llm is not None:
            await asyncio.to_thread(llm.shutdown)

    def _prompt_token_ids(self, request: EngineRequest) -> list[int]:
        text = llama3.render_chat(self._tokenizer, request.chat_messages(self._system_prompt))
        return list(self._tokenizer.encode(text, add_special_tokens=False))

    def _check_prompt(self, prompt_tokens: int) -> int:
        """The completion budget left by the prompt; InvalidRequestError when it cannot be served."""
        context = self._context_length or 0
        limit = self._prompt_limit
        if limit and prompt_tokens > limit:
            raise InvalidRequestError(
                f"the prompt is {prompt_tokens} tokens after the chat template; this engine accepts at most "
                f"{limit}"
            )
        if prompt_tokens >= context:
            raise InvalidRequestError(
                f"the prompt is {prompt_tokens} tokens after the chat template; the context is {context}, "
                "leaving no room to generate"
            )
        return context - prompt_tokens

    def _is_request_error(self, exc: BaseException) -> bool:
        return self._request_error_cls is not None and isinstance(exc, self._request_error_cls)

    async def generate(self, request: EngineRequest) -> AsyncIterator[Delta]:
        llm = self._llm
        if llm is None or not self._ready:
            raise EngineUnavailableError("the trtllm engine is not loaded or is shutting down")
        size = sum(len(m.content) for m in request.messages) + len(request.prompt or "")
        if size > _INLINE_PROMPT_CHARS:
            prompt_ids = await asyncio.to_thread(self._prompt_token_ids, request)
        else:
            prompt_ids = self._prompt_token_ids(request)
        prompt_tokens = len(prompt_ids)
        max_tokens = min(request.sampling.max_tokens, self._check_prompt(prompt_tokens))
        params = self._sampling_params_cls(
            **sampling_kwargs(request.sampling, max_tokens=max_tokens, stop_token_ids=self._stop_token_ids)
        )

        stops = StopMatcher(request.sampling.stop)
        self.stats.started += 1
        self.stats.active += 1
        result = None
        done = False
        try:
            try:
                result = llm.generate_async(prompt_ids, sampling_params=params, streaming=True)
            except (ValueError, TypeError) as exc:
                # generate_async's own argument checks (llmapi/llm.py `_check_arguments`).
                raise InvalidRequestError(f"TensorRT-LLM refused the request: {exc}") from exc
            except Exception as exc:
                if self._is_request_error(exc):
                    raise InvalidRequestError(f"TensorRT-LLM refused the request: {exc}") from exc
                raise EngineFailedError(f"TensorRT-LLM rejected the request: {exc}") from exc
            completion_tokens = 0
            sent = 0  # characters of the completion's text sent so far
            try:
                async for output in result:
                    completion = output.outputs[0]
                    completion_tokens = len(completion.token_ids)
                    token_ids = tuple(completion.token_ids_diff)
                    reason = completion.finish_reason
                    if reason is not None and isinstance(completion.stop_reason, str):
                        # TensorRT-LLM matched a stop string and cut `text` before it; what the
                        # matcher held back up to that point is answer text, not stop string.
                        done = True
                        yield Delta(
                            completion.text[sent:],
                            token_ids,
                            FinishReason.STOP,
                            prompt_tokens,
                            completion_tokens,
                        )
                        return
                    emit, matched = stops.feed(completion.text_diff)
                    sent += len(emit)
                    if matched:
                        # A match TensorRT-LLM did not report (a release that matches stop
                        # strings on token ids only): the GPU must be told to stop - before the
                        # last yield, where a departing consumer would skip this line.
                        done = True
                        if not output.finished:
                            result.abort()
                        yield Delta(emit, token_ids, FinishReason.STOP, prompt_tokens, completion_tokens)
                        return
                    if reason is not None:
                        done = True
                        yield Delta(
                            emit + stops.flush(),
                            token_ids,
                            _FINISH_REASONS.get(reason, FinishReason.ERROR),
                            prompt_tokens,
                            completion_tokens,
                        )
                        return
                    if emit or token_ids:
                        yield Delta(emit, token_ids)
            except (asyncio.CancelledError, GeneratorExit):
                raise
            except Exception as exc:
                if self._is_request_error(exc):
                    # The executor refused the request (executor/utils.py RequestError): the
                    # request's fault, such as a prompt over the runtime's limits.
                    raise InvalidRequestError(f"TensorRT-LLM refused the request: {exc}") from exc
                raise EngineFailedError(f"TensorRT-LLM failed while generating: {exc}") from exc
            done = True
            yield Delta(stops.flush(), (), FinishReason.ERROR, prompt_tokens, completion_tokens)
        finally:
            self.stats.active -= 1
            if done:
                self.stats.finished += 1
            else:
                # Cancelled, deadline passed, or the consumer went away: free the GPU slot.
                if result is not None:
                    try:
                        result.abort()
                    except Exception:
                        log.exception("abort of request %s failed", request.request_id)
                self.stats.record_abort(request.request_id)


def _request_error_class() -> type[BaseException] | None:
    """TensorRT-LLM's RequestError (executor/utils.py), raised for a request the executor refuses."""
    try:
        module = importlib.import_module("tensorrt_llm.executor.utils")
    except Exception:  # noqa: BLE001 - an older or trimmed install: its errors count as engine failures
        return None
    cls = getattr(module, "RequestError", None)
    return cls if isinstance(cls, type) and issubclass(cls, BaseException) else None
