"""``proxyfleet mcp stdio --upstream URL`` (:mod:`proxyfleet.mcpproxy.bridge`), the real CLI
as a subprocess: lines on its stdin go to a streamable-HTTP server (the mcp SDK server, a
scripted one, a proxyfleet route), what the server says comes out on stdout one message a
line, diagnostics on stderr; stdin closing ends the upstream session; an upstream that goes
away ends the bridge with exit code 1."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from mcp import Client, StdioServerParameters

from tests.conftest import Processes, cli_env, run_cli
from tests.mcpproxy.support import (
    INIT,
    INITIALIZED,
    Notes,
    Scripted,
    alive,
    free_port,
    gateway,
    json_answer,
    mcp_like,
    request,
    sse_answer,
    until,
    url,
)


class Bridge:
    """A running ``proxyfleet mcp stdio``: write lines, read lines, close its stdin."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    def write(self, message: dict[str, Any] | bytes) -> None:
        assert self.process.stdin is not None
        data = message if isinstance(message, bytes) else json.dumps(message).encode()
        self.process.stdin.write(data + b"\n")

    async def read(self, timeout: float = 5.0) -> Any:
        assert self.process.stdout is not None
        row = await asyncio.wait_for(self.process.stdout.readline(), timeout)
        assert row.endswith(b"\n"), f"stdout ended: {row!r}"
        return json.loads(row)

    async def answer(self, ident: Any) -> Any:
        while (got := await self.read()).get("id") != ident or "method" in got:
            pass
        return got

    async def finish(self, timeout: float = 10.0) -> tuple[int, bytes, str]:
        """Close stdin; the exit code, what is left on stdout, and all of stderr."""
        assert self.process.stdin is not None
        if not self.process.stdin.is_closing():
            self.process.stdin.close()
        out, err = await asyncio.wait_for(self.process.communicate(), timeout)
        assert self.process.returncode is not None
        return self.process.returncode, out, err.decode()


@pytest.fixture
async def bridge() -> AsyncIterator[Callable[..., Awaitable[Bridge]]]:
    """``b = await bridge(upstream_url, *flags)``: killed at the end if still running."""
    started: list[Bridge] = []

    async def start(upstream: str, *flags: str) -> Bridge:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "proxyfleet",
            "mcp",
            "stdio",
            "--upstream",
            upstream,
            *flags,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=cli_env(),
        )
        started.append(Bridge(process))
        return started[-1]

    yield start
    for running in started:
        if running.process.returncode is None:
            running.process.kill()
            await running.process.wait()


async def test_lines_go_up_and_answers_come_down(sdk_url: str, bridge: Any) -> None:
    b = await bridge(sdk_url)
    b.write(INIT)
    init = await b.answer(1)
    assert init["result"]["serverInfo"]["name"] == "proxyfleet-test-server"
    b.write(b"")  # blank lines are skipped
    b.write(INITIALIZED)
    b.write(request(2, "logging/setLevel", level="info"))
    await b.answer(2)
    b.write(request(3, "tools/call", name="echo", arguments={"text": "piped"}))
    note = await b.read()
    assert (note["method"], note["params"]["data"]) == ("notifications/message", "note:piped")
    answer = await b.read()
    assert answer["id"] == 3
    assert answer["result"]["content"][0]["text"] == "echo:piped"
    code, rest, err = await b.finish()
    assert code == 0
    assert rest == b""
    assert err == ""  # nothing went wrong: nothing to say


async def test_headers_reach_the_upstream_and_eof_ends_its_session(
    scripted: Callable[..., Awaitable[Scripted]], bridge: Any
) -> None:
    upstream = await scripted(mcp_like())
    b = await bridge(
        upstream.url, "--header", "Authorization: Bearer k-1", "--header", "X-Team:blue"
    )
    b.write(INIT)
    await b.answer(1)
    b.write(INITIALIZED)
    b.write(request(2, "tools/list"))
    assert (await b.answer(2))["result"] == {"method": "tools/list"}
    code, _, _ = await b.finish()
    assert code == 0
    assert upstream.seen[-1].method == "DELETE"  # stdin closed: the session is ended
    assert upstream.seen[-1].headers["Mcp-Session-Id"] == "up-1"
    for seen in upstream.seen:
        assert seen.headers["Authorization"] == "Bearer k-1"
        assert seen.headers["X-Team"] == "blue"


