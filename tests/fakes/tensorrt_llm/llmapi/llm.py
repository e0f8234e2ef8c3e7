"""FAKE tensorrt_llm.llmapi.llm: BaseLLM, the PyTorch-backend LLM and the TensorRT-engine _TrtLLM."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any, Literal

from .. import _fake_control
from ..executor.result import GenerationResult
from ..sampling_params import SamplingParams
from .llm_args import COMMON_FIELDS, TRT_ONLY_FIELDS

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
        valid = COMMON_FIELDS | (TRT_ONLY_FIELDS if self._backend == "tensorrt" else set())
        for key in kwargs:
            if key not in valid:
                raise ValueError(f"{self.__class__.__name__} got invalid argument: {key}")
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
        self.requests.append({"inputs": inputs, "sampling_params": sampling_params, "streaming": streaming})
        result = RequestOutput(next(_ids), list(inputs), sampling_params, streaming, self)
        self.results.append(result)
        return result

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
