"""The engine manifest: which experts to quantize and build, validated before any heavy work.

Every problem is reported at once, each naming its key (`experts[1].group_size: ...`), and the
checks that need the model's shape read only its config.json (or a GGUF header): a wrong group
size or tensor-parallel size fails in milliseconds instead of after an hour of calibration.

Relative paths are relative to the directory the command runs in.
"""

from __future__ import annotations

import difflib
import json
import os
import re
from dataclasses import dataclass
from typing import Any

import yaml

from .gguf_header import GGUFError, read_gguf_metadata

QUANTIZATIONS = ("fp8", "int4_awq", "w4a8_awq", "none")
KV_CACHE_QUANTIZATIONS = ("none", "fp8")
GROUPED = ("int4_awq", "w4a8_awq")
DTYPES = ("bfloat16", "float16")
DEFAULT_GROUP_SIZE = 128
EXPERT_KEYS = {
    "name": "the expert's name (letters, digits, '_', '.', '-')",
    "source": "HF checkpoint directory, or a GGUF file",
    "gguf_file": "GGUF file name inside `source` (a directory)",
    "quantization": f"one of {', '.join(QUANTIZATIONS)}",
    "group_size": "INT4 block size (int4_awq / w4a8_awq)",
    "kv_cache_quantization": f"one of {', '.join(KV_CACHE_QUANTIZATIONS)} (default none); fp8 needs a "
                             "quantized build",
    "tp_size": "tensor-parallel size",
    "max_batch_size": "engine limit: requests batched at once",
    "max_input_len": "engine limit: prompt tokens",
    "max_seq_len": "engine limit: prompt plus completion tokens",
    "max_num_tokens": "engine limit: tokens per batch step (optional)",
    "calibration": "local calibration text (.txt or .jsonl); required when quantizing",
    "calibration_samples": "calibration samples used (default 256)",
    "calibration_max_len": "tokens per calibration sample (default 512)",
    "dtype": f"dtype of unquantized weights, one of {', '.join(DTYPES)}",
    "output_dir": "where the checkpoints and the engine are written",
}
TOP_KEYS = ("experts", "defaults")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class ManifestError(ValueError):
    """The manifest is invalid; `problems` lists every one, each naming its key."""

    def __init__(self, path: str, problems: list[str]) -> None:
        self.problems = problems
        listing = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{path}: {len(problems)} problem(s):\n{listing}")


@dataclass(frozen=True, slots=True)
class ModelShape:
    """The dimensions the quantization and tensor-parallel checks need."""

    hidden_size: int
    intermediate_size: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    max_position_embeddings: int | None

    @property
    def linear_input_widths(self) -> dict[str, int]:
        """Input width of every linear layer of a Llama block (what an INT4 group divides)."""
        return {
            "q/k/v/gate/up_proj (hidden_size)": self.hidden_size,
            "o_proj (num_attention_heads x head_dim)": self.num_attention_heads * self.head_dim,
            "down_proj (intermediate_size)": self.intermediate_size,
        }


@dataclass(frozen=True, slots=True)
class ExpertBuild:
    """One validated manifest entry."""

    name: str
    source_dir: str
    gguf_file: str | None
    quantization: str
    group_size: int | None
    kv_cache_quantization: str
    tp_size: int
    max_batch_size: int
    max_input_len: int
    max_seq_len: int
    max_num_tokens: int | None
    calibration: str | None
    calibration_samples: int
    calibration_max_len: int
    dtype: str
    output_dir: str
    shape: ModelShape
    # Which checkpoint stage 1 exports: "hf" (served by TensorRT-LLM's PyTorch backend) or
    # "trtllm" (the input of trtllm-build). Not a manifest key: the pipeline sets it from the stages.
    export: str = "hf"

    @property
    def source_config(self) -> str | None:
        return None if self.gguf_file else os.path.join(self.source_dir, "config.json")

    @property
    def hf_dir(self) -> str:
        return os.path.join(self.output_dir, "hf")

    @property
    def checkpoint_dir(self) -> str:
        return os.path.join(self.output_dir, "trtllm-checkpoint")

    @property
    def engine_dir(self) -> str:
        return os.path.join(self.output_dir, "engine")

    def entry(self) -> dict[str, Any]:
        """The settings that decide the outputs (what the up-to-date stamp digests)."""
        return {
            "name": self.name, "source_dir": os.path.abspath(self.source_dir), "gguf_file": self.gguf_file,
            "quantization": self.quantization, "group_size": self.group_size,
            "kv_cache_quantization": self.kv_cache_quantization, "export": self.export, "tp_size": self.tp_size,
            "max_batch_size": self.max_batch_size, "max_input_len": self.max_input_len,
            "max_seq_len": self.max_seq_len, "max_num_tokens": self.max_num_tokens,
            "calibration": os.path.abspath(self.calibration) if self.calibration else None,
            "calibration_samples": self.calibration_samples, "calibration_max_len": self.calibration_max_len,
            "dtype": self.dtype,
        }


