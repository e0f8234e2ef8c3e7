"""FAKE tensorrt_llm.executor."""

from .result import CompletionOutput, GenerationResult

__all__ = ["CompletionOutput", "GenerationResult"]
