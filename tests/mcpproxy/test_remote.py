"""A session's upstream over streamable HTTP (:mod:`proxyfleet.mcpproxy.remote`): against the
real mcp SDK server on 127.0.0.1 (one upstream session per ``HttpUpstream``, its GET stream,
its end) and against a scripted aiohttp.web server for what the SDK server never does (its
headers seen, JSON and SSE answers, HTTP errors, an unreachable server). End to end too: SDK
clients through the gateway CLI to the SDK server on HTTP."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from mcp import Client
from mcp.client.sse import sse_client

from proxyfleet.errors import UpstreamGone
from proxyfleet.mcpproxy.jsonrpc import Kind, Message
from proxyfleet.mcpproxy.remote import HttpUpstream
from tests.conftest import Processes
from tests.mcpproxy.support import (
    INIT,
    INITIALIZED,
    Notes,
    Scripted,
    free_port,
    gateway,
    http_server,
    json_answer,
    line,
    mcp_like,
    post,
    raw_post,
    request,
    sse_answer,
    until,
    url,
)


class Watched:
    """An upstream with what it delivered and whether it ended recorded."""

    def __init__(
        self, where: str, http: aiohttp.ClientSession, headers: dict[str, str] | None = None
    ) -> None:
        self.messages: asyncio.Queue[Message] = asyncio.Queue()
        self.exits: list[HttpUpstream] = []
        self.upstream = HttpUpstream(
            where, http, self.messages.put_nowait, self.exits.append, headers
        )

    def send(self, message: dict[str, Any]) -> None:
        self.upstream.send(line(message))

    async def next(self, timeout: float = 5.0) -> Any:
        return orjson.loads((await asyncio.wait_for(self.messages.get(), timeout)).raw)

    async def answer(self, ident: Any, timeout: float = 5.0) -> Any:
        """The response to ``ident`` (what came before it is dropped)."""
        while (got := await self.next(timeout)).get("id") != ident or "method" in got:
            pass
        return got

    async def initialize(self) -> Any:
        self.send(INIT)
        answer = await self.answer(1)
        self.send(INITIALIZED)
        return answer


@pytest.fixture
async def watch(http: aiohttp.ClientSession) -> AsyncIterator[Callable[..., Watched]]:
    """``watched = watch(url, headers)``: stopped at the end of the test."""
    made: list[Watched] = []

    def make(where: str, headers: dict[str, str] | None = None) -> Watched:
        made.append(Watched(where, http, headers))
        return made[-1]

    yield make
    for watched in made:
        await watched.upstream.stop(2.0)


Start = Callable[[Any], Awaitable[Scripted]]


# -- the real SDK server -----------------------------------------------------------------------


async def test_one_upstream_session_on_the_sdk_server(
    sdk_url: str, watch: Callable[..., Watched], http: aiohttp.ClientSession
) -> None:
    watched = watch(sdk_url)
    upstream = watched.upstream
    assert (upstream.alive, upstream.label, upstream.pid) == (True, sdk_url, None)
    init = await watched.initialize()
    assert init["result"]["serverInfo"]["name"] == "proxyfleet-test-server"
    session_id = upstream.session_id
    assert session_id
    watched.send(request(2, "logging/setLevel", level="info"))
    await watched.answer(2)
    watched.send(request(3, "tools/call", name="echo", arguments={"text": "up"}))
    note = await watched.next()
    assert note["method"] == "notifications/message"
    assert note["params"]["data"] == "note:up"  # the SSE answer, message by message
    answer = await watched.next()
    assert answer["id"] == 3
    assert answer["result"]["content"][0]["text"] == "echo:up"
    await upstream.stop(2.0)
    assert not upstream.alive
    assert upstream.describe_exit() == "disconnected by the proxy"
    assert watched.exits == []  # a stop is not an end of the upstream's doing
    # the upstream session was ended (DELETE): the server no longer knows it
    status, _, _ = await post(
        http, sdk_url, request(4, "tools/list"), {"Mcp-Session-Id": session_id}
    )
    assert status == 404
    with pytest.raises(UpstreamGone, match="disconnected by the proxy"):
        watched.send(request(5, "tools/list"))


async def test_messages_sent_before_the_session_id_wait_for_it(
    sdk_url: str, watch: Callable[..., Watched]
) -> None:
    watched = watch(sdk_url)
    watched.send(INIT)  # all at once: the upstream's session id is not known yet
    watched.send(INITIALIZED)
    watched.send(request(2, "tools/list"))
    answers = {}
    for _ in range(2):
        got = await watched.next()
        answers[got["id"]] = got
    assert "serverInfo" in answers[1]["result"]
    assert {"whoami", "echo"} <= {t["name"] for t in answers[2]["result"]["tools"]}


async def test_server_initiated_messages_come_through_the_get_stream(
    sdk_url: str, watch: Callable[..., Watched]
) -> None:
    watched = watch(sdk_url)
    await watched.initialize()
    watched.send(request(2, "logging/setLevel", level="info"))
    await watched.answer(2)
    watched.send(request(3, "tools/call", name="later", arguments={"text": "t9"}))
    assert (await watched.next())["result"]["content"][0]["text"] == "scheduled"
    later = await watched.next()  # after the answer: it can only have come on the GET stream
    assert later["params"]["data"] == "later:t9"


async def test_the_server_ending_the_session_ends_the_upstream(
    sdk_url: str, watch: Callable[..., Watched], http: aiohttp.ClientSession
) -> None:
    watched = watch(sdk_url)
    await watched.initialize()
    session_id = watched.upstream.session_id
    assert session_id is not None
    async with http.delete(sdk_url, headers={"Mcp-Session-Id": session_id}) as ended:
        assert ended.status == 200
    watched.send(request(2, "tools/list"))
    error = await watched.answer(2)
    assert error["error"]["code"] == -32000
    assert error["error"]["message"] == f"the MCP server at {sdk_url} ended the session (404)"
    assert watched.exits == [watched.upstream]
    assert not watched.upstream.alive
    with pytest.raises(UpstreamGone, match=r"ended the session \(404\)"):
        watched.send(request(3, "tools/list"))


# -- a scripted server -------------------------------------------------------------------------


async def test_an_unreachable_server_answers_and_ends(watch: Callable[..., Watched]) -> None:
    where = f"http://127.0.0.1:{free_port()}/mcp"
    watched = watch(where)
    watched.send(INIT)
    error = await watched.answer(1)
    assert error["error"]["message"] == (
        f"the MCP server at {where} is unreachable: ClientConnectorError"
    )
    assert watched.exits == [watched.upstream]
    assert watched.upstream.describe_exit() == f"the MCP server at {where} is unreachable"
    with pytest.raises(UpstreamGone, match="is unreachable"):
        watched.send(request(2, "ping"))


async def test_headers_and_the_session_id_reach_the_server(
    scripted: Start, watch: Callable[..., Watched]
) -> None:
    server = await scripted(mcp_like())
    watched = watch(server.url, {"Authorization": "Bearer up-key"})
    await watched.initialize()
    watched.upstream.set_headers({"MCP-Protocol-Version": "2025-06-18"})
    watched.send(request(2, "tools/list"))
    assert (await watched.answer(2))["result"] == {"method": "tools/list"}
    await watched.upstream.stop(2.0)
    init, initialized, tools = (s for s in server.seen if s.method == "POST")
    [stream] = (s for s in server.seen if s.method == "GET")  # opened once initialized
    delete = server.seen[-1]
    assert delete.method == "DELETE"
    assert stream.headers["Accept"] == "text/event-stream"
    assert stream.headers["Mcp-Session-Id"] == "up-1"
    assert all(s.headers["Authorization"] == "Bearer up-key" for s in server.seen)
    assert "Mcp-Session-Id" not in init.headers
    assert init.headers["Accept"] == "application/json, text/event-stream"
    assert init.headers["Content-Type"] == "application/json"
    assert json.loads(init.body) == INIT
    assert initialized.headers["Mcp-Session-Id"] == "up-1"
    assert tools.headers["Mcp-Session-Id"] == "up-1"
    assert tools.headers["MCP-Protocol-Version"] == "2025-06-18"
    assert "MCP-Protocol-Version" not in init.headers
    assert delete.headers["Mcp-Session-Id"] == "up-1"


async def test_json_and_sse_answers_are_relayed_message_by_message(
    scripted: Start, watch: Callable[..., Watched]
) -> None:
    def batch(message: dict[str, Any]) -> web.Response:
        note = {"jsonrpc": "2.0", "method": "notifications/progress", "params": {"n": 1}}
        return json_answer([note, {"jsonrpc": "2.0", "id": message["id"], "result": "b"}])

    def stream(message: dict[str, Any]) -> web.Response:
        ident = json.dumps(message["id"]).encode()
        return sse_answer(
            b": a comment\n\n",
            b"event: message\ndata: " + b'{"jsonrpc":"2.0","method":"notifications/a"}\n\n',
            b"data: not json\n\n",
            b"id: 7\r\nevent: message\r\ndata: "
            + b'{"jsonrpc":"2.0","id":'
            + ident
            + b',"result":"s"}\r\n\r\n',
        )

    server = await scripted(mcp_like(batch=batch, stream=stream))
    watched = watch(server.url)
    await watched.initialize()
    watched.send(request(2, "batch"))
    assert await watched.next() == {
        "jsonrpc": "2.0",
        "method": "notifications/progress",
        "params": {"n": 1},
    }
    assert await watched.next() == {"jsonrpc": "2.0", "id": 2, "result": "b"}
    watched.send(request(3, "stream"))
    assert (await watched.next())["method"] == "notifications/a"
    assert await watched.next() == {"jsonrpc": "2.0", "id": 3, "result": "s"}
    assert watched.messages.empty()  # the comment and the line that is not JSON: dropped
    assert watched.upstream.alive


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (
            lambda m: web.Response(status=500, text="boom"),
            "the MCP server at {url} answered 500",
        ),
        (
            lambda m: web.Response(status=503, text="{}", content_type="application/json"),
            "the MCP server at {url} answered 503",
        ),
        (
            lambda m: json_answer(
                {"jsonrpc": "2.0", "id": m["id"], "error": {"code": -32602, "message": "nope"}},
                status=400,
            ),
            "nope",
        ),
    ],
)
async def test_http_errors_reach_the_request_as_json_rpc_errors(
    scripted: Start,
    watch: Callable[..., Watched],
    reply: Callable[[dict[str, Any]], web.Response],
    expected: str,
) -> None:
    server = await scripted(mcp_like(fail=reply))
    watched = watch(server.url)
    await watched.initialize()
    watched.send(request(2, "fail"))
    error = await watched.answer(2)
    assert error["error"]["message"] == expected.format(url=server.url)
    assert watched.upstream.alive  # one failed request does not end the session
    watched.send(request(3, "ping"))
    assert (await watched.answer(3))["result"] == {"method": "ping"}


async def test_settle_waits_for_what_was_sent(
    scripted: Start, watch: Callable[..., Watched]
) -> None:
    async def slowly(request: web.Request) -> web.StreamResponse:
        message = json.loads(await request.read())
        await asyncio.sleep(0.3)
        return json_answer({"jsonrpc": "2.0", "id": message["id"], "result": "late"})

    server = await scripted(slowly)
    watched = watch(server.url)
    watched.send(request(1, "ping"))
    await watched.upstream.settle(0.05)  # too short: returns without the answer
    assert watched.messages.empty()
    await watched.upstream.settle(5.0)
    assert not watched.messages.empty()
    assert (await watched.next())["result"] == "late"


async def test_stop_cancels_what_is_in_flight_and_ends_the_session(
    scripted: Start, watch: Callable[..., Watched]
) -> None:
    async def handle(request: web.Request) -> web.StreamResponse:
        message = json.loads(await request.read()) if request.method == "POST" else {}
        if message.get("method") == "slow":
            await asyncio.sleep(5)
        return await mcp_like()(request)

    server = await scripted(handle)
    watched = watch(server.url)
    await watched.initialize()
    watched.send(request(2, "slow"))
    await asyncio.sleep(0.1)
    began = asyncio.get_running_loop().time()
    await watched.upstream.stop(2.0)
    assert asyncio.get_running_loop().time() - began < 1.0
    assert server.methods()[-1] == "DELETE"
    assert server.seen[-1].headers["Mcp-Session-Id"] == "up-1"
    assert watched.messages.empty()  # the cancelled request gets nothing from here


async def test_a_message_split_over_sse_data_lines_stays_one_line(
    scripted: Start, watch: Callable[..., Watched]
) -> None:
    def split(message: dict[str, Any]) -> web.Response:
        ident = json.dumps(message["id"]).encode()
        return sse_answer(
            b'data: {"jsonrpc": "2.0",\ndata:  "id": ' + ident + b', "result": {}}\n\n'
        )

    server = await scripted(mcp_like(split=split))
    watched = watch(server.url)
    await watched.initialize()
    watched.send(request(2, "split"))
    got = await asyncio.wait_for(watched.messages.get(), 5)
    assert orjson.loads(got.raw) == {"jsonrpc": "2.0", "id": 2, "result": {}}
    assert got.kind is Kind.RESPONSE
    assert b"\n" not in got.raw


@pytest.mark.parametrize(
    "reply",
    [
        lambda m: sse_answer(b'data: {"jsonrpc":"2.0","method":"notifications/progress"}\n\n'),
        lambda m: web.Response(text="<html>maintenance</html>", content_type="text/html"),
        lambda m: web.Response(status=202),
    ],
    ids=["sse-ends-early", "not-json-rpc", "202-to-a-request"],
)
async def test_a_2xx_answer_without_the_response_is_an_error(
    scripted: Start, watch: Callable[..., Watched], reply: Callable[[dict[str, Any]], web.Response]
) -> None:
    server = await scripted(mcp_like(cut=reply))
    watched = watch(server.url)
    await watched.initialize()
    watched.send(request(2, "cut"))
    error = await watched.answer(2, timeout=1.0)
    assert error["error"]["code"] == -32000


# -- end to end: SDK clients, the gateway CLI, the SDK server on HTTP ---------------------------


@pytest.mark.parametrize("mode", ["legacy", "auto", "sse"])
async def test_an_http_upstream_gets_one_upstream_session_per_client(
    procs: Processes, tmp_path: Path, mode: str
) -> None:
    gw = gateway(procs, tmp_path, upstream=http_server(procs))

    async def one(n: int) -> list[str]:
        notes = Notes()
        server: Any = sse_client(url(gw) + "/sse") if mode == "sse" else url(gw)
        connect = "legacy" if mode == "sse" else mode
        async with Client(server, mode=connect, logging_callback=notes, log_level="info") as client:  # type: ignore[arg-type]
            result = await client.call_tool("echo", {"text": f"c{n}"})
            assert result.content[0].text == f"echo:c{n}"  # type: ignore[union-attr]
            assert (await client.read_resource("proxy://pid")).contents
        return notes.seen

    seen = await asyncio.gather(*(one(n) for n in range(8)))
    assert seen == [[f"note:c{n}"] for n in range(8)]
    route = gw.get_json("/admin/sessions")["routes"][0]
    assert route["upstream"].endswith("/mcp")
    if mode != "auto":
        await until(lambda: len(gw.get_json("/admin/sessions")["routes"][0]["ended"]) == 8)
        ended = gw.get_json("/admin/sessions")["routes"][0]["ended"]
        assert {s["upstream"] for s in ended} == {route["upstream"]}


async def test_an_unreachable_http_upstream_is_a_json_rpc_error(
    procs: Processes, tmp_path: Path
) -> None:
    gw = gateway(procs, tmp_path, upstream="http://127.0.0.1:9/mcp")
    async with aiohttp.ClientSession() as http:
        status, _, body = await raw_post(http, gw, INIT)
    assert status == 200
    assert body["id"] == 1
    assert "unreachable" in body["error"]["message"]
