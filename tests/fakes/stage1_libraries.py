"""FAKES of the libraries stage 1 of build-engines calls (transformers, ModelOpt, accelerate), for a
fast test of the pipeline's order of operations; the slow test runs the real ones.

Modelled on:
- transformers `AutoModelForCausalLM.from_pretrained(..., gguf_file=..., device_map="auto")`: a
  model loaded from GGUF has `config.architectures = None` and a `quantization_config`; with
  `device_map="auto"` accelerate attaches a hook (`module._hf_hook`) to dispatched modules
  (accelerate/hooks.py `add_hook_to_module`), and offloaded weights live on the meta device.
- accelerate/hooks.py `remove_hook_from_module(module, recurse=False)`: deletes `_hf_hook`.
- modelopt/torch/export/unified_export_hf.py `export_hf_checkpoint(model, export_dir=...)`, which
  calls model_utils.py `is_multimodal_model`, iterating over `config.architectures` (a TypeError on
  None); it packs the quantized weights into the modules in place.
- modelopt/torch/export `export_tensorrt_llm_checkpoint(model, decoder_type, dtype, export_dir,
  inference_tensor_parallel)`: reads every weight, which fails for a module still behind an
  offloading hook (meta tensors).
- modelopt/torch/quantization `quantize(model, config, forward_loop)` calls `forward_loop(model)`.
"""

from __future__ import annotations

import json
import os
import sys
import types
from typing import Any

import torch

calls: list[tuple[str, Any]] = []


class LlamaForCausalLM(torch.nn.Module):
    """A tiny causal LM: next-token loss from one linear layer over one-hot inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.vocab = 32
        self.proj = torch.nn.Linear(self.vocab, self.vocab)
        self.config = types.SimpleNamespace(architectures=None, quantization_config={"quant_method": "gguf"})
        self.hf_quantizer = object()
        self.noise = 0.0
        self.packed = False

    def forward(self, ids: torch.Tensor, labels: torch.Tensor | None = None) -> Any:
        logits = self.proj(torch.nn.functional.one_hot(ids % self.vocab, self.vocab).float()) * (1 + self.noise)
        loss = None
        if labels is not None:
            loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, self.vocab),
                                                     (labels[:, 1:] % self.vocab).reshape(-1))
        return types.SimpleNamespace(loss=loss, logits=logits)

    def save_pretrained(self, directory: str) -> None:
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, "config.json"), "w") as f:
            json.dump({"architectures": self.config.architectures}, f)


class _Tokenizer:
    def __call__(self, text: str, return_tensors: str = "pt", **kwargs: Any) -> Any:
        ids = [sum(map(ord, word)) for word in text.split()]
        if kwargs.get("truncation") and kwargs.get("max_length"):
            ids = ids[: kwargs["max_length"]]
        return types.SimpleNamespace(input_ids=torch.tensor([ids]))

    def save_pretrained(self, directory: str) -> None:
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
            f.write("{}")


def _from_pretrained(source: str, device_map: str | None = None, **kwargs: Any) -> LlamaForCausalLM:
    model = LlamaForCausalLM()
    if device_map == "auto":
        model.proj._hf_hook = "offload"  # accelerate dispatch: weights on the meta device
    calls.append(("load", kwargs.get("gguf_file")))
    return model


def _remove_hook_from_module(module: torch.nn.Module, recurse: bool = False) -> torch.nn.Module:
    for m in (module.modules() if recurse else [module]):
        if hasattr(m, "_hf_hook"):
            del m._hf_hook
    calls.append(("remove_hooks", recurse))
    return module


def _export_hf_checkpoint(model: LlamaForCausalLM, export_dir: str) -> None:
    for architecture in model.config.architectures:  # is_multimodal_model
        assert isinstance(architecture, str)
    model.packed = True
    os.makedirs(export_dir, exist_ok=True)
    with open(os.path.join(export_dir, "config.json"), "w") as f:
        json.dump({"architectures": model.config.architectures}, f)
    with open(os.path.join(export_dir, "hf_quant_config.json"), "w") as f:
        json.dump({"quantization": {"quant_algo": "FP8"}}, f)
    open(os.path.join(export_dir, "model.safetensors"), "wb").close()
    calls.append(("export_hf", export_dir))


def _export_tensorrt_llm_checkpoint(model: LlamaForCausalLM, decoder_type: str, dtype: Any, export_dir: str,
                                    inference_tensor_parallel: int = 1) -> None:
    if any(hasattr(m, "_hf_hook") for m in model.modules()):
        raise NotImplementedError("Cannot copy out of meta tensor; no data!")
    if model.packed:
        raise RuntimeError("the weights were already packed by the HF export")
    os.makedirs(export_dir, exist_ok=True)
    with open(os.path.join(export_dir, "config.json"), "w") as f:
        json.dump({"architecture": "LlamaForCausalLM", "dtype": "bfloat16"}, f)
    for rank in range(inference_tensor_parallel):
        open(os.path.join(export_dir, f"rank{rank}.safetensors"), "wb").close()
    calls.append(("export_trtllm", export_dir))


def _quantize(model: LlamaForCausalLM, config: Any, forward_loop: Any) -> LlamaForCausalLM:
    forward_loop(model)
    model.noise = 0.05  # fake quantization: a little error
    calls.append(("quantize", config))
    return model


def install(monkeypatch: Any) -> list[tuple[str, Any]]:
    """Put the fakes in sys.modules for one test; returns the call log."""
    calls.clear()
    transformers = types.ModuleType("transformers")
    transformers.__version__ = "5.3.0"
    transformers.AutoTokenizer = types.SimpleNamespace(from_pretrained=lambda *a, **k: _Tokenizer())
    transformers.AutoModelForCausalLM = types.SimpleNamespace(from_pretrained=_from_pretrained)
    mtq = types.ModuleType("modelopt.torch.quantization")
    mtq.quantize = _quantize
    mtq.FP8_DEFAULT_CFG = {"quant_cfg": [{"quantizer_name": "*", "enable": False}], "algorithm": "max"}
    mtq.FP8_KV_CFG = {"quant_cfg": [{"quantizer_name": "*[kv]_bmm_quantizer", "cfg": {"num_bits": (4, 3)}}]}
    export = types.ModuleType("modelopt.torch.export")
    export.export_hf_checkpoint = _export_hf_checkpoint
    export.export_tensorrt_llm_checkpoint = _export_tensorrt_llm_checkpoint
    hooks = types.ModuleType("accelerate.hooks")
    hooks.remove_hook_from_module = _remove_hook_from_module
    modelopt, modelopt_torch, accelerate = (types.ModuleType(n) for n in ("modelopt", "modelopt.torch", "accelerate"))
    modelopt.torch, modelopt_torch.quantization, modelopt_torch.export = modelopt_torch, mtq, export
    accelerate.hooks = hooks
    for name, module in {"transformers": transformers, "modelopt": modelopt, "modelopt.torch": modelopt_torch,
                         "modelopt.torch.quantization": mtq, "modelopt.torch.export": export,
                         "modelopt.torch.export.trtllm": None, "accelerate": accelerate,
                         "accelerate.hooks": hooks}.items():
        monkeypatch.setitem(sys.modules, name, module)
    return calls
