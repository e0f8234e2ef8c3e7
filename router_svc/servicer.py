"""The Router gRPC service: request validation, the routing decision, and the relay of expert streams.

Generate is registered with identity serializers: the handler receives the request's bytes, parses
them once to validate and classify, forwards the original bytes and yields the expert's frames as
bytes. Classify and ListExperts are ordinary message handlers and never touch an expert.
Where a request goes, and where it goes when something fails, is decided by the Dispatcher
(router_svc.dispatch) that the native relay and the HTTP door share; Generate only moves frames.

Everything a reload may change (config, classifier, upstream pool) sits in one RouterState; a
request reads ``servicer.state`` once and keeps that generation until it ends, so a swap never
disturbs a stream in flight.
"""
from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import grpc
import numpy as np

import core
from expert_router.v1 import expert_router_pb2 as pb
from router_svc.admission import Admission
from router_svc.batching import MicroBatcher
from router_svc.cascade import CascadeScorer, combine
from router_svc.config import RouterConfig
from router_svc.dispatch import Attempt, CallRecord, Dispatcher
from router_svc.errors import InvalidRequest, Rejected, UnknownExpert, abort_with
from router_svc.metrics import ITL_BOUNDS, RouterMetrics, itl_bucket
from router_svc.upstream import Replica, UpstreamFailure, UpstreamPool
from service_base.parsing import UndecodableRequest, parse_request, tolerant_parser
from service_base.rules import REQUEST_ID_KEY, check_prompt, check_sampling, resolve_request_id

if TYPE_CHECKING:
    from router_svc.auth import TokenAuth
    from router_svc.native_relay import NativeCall, NativeRelay, StreamDone
    from service_base.tracing import Tracing

SERVICE_NAME = "expert_router.v1.Router"
GENERATE_METHOD = f"/{SERVICE_NAME}/Generate"
# Only the latest user turns decide what a conversation is about.
CLASSIFIED_USER_TURNS = 3
EOF = grpc.aio.EOF
log = logging.getLogger("router_svc")


class ScoringClassifier(Protocol):
    labels: tuple[str, ...]
    version: str

    def predict_batch(self, texts: Sequence[str]) -> np.ndarray: ...


def validate_prompt(prompt: str, messages: Sequence[pb.ChatMessage], max_prompt_bytes: int) -> None:
    """The shared prompt rules, plus one of the router's own: there must be text to classify."""
    check_prompt(prompt, messages, max_prompt_bytes)
    if not messages and not prompt.strip():
        raise InvalidRequest("the prompt is only whitespace; send some text")
    if messages and not any(message.content.strip() for message in messages):
        raise InvalidRequest("every message is empty; send some text")


def validate_generate_request(request: pb.GenerateRequest, max_prompt_bytes: int) -> None:
    """Raises InvalidRequest with a precise message when ``request`` cannot be served.

    Only what the expert's context length decides (max_tokens) is left to the expert.
    """
    validate_prompt(request.prompt, request.messages, max_prompt_bytes)
    check_sampling(request.sampling)


def classification_text(prompt: str, messages: Sequence[pb.ChatMessage]) -> str:
    """What the classifier reads: the prompt, or the last few user turns of a conversation."""
    if not messages:
        return prompt
    user_turns = [m.content for m in messages if m.role == "user" and m.content.strip()]
    if not user_turns:  # only system/assistant text: better than nothing
        user_turns = [m.content for m in messages if m.content.strip()]
    return "\n".join(user_turns[-CLASSIFIED_USER_TURNS:])


@dataclass(frozen=True)
class Route:
    """Where one request goes and why; becomes Generate's initial metadata."""

    expert: str
    score: float | None  # None when the request named the expert
    fallback: bool
    classifier_version: str
    ranked: tuple[tuple[str, float], ...] = ()
    # The expert the classifier chose when this route replaces it (it had no healthy replica).
    failover_from: str | None = None
    # The cascade model's version when it rescored the prompt (router_svc.cascade), else None.
    cascade: str | None = None

    @property
    def source(self) -> str:
        if self.score is None:
            return "explicit"
        if self.fallback:
            return "fallback"
        return "failover" if self.failover_from else "classifier"

    def metadata(self) -> tuple[tuple[str, str], ...]:
        pairs = [("x-expert", self.expert), ("x-classifier-version", self.classifier_version)]
        if self.score is not None:
            pairs.append(("x-expert-score", f"{self.score:.6f}"))
        pairs.append(("x-expert-source", self.source))
        if self.failover_from:
            pairs.append(("x-expert-failover-from", self.failover_from))
        if self.cascade:
            pairs.append(("x-expert-cascade", self.cascade))
        return tuple(pairs)


