"""MCP routes end to end: the real ``mcp`` SDK client, through the gateway CLI, to a real MCP
server (tests/mcp/server_app.py) spawned per session over stdio."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from mcp.client.sse import sse_client
from mcp.shared.exceptions import MCPError

from mcp import Client, StdioServerParameters
from tests.conftest import Proc, Processes, run_cli

SERVER = str(Path(__file__).with_name("server_app.py"))
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
ACCEPT = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


def gateway(procs: Processes, tmp: Path, upstream: str | None = None, **route: Any) -> Proc:
    """The gateway with one MCP route to the test server: a stdio child per session, or the
    server at ``upstream`` (a URL)."""
    target = {"url": upstream} if upstream else {"command": [sys.executable, SERVER]}
    config = {"mcp": [{"path": "/mcp", "upstream": target, **route}]}
    path = tmp / "mcp.yaml"
    path.write_text(yaml.safe_dump(config))
    return procs.gateway("--config", str(path))


def url(proc: Proc) -> str:
    return proc.root + "/mcp"


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False


async def until(check: Any, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


class Notes:
    """Collects the log notifications one client receives."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    async def __call__(self, params: Any) -> None:
        self.seen.append(str(params.data))


def http_server(procs: Processes) -> str:
    """The test server itself on streamable HTTP; its URL."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = procs.spawn_python(SERVER, "--http", str(port))
    proc.wait_for_line("INFO:     Uvicorn running on", timeout=30)
    return f"http://127.0.0.1:{port}/mcp"


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


async def test_fifty_sessions_each_get_their_own_child_and_notifications(
    procs: Processes, tmp_path: Path
) -> None:
    gw = gateway(procs, tmp_path)
    count = 50
    ready = asyncio.Event()
    arrived = 0
    victim_pid: list[int] = []

    async def one(n: int) -> tuple[int, list[str], str]:
        nonlocal arrived
        notes = Notes()
        async with Client(
            url(gw),
            mode="legacy",
            logging_callback=notes,
            log_level="info",
            read_timeout_seconds=60,
        ) as client:
            pid = int((await client.call_tool("whoami", {})).content[0].text)  # type: ignore[union-attr]
            await client.call_tool("echo", {"text": f"client-{n}"})
            if n == 0:
                victim_pid.append(pid)
            arrived += 1
            if arrived == count:
                ready.set()
            await ready.wait()
            try:  # every session is busy when the victim's child is killed
                outcome = (await client.call_tool("slow", {"seconds": 1.5})).content[0].text  # type: ignore[union-attr]
            except MCPError as exc:
                outcome = f"error: {exc}"
            return pid, notes.seen, outcome

    tasks = [asyncio.ensure_future(one(n)) for n in range(count)]
    await asyncio.wait_for(ready.wait(), 100)
    await asyncio.sleep(0.5)
    os.kill(victim_pid[0], signal.SIGKILL)
    results = await asyncio.wait_for(asyncio.gather(*tasks), 60)
    pids = [pid for pid, _, _ in results]
    assert len(set(pids)) == count  # distinct children
    for n, (_, seen, _) in enumerate(results):
        assert seen == [f"note:client-{n}"]  # only their own notifications
    assert results[0][2].startswith("error: ")
    assert "upstream is gone" in results[0][2]
    assert "killed by signal 9" in results[0][2]
    assert [outcome for _, _, outcome in results[1:]] == ["done"] * (count - 1)
    health = gw.get_json("/ready")["mcp"][0]
    assert health["dead_sessions"] == 1
    assert health["upstream_deaths"] == 1
    dead = [s for s in gw.get_json("/admin/sessions")["routes"][0]["ended"] if s["state"] == "dead"]
    assert [s["upstream_pid"] for s in dead] == [victim_pid[0]]
    await until(lambda: not any(alive(pid) for pid in pids), timeout=30)


async def raw_post(
    session: aiohttp.ClientSession, gw: Proc, body: object, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], Any]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    async with session.post(url(gw), data=data, headers={**ACCEPT, **(headers or {})}) as r:
        text = await r.read()
        parsed = json.loads(text) if text and r.content_type == "application/json" else text
        return r.status, dict(r.headers), parsed


async def test_limits_idle_expiry_delete_and_bad_input(procs: Processes, tmp_path: Path) -> None:
    gw = gateway(procs, tmp_path, max_sessions=2, session_idle_timeout=1.5)
    async with aiohttp.ClientSession() as http:
        opened = []
        for _ in range(2):
            status, headers, body = await raw_post(http, gw, INIT)
            assert status == 200, body
            assert body["result"]["serverInfo"]["name"] == "proxyfleet-test-server"
            opened.append(headers["mcp-session-id"])
        status, headers, body = await raw_post(http, gw, INIT)  # max_sessions + 1
        assert status == 503
        assert body["jsonrpc"] == "2.0"
        assert body["id"] == 1
        assert "max_sessions 2" in body["error"]["message"]
        assert headers["Retry-After"] == "1"
        # DELETE ends a session and stops its child
        pids = {
            s["id"]: s["upstream_pid"]
            for s in gw.get_json("/admin/sessions")["routes"][0]["sessions"]
        }
        async with http.delete(url(gw), headers={"Mcp-Session-Id": opened[0]}) as r:
            assert r.status == 200
        assert not alive(pids[opened[0]])
        status, _, body = await raw_post(
            http,
            gw,
            {"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
            {"Mcp-Session-Id": opened[0]},
        )
        assert status == 404
        assert "ended by the client" in body["error"]["message"]
        # the other one idles past session_idle_timeout: its child stops, it is forgotten
        await until(lambda: not alive(pids[opened[1]]), timeout=10)
        status, _, body = await raw_post(
            http,
            gw,
            {"jsonrpc": "2.0", "id": 3, "method": "tools/list"},
            {"Mcp-Session-Id": opened[1]},
        )
        assert status == 404
        assert "idle for more than 1.5s" in body["error"]["message"]
        # bad input: a clear JSON-RPC error each
        status, _, body = await raw_post(http, gw, b"{not json")
        assert status == 400
        assert body["error"]["code"] == -32700
        status, _, body = await raw_post(http, gw, {"id": 1, "method": "x"})
        assert status == 400
        assert body["error"]["code"] == -32600
        status, _, body = await raw_post(http, gw, [])
        assert status == 400
        status, _, body = await raw_post(
            http,
            gw,
            {"jsonrpc": "2.0", "id": 4, "method": "tools/list"},
            {"Mcp-Session-Id": "nope"},
        )
        assert status == 404
        assert "unknown MCP session" in body["error"]["message"]
        async with http.get(url(gw), headers={"Accept": "text/event-stream"}) as r:
            assert r.status == 400
        async with http.put(url(gw), data=b"{}") as r:
            assert r.status == 405
            assert r.headers["Allow"] == "GET, POST, DELETE"
        async with http.post(url(gw) + "/messages?session_id=nope", json={}) as r:
            assert r.status == 404
        async with http.post(url(gw) + "/sse", json={}) as r:
            assert r.status == 405
        # a notification alone is accepted with 202 and no body
        status, _, body = await raw_post(
            http, gw, {"jsonrpc": "2.0", "method": "notifications/initialized"}
        )
        assert status == 202


async def test_a_missing_server_command_is_a_clear_error(procs: Processes, tmp_path: Path) -> None:
    config = {"mcp": [{"path": "/tools", "upstream": {"command": ["/no/such/mcp-server"]}}]}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    gw = procs.gateway("--config", str(tmp_path / "c.yaml"))
    async with (
        aiohttp.ClientSession() as http,
        http.post(gw.root + "/tools", json=INIT, headers=ACCEPT) as r,
    ):
        assert r.status == 502
        body = await r.json()
    assert "cannot start the MCP server '/no/such/mcp-server'" in body["error"]["message"]
    assert gw.get_json("/health")["mcp"][0]["spawn_failures"] == 1


async def test_shutdown_ends_sessions_and_leaves_no_child(procs: Processes, tmp_path: Path) -> None:
    gw = gateway(procs, tmp_path, prestart=2)
    pids: list[int] = []
    stopped = asyncio.Event()

    async def hold() -> str:
        """A client that keeps its session open until the gateway is gone."""
        try:
            async with Client(url(gw), mode="legacy") as client:
                result = await client.call_tool("whoami", {})
                pids.append(int(result.content[0].text))  # type: ignore[union-attr]
                await stopped.wait()
                await client.call_tool("whoami", {})
        except Exception as exc:  # the session ended under it: expected
            return type(exc).__name__
        return "still served"

    holders = [asyncio.ensure_future(hold()) for _ in range(3)]
    await until(lambda: len(pids) == 3)
    await until(lambda: gw.get_json("/admin/sessions")["routes"][0]["prestarted"] == 2)
    assert len(gw.get_json("/admin/sessions")["routes"][0]["sessions"]) == 3
    assert gw.stop() == 0
    stopped.set()
    outcomes = await asyncio.wait_for(asyncio.gather(*holders), 30)
    assert "still served" not in outcomes
    await until(lambda: not any(alive(pid) for pid in pids))
    assert "Traceback" not in gw.output()
    assert "mcp_session_ended" in gw.output()


def test_mcp_config_errors_name_the_field(tmp_path: Path) -> None:
    bad = {"mcp": [{"path": "/v1/mcp", "upstream": {"command": ["x"]}}]}
    (tmp_path / "a.yaml").write_text(yaml.safe_dump(bad))
    result = run_cli("config", "--config", str(tmp_path / "a.yaml"))
    assert result.returncode == 2
    assert "mcp[0].path" in result.stderr
    assert "taken by the gateway" in result.stderr
    both = {"mcp": [{"upstream": {"command": ["x"], "url": "http://127.0.0.1:1/mcp"}}]}
    (tmp_path / "b.yaml").write_text(yaml.safe_dump(both))
    result = run_cli("config", "--config", str(tmp_path / "b.yaml"))
    assert result.returncode == 2
    assert "exactly one of 'command'" in result.stderr


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


async def test_per_client_limit_and_client_auth(procs: Processes, tmp_path: Path) -> None:
    keys = tmp_path / "keys.txt"
    keys.write_text("key-alpha\nkey-beta\n")
    config = {
        "server": {"auth_keys_file": str(keys)},
        "mcp": [
            {
                "path": "/mcp",
                "upstream": {"command": [sys.executable, SERVER]},
                "max_sessions_per_client": 1,
            }
        ],
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    gw = procs.gateway("--config", str(tmp_path / "c.yaml"))
    alpha = {"Authorization": "Bearer key-alpha"}
    async with aiohttp.ClientSession() as http:
        status, _, body = await raw_post(http, gw, INIT)
        assert status == 401
        assert body["jsonrpc"] == "2.0"
        assert "missing API key" in body["error"]["message"]
        status, _, body = await raw_post(http, gw, INIT, alpha)
        assert status == 200
        status, _, body = await raw_post(http, gw, INIT, alpha)
        assert status == 503
        assert "max_sessions_per_client 1" in body["error"]["message"]
        status, _, body = await raw_post(http, gw, INIT, {"Authorization": "Bearer key-beta"})
        assert status == 200
    clients = {
        s["client"] for s in gw.get_json("/admin/sessions", headers=alpha)["routes"][0]["sessions"]
    }
    assert len(clients) == 2
    assert not any("alpha" in c or "beta" in c for c in clients)  # keys never shown
