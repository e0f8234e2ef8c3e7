"""FAKE tensorrt_llm.llmapi.llm_args: KvCacheConfig and the argument names each backend accepts."""

from __future__ import annotations


class KvCacheConfig:
    """The real one is a pydantic model: keyword-only, unknown fields rejected."""

    def __init__(self, *, free_gpu_memory_fraction: float | None = 0.9, max_tokens: int | None = None,
                 enable_block_reuse: bool = True) -> None:
        if free_gpu_memory_fraction is not None and not 0 <= free_gpu_memory_fraction <= 1:
            raise ValueError("free_gpu_memory_fraction must be in [0, 1]")
        self.free_gpu_memory_fraction = free_gpu_memory_fraction
        self.max_tokens = max_tokens
        self.enable_block_reuse = enable_block_reuse


# A subset of BaseLlmArgs / TorchLlmArgs / TrtLlmArgs fields: enough to reject misspelt arguments.
COMMON_FIELDS = {
    "model", "tokenizer", "tokenizer_mode", "skip_tokenizer_init", "trust_remote_code",
    "tensor_parallel_size", "pipeline_parallel_size", "dtype", "revision", "tokenizer_revision",
    "kv_cache_config", "max_batch_size", "max_num_tokens", "max_seq_len", "max_input_len",
    "max_beam_width", "enable_chunked_prefill", "scheduler_config",
}
TRT_ONLY_FIELDS = {"build_config", "workspace", "enable_build_cache", "calib_config", "fast_build"}
# TorchLlmArgs: the PyTorch backend's own arguments.
TORCH_ONLY_FIELDS = {"stream_interval", "cuda_graph_config", "attn_backend"}
