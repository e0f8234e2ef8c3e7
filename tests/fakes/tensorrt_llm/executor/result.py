"""FAKE tensorrt_llm.executor.result: CompletionOutput and a GenerationResult that streams scripted
tokens, updated in place at each response like the real one.

Modelled on TensorRT-LLM's tensorrt_llm/executor/result.py:
- `CompletionOutput.text_diff` / `token_ids_diff` are relative to the previous response.
- `GenerationResultBase._handle_sequence`: a stop *token* (END_ID, or stop words the C++ runtime
  matches on token ids) ends with finish_reason "stop"; for STOP_WORDS the matched ids are trimmed
  from `token_ids` and `stop_reason` names the stop string (or token id).
- `DetokenizedGenerationResultBase._handle_response`: after detokenizing, every stop *string* is
  searched in the whole `text`; on a match `text` is cut before it, finish_reason is "stop",
  stop_reason the string, `self.abort()` is called and the result is done. `token_ids` are not
  trimmed in that case.
- The PyTorch executor sends a response at the first decoding step, every `stream_interval`
  steps after it, and at the end (LLM argument `stream_interval`).
- A request the executor refuses surfaces as `RequestError` (executor/utils.py) while iterating.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, Literal

from .. import _fake_control
from .utils import RequestError


@dataclass(slots=True)
class CompletionOutput:
    index: int
    text: str = ""
    token_ids: list[int] | None = field(default_factory=list)
    finish_reason: Literal["stop", "length", "timeout", "cancelled"] | None = None
    stop_reason: int | str | None = None
    _last_text_len: int = field(default=0, init=False, repr=False)
    _last_token_ids_len: int = field(default=0, init=False, repr=False)

    @property
    def length(self) -> int:
        return len(self.token_ids)

    @property
    def text_diff(self) -> str:
        return self.text[self._last_text_len:]

    @property
    def token_ids_diff(self) -> list[int]:
        return self.token_ids[self._last_token_ids_len:]


class GenerationResult:
    """One request: each `__anext__` delivers one response of the scripted model (one decoding
    step, or `stream_interval` of them)."""

    def __init__(self, request_id: int, prompt_token_ids: list[int], sampling_params: Any,
                 streaming: bool, llm: Any, *, stream_interval: int = 1,
                 refuse: str | None = None) -> None:
        asyncio.get_running_loop()  # the real result needs the event loop for its async queue
        self._request_id = request_id
        self._prompt_token_ids = prompt_token_ids
        self.sampling_params = sampling_params
        self._streaming = streaming
        self._llm = llm
        self._outputs = [CompletionOutput(0)]
        self._done = False
        self._aborted = False
        self._step = 0
        self._stream_interval = stream_interval
        self._refuse = refuse
        self._script = list(_fake_control.behaviour.tokens)
        self.responses = 0

    @property
    def request_id(self) -> int:
        return self._request_id

    @property
    def prompt_token_ids(self) -> list[int]:
        return self._prompt_token_ids

    @property
    def outputs(self) -> list[CompletionOutput]:
        return self._outputs[: self.sampling_params.n]

    @property
    def finished(self) -> bool:
        return self._done

    def abort(self) -> None:
        self._llm.aborted_request_ids.append(self._request_id)
        self._aborted = True

    def aborted(self) -> bool:
        return self._aborted

    def __aiter__(self) -> GenerationResult:
        return self

    async def __anext__(self) -> GenerationResult:
        if self._done:
            raise StopAsyncIteration
        await asyncio.sleep(_fake_control.behaviour.step_delay_s)
        if self._refuse:
            raise RequestError(self._refuse)
        out = self._outputs[0]
        out._last_text_len = len(out.text)
        out._last_token_ids_len = len(out.token_ids)
        self._decode_step()
        # PyExecutor: a response at decoding iteration 1, then when the iteration is a multiple of
        # stream_interval, and when the request finishes.
        while not self._done and self._step != 1 and self._step % self._stream_interval != 0:
            self._decode_step()
        self.responses += 1
        return self

    def _decode_step(self) -> None:
        out = self._outputs[0]
        params = self.sampling_params
        if _fake_control.behaviour.fail_at_step == self._step:
            raise RuntimeError("fake engine failure")
        self._step += 1
        if self._aborted:
            out.finish_reason = "cancelled"
            self._done = True
            return
        token_id, text = self._script.pop(0) if self._script else (params.end_id or 2, "")
        stop_ids = set(params.stop_token_ids or ())
        if params.end_id is not None:
            stop_ids.add(params.end_id)
        if token_id in stop_ids:
            # The runtime ends with END_ID / STOP_WORDS and drops the stop token.
            out.finish_reason = "stop"
            out.stop_reason = token_id if token_id != params.end_id else None
            self._done = True
            return
        stops = [params.stop] if isinstance(params.stop, str) else list(params.stop or ())
        if text in stops:
            # STOP_WORDS: the runtime matched the stop string on its token ids and trims them.
            out.finish_reason = "stop"
            out.stop_reason = text
            self._done = True
            return
        out.token_ids.append(token_id)
        out.text += text
        if len(out.token_ids) >= params.max_tokens:
            out.finish_reason = "length"
            self._done = True
        if not self._done or out.finish_reason in ("stop", "length"):
            self._match_stop_strings(out, stops)

    def _match_stop_strings(self, out: CompletionOutput, stops: list[str]) -> None:
        # DetokenizedGenerationResultBase._handle_response: stop strings in the detokenized text.
        for stop in stops:
            if stop in out.text:
                out.text = out.text[: out.text.find(stop)]
                out.finish_reason = "stop"
                out.stop_reason = stop
                self.abort()
                self._done = True
                return