class ExpertChooser:
    """Scores prompts through the MicroBatcher (a lone short prompt inline once the model has
    proved fast, concurrent ones batched in a thread) and decides the expert.

    With a cascade (``--cascade-model``), a prompt whose best fast score is below the cascade's
    threshold is rescored by the cascade model in its own thread, and the two rows are combined
    before the decision; when the cascade is busy or fails, the fast row decides alone.
    """

    def __init__(self, classifier: ScoringClassifier, batcher: MicroBatcher, *, experts: Sequence[str],
                 fallback: str, min_confidence: float, failover_margin: float = 0.0,
                 metrics: RouterMetrics | None = None, cascade: CascadeScorer | None = None) -> None:
        self.labels = tuple(classifier.labels)
        self.version = classifier.version
        self._batcher = batcher
        self._experts = tuple(experts)
        self._available = frozenset(experts)
        self._fallback = fallback
        self._min_confidence = min_confidence
        self._failover_margin = failover_margin
        self._observe_classification = (metrics or RouterMetrics()).classification.observe
        self.cascade = cascade

    async def classify(self, text: str) -> tuple[core.Decision, str | None]:
        """The decision for ``text``, and the cascade model's version when it rescored the prompt."""
        started = time.perf_counter()
        scores = await self._batcher.score(text)
        self._observe_classification(time.perf_counter() - started)
        cascade = self.cascade
        rescored_by = None
        if cascade is not None and cascade.wanted(scores):
            slow = await cascade.score(text)
            if slow is not None:
                scores = combine(scores, slow, cascade.combination)
                rescored_by = cascade.version
        return core.decide(self.labels, scores, self._min_confidence, self._fallback, self._available), rescored_by

    async def decide(self, text: str) -> core.Decision:
        return (await self.classify(text))[0]

    async def route(self, request: pb.GenerateRequest) -> Route:
        if request.expert:
            if request.expert not in self._available:
                raise UnknownExpert(request.expert, self._experts)
            return Route(request.expert, None, False, self.version)
        decision, cascade = await self.classify(classification_text(request.prompt, request.messages))
        return Route(decision.expert, decision.score, decision.fallback, self.version, decision.ranked,
                     cascade=cascade)

    def candidates(self, route: Route) -> list[Route]:
        """``route`` first, then where to go if its expert has no healthy replica, in order.

        A classified route may move to the next-best experts whose scores are within
        ``failover_margin`` of the chosen one's, then to the fallback expert. An explicit choice
        never moves: the client asked for that expert.
        """
        if route.score is None:
            return [route]
        chosen = [route]
        seen = {route.expert}
        if not route.fallback:
            for label, score in route.ranked:
                if label in seen or label not in self._available:
                    continue
                if score < route.score - self._failover_margin:
                    break  # ranked is sorted: every later score is lower still
                chosen.append(Route(label, score, False, self.version, route.ranked, route.expert, route.cascade))
                seen.add(label)
        if self._fallback not in seen:
            score = dict(route.ranked).get(self._fallback, 0.0)
            chosen.append(Route(self._fallback, score, True, self.version, route.ranked, route.expert, route.cascade))
        return chosen


@dataclass(eq=False)
class RouterState:
    """One generation of the reloadable parts: swapped as a whole, closed when its streams are done."""

    cfg: RouterConfig
    chooser: ExpertChooser
    upstream: UpstreamPool
    batcher: MicroBatcher
    generation: int = 1
    # The optional cascade (router_svc.cascade); the chooser holds the same object.
    cascade: CascadeScorer | None = None

    def __post_init__(self) -> None:
        # Set while no call uses this generation: a replaced one closes on it (RunningRouter._retire).
        self._idle = asyncio.Event()
        self.active = 0

    @property
    def active(self) -> int:
        """Calls (gRPC, native relay, HTTP) using this generation now."""
        return self._active

    @active.setter
    def active(self, value: int) -> None:
        self._active = value
        if value:
            self._idle.clear()
        else:
            self._idle.set()

    async def wait_idle(self) -> None:
        """Returns once no call uses this generation."""
        while self._active:
            await self._idle.wait()

    async def close(self, grace: float | None = None) -> None:
        await self.upstream.close(grace)
        await self.batcher.close()
        if self.cascade is not None:
            await self.cascade.close()


