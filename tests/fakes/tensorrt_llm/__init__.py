"""FAKE tensorrt_llm for tests: the LLM API surface that expert_svc/engines/trtllm.py uses, and
nothing else. It generates scripted text (see `_fake_control`) and records every call.

Every name and signature below was checked against TensorRT-LLM's own source (NVIDIA/TensorRT-LLM,
1.2-era `main`), read with the search tool:

- tensorrt_llm/__init__.py — `LLM`, `SamplingParams` and `KvCacheConfig` are public names of the
  package (lazily resolved to tensorrt_llm.llmapi.LLM, tensorrt_llm.sampling_params.SamplingParams,
  tensorrt_llm.llmapi.KvCacheConfig).
- tensorrt_llm/llmapi/__init__.py — exports `LLM`, `RequestOutput`, `CompletionOutput`,
  `SamplingParams`, `KvCacheConfig`.
- tensorrt_llm/llmapi/llm.py — `BaseLLM.__init__(model, tokenizer=None, tokenizer_mode='auto',
  skip_tokenizer_init=False, trust_remote_code=False, tensor_parallel_size=1, dtype='auto',
  revision=None, tokenizer_revision=None, **kwargs)`; kwargs must be fields of the backend's args
  class, else `ValueError("<cls> got invalid argument: <key>")`; `_TorchLLM` (what `LLM` is) rejects
  TensorRT-only arguments such as `build_config`; `generate_async(inputs, sampling_params=None,
  lora_request=None, prompt_adapter_request=None, streaming=False, kv_cache_retention_config=None,
  disaggregated_params=None, ...) -> RequestOutput` is a plain (synchronous) method that raises
  `RuntimeError("LLM is shutting down")` after `shutdown()`; inputs are a str or a list of token ids.
- tensorrt_llm/_tensorrt_engine/__init__.py and tensorrt_llm/_tensorrt_engine/llm.py — `LLM` there is
  the TensorRT-engine backend (`_TrtLLM`), same constructor signature; tensor parallelism comes from
  the engine's config.json (`pretrained_config.mapping`), limits from its `build_config`.
- tensorrt_llm/llmapi/llm_args.py — `KvCacheConfig(free_gpu_memory_fraction=...)` (a pydantic model,
  keyword-only, fraction in [0, 1]); `max_batch_size`, `max_num_tokens`, `max_seq_len`,
  `kv_cache_config`, `tensor_parallel_size` are fields of the LLM arguments; `TrtLlmArgs` loads
  tp/pp from an engine directory and refuses a tp_size that disagrees.
- tensorrt_llm/sampling_params.py — `@dataclass(slots=True, kw_only=True) class SamplingParams`
  with `end_id, pad_id, max_tokens=32, stop, stop_token_ids, include_stop_str_in_output, n=1,
  best_of, top_k, top_p, seed, temperature, detokenize=True, add_special_tokens=True,
  skip_special_tokens=True`; greedy means top_k None/1 and top_p None/0.
- tensorrt_llm/executor/result.py — `CompletionOutput(index, text='', token_ids=[], ...,
  finish_reason: 'stop'|'length'|'timeout'|'cancelled'|None, stop_reason: int|str|None)` with the
  properties `text_diff` and `token_ids_diff`; `GenerationResult.abort()`, `aborted()`,
  `finished`, `prompt_token_ids`, `outputs`, `__aiter__`/`__anext__` returning the same object
  updated in place (the diffs are relative to the previous step).
  Stop strings are also matched in the detokenized text (`DetokenizedGenerationResultBase.
  _handle_response`): text cut before the match, stop_reason the string, `abort()` called,
  token_ids not trimmed.
- tensorrt_llm/executor/utils.py — `RequestError(RuntimeError)`, raised while iterating a result
  the executor refused.
- tensorrt_llm/llmapi/llm_args.py (`TorchLlmArgs`) — `stream_interval` (PyTorch backend only): a
  response at the first step, every `stream_interval` steps, and at the end.
- tensorrt_llm/commands/build.py — `trtllm-build --checkpoint_dir --output_dir --max_batch_size
  --max_input_len --max_seq_len --max_num_tokens` (used by expert_svc/build_engines, not faked).
- tensorrt_llm/quantization/mode.py — `QuantAlgo` values `FP8`, `W4A16_AWQ`, `W4A8_AWQ`, `NO_QUANT`
  (the strings that appear in config.json's `quant_algo`).
"""

from .llmapi import LLM, CompletionOutput, KvCacheConfig, RequestOutput
from .sampling_params import SamplingParams

__fake__ = True
__version__ = "1.2.0+fake"

__all__ = ["LLM", "CompletionOutput", "KvCacheConfig", "RequestOutput", "SamplingParams"]
