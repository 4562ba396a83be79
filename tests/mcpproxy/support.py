"""Helpers of the MCP proxy tests: the two test servers, JSON-RPC lines, the gateway with one
MCP route, raw JSON-RPC over HTTP, SSE bodies, waiting for a condition, and whether a process
still runs (or is this process's child)."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import yaml
from aiohttp import web

from proxyfleet.mcpproxy.jsonrpc import Message, parse_line
from tests import redisd
from tests.conftest import Proc, Processes

HERE = Path(__file__).parent
SERVER = str(HERE / "server_app.py")  # the real mcp SDK server (stdio, or --http PORT)
MIRROR = str(HERE / "mirror_server.py")  # the scriptable stdlib one, for the unit tests
INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": {"name": "raw", "version": "0"},
    },
}
INITIALIZED = {"jsonrpc": "2.0", "method": "notifications/initialized"}
ACCEPT = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


def mirror(*flags: str) -> list[str]:
    """The command line of the mirror server."""
    return [sys.executable, MIRROR, *flags]


def request(ident: Any, method: str, **params: Any) -> dict[str, Any]:
    message: dict[str, Any] = {"jsonrpc": "2.0", "id": ident, "method": method}
    if params:
        message["params"] = params
    return message


def line(message: dict[str, Any]) -> bytes:
    """A message as one JSON line (no newline)."""
    return orjson.dumps(message)


def msg(message: dict[str, Any]) -> Message:
    """A message as the proxy reads it."""
    return parse_line(line(message))


def free_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def gateway(
    procs: Processes,
    tmp: Path,
    upstream: str | None = None,
    *,
    command: list[str] | None = None,
    flags: tuple[str, ...] = (),
    **route: Any,
) -> Proc:
    """The gateway with one MCP route: a stdio child per session of ``command`` (the test
    server when not given), or the server at ``upstream`` (a URL); ``flags`` go to ``serve``."""
    target = {"url": upstream} if upstream else {"command": command or [sys.executable, SERVER]}
    config = {"mcp": [{"path": "/mcp", "upstream": target, **route}]}
    path = tmp / "mcp.yaml"
    path.write_text(yaml.safe_dump(config))
    return procs.gateway("--config", str(path), *flags)


def url(proc: Proc) -> str:
    return proc.root + "/mcp"


def alive(pid: int) -> bool:
    """The process runs (a zombie does not count)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False


def reaped(pid: int) -> bool:
    """The process is gone, zombie included: its parent waited for it."""
    return not os.path.exists(f"/proc/{pid}")


def my_children() -> list[int]:
    """The live processes whose parent is this (test) process, the session's shared Redis
    aside (an earlier test may have started it)."""
    found, shared = [], redisd.shared_pid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                state, ppid = handle.read().rsplit(") ", 1)[1].split()[:2]
        except (FileNotFoundError, ProcessLookupError):
            continue
        if int(ppid) == os.getpid() and state != "Z" and int(entry) != shared:
            found.append(int(entry))
    return found


