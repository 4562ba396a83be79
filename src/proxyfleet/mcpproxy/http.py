"""The client side of an MCP route over streamable HTTP (raw ASGI).

``POST`` carries one JSON-RPC message or a batch: notifications and responses are accepted
with 202; requests are answered with ``application/json`` when the answer is a single
response, else with an SSE stream of everything the server sends for them. An ``initialize``
without ``Mcp-Session-Id`` opens a session (the id comes back in that header); any other
message without it is an exchange of the stateless protocol generation. ``GET`` opens the
session's stream of server-initiated messages; ``DELETE`` ends the session. The legacy SSE
transport sits beside it: ``GET <path>/sse`` and ``POST <path>/messages?session_id=``.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any
from urllib.parse import parse_qs

from proxyfleet._asgi import Receive, Scope, Send, read_body
from proxyfleet._asgi import retry_after as retry_after_value
from proxyfleet.errors import ClientGone, GatewayError
from proxyfleet.mcpproxy.jsonrpc import (
    INVALID_REQUEST,
    SERVER_ERROR,
    InvalidMessage,
    Kind,
    Message,
    error_body,
    parse_body,
)
from proxyfleet.mcpproxy.registry import Route
from proxyfleet.mcpproxy.remote import HttpUpstream
from proxyfleet.mcpproxy.session import Exchange, Session

__all__ = ["McpHttp", "send_mcp_error"]

_SSE_HEADERS = [
    (b"content-type", b"text/event-stream"),
    (b"cache-control", b"no-cache, no-transform"),
    (b"x-accel-buffering", b"no"),
]
_KEEPALIVE = 15.0


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")  # type: ignore[no-any-return]
    return None


async def _send_body(
    send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    head = [(b"content-length", str(len(body)).encode()), *(headers or [])]
    if body:
        head.append((b"content-type", b"application/json"))
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": body})


async def _send_error(
    send: Send,
    status: int,
    ident: Any,
    code: int,
    message: str,
    retry_after: float | None = None,
) -> None:
    headers = [(b"retry-after", retry_after_value(retry_after))] if retry_after else []
    await _send_body(send, status, error_body(ident, code, message), headers)


async def send_mcp_error(send: Send, status: int, message: str) -> None:
    """An HTTP error for an MCP route, as a JSON-RPC error body."""
    await _send_error(send, status, None, SERVER_ERROR, message)


def _first_request_id(messages: list[Message]) -> Any:
    return next((m.id for m in messages if m.kind is Kind.REQUEST), None)


class McpHttp:
    def __init__(self, route: Route, body_limit: int) -> None:
        self.route = route
        self._body_limit = body_limit
        self.sse_path = route.path + "/sse"
        self.messages_path = route.path + "/messages"

    @property
    def paths(self) -> tuple[str, str, str]:
        return self.route.path, self.sse_path, self.messages_path

    async def dispatch(
        self, scope: Scope, receive: Receive, send: Send, path: str, client: str
    ) -> None:
        """Streamable HTTP at the route's path; the legacy SSE transport beside it."""
        if path == self.route.path:
            await self.handle(scope, receive, send, client)
        elif path == self.sse_path and scope["method"] == "GET":
            await self._sse(receive, send, client)
        elif path == self.messages_path and scope["method"] == "POST":
            await self._message(scope, receive, send)
        else:
            allow = b"GET" if path == self.sse_path else b"POST"
            await _send_body(
                send,
                405,
                error_body(None, INVALID_REQUEST, f"{scope['method']} is not allowed on {path}"),
                [(b"allow", allow)],
            )

    async def handle(self, scope: Scope, receive: Receive, send: Send, client: str) -> None:
        method = scope["method"]
        if method == "POST":
            await self._post(scope, receive, send, client)
        elif method == "GET":
            await self._get(scope, receive, send)
        elif method == "DELETE":
            await self._delete(scope, send)
        else:
            await _send_body(
                send,
                405,
                error_body(None, INVALID_REQUEST, f"{method} is not an MCP method here"),
                [(b"allow", b"GET, POST, DELETE")],
            )

    # -- POST --------------------------------------------------------------------------------
    async def _post(self, scope: Scope, receive: Receive, send: Send, client: str) -> None:
        try:
            body = await read_body(scope, receive, self._body_limit)
        except GatewayError as error:
            await _send_error(send, error.status, None, INVALID_REQUEST, error.message)
            return
        try:
            messages = parse_body(body)
        except InvalidMessage as exc:
            await _send_error(send, 400, None, exc.code, str(exc))
            return
        ident = _first_request_id(messages)
        session_id = _header(scope, b"mcp-session-id")
        version = _header(scope, b"mcp-protocol-version")
        route = self.route
        try:
            if session_id:
                session = route.get(session_id)
                if session is None:
                    await _send_error(send, 404, ident, SERVER_ERROR, route.why_gone(session_id))
                    return
                await self._exchange(receive, send, session, messages, None, version)
            elif any(m.kind is Kind.REQUEST and m.method == "initialize" for m in messages):
                session = await route.open_session(client)
                await self._exchange(receive, send, session, messages, session.id, version)
            else:
                async with route.stateless(client) as session:
                    await self._exchange(receive, send, session, messages, None, version)
        except GatewayError as error:
            await _send_error(
                send, error.status, ident, SERVER_ERROR, error.message, error.retry_after
            )

    async def _exchange(
        self,
        receive: Receive,
        send: Send,
        session: Session,
        messages: list[Message],
        new_id: str | None,
        version: str | None = None,
    ) -> None:
        headers = [(b"mcp-session-id", new_id.encode())] if new_id else []
        if version is not None and isinstance(session.child, HttpUpstream):
            session.child.set_headers({"MCP-Protocol-Version": version})
        exchange = session.submit(messages)
        if exchange is None:
            await _send_body(send, 202, b"", headers)
            return
        try:
            await self._answer(receive, send, session, exchange, headers)
        except ClientGone:
            session.forget(exchange)

    async def _answer(
        self,
        receive: Receive,
        send: Send,
        session: Session,
        exchange: Exchange,
        headers: list[tuple[bytes, bytes]],
    ) -> None:
        async with _watch_disconnect(receive) as gone:
            first = await _next(exchange.queue, gone)
            assert first is not None  # the end marker only ever follows a message
            if not exchange.pending and exchange.queue.qsize() == 1:
                exchange.queue.get_nowait()  # the end marker
                if session.release is not None:
                    session.release()
                await _send_body(send, 200, first, headers)
                return
            await send(
                {"type": "http.response.start", "status": 200, "headers": _SSE_HEADERS + headers}
            )
            item: bytes | None = first
            while item is not None:
                await send({"type": "http.response.body", "body": _event(item), "more_body": True})
                item = await _next(exchange.queue, gone, keepalive=send)
            if session.release is not None:
                session.release()
            await send({"type": "http.response.body", "body": b"", "more_body": False})

    # -- GET: the stream of server-initiated messages ------------------------------------------
    async def _get(self, scope: Scope, receive: Receive, send: Send) -> None:
        session_id = _header(scope, b"mcp-session-id")
        if not session_id:
            await _send_error(
                send, 400, None, INVALID_REQUEST, "GET needs the Mcp-Session-Id header"
            )
            return
        if "text/event-stream" not in (_header(scope, b"accept") or ""):
            await _send_error(send, 406, None, INVALID_REQUEST, "GET must accept text/event-stream")
            return
        session = self.route.get(session_id)
        if session is None:
            await _send_error(send, 404, None, SERVER_ERROR, self.route.why_gone(session_id))
            return
        if session.stream is not None:
            await _send_error(
                send, 409, None, INVALID_REQUEST, "this session already has a GET stream open"
            )
            return
        queue = session.open_stream()
        try:
            await send({"type": "http.response.start", "status": 200, "headers": _SSE_HEADERS})
            async with _watch_disconnect(receive) as gone:
                while (item := await _next(queue, gone, keepalive=send)) is not None:
                    await send(
                        {"type": "http.response.body", "body": _event(item), "more_body": True}
                    )
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except ClientGone:
            pass
        finally:
            session.close_stream(queue)

    # -- the legacy SSE transport ----------------------------------------------------------
    async def _sse(self, receive: Receive, send: Send, client: str) -> None:
        await _sse_session(self, receive, send, client)

    async def _message(self, scope: Scope, receive: Receive, send: Send) -> None:
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        session_id = (query.get("session_id") or [""])[0]
        session = self.route.get(session_id) if session_id else None
        if session is None or not session.legacy:
            reason = self.route.why_gone(session_id) if session_id else "no session_id"
            await _send_error(send, 404 if session_id else 400, None, SERVER_ERROR, reason)
            return
        try:
            body = await read_body(scope, receive, self._body_limit)
            messages = parse_body(body)
        except GatewayError as error:
            await _send_error(send, error.status, None, INVALID_REQUEST, error.message)
            return
        except InvalidMessage as exc:
            await _send_error(send, 400, None, exc.code, str(exc))
            return
        session.submit(messages)
        await _send_body(send, 202, b"")

    # -- DELETE ------------------------------------------------------------------------------
    async def _delete(self, scope: Scope, send: Send) -> None:
        session_id = _header(scope, b"mcp-session-id")
        session = self.route.get(session_id) if session_id else None
        if session is None:
            message = self.route.why_gone(session_id) if session_id else "no Mcp-Session-Id"
            await _send_error(send, 404 if session_id else 400, None, SERVER_ERROR, message)
            return
        await self.route.close(session, "ended by the client (DELETE)")
        await _send_body(send, 200, b"")


