"""The client side of an MCP route (:mod:`proxyfleet.mcpproxy.http`) over real sockets: an
``McpHttp`` served by uvicorn on 127.0.0.1 in the test's loop, the mirror server behind it,
raw HTTP in front. POST answers (JSON, SSE, 202), GET streams, DELETE, the legacy SSE
transport, refusals and their JSON-RPC bodies, a client that leaves. End to end too: the real
``mcp`` SDK client through the gateway CLI to the SDK server; and, the same on both transports,
a request waiting on a server that dies (its pipes held open or not), a request that times out,
the requests in flight, and JSON-RPC ids beyond 64 bits."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from mcp import Client
from mcp.client.sse import sse_client
from mcp.shared.exceptions import MCPError

from proxyfleet.config.model import McpRouteConfig
from proxyfleet.mcpproxy.http import McpHttp
from proxyfleet.mcpproxy.registry import Route
from tests.conftest import Processes
from tests.mcpproxy.support import (
    ACCEPT,
    INIT,
    INITIALIZED,
    TRANSPORTS,
    Notes,
    RawSession,
    alive,
    gateway,
    mirror,
    post,
    request,
    sse_messages,
    until,
    url,
)


@dataclass
class Served:
    url: str  # the route's streamable-HTTP endpoint
    route: Route


Serve = Callable[..., Awaitable[Served]]


@pytest.fixture
async def serve(serve_asgi: Any) -> AsyncIterator[Serve]:
    """``served = await serve(body_limit=..., **route_config)``: a route to the mirror server
    at ``served.url``; every client is ``tester``."""
    routes: list[Route] = []

    async def start(body_limit: int = 64 * 1024, **config: Any) -> Served:
        route = Route(McpRouteConfig(path="/mcp", upstream={"command": mirror()}, **config))
        await route.start()
        routes.append(route)
        endpoint = McpHttp(route, body_limit)
        assert endpoint.paths == ("/mcp", "/mcp/sse", "/mcp/messages")

        async def app(scope: Any, receive: Any, send: Any) -> None:
            await endpoint.dispatch(scope, receive, send, scope["path"], "tester")

        return Served(await serve_asgi(app) + "/mcp", route)

    yield start
    for route in routes:
        await route.stop()


async def open_session(http: aiohttp.ClientSession, served: Served) -> str:
    status, headers, body = await post(http, served.url, INIT)
    assert status == 200, body
    await post(http, served.url, INITIALIZED, {"Mcp-Session-Id": headers["Mcp-Session-Id"]})
    return headers["Mcp-Session-Id"]


async def read_events(response: aiohttp.ClientResponse, count: int) -> list[Any]:
    """The next ``count`` JSON messages of an SSE response (five seconds at most)."""
    found: list[Any] = []
    async with asyncio.timeout(5):
        while len(found) < count:
            row = await response.content.readline()
            assert row, f"the stream ended after {found}"
            found += sse_messages(row)
    return found


async def test_initialize_opens_a_session_answered_as_json(
    serve: Serve, http: aiohttp.ClientSession
) -> None:
    served = await serve()
    status, headers, body = await post(http, served.url, INIT)
    assert status == 200
    assert headers["Content-Type"] == "application/json"
    session_id = headers["Mcp-Session-Id"]
    assert served.route.get(session_id) is not None
    assert body == {
        "jsonrpc": "2.0",
        "id": 1,
        "result": {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "serverInfo": {"name": "mirror", "version": "0"},
        },
    }
    status, headers, body = await post(
        http, served.url, request(2, "ping"), {"Mcp-Session-Id": session_id}
    )
    assert (status, body) == (200, {"jsonrpc": "2.0", "id": 2, "result": {}})
    assert "Mcp-Session-Id" not in headers  # only the answer that opened it carries it


async def test_a_request_with_server_messages_is_answered_as_sse(
    serve: Serve, http: aiohttp.ClientSession
) -> None:
    served = await serve()
    session = {"Mcp-Session-Id": await open_session(http, served)}
    status, headers, body = await post(http, served.url, request(2, "notify", text="n"), session)
    assert status == 200
    assert headers["Content-Type"] == "text/event-stream"
    assert headers["Cache-Control"] == "no-cache, no-transform"
    assert body.count(b"event: message\n") == 2
    assert sse_messages(body) == [
        {"jsonrpc": "2.0", "method": "notifications/message", "params": {"data": "n"}},
        {"jsonrpc": "2.0", "id": 2, "result": {"text": "n"}},
    ]


async def test_a_batch_is_answered_on_one_stream(serve: Serve, http: aiohttp.ClientSession) -> None:
    served = await serve()
    session = {"Mcp-Session-Id": await open_session(http, served)}
    batch = [request(2, "slow", seconds=0.1), INITIALIZED, request("b", "ping")]
    status, headers, body = await post(http, served.url, batch, session)
    assert status == 200
    assert headers["Content-Type"] == "text/event-stream"
    assert sse_messages(body) == [
        {"jsonrpc": "2.0", "id": "b", "result": {}},
        {"jsonrpc": "2.0", "id": 2, "result": "done"},
    ]
    status, _, body = await post(http, served.url, [INITIALIZED, INITIALIZED], session)
    assert (status, body) == (202, b"")


async def test_notifications_and_responses_are_accepted_with_202(
    serve: Serve, http: aiohttp.ClientSession
) -> None:
    served = await serve()
    session_id = await open_session(http, served)
    reply = {"jsonrpc": "2.0", "id": "srv-1", "result": {}}
    for message in (INITIALIZED, reply):
        status, headers, body = await post(
            http, served.url, message, {"Mcp-Session-Id": session_id}
        )
        assert (status, body) == (202, b"")
        assert headers["Content-Length"] == "0"
    assert served.route.get(session_id).messages_in == 4  # type: ignore[union-attr]


async def test_the_get_stream_of_server_initiated_messages(
    serve: Serve, http: aiohttp.ClientSession
) -> None:
    served = await serve()
    session_id = await open_session(http, served)
    session = {"Mcp-Session-Id": session_id}
    listen = {"Accept": "text/event-stream", **session}
    async with http.get(served.url, headers=listen) as stream:
        assert stream.status == 200
        assert stream.headers["Content-Type"] == "text/event-stream"
        await until(lambda: served.route.get(session_id).stream is not None)  # type: ignore[union-attr]
        async with http.get(served.url, headers=listen) as second:
            assert second.status == 409
            assert "already has a GET stream" in (await second.json())["error"]["message"]
        status, _, body = await post(
            http, served.url, request(2, "later", text="pushed", delay=0.05), session
        )
        assert (status, body["result"]) == (200, "scheduled")
        [pushed] = await read_events(stream, 1)
        assert pushed["params"] == {"data": "pushed"}
        async with http.delete(served.url, headers=session) as deleted:
            assert deleted.status == 200
        async with asyncio.timeout(5):
            assert (
                await stream.content.read()
            ).strip() == b""  # the session ended: so did its stream


@pytest.mark.parametrize(
    ("headers", "status", "message"),
    [
        ({"Accept": "text/event-stream"}, 400, "GET needs the Mcp-Session-Id header"),
        ({"Mcp-Session-Id": "x", "Accept": "application/json"}, 406, "must accept"),
        ({"Mcp-Session-Id": "nope", "Accept": "text/event-stream"}, 404, "unknown MCP session"),
    ],
)
async def test_get_refusals(
    serve: Serve, http: aiohttp.ClientSession, headers: dict[str, str], status: int, message: str
) -> None:
    served = await serve()
    async with http.get(served.url, headers=headers) as refused:
        assert refused.status == status
        body = await refused.json()
    assert body["jsonrpc"] == "2.0"
    assert body["id"] is None
    assert message in body["error"]["message"]


async def test_delete_ends_the_session_and_its_child(
    serve: Serve, http: aiohttp.ClientSession
) -> None:
    served = await serve()
    session_id = await open_session(http, served)
    pid = served.route.get(session_id).child.pid  # type: ignore[union-attr]
    async with http.delete(served.url, headers={"Mcp-Session-Id": session_id}) as deleted:
        assert deleted.status == 200
    assert not alive(pid)
    status, _, body = await post(
        http, served.url, request(2, "ping"), {"Mcp-Session-Id": session_id}
    )
    assert status == 404
    assert body["id"] == 2
    assert body["error"]["message"].endswith("has ended: ended by the client (DELETE)")
    async with http.delete(served.url) as missing:
        assert missing.status == 400
        assert (await missing.json())["error"]["message"] == "no Mcp-Session-Id"
    async with http.delete(served.url, headers={"Mcp-Session-Id": session_id}) as again:
        assert again.status == 404


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("PUT", "", "GET, POST, DELETE"),
        ("PATCH", "", "GET, POST, DELETE"),
        ("POST", "/sse", "GET"),
        ("DELETE", "/sse", "GET"),
        ("GET", "/messages", "POST"),
    ],
)
async def test_other_methods_are_refused_with_405(
    serve: Serve, http: aiohttp.ClientSession, method: str, path: str, allow: str
) -> None:
    served = await serve()
    async with http.request(method, served.url + path, data=b"{}") as refused:
        assert refused.status == 405
        assert refused.headers["Allow"] == allow
        body = await refused.json()
    assert body["error"]["code"] == -32600


@pytest.mark.parametrize(
    ("body", "status", "code", "message"),
    [
        (b"{not json", 400, -32700, "malformed JSON"),
        (b'{"id": 1, "method": "x"}', 400, -32600, "not a JSON-RPC 2.0 message"),
        (b"[]", 400, -32600, "an empty batch"),
        (
            b'{"jsonrpc": "2.0", "id": 1, "method": "x", "pad": "' + b"x" * 2000 + b'"}',
            413,
            -32600,
            "exceeds the 1024-byte limit",
        ),
    ],
)
async def test_bad_bodies_are_answered_with_json_rpc_errors(
    serve: Serve, http: aiohttp.ClientSession, body: bytes, status: int, code: int, message: str
) -> None:
    served = await serve(body_limit=1024)
    got, _, answer = await post(http, served.url, body)
    assert got == status
    assert answer["id"] is None
    assert answer["error"]["code"] == code
    assert message in answer["error"]["message"]
    assert served.route.describe()["children_started"] == 0  # nothing was started for it


async def test_the_session_limit_is_503_with_retry_after(
    serve: Serve, http: aiohttp.ClientSession
) -> None:
    served = await serve(max_sessions=1)
    await open_session(http, served)
    status, headers, body = await post(http, served.url, {**INIT, "id": "second"})
    assert status == 503
    assert headers["Retry-After"] == "1"
    assert body["id"] == "second"
    assert body["error"]["code"] == -32000
    assert "max_sessions 1" in body["error"]["message"]


async def test_a_request_without_a_session_is_a_stateless_exchange(
    serve: Serve, http: aiohttp.ClientSession
) -> None:
    served = await serve()
    status, headers, body = await post(http, served.url, request(5, "whoami"))
    assert (status, body["id"]) == (200, 5)
    assert "Mcp-Session-Id" not in headers
    status, _, again = await post(http, served.url, request(6, "whoami"))
    assert again["result"]["pid"] == body["result"]["pid"]  # the child was given back
    described = served.route.describe()
    assert described["sessions"] == []
    assert described["stateless_idle"] == 1
    assert described["children_started"] == 1


async def test_an_ended_session_is_404_with_the_reason(
    serve: Serve, http: aiohttp.ClientSession
) -> None:
    served = await serve()
    session = {"Mcp-Session-Id": await open_session(http, served)}
    status, _, body = await post(http, served.url, request(2, "exit", code=7), session)
    assert status == 200
    assert "exited with code 7" in body["error"]["message"]  # the request it died on
    status, _, body = await post(http, served.url, request(3, "ping"), session)
    assert status == 404
    assert "the session's upstream is gone" in body["error"]["message"]


async def test_a_client_that_leaves_mid_request_is_forgotten(
    serve: Serve, http: aiohttp.ClientSession
) -> None:
    served = await serve()
    session_id = await open_session(http, served)
    session = served.route.get(session_id)
    assert session is not None
    headers = {**ACCEPT, "Mcp-Session-Id": session_id}
    slow = json.dumps(request(2, "slow", seconds=0.3))
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.1):
            await http.post(served.url, data=slow, headers=headers)
    await until(lambda: not session.busy, timeout=5)
    await asyncio.sleep(0.4)  # the late answer came, and went nowhere
    status, _, body = await post(
        http, served.url, request(3, "ping"), {"Mcp-Session-Id": session_id}
    )
    assert (status, body) == (200, {"jsonrpc": "2.0", "id": 3, "result": {}})
    assert served.route.get(session_id) is session


async def test_the_legacy_sse_transport(serve: Serve, http: aiohttp.ClientSession) -> None:
    served = await serve()
    async with http.get(served.url + "/sse") as stream:
        assert stream.status == 200
        assert await stream.content.readline() == b"event: endpoint\n"
        endpoint = (await stream.content.readline()).decode().removeprefix("data: ").strip()
        assert endpoint.startswith("/mcp/messages?session_id=")
        session_id = endpoint.split("=", 1)[1]
        session = served.route.get(session_id)
        assert session is not None
        assert session.legacy
        where = served.url.removesuffix("/mcp") + endpoint
        async with http.post(where, json=request(1, "notify", text="old")) as accepted:
            assert accepted.status == 202
        got = await read_events(stream, 2)
        assert got == [
            {"jsonrpc": "2.0", "method": "notifications/message", "params": {"data": "old"}},
            {"jsonrpc": "2.0", "id": 1, "result": {"text": "old"}},
        ]
        async with http.post(where, data=b"{oops") as bad:
            assert bad.status == 400
        async with http.post(served.url + "/messages", json=request(2, "ping")) as no_id:
            assert no_id.status == 400
        async with http.post(served.url + "/messages?session_id=nope", json=INIT) as unknown:
            assert unknown.status == 404
        pid = session.child.pid  # type: ignore[union-attr]
    # the client closed its stream: the session ends, its child stops
    await until(lambda: served.route.get(session_id) is None, timeout=5)
    assert served.route.why_gone(session_id).endswith("the client closed its SSE stream")
    await until(lambda: not alive(pid), timeout=5)


async def test_a_streamable_session_takes_no_legacy_messages(
    serve: Serve, http: aiohttp.ClientSession
) -> None:
    served = await serve()
    session_id = await open_session(http, served)
    where = f"{served.url}/messages?session_id={session_id}"
    async with http.post(where, json=request(2, "ping")) as refused:
        assert refused.status == 404
    assert served.route.get(session_id) is not None


def _raw_post(body: dict[str, Any]) -> bytes:
    data = json.dumps(body).encode()
    head = (
        "POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Accept: application/json, text/event-stream\r\nContent-Length: {len(data)}\r\n\r\n"
    )
    return head.encode() + data


async def _read_answer(reader: asyncio.StreamReader) -> Any:
    """One HTTP/1.1 response with a Content-Length; its JSON body."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 200 "), head
    length = next(
        int(row.split(b":", 1)[1])
        for row in head.split(b"\r\n")
        if row.lower().startswith(b"content-length:")
    )
    return json.loads(await asyncio.wait_for(reader.readexactly(length), 5))