def shape_from_hf_config(config: dict[str, Any]) -> ModelShape:
    """Read the shape from an HF config.json; KeyError/TypeError when a field is missing."""
    heads = int(config["num_attention_heads"])
    hidden = int(config["hidden_size"])
    return ModelShape(
        hidden_size=hidden,
        intermediate_size=int(config["intermediate_size"]),
        num_attention_heads=heads,
        num_key_value_heads=int(config.get("num_key_value_heads") or heads),
        head_dim=int(config.get("head_dim") or hidden // heads),
        max_position_embeddings=config.get("max_position_embeddings"),
    )


def shape_from_gguf(path: str) -> ModelShape:
    """Read the shape of a llama-architecture GGUF from its header."""
    meta = read_gguf_metadata(path)
    arch = meta.get("general.architecture", "llama")

    def get(key: str) -> Any:
        value = meta.get(f"{arch}.{key}")
        if value is None:
            raise KeyError(f"{arch}.{key}")
        return value

    heads = int(get("attention.head_count"))
    hidden = int(get("embedding_length"))
    kv = meta.get(f"{arch}.attention.head_count_kv")
    head_dim = meta.get(f"{arch}.attention.key_length")
    return ModelShape(
        hidden_size=hidden,
        intermediate_size=int(get("feed_forward_length")),
        num_attention_heads=heads,
        num_key_value_heads=int(kv or heads),
        head_dim=int(head_dim or hidden // heads),
        max_position_embeddings=meta.get(f"{arch}.context_length"),
    )


def count_calibration_samples(path: str) -> int:
    """Samples in a calibration file: .jsonl lines (strings or objects with "text"), or .txt
    paragraphs separated by blank lines. Raises ValueError naming the first bad line."""
    if path.endswith(".jsonl"):
        count = 0
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    item = json.loads(line)
                except ValueError as exc:
                    raise ValueError(f"line {number} is not JSON: {exc}") from exc
                if calibration_text(item) is None:
                    raise ValueError(f'line {number} has no "text" (or "prompt"/"content") string')
                count += 1
        return count
    with open(path, encoding="utf-8") as f:
        return sum(1 for block in re.split(r"\n\s*\n", f.read()) if block.strip())


def calibration_text(item: Any) -> str | None:
    """The text of one .jsonl calibration item."""
    if isinstance(item, str):
        return item or None
    if isinstance(item, dict):
        for key in ("text", "prompt", "content"):
            if isinstance(item.get(key), str) and item[key]:
                return item[key]
    return None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class _Checker:
    def __init__(self) -> None:
        self.problems: list[str] = []

    def add(self, where: str, message: str) -> None:
        self.problems.append(f"{where}: {message}")

    def positive_int(self, entry: dict[str, Any], where: str, key: str, *, required: bool,
                     default: int | None = None) -> int | None:
        if key not in entry:
            if required:
                self.add(f"{where}.{key}", f"required ({EXPERT_KEYS[key]})")
            return default
        value = entry[key]
        if not _is_int(value) or value <= 0:
            self.add(f"{where}.{key}", f"must be a positive integer, got {value!r}")
            return default
        return value


def _unknown_keys(check: _Checker, where: str, keys: Any, allowed: Any) -> None:
    for key in keys:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), list(allowed), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; allowed: {', '.join(allowed)}"
            check.add(f"{where}.{key}" if where else str(key), f"unknown key{hint}")


def _model_shape(check: _Checker, where: str, source_dir: str, gguf_file: str | None) -> ModelShape | None:
    if gguf_file:
        path = os.path.join(source_dir, gguf_file)
        try:
            return shape_from_gguf(path)
        except (OSError, GGUFError) as exc:
            check.add(f"{where}.source", f"cannot read the GGUF header of {path}: {exc}")
        except (KeyError, TypeError, ValueError) as exc:
            check.add(f"{where}.source", f"{path} lacks the llama metadata {exc}")
        return None
    config_path = os.path.join(source_dir, "config.json")
    try:
        with open(config_path, encoding="utf-8") as f:
            config = json.load(f)
        return shape_from_hf_config(config)
    except OSError:
        check.add(f"{where}.source", f"{source_dir} has no readable config.json (not an HF checkpoint)")
    except ValueError as exc:
        check.add(f"{where}.source", f"{config_path} is not valid JSON: {exc}")
    except (KeyError, TypeError) as exc:
        check.add(f"{where}.source", f"{config_path} lacks {exc} (not a Llama-style config)")
    return None


def _check_expert(check: _Checker, where: str, entry: dict[str, Any]) -> ExpertBuild | None:
    _unknown_keys(check, where, entry.keys(), EXPERT_KEYS)
    before = len(check.problems)

    name = entry.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        check.add(f"{where}.name", f"required: 1-64 letters, digits, '_', '.' or '-', got {name!r}")

    quantization = entry.get("quantization")
    if quantization not in QUANTIZATIONS:
        check.add(f"{where}.quantization", f"must be one of {', '.join(QUANTIZATIONS)}, got {quantization!r}")

    source = entry.get("source")
    gguf_file = entry.get("gguf_file")
    source_dir = None
    if not isinstance(source, str) or not source:
        check.add(f"{where}.source", f"required ({EXPERT_KEYS['source']})")
    elif gguf_file is not None:
        if not isinstance(gguf_file, str) or not gguf_file.endswith(".gguf"):
            check.add(f"{where}.gguf_file", f"must be a file name ending in .gguf, got {gguf_file!r}")
        elif not os.path.isfile(os.path.join(source, gguf_file)):
            check.add(f"{where}.gguf_file", f"{os.path.join(source, gguf_file)} does not exist")
        else:
            source_dir = source
    elif os.path.isfile(source) and source.endswith(".gguf"):
        source_dir, gguf_file = os.path.dirname(source) or ".", os.path.basename(source)
    elif not os.path.isdir(source):
        check.add(f"{where}.source", f"{source} does not exist (an HF checkpoint directory or a .gguf file)")
    else:
        source_dir = source

    group_size = entry.get("group_size")
    if quantization in GROUPED:
        if group_size is None:
            group_size = DEFAULT_GROUP_SIZE
        elif not _is_int(group_size) or group_size <= 0 or group_size & (group_size - 1):
            check.add(f"{where}.group_size", f"must be a power of two such as 64 or 128, got {group_size!r}")
            group_size = None
    elif group_size is not None:
        check.add(f"{where}.group_size", f"applies to int4_awq and w4a8_awq only, not {quantization!r}")
        group_size = None

    kv_cache = entry.get("kv_cache_quantization", "none")
    if kv_cache not in KV_CACHE_QUANTIZATIONS:
        check.add(f"{where}.kv_cache_quantization",
                  f"must be one of {', '.join(KV_CACHE_QUANTIZATIONS)}, got {kv_cache!r}")
    elif kv_cache != "none" and quantization == "none":
        check.add(f"{where}.kv_cache_quantization",
                  f"{kv_cache} needs a quantized build (fp8, int4_awq or w4a8_awq) with calibration data")

    tp_size = check.positive_int(entry, where, "tp_size", required=False, default=1)
    max_batch_size = check.positive_int(entry, where, "max_batch_size", required=True)
    max_input_len = check.positive_int(entry, where, "max_input_len", required=True)
    max_seq_len = check.positive_int(entry, where, "max_seq_len", required=True)
    max_num_tokens = check.positive_int(entry, where, "max_num_tokens", required=False)
    samples = check.positive_int(entry, where, "calibration_samples", required=False, default=256)
    sample_len = check.positive_int(entry, where, "calibration_max_len", required=False, default=512)
    if max_input_len and max_seq_len and max_input_len >= max_seq_len:
        check.add(f"{where}.max_input_len",
                  f"({max_input_len}) must be below max_seq_len ({max_seq_len}) to leave room to generate")

    dtype = entry.get("dtype", "bfloat16")
    if dtype not in DTYPES:
        check.add(f"{where}.dtype", f"must be one of {', '.join(DTYPES)}, got {dtype!r}")

    calibration = entry.get("calibration")
    if quantization in ("fp8", *GROUPED):
        if not isinstance(calibration, str) or not calibration:
            check.add(f"{where}.calibration",
                      f"required for {quantization}: a local .txt or .jsonl file (nothing is downloaded)")
            calibration = None
        elif not calibration.endswith((".txt", ".jsonl")):
            check.add(f"{where}.calibration", f"must be a .txt or .jsonl file, got {calibration}")
        elif not os.path.isfile(calibration):
            check.add(f"{where}.calibration", f"{calibration} does not exist")
        else:
            try:
                if count_calibration_samples(calibration) == 0:
                    check.add(f"{where}.calibration", f"{calibration} holds no text")
            except (OSError, UnicodeDecodeError, ValueError) as exc:
                check.add(f"{where}.calibration", f"{calibration}: {exc}")
    elif calibration is not None:
        calibration = None  # ignored for an unquantized build

    output_dir = entry.get("output_dir")
    if not isinstance(output_dir, str) or not output_dir:
        check.add(f"{where}.output_dir", f"required ({EXPERT_KEYS['output_dir']})")
    elif os.path.exists(output_dir) and not os.path.isdir(output_dir):
        check.add(f"{where}.output_dir", f"{output_dir} exists and is not a directory")

    shape = _model_shape(check, where, source_dir, gguf_file) if source_dir else None
    if shape is not None:
        if tp_size and shape.num_key_value_heads % tp_size:
            check.add(f"{where}.tp_size",
                      f"{tp_size} must divide num_key_value_heads ({shape.num_key_value_heads}) of {source}")
        elif tp_size and shape.num_attention_heads % tp_size:
            check.add(f"{where}.tp_size",
                      f"{tp_size} must divide num_attention_heads ({shape.num_attention_heads}) of {source}")
        if group_size and tp_size:
            for layer, width in shape.linear_input_widths.items():
                # Row-parallel layers split their input across GPUs: each shard needs whole groups.
                sharded = layer.startswith(("o_proj", "down_proj")) and tp_size > 1
                per_gpu = width // tp_size if sharded else width
                if width % (tp_size if sharded else 1) or per_gpu % group_size:
                    shard = f" / tp_size {tp_size} = {per_gpu}" if sharded else ""
                    check.add(f"{where}.group_size",
                              f"{group_size} does not divide the input width of {layer}: {width}{shard}")
        if (max_seq_len and shape.max_position_embeddings
                and max_seq_len > int(shape.max_position_embeddings)):
            check.add(f"{where}.max_seq_len",
                      f"{max_seq_len} exceeds the model's max_position_embeddings ({shape.max_position_embeddings})")

    if len(check.problems) > before or shape is None:
        return None
    return ExpertBuild(
        name=name, source_dir=source_dir, gguf_file=gguf_file, quantization=quantization,
        group_size=group_size, kv_cache_quantization=kv_cache, tp_size=tp_size, max_batch_size=max_batch_size, max_input_len=max_input_len,
        max_seq_len=max_seq_len, max_num_tokens=max_num_tokens, calibration=calibration,
        calibration_samples=samples, calibration_max_len=sample_len, dtype=dtype, output_dir=output_dir,
        shape=shape,
    )


def parse_manifest(data: Any, path: str = "<manifest>") -> list[ExpertBuild]:
    """Validate a loaded manifest; raises ManifestError listing every problem."""
    check = _Checker()
    if not isinstance(data, dict):
        raise ManifestError(path, ["the manifest must be a mapping with an `experts` list"])
    _unknown_keys(check, "", data.keys(), TOP_KEYS)
    defaults = data.get("defaults") or {}
    if not isinstance(defaults, dict):
        check.add("defaults", "must be a mapping of expert keys")
        defaults = {}
    _unknown_keys(check, "defaults", defaults.keys(), EXPERT_KEYS)
    experts = data.get("experts")
    if not isinstance(experts, list) or not experts:
        check.add("experts", "required: a non-empty list of experts")
        raise ManifestError(path, check.problems)
    builds: list[ExpertBuild] = []
    for i, entry in enumerate(experts):
        where = f"experts[{i}]"
        if not isinstance(entry, dict):
            check.add(where, "must be a mapping")
            continue
        merged = {**{k: v for k, v in defaults.items() if k in EXPERT_KEYS}, **entry}
        build = _check_expert(check, where, merged)
        if build is not None:
            builds.append(build)
    names = [e.get("name") for e in experts if isinstance(e, dict)]
    for name in sorted({n for n in names if isinstance(n, str) and names.count(n) > 1}):
        check.add("experts", f"name {name!r} is used more than once")
    outputs = [os.path.abspath(b.output_dir) for b in builds]
    for out in sorted({o for o in outputs if outputs.count(o) > 1}):
        check.add("experts", f"output_dir {out} is shared by several experts")
    if check.problems:
        raise ManifestError(path, check.problems)
    return builds


def load_manifest(path: str) -> list[ExpertBuild]:
    """Read and validate a manifest file."""
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except OSError as exc:
        raise ManifestError(path, [f"cannot read the manifest: {exc.strerror or exc}"]) from exc
    except yaml.YAMLError as exc:
        raise ManifestError(path, [f"not valid YAML: {exc}"]) from exc
    return parse_manifest(data, path)