class RouterServicer:
    """Implements expert_router.v1.Router on top of RouterState, Admission and RouterMetrics."""

    def __init__(self, state: RouterState, admission: Admission, metrics: RouterMetrics, *,
                 log_prompts: bool = False, auth: TokenAuth | None = None, tracing: Tracing | None = None) -> None:
        self.state = state
        self._metrics = metrics
        self.dispatcher = Dispatcher(admission, metrics, log_prompts=log_prompts, tracing=tracing)
        # Checked here only for calls the native relay hands over; the Python server's interceptor
        # checks every call it serves itself.
        self.auth = auth
        # The native relay, when it serves Generate (router_svc.native_relay).
        self.native: NativeRelay | None = None

    @property
    def log_prompts(self) -> bool:
        return self.dispatcher.log_prompts

    @log_prompts.setter
    def log_prompts(self, value: bool) -> None:
        self.dispatcher.log_prompts = value

    async def Generate(self, request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        """Generate relayed by grpc.aio: the frames pass through as bytes, never parsed."""
        dispatch = self.dispatcher
        record = dispatch.begin("grpc", "python", self.state)
        try:
            try:
                message = record.message = parse_request(pb.GenerateRequest, request)
                metadata = context.invocation_metadata() or ()
                forwarded = dispatch.identify(record, resolve_request_id(metadata, message.request_id), metadata)
                validate_generate_request(message, record.state.cfg.max_prompt_bytes)
                await dispatch.route(record, message)
                call, frame = await dispatch.open_stream(record, request, context.time_remaining, forwarded)
            except Exception as exc:  # noqa: BLE001 - the error table: RouterError -> its status, else INTERNAL
                code, details, trailing = dispatch.failed(record, exc)
                await context.abort(code, details, trailing_metadata=trailing)
            await context.send_initial_metadata(record.initial_metadata())
            if frame is not EOF:
                outputs = record.outputs = [] if dispatch.log_prompts else None
                gaps = record.gaps = [0] * len(ITL_BOUNDS)
                read = call.read
                last = time.perf_counter()
                record.ttft = last - record.received
                record.frames = 1
                record.bytes = len(frame)
                if outputs is not None:
                    outputs.append(frame)
                yield frame
                # The hot loop: no label lookups, no metric calls; the dispatcher adds totals at the end.
                while (frame := await read()) is not EOF:
                    now = time.perf_counter()
                    gap = now - last
                    last = now
                    gaps[itl_bucket(gap)] += 1  # the rule tests/unit/test_router_metrics.py checks
                    record.gap_sum += gap
                    record.frames += 1
                    record.bytes += len(frame)
                    if outputs is not None:
                        outputs.append(frame)
                    yield frame
            record.code = grpc.StatusCode.OK
        except grpc.aio.AbortError:
            raise
        except grpc.aio.AioRpcError as err:  # the expert failed mid-stream: its status passes through
            await abort_with(context, dispatch.upstream_failed(record, err))
        except Exception as exc:  # noqa: BLE001 - the error table, as above
            code, details, trailing = dispatch.failed(record, exc)
            await context.abort(code, details, trailing_metadata=trailing)
        finally:
            dispatch.end(record)  # CANCELLED unless set above: the client went away

    async def generate_native(self, call: NativeCall) -> None:
        """Generate's decisions for a call the native relay holds: the same rules as ``Generate``.

        The relay moves the frames; this coroutine runs once per call (plus once per failed attempt
        before the first frame) and copies the counters the relay hands back into the call's record.
        """
        dispatch = self.dispatcher
        record = dispatch.begin("grpc", "native", self.state)
        done: StreamDone | None = None
        try:
            try:
                if self.auth is not None:
                    rejection = self.auth.authorize(GENERATE_METHOD, call.metadata)
                    if rejection is not None:
                        raise Rejected(rejection)
                message = record.message = parse_request(pb.GenerateRequest, call.request)
                forwarded = dispatch.identify(record, resolve_request_id(call.metadata, message.request_id),
                                              call.metadata)
                validate_generate_request(message, record.state.cfg.max_prompt_bytes)
                await dispatch.route(record, message)
                done = await dispatch.open(record, functools.partial(self._native_attempt, record, call, forwarded),
                                           call.time_remaining)
                record.relayed = True
            except Exception as exc:  # noqa: BLE001 - the error table: RouterError -> its status, else INTERNAL
                done = await call.finish(*dispatch.failed(record, exc))
            record.code = done.code
            record.ttft, record.frames, record.bytes = done.ttft, done.frames, done.bytes
            record.gaps, record.gap_sum, record.outputs = done.gaps, done.gap_sum, done.captured
        finally:
            dispatch.end(record)  # CANCELLED unless set above: the relay stopped first

    def _native_attempt(self, record: CallRecord, call: NativeCall, forwarded: Sequence[tuple[str, str]],
                        candidate: Route) -> Attempt:
        """One try of ``candidate``'s replicas in the native relay: the whole stream when it starts."""
        native = self.native
        settings = record.state.upstream.settings
        initial = (*candidate.metadata(), (REQUEST_ID_KEY, record.request_id))
        in_flight = self._metrics.expert(candidate.expert).in_flight

        async def attempt(replica: Replica, _remaining: float | None) -> UpstreamFailure | StreamDone:
            channel = native.channel(replica.address, max_message_bytes=settings.max_message_bytes,
                                     reconnect_max_s=settings.health_interval_s,
                                     tls=settings.tls_pem, server_name=replica.server_name)
            in_flight.inc()
            record.relay_start = time.perf_counter()
            outcome = await call.proceed(channel, forwarded, initial, self.dispatcher.log_prompts)
            if isinstance(outcome, UpstreamFailure):
                in_flight.dec()
            return outcome

        return attempt

    async def Classify(self, request: pb.ClassifyRequest | UndecodableRequest,
                       context: grpc.aio.ServicerContext) -> pb.ClassifyResponse:
        state = self.state
        state.active += 1  # a reload closes this generation's batcher only once nothing uses it
        try:
            if isinstance(request, UndecodableRequest):
                raise request.error()
            validate_prompt(request.prompt, request.messages, state.cfg.max_prompt_bytes)
            decision = await state.chooser.decide(classification_text(request.prompt, request.messages))
        except Exception as exc:  # noqa: BLE001 - the error table, as in Generate
            await abort_with(context, exc)
        finally:
            state.active -= 1
        return pb.ClassifyResponse(
            expert=decision.expert,
            scores=[pb.ExpertScore(expert=label, score=score) for label, score in decision.ranked],
            classifier_version=state.chooser.version,
            fallback=decision.fallback,
        )

    async def ListExperts(self, request: pb.ListExpertsRequest | UndecodableRequest,
                          context: grpc.aio.ServicerContext) -> pb.ListExpertsResponse:
        if isinstance(request, UndecodableRequest):
            await abort_with(context, request.error())
        state = self.state
        experts = []
        for name, replicas in state.upstream.status():
            experts.append(pb.ExpertStatus(
                name=name,
                healthy=any(r.healthy for r in replicas),
                replicas=[pb.Replica(address=r.address, healthy=r.healthy, outstanding=r.outstanding)
                          for r in replicas],
                fallback=name == state.cfg.fallback,
            ))
        return pb.ListExpertsResponse(experts=experts)

    def generic_handler(self) -> grpc.GenericRpcHandler:
        """The Router service with Generate kept as raw bytes in and out."""
        return grpc.method_handlers_generic_handler(SERVICE_NAME, {
            "Generate": grpc.unary_stream_rpc_method_handler(
                self.Generate, request_deserializer=None, response_serializer=None),
            "Classify": grpc.unary_unary_rpc_method_handler(
                self.Classify, request_deserializer=tolerant_parser(pb.ClassifyRequest),
                response_serializer=pb.ClassifyResponse.SerializeToString),
            "ListExperts": grpc.unary_unary_rpc_method_handler(
                self.ListExperts, request_deserializer=tolerant_parser(pb.ListExpertsRequest),
                response_serializer=pb.ListExpertsResponse.SerializeToString),
        })