async def test_stdout_holds_one_json_rpc_message_a_line(
    scripted: Callable[..., Awaitable[Scripted]], bridge: Any
) -> None:
    def chatty(message: dict[str, Any]) -> web.Response:
        answer = {"jsonrpc": "2.0", "id": message["id"], "result": {"ok": True}}
        return sse_answer(
            b": keepalive\n\n",
            b'data: {"jsonrpc":"2.0","method":"notifications/progress","params":{"p":1}}\n\n',
            b"data: " + json.dumps(answer).encode() + b"\n\n",
        )

    def pretty(message: dict[str, Any]) -> web.Response:
        body = {"jsonrpc": "2.0", "id": message["id"], "result": {"pretty": True}}
        return web.Response(text=json.dumps(body, indent=2), content_type="application/json")

    upstream = await scripted(
        mcp_like(
            chatty=chatty,
            pretty=pretty,
            batch=lambda m: json_answer(
                [
                    {"jsonrpc": "2.0", "method": "notifications/a"},
                    {"jsonrpc": "2.0", "id": m["id"], "result": 1},
                ]
            ),
        )
    )
    b = await bridge(upstream.url)
    b.write(INIT)
    await b.answer(1)
    b.write(request(2, "chatty"))
    assert await b.read() == {
        "jsonrpc": "2.0",
        "method": "notifications/progress",
        "params": {"p": 1},
    }
    assert await b.read() == {"jsonrpc": "2.0", "id": 2, "result": {"ok": True}}
    b.write(request(3, "pretty"))  # an indented JSON answer is still one line out
    assert await b.read() == {"jsonrpc": "2.0", "id": 3, "result": {"pretty": True}}
    b.write(request(4, "batch"))
    assert (await b.read())["method"] == "notifications/a"
    assert await b.read() == {"jsonrpc": "2.0", "id": 4, "result": 1}
    code, rest, err = await b.finish()
    assert (code, rest, err) == (0, b"", "")


async def test_an_unreachable_upstream_ends_the_bridge_with_code_1(bridge: Any) -> None:
    where = f"http://127.0.0.1:{free_port()}/mcp"
    b = await bridge(where)
    b.write(INIT)
    error = await b.read()
    assert error["id"] == 1
    assert error["error"]["code"] == -32000
    assert error["error"]["message"].startswith(f"the MCP server at {where} is unreachable")
    assert await asyncio.wait_for(b.process.wait(), 10) == 1  # without stdin being closed
    code, rest, err = await b.finish()
    assert (code, rest) == (1, b"")
    assert err.endswith(f"\nproxyfleet mcp stdio: the MCP server at {where} is unreachable\n")


async def test_the_upstream_ending_the_session_ends_the_bridge(
    scripted: Callable[..., Awaitable[Scripted]], bridge: Any
) -> None:
    async def gone_after_init(req: web.Request) -> web.StreamResponse:
        message = json.loads(await req.read()) if req.method == "POST" else {}
        if message.get("method") == "tools/list":
            return web.Response(status=404)
        return await mcp_like()(req)

    upstream = await scripted(gone_after_init)
    b = await bridge(upstream.url)
    b.write(INIT)
    await b.answer(1)
    b.write(request(2, "tools/list"))
    error = await b.read()
    assert error["id"] == 2
    assert error["error"]["message"] == f"the MCP server at {upstream.url} ended the session (404)"
    assert await asyncio.wait_for(b.process.wait(), 10) == 1
    code, _, err = await b.finish()
    assert code == 1
    assert err.endswith("ended the session (404)\n")
    assert "DELETE" not in upstream.methods()  # nothing left to end


async def test_stdin_closed_at_once_says_nothing_and_exits_0(
    scripted: Callable[..., Awaitable[Scripted]], bridge: Any
) -> None:
    upstream = await scripted(mcp_like())
    b = await bridge(upstream.url)
    assert await b.finish() == (0, b"", "")
    assert upstream.seen == []  # no session was opened: nothing was sent


# -- end to end: the SDK client through the bridge, the gateway CLI, the SDK server -----------


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_stdio_bridge_reaches_a_remote_server(
    procs: Processes, tmp_path: Path, mode: str
) -> None:
    gw = gateway(procs, tmp_path)
    bridge = StdioServerParameters(
        command=sys.executable,
        args=["-m", "proxyfleet", "mcp", "stdio", "--upstream", url(gw)],
        env={**{k: v for k, v in os.environ.items() if not k.startswith("PROXYFLEET_")}},
    )
    notes = Notes()
    async with Client(bridge, mode=mode, logging_callback=notes, log_level="info") as client:  # type: ignore[arg-type]
        result = await client.call_tool("echo", {"text": "via-stdio"})
        assert result.content[0].text == "echo:via-stdio"  # type: ignore[union-attr]
        pid = int((await client.call_tool("whoami", {})).content[0].text)  # type: ignore[union-attr]
    assert notes.seen == ["note:via-stdio"]
    assert pid != gw.popen.pid
    if mode == "legacy":  # the bridge ended its session when stdin closed
        await until(lambda: not alive(pid))


def test_stdio_bridge_refuses_bad_flags() -> None:
    result = run_cli("mcp", "stdio", "--upstream", "ftp://x")
    assert result.returncode == 2
    assert "http(s)://" in result.stderr
    result = run_cli("mcp", "stdio", "--upstream", "http://127.0.0.1:9/mcp", "--header", "nocolon")
    assert result.returncode == 2
    assert "Name: value" in result.stderr
