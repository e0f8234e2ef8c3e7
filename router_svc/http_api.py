"""The router's OpenAI-compatible HTTP door (``--http-listen HOST:PORT``): a second way in to the same decisions.

Endpoints: ``POST /v1/chat/completions`` and ``POST /v1/completions`` (streamed as server-sent events
ending in ``data: [DONE]``, or whole), ``GET /v1/models`` (``auto`` plus one model per expert) and
``GET /health``. A request goes through the very pieces a gRPC Generate does: the router's
validation, admission control, the classifier (``ExpertChooser``), replica choice and failover
(``router_svc.dispatch``), bearer tokens and their rate limits (``TokenAuth``), metrics and
request logs, all read from the router's current ``RouterState`` so reloads apply here too. Only
the edges differ: JSON in (router_svc.openai_compat), each expert frame parsed and re-encoded as
a JSON chunk out. That per-frame work is why this door relays in Python over grpc.aio rather than
through a byte relay: every frame has to be decoded anyway.

Library: aiohttp's low-level server (``web.Server`` + ``ServerRunner``). Speed first: its hot
path is compiled (the llhttp-based C request parser, a C header writer), and the low-level
server skips the application router and middleware chain, so a request costs one handler call.
Measured side by side against uvicorn with httptools and a bare ASGI app, both on the default
asyncio loop, streaming chat-completion-sized events (``python benchmarks/http_server_choice.py
--streams 1,50,200 --seconds 6 --repeats 3``, medians, shared 2-core machine): server CPU per
event 160.7 / 18.5 / 22.3 us for aiohttp against 165.4 / 19.2 / 22.7 us for uvicorn at 1 / 50 /
200 streams, and 10,302 against 8,779 events/s at 200 streams. Speed being even or better, the
rest decided: it runs on an existing loop without taking it over (``handle_signals=False``;
uvicorn's ``Server.serve`` installs its own SIGINT/SIGTERM handlers, which would fight the
router's drain on SIGTERM), so one process serves gRPC and HTTP on one loop and ``--workers``
covers both; and it cancels the handler when the client's connection drops
(``handler_cancellation=True``), which cancels the upstream call and makes the expert abort the
generation (an ASGI app needs a second task per request waiting on ``http.disconnect``). The same
package's client drives the HTTP load in ``make bench``; docs/benchmarks.md ("The OpenAI HTTP
door") has the door's measured cost against the gRPC door.

Errors always have OpenAI's shape ``{"error": {"message", "type", "param", "code"}}``; a gRPC status
becomes the HTTP status a client of OpenAI's API expects (INVALID_ARGUMENT 400, UNAUTHENTICATED 401,
PERMISSION_DENIED 403, NOT_FOUND 404, RESOURCE_EXHAUSTED 429 with ``Retry-After``, UNAVAILABLE 503,
DEADLINE_EXCEEDED 504, an expert's INTERNAL 502). After a stream has begun, an error arrives as one
last event carrying that object, without ``[DONE]``.
"""
from __future__ import annotations

import asyncio
import json
import logging
import math
import socket
import ssl
import time
import uuid
from collections.abc import Sequence
from typing import Any

import grpc
from aiohttp import web

from expert_router.v1 import expert_router_pb2 as pb
from router_svc.admission import Admission
from router_svc.auth import ROUTER_SERVICE, TokenAuth
from router_svc.config import RouterConfig, parse_address
from router_svc.dispatch import CallRecord, no_deadline
from router_svc.errors import RETRY_AFTER_KEY, UpstreamError, status_for
from router_svc.metrics import ITL_BOUNDS, RouterMetrics, itl_bucket
from router_svc.openai_compat import (
    AUTO_MODEL,
    ApiError,
    ChunkWriter,
    ParsedRequest,
    chat_request,
    completion_request,
    completion_response,
    models_response,
    parse_json_body,
)
from router_svc.servicer import REQUEST_ID_KEY, RouterServicer, validate_generate_request
from service_base.errors import InvalidRequestError
from service_base.rules import resolve_request_id
from service_base.tracing import TRACE_KEYS

log = logging.getLogger("router_svc.http")

EOF = grpc.aio.EOF
JSON_TYPE = "application/json"
# gRPC status -> HTTP status, for errors decided by the router or passed through from an expert.
HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400, grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400, grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403, grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409, grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.CANCELLED: 499, grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503, grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}
# An expert that broke (rather than refused) is a bad gateway from the client's point of view.
UPSTREAM_FAILURE_STATUS = 502
# Which gRPC rpc each endpoint counts as for token permissions (``rpcs`` in the token file).
GENERATE_RPC = f"/{ROUTER_SERVICE}/Generate"
LIST_RPC = f"/{ROUTER_SERVICE}/ListExperts"
BACKLOG = 1024
KEEPALIVE_S = 75.0


