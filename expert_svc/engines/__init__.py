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
    raise ValueError(f"unknown engine {cfg.engine!r}")
