"""FAKE tensorrt_llm._tensorrt_engine: the TensorRT-engine backend's LLM."""

from ..llmapi.llm import _TrtLLM as LLM

__all__ = ["LLM"]
