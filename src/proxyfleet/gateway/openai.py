"""The OpenAI routes: every ``/v1/...`` HTTP request, proxied through the pool.

``/v1/chat/completions`` and ``/v1/responses`` must be JSON objects (with ``provider: chat``
the latter is translated to a chat completion); ``/v1/models`` comes from the config or a
cached upstream answer; any other path goes to the same path under the backend's base URL.
What the response was is recorded once (:class:`~proxyfleet.gateway.recording.Recording`)
and reported when the request is finished: metrics, the access log, stream events for an
orchestrator, debug mode.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from proxyfleet._asgi import Receive, Scope, Send, read_body, send_error, sse_error
from proxyfleet.debuglog.requests import RequestLog
from proxyfleet.errors import (
    ClientGone,
    GatewayError,
    NoHealthyBackend,
    PoolClosed,
    UpgradeRequired,
)
from proxyfleet.gateway.admission import Admission
from proxyfleet.gateway.auth import ClientAuth
from proxyfleet.gateway.forward import Forwarder, StreamBroken, Transform
from proxyfleet.gateway.metrics import GatewayMetrics
from proxyfleet.gateway.models import Models
from proxyfleet.gateway.recording import Recording
from proxyfleet.gateway.rules import (
    forwarded_headers,
    header,
    parse_json,
    request_id,
    strip_query,
    upstream_path,
)
from proxyfleet.gateway.translate import ChatToResponses
from proxyfleet.logs import event
from proxyfleet.orchestrator.events import StreamEvents
from proxyfleet.providers.request import TranslateOptions, dumps, responses_to_chat
from proxyfleet.providers.response import ResponseShape
from proxyfleet.transports import Request

__all__ = ["OpenAIRoutes"]

_log = logging.getLogger("proxyfleet.gateway")
_ROUTES = {
    "/v1/chat/completions": "chat_completions",
    "/v1/responses": "responses",
    "/v1/models": "models",
}
_JSON_ROUTES = frozenset({"chat_completions", "responses"})


class OpenAIRoutes:
    def __init__(
        self,
        forwarder: Forwarder,
        *,
        auth: ClientAuth,
        admission: Admission,
        metrics: GatewayMetrics,
        models: Models,
        body_limit: int,
        max_json_depth: int,
        pool_size: Callable[[], int],
        translate: TranslateOptions | None = None,
        events: StreamEvents | None = None,
        debug: RequestLog | None = None,
        access_log: bool = False,
    ) -> None:
        self._forwarder = forwarder
        self._auth = auth
        self._strip = auth.enabled  # the client's own key never goes upstream
        self._admission = admission
        self._metrics = metrics
        self._models = models
        self._body_limit = body_limit
        self._max_depth = max_json_depth
        self._pool_size = pool_size
        self._translate = translate
        self._events = events
        self._debug = debug
        self._access_log = access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send, path: str) -> None:
        rid = request_id(header(scope, b"x-request-id"))
        recording = Recording(send, rid, time.perf_counter())
        if self._debug is not None:
            recording.on_stream = self._debug.stream_started
        route = _ROUTES.get(path, "passthrough")
        admission = self._admission
        admitted = False
        try:
            self._auth.authorize(scope)
            if admission.active >= admission.limit:
                raise admission.refuse()
            admission.active += 1
            admitted = True
            await self._serve(scope, receive, path, route, recording)
        except GatewayError as error:
            await self._refused(recording, error)
        except ClientGone:
            recording.gone = True
        except StreamBroken:
            pass  # the response is left incomplete on purpose; the client sees the truncation
        except Exception as exc:
            await self._failed(recording, exc)
        except asyncio.CancelledError:
            # The server cancels what is left when the drain grace runs out: say so, and end.
            await _cancelled(recording)
        finally:
            if admitted:
                admission.active -= 1
            self._finished(scope, path, route, recording)

    async def _refused(self, recording: Recording, error: GatewayError) -> None:
        if not recording.answered:
            await send_error(recording.send, error, recording.rid.encode())
        if self._debug is not None and isinstance(error, NoHealthyBackend):
            self._debug.recorder.no_healthy_backend(recording.rid, self._pool_size())

    async def _failed(self, recording: Recording, exc: Exception) -> None:
        """A bug of ours: logged with its traceback, answered 500 when nothing went out yet."""
        _log.exception("request %s failed inside the gateway", recording.rid, exc_info=exc)
        if self._debug is not None:
            self._debug.recorder.error(recording.rid, "gateway", "request", exc)
        if not recording.answered:
            internal = GatewayError("internal error in the gateway")
            await send_error(recording.send, internal, recording.rid.encode())

    async def _serve(
        self, scope: Scope, receive: Receive, path: str, route: str, recording: Recording
    ) -> None:
        query = scope["query_string"]
        if query and self._strip:  # the gateway's own key never goes upstream, even in a query
            query = strip_query(query, self._auth.is_key)
        tail = upstream_path(path, scope.get("raw_path"), query)
        method = scope["method"]
        if route == "responses" and method == "GET":
            raise UpgradeRequired(
                "GET /v1/responses is the Responses API over WebSocket: send it with "
                "'Connection: Upgrade' and 'Upgrade: websocket' (a proxy in front may have "
                "dropped them), or POST /v1/responses"
            )
        body = await read_body(scope, receive, self._body_limit)
        transform: Transform | None = None
        if route in _JSON_ROUTES and method == "POST":
            data = parse_json(body, self._max_depth)
            if route == "responses" and self._translate is not None:
                tail, body, transform = self._to_chat(data, recording.rid)
        send: Send = recording.send
        if route == "models" and method == "GET":
            if await self._models.answer(send, recording.rid):
                return
            send = self._models.caching(send)
        headers = forwarded_headers(
            scope["headers"],
            recording.rid,
            strip_client_auth=self._strip,
            extra=None if transform is None else transform.upstream_headers,
        )
        request = Request(method, tail, headers, body)
        await self._forward_watched(receive, request, recording, send, transform)

    def _to_chat(self, data: dict[str, Any], rid: str) -> tuple[str, bytes, Transform]:
        """``provider: chat``: the Responses request as a Chat Completions one."""
        options = self._translate
        assert options is not None  # only called when translating
        chat = responses_to_chat(data, options)
        if chat.dropped:
            event(_log, "translation_dropped", logging.DEBUG, request_id=rid, fields=chat.dropped)
        shape = ResponseShape.of(data, f"resp_{rid}", int(time.time()))
        return "/chat/completions", dumps(chat.body), ChatToResponses(shape, chat.stream)

    async def _forward_watched(
        self,
        receive: Receive,
        request: Request,
        recording: Recording,
        send: Send,
        transform: Transform | None,
    ) -> None:
        """Forward, watching for the client to leave. Before a backend is leased, leaving
        cancels the request at once; after, the backend is settled first (see
        :class:`~proxyfleet.gateway.forward.Abandon`) and freed only then."""
        task = asyncio.current_task()
        assert task is not None  # we run inside the server's request task
        finished = False
        abandon = self._forwarder.abandon

        def on_message(watcher: asyncio.Future[Any]) -> None:
            if finished or recording.complete or watcher.cancelled():
                return
            if watcher.exception() is not None:
                return
            if watcher.result().get("type") != "http.disconnect":
                return
            recording.gone = True
            if recording.backend is None or recording.answering or not abandon.waits_for_the_head:
                task.cancel()
            # else: the upstream has the request; its answer is drained when its head comes

        watcher = asyncio.ensure_future(receive())
        watcher.add_done_callback(on_message)
        try:
            await self._forwarder.forward(request, recording, send, transform)
        except asyncio.CancelledError:
            if recording.gone and task.cancelling():  # left while waiting for a backend
                task.uncancel()
                raise ClientGone() from None
            raise
        finally:
            finished = True
            if not watcher.done():
                watcher.cancel()

    def _finished(self, scope: Scope, path: str, route: str, recording: Recording) -> None:
        elapsed = time.perf_counter() - recording.started
        self._metrics.observe(route, recording.status or 499, elapsed)
        if self._events is not None:
            self._events.ended(recording.rid, recording.end_reason())
        if self._debug is not None:
            self._debug.finished(scope["method"], path, recording, elapsed, self._pool_size())
        if self._access_log:
            event(
                _log,
                "request",
                method=scope["method"],
                path=path,
                status=recording.shown_status,
                request_id=recording.rid,
                backend=recording.backend,
                bytes=recording.bytes,
                duration_ms=round(elapsed * 1000, 2),
            )


async def _cancelled(recording: Recording) -> None:
    task = asyncio.current_task()
    if task is not None:
        task.uncancel()
    error = PoolClosed("the gateway is shutting down; retry", retry_after=1.0)
    with contextlib.suppress(OSError, RuntimeError):
        if not recording.answered:
            await send_error(recording.send, error, recording.rid.encode())
        elif recording.sse and not recording.complete:
            await recording.send({"type": "http.response.body", "body": sse_error(error)})
