"""The ``http`` transport: HTTP/1.1 upstreams through the lean keep-alive client, WebSockets
through aiohttp.

A backend's credentials are applied here, per request: its static headers (an API key's
``Authorization``, a headers file) replace the client's headers of the same names, and a
Playwright storage state becomes the ``Cookie`` of the cookies that match the backend's URL
(recomputed when the first of them expires). Connect errors, timeouts and broken answers come
out as :class:`~proxyfleet.errors.UpstreamError` and its subclasses.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp

from proxyfleet.errors import UpstreamClosed, UpstreamError, UpstreamRefused
from proxyfleet.pool.backend import BackendSpec, cookie_header, public_url
from proxyfleet.transports._client import Credentials, Origin, UpstreamClient
from proxyfleet.transports.base import Exchange, Request

__all__ = ["HttpTransport"]

_FOREVER = float("inf")


@dataclass(slots=True)
class _Route:
    """What is worked out once per backend: where it is, what it adds to each request."""

    origin: Origin
    credentials: Credentials
    until: float  # unix time the credentials stay right until (cookies expire)
    label: str  # how errors name the backend


def _credentials(backend: BackendSpec, now: float) -> tuple[Credentials, float]:
    own = list(backend.headers)
    until = _FOREVER
    if backend.cookies:
        value, until = cookie_header(backend.cookies, backend.base_url, now)
        if value:
            own.append(("Cookie", value))
    return (tuple(own), frozenset(name.lower() for name, _ in own)), until


class _Channel:
    """An upstream WebSocket (aiohttp), as a :class:`~proxyfleet.transports.base.Channel`."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._ws = ws
        self.subprotocol = ws.protocol

    async def send(self, message: str | bytes) -> None:
        try:
            if isinstance(message, str):
                await self._ws.send_str(message)
            else:
                await self._ws.send_bytes(message)
        except (aiohttp.ClientError, OSError) as exc:
            raise UpstreamClosed(f"upstream WebSocket lost: {type(exc).__name__}") from exc

    async def receive(self) -> str | bytes | None:
        while True:
            try:
                message = await self._ws.receive()
            except (aiohttp.ClientError, OSError) as exc:
                raise UpstreamClosed(f"upstream WebSocket lost: {type(exc).__name__}") from exc
            if message.type is aiohttp.WSMsgType.TEXT:
                return str(message.data)
            if message.type is aiohttp.WSMsgType.BINARY:
                return bytes(message.data)
            if message.type is aiohttp.WSMsgType.ERROR:
                raise UpstreamClosed(f"upstream WebSocket failed: {message.data!r}")
            if message.type in (
                aiohttp.WSMsgType.CLOSE,
                aiohttp.WSMsgType.CLOSING,
                aiohttp.WSMsgType.CLOSED,
            ):
                return None

    @property
    def close_code(self) -> int | None:
        return self._ws.close_code

    async def close(self, code: int = 1000) -> None:
        with contextlib.suppress(aiohttp.ClientError, OSError):
            await self._ws.close(code=code)


class HttpTransport:
    """``async with HttpTransport(connect_timeout=…, read_timeout=…) as http:``."""

    def __init__(self, *, connect_timeout: float = 10.0, read_timeout: float = 600.0) -> None:
        self._client = UpstreamClient(connect_timeout=connect_timeout, read_timeout=read_timeout)
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._routes: dict[str, _Route] = {}
        self._session: aiohttp.ClientSession | None = None  # made for the first WebSocket

    async def __aenter__(self) -> HttpTransport:
        await self._client.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._client.close()
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _route(self, backend: BackendSpec) -> _Route:
        route = self._routes.get(backend.id)
        if route is None or (route.until != _FOREVER and route.until < time.time()):
            credentials, until = _credentials(backend, time.time())
            label = f"backend {backend.id} at {public_url(backend.base_url)}"
            route = self._routes[backend.id] = _Route(
                Origin.parse(backend.base_url), credentials, until, label
            )
        return route

    def handle(self, backend: BackendSpec, request: Request) -> Coroutine[Any, Any, Exchange]:
        # Not a coroutine of its own: the client's request is the only await on the hot path.
        route = self._routes.get(backend.id)
        if route is None or (route.until != _FOREVER and route.until < time.time()):
            route = self._route(backend)
        return self._client.request(
            route.origin,
            request.method,
            request.target,
            request.headers,
            request.body,
            route.credentials,
            route.label,
        )

    async def connect(
        self, backend: BackendSpec, request: Request, subprotocols: Sequence[str] = ()
    ) -> _Channel:
        route = self._route(backend)
        headers = {
            name: value
            for name, value in request.headers.items()
            if name not in route.credentials[1] and not name.startswith("sec-websocket-")
        }
        headers.update(route.credentials[0])
        url = backend.base_url + request.target
        url = ("wss://" + url[8:]) if url.startswith("https://") else ("ws://" + url[7:])
        try:
            ws = await self._websockets().ws_connect(
                url,
                headers=headers,
                protocols=tuple(subprotocols),
                autoping=True,
                heartbeat=None,
                max_msg_size=0,
            )
        except aiohttp.WSServerHandshakeError as exc:
            raise UpstreamRefused(
                f"backend {backend.id} refused the WebSocket ({exc.status})", exc.status
            ) from exc
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise UpstreamError(
                f"backend {backend.id} at {public_url(backend.base_url)} is unreachable"
            ) from exc
        return _Channel(ws)

    def _websockets(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, limit_per_host=0),
                timeout=aiohttp.ClientTimeout(
                    total=None, sock_connect=self._connect_timeout, sock_read=self._read_timeout
                ),
                auto_decompress=False,
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        return self._session

    def forget(self, backend: BackendSpec) -> None:
        self._routes.pop(backend.id, None)
        self._client.forget(Origin.parse(backend.base_url))

    @property
    def open_connections(self) -> int:
        return self._client.open_connections