async def _sse_session(endpoint: McpHttp, receive: Receive, send: Send, client: str) -> None:
    """The SSE transport of earlier MCP clients: ``GET …/sse`` opens a session and its one
    stream (the first event names where to POST); ``POST …/messages?session_id=`` is answered
    202 and everything the server says arrives on the stream. Closing the stream ends the
    session and stops its child."""
    route = endpoint.route
    try:
        session = await route.open_session(client, legacy=True)
    except GatewayError as error:
        await _send_error(send, error.status, None, SERVER_ERROR, error.message, error.retry_after)
        return
    queue = session.open_stream()
    try:
        await send({"type": "http.response.start", "status": 200, "headers": _SSE_HEADERS})
        where = f"{endpoint.messages_path}?session_id={session.id}".encode()
        await send(
            {
                "type": "http.response.body",
                "body": b"event: endpoint\ndata: " + where + b"\n\n",
                "more_body": True,
            }
        )
        async with _watch_disconnect(receive) as gone:
            while (item := await _next(queue, gone, keepalive=send)) is not None:
                await send({"type": "http.response.body", "body": _event(item), "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    except (ClientGone, OSError):
        pass
    finally:
        session.close_stream(queue)
        if route.get(session.id) is session:
            await route.close(session, "the client closed its SSE stream")


def _event(raw: bytes) -> bytes:
    return b"event: message\ndata: " + raw + b"\n\n"


@contextlib.asynccontextmanager
async def _watch_disconnect(receive: Receive) -> Any:
    """A future that completes when the client disconnects, cancelled on exit."""
    watcher = asyncio.ensure_future(_disconnected(receive))
    try:
        yield watcher
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher


async def _disconnected(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


async def _next(
    queue: asyncio.Queue[bytes | None], gone: asyncio.Future[None], keepalive: Send | None = None
) -> bytes | None:
    """The next item, unless the client leaves first; a comment line every ``_KEEPALIVE``
    seconds keeps idle streams open through proxies."""
    while True:
        if not queue.empty():
            return queue.get_nowait()
        getter: asyncio.Future[Any] = asyncio.ensure_future(queue.get())
        waiting: set[asyncio.Future[Any]] = {getter, gone}
        done, _ = await asyncio.wait(
            waiting,
            timeout=_KEEPALIVE if keepalive is not None else None,
            return_when=asyncio.FIRST_COMPLETED,
        )
        if getter in done:
            item: bytes | None = getter.result()
            return item
        getter.cancel()
        if gone in done:
            raise ClientGone()
        assert keepalive is not None
        await keepalive(
            {"type": "http.response.body", "body": b": keepalive\n\n", "more_body": True}
        )
