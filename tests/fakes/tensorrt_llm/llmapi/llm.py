"""FAKE tensorrt_llm.llmapi.llm: BaseLLM, the PyTorch-backend LLM and the TensorRT-engine _TrtLLM.

Modelled on TensorRT-LLM's tensorrt_llm/llmapi/llm.py:
- `BaseLLM.__init__` validates its keyword arguments against the backend's argument class and
  loads the model before returning (minutes on a GPU: `behaviour.construct_delay_s` blocks the
  calling thread the same way);
- `BaseLLM._check_arguments`, called by `generate_async`: on the PyTorch backend without chunked
  prefill, a prompt longer than `max_num_tokens` (8192 unless given) raises ValueError;
- a prompt that leaves no room under `max_seq_len` is refused by the executor, which surfaces as
  `RequestError` when the result is iterated;
- `stream_interval` is an argument of the PyTorch backend (`TorchLlmArgs`) only.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from pathlib import Path
from typing import Any, Literal

from .. import _fake_control
from ..executor.result import GenerationResult
from ..sampling_params import SamplingParams
from .llm_args import COMMON_FIELDS, TORCH_ONLY_FIELDS, TRT_ONLY_FIELDS

DEFAULT_MAX_NUM_TOKENS = 8192

_ids = itertools.count(1)


class RequestOutput(GenerationResult):
    """What generate_async returns (the real one subclasses GenerationResult too)."""


class BaseLLM:
    _backend = "tensorrt"

    def __init__(self,
                 model: str | Path,
                 tokenizer: Any | None = None,
                 tokenizer_mode: Literal["auto", "slow"] = "auto",
                 skip_tokenizer_init: bool = False,
                 trust_remote_code: bool = False,
                 tensor_parallel_size: int = 1,
                 dtype: str = "auto",
                 revision: str | None = None,
                 tokenizer_revision: str | None = None,
                 **kwargs: Any) -> None:
        valid = COMMON_FIELDS | (TRT_ONLY_FIELDS if self._backend == "tensorrt" else TORCH_ONLY_FIELDS)
        for key in kwargs:
            if key not in valid:
                raise ValueError(f"{self.__class__.__name__} got invalid argument: {key}")
        self.constructed_in_thread = threading.current_thread()
        if _fake_control.behaviour.construct_delay_s:
            time.sleep(_fake_control.behaviour.construct_delay_s)  # loading blocks its thread
        if _fake_control.behaviour.fail_on_construct:
            raise RuntimeError(_fake_control.behaviour.fail_on_construct)
        self.model = model
        self.tokenizer_arg = tokenizer
        self.tensor_parallel_size = tensor_parallel_size
        self.kwargs = kwargs
        self.requests: list[dict[str, Any]] = []
        self.results: list[RequestOutput] = []
        self.aborted_request_ids: list[int] = []
        self.shutdown_called = False
        _fake_control.instances.append(self)

    def generate_async(self,
                       inputs: Any,
                       sampling_params: SamplingParams | None = None,
                       lora_request: Any | None = None,
                       prompt_adapter_request: Any | None = None,
                       streaming: bool = False,
                       kv_cache_retention_config: Any | None = None,
                       disaggregated_params: Any | None = None) -> RequestOutput:
        if self.shutdown_called:
            raise RuntimeError("LLM is shutting down")
        sampling_params = sampling_params or SamplingParams()
        if isinstance(inputs, str):
            raise TypeError("the fake tokenizes nothing: pass token ids")
        if not isinstance(inputs, list) or not all(isinstance(i, int) for i in inputs):
            raise TypeError(f"The inputs must be type str or list of int, but got {type(inputs)}")
        self._check_arguments(len(inputs))
        self.requests.append({"inputs": inputs, "sampling_params": sampling_params, "streaming": streaming})
        refuse = _fake_control.behaviour.refuse_with
        max_seq_len = self._max_seq_len()
        if refuse is None and max_seq_len is not None and len(inputs) >= max_seq_len:
            refuse = f"The prompt length ({len(inputs)}) leaves no room under max_seq_len ({max_seq_len})"
        result = RequestOutput(next(_ids), list(inputs), sampling_params, streaming, self,
                               stream_interval=self.kwargs.get("stream_interval", 1), refuse=refuse)
        self.results.append(result)
        return result

    def _check_arguments(self, prompt_len: int) -> None:
        if self._backend == "pytorch" and not self.kwargs.get("enable_chunked_prefill"):
            max_num_tokens = self.kwargs.get("max_num_tokens") or DEFAULT_MAX_NUM_TOKENS
            if prompt_len > max_num_tokens:
                raise ValueError(f"The sum of prompt length ({prompt_len}) and query length (0) should not "
                                 f"exceed max_num_tokens ({max_num_tokens})")

    def _max_seq_len(self) -> int | None:
        if self.kwargs.get("max_seq_len"):
            return self.kwargs["max_seq_len"]
        try:  # the PyTorch backend falls back to the checkpoint's max_position_embeddings
            config = json.loads((Path(self.model) / "config.json").read_text())
        except (OSError, ValueError):
            return None
        if "build_config" in config:
            return config["build_config"].get("max_seq_len")
        return config.get("max_position_embeddings")

    def shutdown(self) -> None:
        self.shutdown_called = True


class _TrtLLM(BaseLLM):
    _backend = "tensorrt"


class _TorchLLM(BaseLLM):
    _backend = "pytorch"

    def __init__(self, model: str | Path, tokenizer: Any | None = None, **kwargs: Any) -> None:
        trt_specific = [k for k in kwargs if k in TRT_ONLY_FIELDS]
        if trt_specific:
            raise ValueError(
                "The following arguments are specific to TensorRT backend and cannot be used with "
                f"PyTorch backend: {trt_specific}."
            )
        super().__init__(model, tokenizer, **kwargs)


class LLM(_TorchLLM):
    pass