async def test_back_to_back_stateless_exchanges_reuse_the_child(serve: Serve) -> None:
    served = await serve()
    host, port = served.url.removeprefix("http://").removesuffix("/mcp").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(_raw_post(request(1, "whoami")))
        first = await _read_answer(reader)
        await until(lambda: served.route.describe()["stateless_idle"] == 1, timeout=5)
        # two requests on one connection: HTTP/1.1 serves the second after the first's answer
        writer.write(_raw_post(request(2, "whoami")) + _raw_post(request(3, "whoami")))
        answers = [first, await _read_answer(reader), await _read_answer(reader)]
    finally:
        writer.close()
        await writer.wait_closed()
    assert [a["id"] for a in answers] == [1, 2, 3]
    assert served.route.describe()["children_started"] == 1
    assert len({a["result"]["pid"] for a in answers}) == 1


# -- end to end: the SDK client, the gateway CLI, the SDK server over stdio ---------------------


@pytest.mark.parametrize("mode", ["legacy", "auto", "sse"])
async def test_tool_resource_and_notification_round_trip(
    procs: Processes, tmp_path: Path, mode: str
) -> None:
    gw = gateway(procs, tmp_path)
    notes = Notes()
    server: Any = sse_client(url(gw) + "/sse") if mode == "sse" else url(gw)
    connect = "legacy" if mode == "sse" else mode
    async with Client(server, mode=connect, logging_callback=notes, log_level="info") as client:  # type: ignore[arg-type]
        pid = int((await client.call_tool("whoami", {})).content[0].text)  # type: ignore[union-attr]
        result = await client.call_tool("echo", {"text": "hello"})
        assert result.content[0].text == "echo:hello"  # type: ignore[union-attr]
        resource = await client.read_resource("proxy://pid")
        assert resource.contents[0].text == str(pid)  # type: ignore[union-attr]
        tools = {t.name for t in (await client.list_tools()).tools}
        assert {"whoami", "echo", "slow", "crash"} <= tools
    assert notes.seen == ["note:hello"]
    assert pid != gw.popen.pid
    sessions = gw.get_json("/admin/sessions")["routes"][0]
    if mode != "auto":  # a session: its own child, stopped when the client ended it
        await until(lambda: bool(gw.get_json("/admin/sessions")["routes"][0]["ended"]))
        ended = gw.get_json("/admin/sessions")["routes"][0]["ended"][-1]
        assert ended["upstream_pid"] == pid
        assert ended["ended_reason"] == (
            "the client closed its SSE stream" if mode == "sse" else "ended by the client (DELETE)"
        )
        assert ended["messages_in"] >= 4
        await until(lambda: not alive(pid))
    else:  # the stateless generation: a leased child, given back for the next exchange
        await until(lambda: gw.get_json("/admin/sessions")["routes"][0]["stateless_idle"] == 1)
        assert sessions["sessions"] == []
        assert sessions["children_started"] == 1


