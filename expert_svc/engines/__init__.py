"""Engines behind the expert service; `create_engine` picks one from the configuration."""

from __future__ import annotations

from ..config import ExpertConfig
from .base import Engine

__all__ = ["Engine", "create_engine"]


def create_engine(cfg: ExpertConfig) -> Engine:
    """Build (not start) the engine the configuration names."""
    if cfg.engine == "synthetic":
        from .synthetic import SyntheticEngine

        return SyntheticEngine(
            ttft_ms=cfg.ttft_ms,
            tokens_per_second=cfg.tokens_per_second,
            context_length=cfg.context_length,
            max_concurrency=cfg.max_concurrency,
            system_prompt=cfg.system_prompt,
        )
    if cfg.engine == "llamacpp":
        from .llamacpp import LlamaCppEngine

        return LlamaCppEngine(
            model=cfg.model,
            system_prompt=cfg.system_prompt,
            max_concurrency=cfg.max_concurrency,
            context_length=cfg.context_length,
            threads=cfg.effective_threads,
            verbose=cfg.log_level == "DEBUG",
        )
    if cfg.engine == "trtllm":
        from .trtllm import TrtllmEngine

        return TrtllmEngine(
            model_dir=cfg.model,
            tokenizer_dir=cfg.tokenizer,
            kv_cache_fraction=cfg.kv_cache_fraction,
            max_batch_size=cfg.max_batch_size,
            max_num_tokens=cfg.max_num_tokens,
            tensor_parallel_size=cfg.tensor_parallel_size,
            context_length=cfg.context_length,
            max_concurrency=cfg.max_concurrency,
            system_prompt=cfg.system_prompt,
            stream_interval=cfg.stream_interval,
        )
    raise ValueError(f"unknown engine {cfg.engine!r}")