async def until(check: Callable[[], Any], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def drain(queue: asyncio.Queue[bytes | None], timeout: float = 5.0) -> list[Any]:
    """What an exchange's (or a stream's) queue yields up to its end marker, decoded."""
    items: list[Any] = []
    async with asyncio.timeout(timeout):
        while (item := await queue.get()) is not None:
            items.append(json.loads(item))
    return items


def sse_messages(body: bytes) -> list[Any]:
    """The JSON of every ``data:`` line of an SSE body."""
    return [
        json.loads(row[5:])
        for row in body.decode().splitlines()
        if row.startswith("data:") and row[5:].strip().startswith(("{", "["))
    ]


class Notes:
    """Collects the log notifications one client receives."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    async def __call__(self, params: Any) -> None:
        self.seen.append(str(params.data))


def http_server(procs: Processes) -> str:
    """The test server itself on streamable HTTP; its URL."""
    port = free_port()
    proc = procs.spawn_python(SERVER, "--http", str(port))
    proc.wait_for_line("INFO:     Uvicorn running on", timeout=30)
    return f"http://127.0.0.1:{port}/mcp"


async def raw_post(
    session: aiohttp.ClientSession, gw: Proc, body: object, headers: dict[str, str] | None = None
) -> tuple[int, Mapping[str, str], Any]:
    return await post(session, url(gw), body, headers)


async def post(
    session: aiohttp.ClientSession, where: str, body: object, headers: dict[str, str] | None = None
) -> tuple[int, Mapping[str, str], Any]:
    """POST a JSON-RPC body: status, headers (any case), and the JSON answer (other bodies as
    bytes)."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    async with session.post(where, data=data, headers={**ACCEPT, **(headers or {})}) as r:
        text = await r.read()
        parsed = json.loads(text) if text and r.content_type == "application/json" else text
        return r.status, r.headers.copy(), parsed


# -- a scripted streamable-HTTP MCP server (aiohttp.web handlers) ----------------------------


@dataclass
class Seen:
    method: str
    headers: dict[str, str]
    body: bytes
    peer_port: int


@dataclass
class Scripted:
    """A streamable-HTTP server scripted by a test: ``handler`` answers, ``seen`` records."""

    url: str
    seen: list[Seen] = field(default_factory=list)

    def methods(self) -> list[str]:
        return [s.method for s in self.seen]


def json_answer(message: Any, status: int = 200, **headers: str) -> web.Response:
    return web.Response(
        status=status, body=orjson.dumps(message), content_type="application/json", headers=headers
    )


def sse_answer(*events: bytes) -> web.Response:
    return web.Response(body=b"".join(events), content_type="text/event-stream")


def mcp_like(**answers: Callable[[dict[str, Any]], web.Response]) -> Any:
    """A scripted MCP server: ``initialize`` gives session ``up-1``, notifications and
    responses get 202, DELETE 200, GET 405; a request is answered by ``answers[method]``, else
    with ``{"method": method}``."""

    async def handle(request: web.Request) -> web.StreamResponse:
        if request.method == "DELETE":
            return web.Response(status=200)
        if request.method == "GET":
            return web.Response(status=405)
        message = json.loads(await request.read())
        method, ident = message.get("method"), message.get("id")
        if method is None or ident is None:
            return web.Response(status=202)
        if method == "initialize":
            result = {"protocolVersion": "2025-06-18", "capabilities": {}, "serverInfo": {}}
            return json_answer(
                {"jsonrpc": "2.0", "id": ident, "result": result}, **{"Mcp-Session-Id": "up-1"}
            )
        if method in answers:
            return answers[method](message)
        return json_answer({"jsonrpc": "2.0", "id": ident, "result": {"method": method}})

    return handle


# -- one MCP session over raw HTTP, on either transport -------------------------------------

TRANSPORTS = ("streamable-http", "sse")


class RawSession:
    """One session on an MCP route over raw HTTP, streamable or legacy SSE alike, so that one
    test runs on both: ``async with RawSession(http, where, transport) as session:``, then
    ``status, answer = await session.call(message)``. On SSE the status is the POST's (202
    is shown as 200) and the answer comes from the stream; the stream ending without it
    raises :class:`StreamEnded`."""

    def __init__(self, http: aiohttp.ClientSession, where: str, transport: str) -> None:
        self.http = http
        self.where = where
        self.sse = transport == "sse"
        self.id = ""
        self._post_to = where
        self._stream: aiohttp.ClientResponse | None = None
        self._reader: asyncio.Task[None] | None = None
        self._answers: dict[Any, asyncio.Future[Any]] = {}
        self.ended = asyncio.Event()

    async def __aenter__(self) -> RawSession:
        if self.sse:
            self._stream = await self.http.get(self.where + "/sse")
            assert self._stream.status == 200
            assert await self._stream.content.readline() == b"event: endpoint\n"
            endpoint = (await self._stream.content.readline()).decode().removeprefix("data: ")
            root = self.where.split("/", 3)
            self._post_to = "/".join(root[:3]) + endpoint.strip()
            self.id = self._post_to.rsplit("=", 1)[1]
            self._reader = asyncio.ensure_future(self._read())
            status, answer = await self.call(INIT)
        else:
            status, headers, answer = await post(self.http, self.where, INIT)
            self.id = headers["mcp-session-id"]
        assert status == 200, answer
        await self.call(INITIALIZED)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._reader is not None:
            self._reader.cancel()
        if self._stream is not None:
            self._stream.close()

    async def _read(self) -> None:
        assert self._stream is not None
        try:
            while row := await self._stream.content.readline():
                for message in sse_messages(row):
                    waiting = self._answers.pop(message.get("id"), None)
                    if waiting is not None and "method" not in message:
                        waiting.set_result(message)
        except aiohttp.ClientError:
            pass
        finally:
            self.ended.set()
            for waiting in self._answers.values():
                waiting.set_exception(StreamEnded("the SSE stream ended without the answer"))

    async def call(self, message: dict[str, Any]) -> tuple[int, Any]:
        """Send a message; the HTTP status and the answer to it (None for a notification)."""
        if not self.sse:
            status, _, body = await post(
                self.http, self.where, message, {"Mcp-Session-Id": self.id}
            )
            if isinstance(body, bytes) and body:  # an SSE answer: the response is its last event
                body = next(m for m in sse_messages(body) if m.get("id") == message.get("id"))
            return status, body or None
        answer: asyncio.Future[Any] | None = None
        if "id" in message and "method" in message:
            answer = asyncio.get_running_loop().create_future()
            self._answers[message["id"]] = answer
        async with self.http.post(self._post_to, json=message) as response:
            if response.status != 202:
                self._answers.pop(message.get("id"), None)
                return response.status, await response.json()
        return 200, None if answer is None else await answer


class StreamEnded(Exception):
    pass
