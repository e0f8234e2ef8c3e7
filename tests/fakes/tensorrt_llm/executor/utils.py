"""FAKE tensorrt_llm.executor.utils: `RequestError`, what the executor raises (while the result is
iterated) for a request it refuses, as in TensorRT-LLM's executor/utils.py."""

from __future__ import annotations


class RequestError(RuntimeError):
    """The request is refused by the executor (for example a prompt over the runtime's limits)."""