def api_error_for(exc: BaseException) -> ApiError:
    """The OpenAI-shaped error for a router or expert failure (the gRPC error table, in HTTP)."""
    if isinstance(exc, ApiError):
        return exc
    code, details = status_for(exc)
    status = HTTP_STATUS.get(code, 500)
    if isinstance(exc, UpstreamError) and status == 500:
        status = UPSTREAM_FAILURE_STATUS
    headers = {}
    for key, value in getattr(exc, "trailing_metadata", None) or ():
        if key == RETRY_AFTER_KEY:
            headers["Retry-After"] = str(max(1, math.ceil(int(value) / 1000)))
            headers["retry-after-ms"] = str(value)
    error_code = "model_not_found" if code is grpc.StatusCode.NOT_FOUND else code.name.lower()
    return ApiError(status, details, code=error_code, headers=headers)


def server_ssl_context(cfg: RouterConfig) -> ssl.SSLContext | None:
    """The router's TLS settings (the same files as the gRPC port), as an SSL context; None: plaintext."""
    if not cfg.tls:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cfg.tls_cert, cfg.tls_key)
    if cfg.tls_client_ca is not None:
        context.load_verify_locations(cfg.tls_client_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    context.set_alpn_protocols(["http/1.1"])
    return context


def bind_socket(listen: str, *, reuse_port: bool) -> socket.socket:
    """A listening TCP socket on ``listen`` (SO_REUSEPORT when router workers share the port)."""
    host, port = parse_address("http_listen", listen, allow_port_zero=True)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(BACKLOG)
    except OSError as exc:
        sock.close()
        raise OSError(f"cannot listen for HTTP on {listen}: {exc.strerror or exc}") from None
    sock.setblocking(False)
    return sock


class HttpFrontDoor:
    """Serves the OpenAI API on the router's event loop, over the router's own decision pieces."""

    def __init__(self, servicer: RouterServicer, admission: Admission, metrics: RouterMetrics,
                 auth: TokenAuth | None = None) -> None:
        self._servicer = servicer
        self._admission = admission
        self._metrics = metrics
        self._auth = auth
        self._runner: web.ServerRunner | None = None
        self._server: web.Server | None = None
        self._started = int(time.time())
        self.port = 0
        self.address = ""
        self._routes = {
            "/v1/chat/completions": ("POST", self._chat),
            "/v1/completions": ("POST", self._completions),
            "/v1/models": ("GET", self._models),
            "/health": ("GET", self._health),
        }

    async def start(self, cfg: RouterConfig, *, reuse_port: bool = False) -> None:
        sock = bind_socket(cfg.http_listen, reuse_port=reuse_port)
        # Idle keep-alive connections close after KEEPALIVE_S (aiohttp's low-level default is an hour,
        # which lets idle clients pile up); request lines go to the request log, not an access log.
        self._server = web.Server(self._handle, handler_cancellation=True, access_log=None,
                                  keepalive_timeout=KEEPALIVE_S)
        self._runner = web.ServerRunner(self._server, handle_signals=False)
        await self._runner.setup()
        site = web.SockSite(self._runner, sock, ssl_context=server_ssl_context(cfg), backlog=BACKLOG)
        await site.start()
        self.port = sock.getsockname()[1]
        host = cfg.http_listen.rpartition(":")[0]
        self.address = f"{host}:{self.port}"
        log.info("OpenAI-compatible HTTP on %s://%s/v1", "https" if cfg.tls else "http", self.address)

    async def stop(self, grace: float) -> None:
        """Stops accepting, lets requests in flight finish within ``grace``, then closes the rest."""
        if self._runner is None:
            return
        runner, server, self._runner = self._runner, self._server, None
        for site in list(runner.sites):
            await site.stop()
        server.pre_shutdown()
        await server.shutdown(grace)
        await runner.cleanup()

    # Dispatch ------------------------------------------------------------------------------------

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        try:
            # Header names are case-insensitive in HTTP: read the header, then apply the shared rule.
            request_id = resolve_request_id(((REQUEST_ID_KEY, request.headers.get(REQUEST_ID_KEY, "")),), "")
        except InvalidRequestError as exc:
            return self._error(ApiError(400, str(exc), param=REQUEST_ID_KEY), uuid.uuid4().hex)
        entry = self._routes.get(request.path)
        if entry is None:
            return self._error(ApiError(404, f"no such endpoint: {request.method} {request.path}; this router "
                                             f"serves POST /v1/chat/completions, POST /v1/completions, "
                                             f"GET /v1/models and GET /health", code="unknown_url"), request_id)
        method, handler = entry
        if request.method != method:
            error = ApiError(405, f"{request.path} takes {method}, not {request.method}", code="method_not_allowed",
                             headers={"Allow": method})
            return self._error(error, request_id)
        return await handler(request, request_id)

    def _authorize(self, request: web.BaseRequest, rpc: str) -> ApiError | None:
        if self._auth is None:
            return None
        metadata = [("authorization", value) for value in request.headers.getall("Authorization", ())]
        rejection = self._auth.authorize(rpc, metadata)
        if rejection is None:
            return None
        status = HTTP_STATUS.get(rejection.code, 500)
        message = rejection.details.replace("the metadata 'authorization: Bearer <token>'",
                                            "the header 'Authorization: Bearer <token>'")
        error = ApiError(status, message, code=rejection.reason)
        for key, value in rejection.trailing_metadata:
            if key == RETRY_AFTER_KEY:
                error.headers["Retry-After"] = str(max(1, math.ceil(int(value) / 1000)))
                error.headers["retry-after-ms"] = value
        if status == 401:
            error.headers["WWW-Authenticate"] = "Bearer"
        return error

    @staticmethod
    def _json(body: Any, status: int, headers: dict[str, str]) -> web.Response:
        return web.Response(body=json.dumps(body, separators=(",", ":")).encode(), status=status,
                            content_type=JSON_TYPE, headers=headers)

    def _error(self, error: ApiError, request_id: str, extra: Sequence[tuple[str, str]] = ()) -> web.Response:
        return self._json(error.body(), error.status, {**error.headers, REQUEST_ID_KEY: request_id, **dict(extra)})

    # GET endpoints -------------------------------------------------------------------------------

    async def _models(self, request: web.BaseRequest, request_id: str) -> web.Response:
        error = self._authorize(request, LIST_RPC)
        if error is not None:
            return self._error(error, request_id)
        names = self._servicer.state.cfg.expert_names
        return self._json(models_response(names, self._started), 200, {REQUEST_ID_KEY: request_id})

    async def _health(self, request: web.BaseRequest, request_id: str) -> web.Response:
        """Open without a token, like the gRPC health service: 200 while some expert can serve, else 503."""
        experts = {name: any(r.healthy for r in replicas) for name, replicas in self._servicer.state.upstream.status()}
        serving = any(experts.values())
        return self._json({"status": "ok" if serving else "unavailable", "experts": experts},
                          200 if serving else 503, {REQUEST_ID_KEY: request_id})

    # Generation ----------------------------------------------------------------------------------

    async def _chat(self, request: web.BaseRequest, request_id: str) -> web.StreamResponse:
        return await self._generate(request, request_id, chat=True)

    async def _completions(self, request: web.BaseRequest, request_id: str) -> web.StreamResponse:
        return await self._generate(request, request_id, chat=False)

    async def _read_body(self, request: web.BaseRequest, limit: int) -> bytes:
        if request.content_type != JSON_TYPE:
            raise ApiError(415, f"Content-Type must be {JSON_TYPE}, got {request.content_type!r}; send a JSON "
                                f"body with 'Content-Type: {JSON_TYPE}'", code="unsupported_media_type")
        too_large = ApiError(413, f"the request body is over {limit} bytes (max_message_bytes); send a "
                                  f"shorter prompt", code="request_too_large")
        if request.content_length is not None and request.content_length > limit:
            raise too_large
        chunks: list[bytes] = []
        size = 0
        while chunk := await request.content.readany():
            size += len(chunk)
            if size > limit:
                raise too_large
            chunks.append(chunk)
        return b"".join(chunks)

    async def _generate(self, request: web.BaseRequest, request_id: str, *, chat: bool) -> web.StreamResponse:
        dispatch = self._servicer.dispatcher
        record = dispatch.begin("http", "http", self._servicer.state)
        record.request_id, record.path = request_id, request.path
        state = record.state
        try:
            try:
                error = self._authorize(request, GENERATE_RPC)
                if error is not None:
                    raise error
                body = await self._read_body(request, state.cfg.max_message_bytes)
                data = parse_json_body(body)
                experts = state.cfg.expert_names
                parsed = chat_request(data, experts) if chat else completion_request(data, experts)
                message = record.message = parsed.request
                message.request_id = request_id
                if parsed.model != AUTO_MODEL:
                    message.expert = parsed.model
                forwarded = dispatch.identify(record, request_id, [(key, request.headers[key]) for key in TRACE_KEYS
                                                                   if key in request.headers])
                validate_generate_request(message, state.cfg.max_prompt_bytes)
                await dispatch.route(record, message)
                call, frame = await dispatch.open_stream(record, message.SerializeToString(), no_deadline,
                                                         forwarded)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the error table, as at the gRPC edge
                error = api_error_for(exc)
                dispatch.failed(record, exc, _grpc_code(error) if isinstance(exc, ApiError) else None)
                return self._error(error, request_id)
            route = record.route
            headers = {"x-expert": route.expert, "x-expert-source": route.source,
                       "x-classifier-version": route.classifier_version, REQUEST_ID_KEY: request_id}
            if route.score is not None:
                headers["x-expert-score"] = f"{route.score:.6f}"
            if route.cascade:
                headers["x-expert-cascade"] = route.cascade
            if parsed.stream:
                return await self._stream(request, record, parsed, call, frame, headers, chat=chat)
            return await self._whole(record, parsed, call, frame, headers, chat=chat)
        except grpc.aio.AioRpcError as err:  # mid-stream failure of a non-streamed answer
            return self._error(api_error_for(dispatch.upstream_failed(record, err)), request_id)
        except (ConnectionResetError, asyncio.CancelledError):
            record.code = None  # the client went away: the upstream call is cancelled at the end
            raise
        finally:
            dispatch.end(record)

    async def _whole(self, record: CallRecord, parsed: ParsedRequest, call: grpc.aio.UnaryStreamCall,
                     frame: Any, headers: dict[str, str], *, chat: bool) -> web.Response:
        """A non-streamed answer: every frame read, then one JSON body."""
        response_id = ("chatcmpl-" if chat else "cmpl-") + record.request_id
        created = int(time.time())
        texts = record.outputs = []
        parse = pb.GenerateResponse.FromString
        last: pb.GenerateResponse | None = None
        while frame is not EOF:
            message = parse(frame)
            if record.frames == 0:
                record.ttft = time.perf_counter() - record.received
            record.frames += 1
            record.bytes += len(frame)
            texts.append(message.text)
            if message.finish_reason:
                last = message
            frame = await call.read()
        record.code = grpc.StatusCode.OK
        body = completion_response(parsed, response_id, created, record.route.expert, "".join(texts), last)
        return self._json(body, 200, headers)

    async def _stream(self, request: web.BaseRequest, record: CallRecord, parsed: ParsedRequest,
                      call: grpc.aio.UnaryStreamCall, frame: Any, headers: dict[str, str], *,
                      chat: bool) -> web.StreamResponse:
        """A streamed answer: one server-sent event per frame with text, ``[DONE]`` at the end."""
        response_id = ("chatcmpl-" if chat else "cmpl-") + record.request_id
        writer = ChunkWriter(parsed, response_id, int(time.time()), record.route.expert)
        response = web.StreamResponse(headers={**headers, "Cache-Control": "no-cache"})
        response.content_type = "text/event-stream"
        await response.prepare(request)
        opening = writer.role() if chat else b""
        texts = record.outputs = [] if self._servicer.log_prompts else None
        gaps = record.gaps = [0] * len(ITL_BOUNDS)
        parse = pb.GenerateResponse.FromString
        read = call.read
        last: pb.GenerateResponse | None = None
        try:
            previous = time.perf_counter()
            # The hot loop: one parse and one write per frame; metrics are added once at the end.
            while frame is not EOF:
                message = parse(frame)
                now = time.perf_counter()
                if record.frames == 0:
                    record.ttft = now - record.received
                else:
                    gap = now - previous
                    gaps[itl_bucket(gap)] += 1
                    record.gap_sum += gap
                previous = now
                record.frames += 1
                record.bytes += len(frame)
                if texts is not None:
                    texts.append(message.text)
                if message.finish_reason:
                    last = message
                if message.text or opening:
                    await response.write(opening + writer.delta(message.text))
                    opening = b""
                frame = await read()
            await response.write(opening + writer.finish(last or pb.GenerateResponse()))
            record.code = grpc.StatusCode.OK
        except grpc.aio.AioRpcError as err:  # the expert failed mid-stream: one error event, no [DONE]
            error = self._servicer.dispatcher.upstream_failed(record, err)
            await response.write(ChunkWriter.error(api_error_for(error)))
        await response.write_eof()
        return response


def _grpc_code(error: ApiError) -> grpc.StatusCode:
    """The status one of the door's own errors counts as in metrics and logs (the gRPC door's names)."""
    if error.status == 404:
        return grpc.StatusCode.NOT_FOUND
    if error.status in (401,):
        return grpc.StatusCode.UNAUTHENTICATED
    if error.status == 403:
        return grpc.StatusCode.PERMISSION_DENIED
    if error.status == 429:
        return grpc.StatusCode.RESOURCE_EXHAUSTED
    return grpc.StatusCode.INVALID_ARGUMENT