async def test_server_initiated_messages_reach_the_get_stream(
    procs: Processes, tmp_path: Path
) -> None:
    gw = gateway(procs, tmp_path)
    notes = Notes()
    async with Client(url(gw), mode="legacy", logging_callback=notes, log_level="info") as client:
        result = await client.call_tool("later", {"text": "t1"})
        assert result.content[0].text == "scheduled"  # type: ignore[union-attr]
        await until(lambda: notes.seen == ["later:t1"], timeout=10)
        session = gw.get_json("/admin/sessions")["routes"][0]["sessions"][0]
        assert session["stream_open"] is True


# -- end to end, the same on both transports: a server that dies, a request that times out ------


def _session_of(gw: Any, session_id: str) -> dict[str, Any]:
    """The session as ``/admin/sessions`` shows it, open or ended."""
    route = gw.get_json("/admin/sessions")["routes"][0]
    return next(s for s in route["sessions"] + route["ended"] if s["id"] == session_id)


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("holder", [False, True], ids=["alone", "pipes-held-open"])
async def test_a_request_waiting_on_a_server_that_dies_gets_an_error(
    procs: Processes, tmp_path: Path, transport: str, holder: bool
) -> None:
    gw = gateway(procs, tmp_path, command=mirror())
    async with aiohttp.ClientSession() as http, RawSession(http, url(gw), transport) as session:
        if holder:  # a process the server started keeps its stdout open after it is gone
            _, spawned = await session.call(request(2, "spawn"))
            assert "pid" in spawned["result"]
        waiting = asyncio.ensure_future(session.call(request(3, "silent")))
        await until(lambda: _session_of(gw, session.id)["in_flight"] == 1)
        described = _session_of(gw, session.id)
        assert (described["state"], described["upstream_alive"]) == ("active", True)
        pid = described["upstream_pid"]
        os.kill(pid, signal.SIGKILL)
        status, answer = await asyncio.wait_for(waiting, 30)
        assert status == 200
        assert answer == {
            "jsonrpc": "2.0",
            "id": 3,
            "error": {
                "code": -32000,
                "message": "the session's upstream is gone: "
                f"the MCP server (pid {pid}) was killed by signal 9",
                "data": {"session": session.id, "pid": str(pid)},
            },
        }
        ended = _session_of(gw, session.id)
        assert (ended["state"], ended["upstream_alive"], ended["in_flight"]) == ("dead", False, 0)
        status, answer = await session.call(request(4, "ping"))
        assert status == 404
        assert answer["error"]["message"] == (
            f"MCP session {session.id} has ended: the session's upstream is gone: "
            f"the MCP server (pid {pid}) was killed by signal 9"
        )


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_request_without_an_answer_times_out_with_an_error(
    procs: Processes, tmp_path: Path, transport: str
) -> None:
    gw = gateway(procs, tmp_path, command=mirror(), request_timeout=2)
    async with aiohttp.ClientSession() as http, RawSession(http, url(gw), transport) as session:
        waiting = asyncio.ensure_future(session.call(request(2, "silent")))
        await until(lambda: _session_of(gw, session.id)["in_flight"] == 1)
        status, answer = await asyncio.wait_for(waiting, 30)
        pid = _session_of(gw, session.id)["upstream_pid"]
        assert status == 200
        assert answer == {
            "jsonrpc": "2.0",
            "id": 2,
            "error": {
                "code": -32001,
                "message": "the MCP server of route /mcp did not answer request 2 within 2 s "
                "(request_timeout); the request is cancelled",
                "data": {"session": session.id, "pid": str(pid)},
            },
        }
        assert _session_of(gw, session.id)["in_flight"] == 0
        # the session goes on, and its server was asked to cancel the request
        status, answer = await session.call(request(3, "heard"))
        assert status == 200
        cancels = [
            n["params"]["requestId"]
            for n in answer["result"]["notifications"]
            if n["method"] == "notifications/cancelled"
        ]
        assert cancels == [2]
        assert _session_of(gw, session.id)["state"] == "active"


