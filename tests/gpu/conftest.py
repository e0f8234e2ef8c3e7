"""GPU tests run only where an NVIDIA GPU is usable; elsewhere they are skipped with the reason.

A test marked `needs_trtllm` also needs the tensorrt_llm package (NGC TensorRT-LLM container), and
one marked `needs_modelopt` needs ModelOpt, transformers and torch with CUDA.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from expert_svc.engines.trtllm import missing_gpu


def _missing(*modules: str) -> list[str]:
    return [m for m in modules if importlib.util.find_spec(m) is None]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "needs_trtllm: needs the tensorrt_llm package")
    config.addinivalue_line("markers", "needs_modelopt: needs nvidia-modelopt, transformers and torch")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).resolve().parent
    gpu = missing_gpu()
    for item in items:
        if here not in Path(item.path).resolve().parents:
            continue  # this hook sees the whole session's items
        item.add_marker(pytest.mark.gpu)
        if gpu:
            item.add_marker(pytest.mark.skip(reason=f"no usable NVIDIA GPU: {gpu}"))
            continue
        if item.get_closest_marker("needs_trtllm") and _missing("tensorrt_llm"):
            item.add_marker(pytest.mark.skip(
                reason="tensorrt_llm is not installed (run inside NVIDIA's NGC TensorRT-LLM container)"))
        if item.get_closest_marker("needs_modelopt"):
            absent = _missing("modelopt", "transformers", "torch")
            if absent:
                item.add_marker(pytest.mark.skip(reason=f"not installed: {', '.join(absent)}"))
