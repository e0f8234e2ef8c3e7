"""The production GPU engine: TensorRT-LLM's LLM API serving Llama 3 (FP8, INT4-AWQ, W4A8-AWQ, BF16).

What the model directory holds picks the backend:
- a TensorRT engine built by `trtllm-build` (config.json with "pretrained_config" and
  "build_config", plus rank<N>.engine): `tensorrt_llm._tensorrt_engine.LLM` (TensorRT-LLM 1.2.x;
  tensor parallelism and the size limits come from the engine);
- a Hugging Face checkpoint (config.json plus *.safetensors, ModelOpt-quantized ones with
  hf_quant_config.json): `tensorrt_llm.LLM`, the PyTorch backend.

tensorrt_llm is imported only in `start()`: it cannot be installed from the public package index
and does not import without a CUDA driver, so everything else here (and every unit test, against
the fake in tests/fakes) runs without it. Prompts are rendered with the HF tokenizer's chat
template and tokenized here, so the prompt length is known before anything reaches the GPU.
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


def _read_json(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except OSError as exc:
        raise TrtllmStartupError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except ValueError as exc:
        raise TrtllmStartupError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise TrtllmStartupError(f"{path} must hold a JSON object")
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


def inspect_model_dir(model_dir: str | os.PathLike[str]) -> ModelLayout:
    """Tell a TensorRT engine from an HF checkpoint and read what GetInfo reports; raises
    TrtllmStartupError naming what is wrong with the directory."""
    model_dir = os.fspath(model_dir)
    config_path = os.path.join(model_dir, "config.json")
    if not os.path.isdir(model_dir):
        raise TrtllmStartupError(
            f"--model must be a directory (a TensorRT engine or an HF checkpoint): {model_dir}"
        )
    if not os.path.isfile(config_path):
        raise TrtllmStartupError(
            f"{model_dir} has no config.json: not a TensorRT engine nor an HF checkpoint"
        )
    config = _read_json(config_path)

    if "pretrained_config" in config:
        pretrained = config.get("pretrained_config") or {}
        build = config.get("build_config") or {}
        mapping = pretrained.get("mapping") or {}
        tp = _positive_int(mapping.get("tp_size")) or 1
        pp = _positive_int(mapping.get("pp_size")) or 1
        world_size = _positive_int(mapping.get("world_size")) or tp * pp
        engines = glob.glob(os.path.join(model_dir, "rank*.engine"))
        if not engines:
            if glob.glob(os.path.join(model_dir, "rank*.safetensors")):
                raise TrtllmStartupError(
                    f"{model_dir} is a TensorRT-LLM checkpoint, not an engine: build it with trtllm-build "
                    "(stage 2 of `make build-engines`), or serve the unified HF checkpoint instead"
                )
            raise TrtllmStartupError(
                f"{model_dir} has a TensorRT-LLM config.json but no rank<N>.engine files"
            )
        missing = [
            f"rank{r}.engine"
            for r in range(world_size)
            if not os.path.isfile(os.path.join(model_dir, f"rank{r}.engine"))
        ]
        if missing:
            raise TrtllmStartupError(
                f"{model_dir} is built for {world_size} GPUs but lacks {', '.join(missing)}"
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
        )

    weights = glob.glob(os.path.join(model_dir, "*.safetensors")) + glob.glob(
        os.path.join(model_dir, "*.bin")
    )
    if not weights:
        raise TrtllmStartupError(
            f"{model_dir} has a config.json but neither rank<N>.engine files (a TensorRT engine) nor "
            "*.safetensors weights (an HF checkpoint)"
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


def sampling_kwargs(
    sampling: SamplingParams, *, max_tokens: int, stop_token_ids: tuple[int, ...]
) -> dict[str, Any]:
    """Keyword arguments of `tensorrt_llm.SamplingParams` for one request.

    Greedy decoding is temperature 0, or no sampling setting at all: TensorRT-LLM decodes greedily
    when top_k is 1. When sampling, top_p is always set: left unset, TensorRT-LLM's runtime uses
    top_k 0 and top_p 0, which means greedy again.
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
    if sampling.seed is not None:
        kwargs["seed"] = sampling.seed
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
        max_concurrency: int = 64,
        system_prompt: str | None = None,
        model_name: str | None = None,
        tokenizer: Any = None,
        gpu_probe: Callable[[], str | None] = missing_gpu,
    ) -> None:
        super().__init__()
        if not (isinstance(kv_cache_fraction, (int, float)) and 0 < kv_cache_fraction <= 1):
            raise ValueError(f"kv_cache_fraction must be in (0, 1], got {kv_cache_fraction!r}")
        for field, value in (
            ("max_batch_size", max_batch_size),
            ("max_num_tokens", max_num_tokens),
            ("context_length", context_length),
        ):
            if value is not None and _positive_int(value) is None:
                raise ValueError(f"{field} must be a positive integer, got {value!r}")
        if _positive_int(tensor_parallel_size) is None:
            raise ValueError(f"tensor_parallel_size must be a positive integer, got {tensor_parallel_size!r}")
        if _positive_int(max_concurrency) is None:
            raise ValueError(f"max_concurrency must be a positive integer, got {max_concurrency!r}")
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
        self._gpu_probe = gpu_probe
        self._layout: ModelLayout | None = None
        self._llm: Any = None
        self._sampling_params_cls: Any = None
        self._stop_token_ids: tuple[int, ...] = ()

    @property
    def stop_token_ids(self) -> tuple[int, ...]:
        return self._stop_token_ids

    async def start(self) -> None:
        # What this machine lacks (TensorRT-LLM, a GPU) is reported before anything about the model.
        tensorrt_llm = import_tensorrt_llm(self._gpu_probe)
        layout = inspect_model_dir(self._model_dir)
        tokenizer_dir = self._tokenizer_dir or self._model_dir
        if self._tokenizer is None and not _has_tokenizer(tokenizer_dir):
            raise TrtllmStartupError(
                f"no tokenizer in {tokenizer_dir}: pass --tokenizer with the HF checkpoint the model was "
                "built from (tokenizer.json / tokenizer_config.json)"
            )
        context_length = self._resolve_context_length(layout)
        if layout.format is ModelFormat.TRT_ENGINE:
            if (
                self._max_batch_size
                and layout.max_batch_size
                and self._max_batch_size > layout.max_batch_size
            ):
                raise TrtllmStartupError(
                    f"--max-batch-size {self._max_batch_size} exceeds the engine's build limit "
                    f"{layout.max_batch_size}; rebuild the engine or lower the flag"
                )
            if self._tensor_parallel_size not in (1, layout.tensor_parallel_size):
                raise TrtllmStartupError(
                    f"--tensor-parallel-size {self._tensor_parallel_size} disagrees with the engine, "
                    f"built for tensor parallelism {layout.tensor_parallel_size}"
                )

        if self._tokenizer is None:
            self._tokenizer = load_hf_tokenizer(tokenizer_dir)
        self._stop_token_ids = llama3.stop_token_ids(self._tokenizer, tokenizer_dir, layout.model_dir)

        from tensorrt_llm.llmapi import KvCacheConfig

        kwargs: dict[str, Any] = {
            "model": layout.model_dir,
            "tokenizer": tokenizer_dir,
            "kv_cache_config": KvCacheConfig(free_gpu_memory_fraction=self._kv_cache_fraction),
        }
        if self._max_batch_size is not None:
            kwargs["max_batch_size"] = self._max_batch_size
        if self._max_num_tokens is not None:
            kwargs["max_num_tokens"] = self._max_num_tokens
        if layout.format is ModelFormat.TRT_ENGINE:
            # Tensor parallelism and the sequence limits are baked into the engine.
            from tensorrt_llm._tensorrt_engine import LLM as llm_cls
        else:
            llm_cls = tensorrt_llm.LLM
            kwargs["tensor_parallel_size"] = self._tensor_parallel_size
            if self._context_length is not None:
                kwargs["max_seq_len"] = self._context_length
        log.info(
            "loading %s (%s, %s) with TensorRT-LLM",
            layout.model_dir,
            layout.format.value,
            layout.quantization,
        )
        # Built on the event loop's thread, as TensorRT-LLM's own servers do: its executor hands
        # results to the loop that calls generate_async. Nothing is served while it loads.
        try:
            self._llm = llm_cls(**kwargs)
        except Exception as exc:
            raise TrtllmStartupError(f"TensorRT-LLM could not load {layout.model_dir}: {exc}") from exc
        self._sampling_params_cls = tensorrt_llm.SamplingParams
        if layout.format is ModelFormat.HF_CHECKPOINT:
            layout = replace(layout, tensor_parallel_size=self._tensor_parallel_size)
        self._layout = layout
        self._context_length = context_length
        self._ready = True

    def _resolve_context_length(self, layout: ModelLayout) -> int:
        if layout.format is ModelFormat.TRT_ENGINE and layout.context_length:
            if self._context_length and self._context_length > layout.context_length:
                raise TrtllmStartupError(
                    f"--context-length {self._context_length} exceeds the engine's max_seq_len "
                    f"{layout.context_length}"
                )
            return self._context_length or layout.context_length
        if self._context_length:
            return self._context_length
        if layout.context_length:
            return layout.context_length
        raise TrtllmStartupError(
            f"cannot tell the context length of {layout.model_dir}; pass --context-length"
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
            max_concurrency=self._max_concurrency,
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
        layout = self._layout
        context = self._context_length or 0
        if layout is not None and layout.max_input_len and prompt_tokens > layout.max_input_len:
            raise InvalidRequestError(
                f"the prompt is {prompt_tokens} tokens after the chat template; this engine accepts at most "
                f"{layout.max_input_len}"
            )
        if prompt_tokens >= context:
            raise InvalidRequestError(
                f"the prompt is {prompt_tokens} tokens after the chat template; the context is {context}, "
                "leaving no room to generate"
            )
        max_tokens = min(request.sampling.max_tokens, context - prompt_tokens)
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
            except Exception as exc:
                raise EngineFailedError(f"TensorRT-LLM rejected the request: {exc}") from exc
            completion_tokens = 0
            try:
                async for output in result:
                    completion = output.outputs[0]
                    completion_tokens = len(completion.token_ids)
                    token_ids = tuple(completion.token_ids_diff)
                    emit, matched = stops.feed(completion.text_diff)
                    if matched:
                        done = True
                        if not output.finished:
                            # TensorRT-LLM matches stop strings on token ids; a match that only
                            # shows in the text is ours, so the GPU must be told to stop - before
                            # the last yield, where a departing consumer would skip this line.
                            result.abort()
                        yield Delta(emit, token_ids, FinishReason.STOP, prompt_tokens, completion_tokens)
                        return
                    reason = completion.finish_reason
                    if reason is not None:
                        done = True
                        tail = "" if isinstance(completion.stop_reason, str) else stops.flush()
                        yield Delta(
                            emit + tail,
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