async def test_an_sdk_client_on_sse_gets_the_error_when_its_server_dies(
    procs: Processes, tmp_path: Path
) -> None:
    gw = gateway(procs, tmp_path)
    async with Client(sse_client(url(gw) + "/sse"), mode="legacy") as client:  # type: ignore[arg-type]
        pid = int((await client.call_tool("whoami", {})).content[0].text)  # type: ignore[union-attr]
        with pytest.raises(MCPError, match=rf"the MCP server \(pid {pid}\) exited with code 3"):
            await client.call_tool("crash", {})


# -- JSON-RPC ids beyond 64 bits, end to end -----------------------------------------------------

_BIG_IDS = [2**63, 2**64 + 1, -(2**63) - 1, 10**30]


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_ids_beyond_64_bits_come_back_exactly(
    procs: Processes, tmp_path: Path, transport: str
) -> None:
    gw = gateway(procs, tmp_path, command=mirror())
    async with aiohttp.ClientSession() as http, RawSession(http, url(gw), transport) as session:
        for ident in _BIG_IDS:
            status, answer = await session.call(request(ident, "ping"))
            assert (status, answer) == (200, {"jsonrpc": "2.0", "id": ident, "result": {}})
        if transport == "streamable-http":  # a batch: each item keeps its id too
            batch = [request(ident, "ping") for ident in _BIG_IDS]
            status, _, body = await post(http, url(gw), batch, {"Mcp-Session-Id": session.id})
            assert status == 200
            assert sorted(m["id"] for m in sse_messages(body)) == sorted(_BIG_IDS)
        # the proxy's own error answers carry such an id too: the server dies on this request
        status, answer = await session.call(request(10**30 + 1, "exit", code=3))
        assert status == 200
        assert answer["id"] == 10**30 + 1
        assert "exited with code 3" in answer["error"]["message"]
