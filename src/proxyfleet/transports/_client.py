"""A lean HTTP/1.1 client for the proxy's hot path: keep-alive connections per origin.

It does what forwarding needs and nothing else (no cookies, redirects, decompression or
tracing): write the request in one call, hand back status and raw headers, then the body piece
by piece as it arrives. Measured against aiohttp's client in ``bench/``, it is the difference
between the gateway's overhead and the upstream's. Connect failures and timeouts are raised as
:class:`~proxyfleet.errors.UpstreamError` / :class:`~proxyfleet.errors.UpstreamTimeout`.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import ssl
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from proxyfleet.errors import StateError, UpstreamClosed, UpstreamError, UpstreamTimeout
from proxyfleet.transports._connection import Connection

__all__ = ["Credentials", "Origin", "UpstreamClient", "UpstreamResponse"]

#: Headers a backend adds to every request (its credentials), and the lowercased names of
#: the client headers they replace.
Credentials = tuple[tuple[tuple[str, str], ...], frozenset[str]]
_NONE: Credentials = ((), frozenset())


@dataclass(frozen=True, slots=True)
class Origin:
    scheme: str
    host: str
    port: int
    base_path: str  # e.g. "/v1", no trailing slash
    host_header: bytes

    @classmethod
    def parse(cls, url: str) -> Origin:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        default = 443 if parts.scheme == "https" else 80
        port = parts.port or default
        host = parts.hostname
        shown = f"[{host}]" if ":" in host else host
        header = shown if port == default else f"{shown}:{port}"
        return cls(parts.scheme, host, port, parts.path.rstrip("/"), header.encode("idna"))


class _State(enum.Enum):
    OPEN = "open"
    CLOSED = "closed"


class UpstreamResponse:
    """Status and raw headers at once; the body through :meth:`read` or :meth:`chunks`.

    Exactly one of :meth:`release` (the connection may be reused if the body was read to its
    end) or :meth:`close` (abort) ends it; both are idempotent.
    """

    __slots__ = (
        "_client",
        "_conn",
        "_done",
        "_read_timeout",
        "content_length",
        "content_type",
        "headers",
        "status",
    )

    def __init__(self, client: UpstreamClient, conn: Connection) -> None:
        self._client = client
        self._conn = conn
        self._done = False
        self.status = conn.status
        self.headers = conn.headers
        self.content_length: int | None = None
        self.content_type = b""
        for name, value in conn.headers:
            lowered = name.lower()
            if lowered == b"content-length":
                try:
                    self.content_length = int(value)
                except ValueError:
                    self.content_length = None
            elif lowered == b"content-type":
                self.content_type = value.split(b";", 1)[0].strip().lower()

    async def next_chunk(self) -> bytes | None:
        """The body received so far, or None at its end; TimeoutError after ``read_timeout``
        of silence, UpstreamClosed if the upstream breaks off."""
        return await self._conn.next_chunk()

    async def chunks(self) -> AsyncIterator[bytes]:
        while True:
            chunk = await self.next_chunk()
            if chunk is None:
                return
            yield chunk

    async def read(self) -> bytes:
        parts = [chunk async for chunk in self.chunks()]
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def release(self) -> None:
        if not self._done:
            self._done = True
            self._client._give_back(self._conn)

    def close(self) -> None:
        if not self._done:
            self._done = True
            self._conn.close()


class UpstreamClient:
    """Keep-alive connections to upstream origins. ``async with UpstreamClient() as client:``."""

    def __init__(
        self,
        *,
        connect_timeout: float = 10.0,
        read_timeout: float = 600.0,
        keepalive_timeout: float = 60.0,
        max_idle_per_origin: int = 1024,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._keepalive = keepalive_timeout
        self._max_idle = max_idle_per_origin
        self._ssl = ssl_context
        self._idle: dict[tuple[str, str, int], collections.deque[Connection]] = {}
        self._keys: dict[int, tuple[str, str, int]] = {}
        self._live: set[Connection] = set()
        self._state = _State.OPEN
        self._loop: asyncio.AbstractEventLoop | None = None

    async def __aenter__(self) -> UpstreamClient:
        self._loop = asyncio.get_running_loop()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        self._state = _State.CLOSED
        for conn in list(self._live):
            conn.close()
        self._idle.clear()
        self._live.clear()

    def forget(self, origin: Origin) -> None:
        """Close the idle connections to an origin that left the pool."""
        for conn in self._idle.pop((origin.scheme, origin.host, origin.port), ()):
            conn.close()

    @property
    def open_connections(self) -> int:
        return len(self._live)

    async def request(
        self,
        origin: Origin,
        method: str,
        target: str,
        headers: Mapping[str, str],
        body: bytes = b"",
        credentials: Credentials = _NONE,
        label: str = "upstream",
    ) -> UpstreamResponse:
        """Send ``method target`` (target = path + query, under the origin's base path), with
        the client's ``headers`` (lowercase names) and the backend's ``credentials`` on top.
        Errors name the upstream as ``label`` (e.g. ``backend b1 at http://…/v1``)."""
        if self._state is not _State.OPEN:
            raise StateError("the upstream client is closed")
        head = _request_head(origin, method, target, headers, credentials, body)
        payload = head + body if body else head
        head_only = method == "HEAD"
        try:
            conn, reused = await self._connection(origin)
            try:
                conn.send(payload, head_only, self._read_timeout)
                await conn.headers_done()
            except (UpstreamClosed, ConnectionResetError, BrokenPipeError) as exc:
                conn.close()
                if not (reused and not conn.received_any):
                    if isinstance(exc, OSError):
                        raise UpstreamClosed(f"connection lost: {type(exc).__name__}") from exc
                    raise
                # The origin closed an idle keep-alive connection just as we used it: nothing
                # was received, so the request never reached an application; send it again.
                conn, _ = await self._connection(origin, fresh=True)
                try:
                    conn.send(payload, head_only, self._read_timeout)
                    await conn.headers_done()
                except BaseException:
                    conn.close()
                    raise
            except BaseException:
                conn.close()
                raise
        except UpstreamTimeout as exc:
            raise UpstreamTimeout(f"{label} timed out ({exc.message})") from exc
        except UpstreamError as exc:
            raise type(exc)(f"{label} failed: {exc.message}") from exc
        return UpstreamResponse(self, conn)

    async def _connection(self, origin: Origin, fresh: bool = False) -> tuple[Connection, bool]:
        key = (origin.scheme, origin.host, origin.port)
        idle = self._idle.get(key)
        if idle and not fresh:
            loop = self._loop or asyncio.get_running_loop()
            now = loop.time()
            while idle:
                conn = idle.pop()
                if not conn.closed and now - conn.idle_since < self._keepalive:
                    return conn, True
                conn.close()
        loop = self._loop or asyncio.get_running_loop()
        context = None
        if origin.scheme == "https":
            context = self._ssl or ssl.create_default_context()
        try:
            async with asyncio.timeout(self._connect_timeout):
                _, conn = await loop.create_connection(
                    lambda: Connection(loop, self._lost),
                    origin.host,
                    origin.port,
                    ssl=context,
                    server_hostname=origin.host if context else None,
                )
        except TimeoutError as exc:
            raise UpstreamTimeout(f"no connection within {self._connect_timeout:g}s") from exc
        except OSError as exc:
            raise UpstreamError(type(exc).__name__) from exc
        self._live.add(conn)
        self._keys[id(conn)] = key
        return conn, False

    def _give_back(self, conn: Connection) -> None:
        if conn.closed or not conn.complete or not conn.keep_alive or self._state is _State.CLOSED:
            conn.close()
            return
        key = self._keys[id(conn)]
        idle = self._idle.setdefault(key, collections.deque())
        if len(idle) >= self._max_idle:
            conn.close()
            return
        conn.idle_since = (self._loop or asyncio.get_running_loop()).time()
        idle.append(conn)

    def _lost(self, conn: Connection) -> None:
        self._live.discard(conn)
        key = self._keys.pop(id(conn), None)
        if key is not None:
            idle = self._idle.get(key)
            if idle and conn in idle:
                idle.remove(conn)


def _request_head(
    origin: Origin,
    method: str,
    target: str,
    headers: Mapping[str, str],
    credentials: Credentials,
    body: bytes,
) -> bytes:
    lines = [
        f"{method} {origin.base_path}{target} HTTP/1.1\r\n".encode("latin-1"),
        b"host: " + origin.host_header + b"\r\n",
    ]
    own, replaced = credentials
    for name, value in headers.items():
        if name not in replaced:
            lines.append(f"{name}: {value}\r\n".encode("latin-1"))
    for name, value in own:
        lines.append(f"{name}: {value}\r\n".encode("latin-1"))
    if body or method in ("POST", "PUT", "PATCH"):
        lines.append(b"content-length: %d\r\n" % len(body))
    lines.append(b"\r\n")
    return b"".join(lines)
