"""The MCP routes as the gateway mounts them (:mod:`proxyfleet.mcpproxy.mount`): which paths
an ``McpMount`` owns, its lifecycle (children prestarted on entry, every session ended and
every child stopped on exit), dispatch by path over real sockets, ``begin_stop``, the
keep-alive client shared by HTTP upstreams, health and describe. End to end too: the gateway
CLI's shutdown, and the config errors of MCP routes."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web
from mcp import Client

from proxyfleet.config.model import McpRouteConfig
from proxyfleet.mcpproxy import McpMount
from tests.conftest import Processes, run_cli
from tests.mcpproxy.support import (
    INIT,
    Scripted,
    alive,
    gateway,
    mirror,
    my_children,
    post,
    reaped,
    request,
    until,
    url,
)


def route(path: str, *flags: str, **config: Any) -> McpRouteConfig:
    return McpRouteConfig(path=path, upstream={"command": mirror(*flags)}, **config)


def serving(mount: McpMount) -> Callable[[Any, Any, Any], Awaitable[None]]:
    """The ASGI app of a gateway that has nothing but this mount."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        path = scope["path"]
        if not mount.owns(path):
            await send({"type": "http.response.start", "status": 404, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        await mount.dispatch(scope, receive, send, path, "tester")

    return app


@pytest.mark.parametrize(
    ("path", "owned"),
    [
        ("/files", True),
        ("/files/sse", True),
        ("/files/messages", True),
        ("/tools/deep", True),
        ("/tools/deep/sse", True),
        ("/files/", False),
        ("/files/other", False),
        ("/file", False),
        ("/tools", False),
        ("/v1/chat/completions", False),
        ("/", False),
    ],
)
def test_a_mount_owns_the_paths_of_its_routes(path: str, owned: bool) -> None:
    mount = McpMount([route("/files"), route("/tools/deep")], 1024)
    assert bool(mount)
    assert mount.owns(path) is owned


def test_a_mount_without_routes_is_false_and_owns_nothing() -> None:
    mount = McpMount([], 1024)
    assert not mount
    assert not mount.owns("/mcp")
    assert mount.health() == []
    assert mount.describe() == []


async def test_entering_prestarts_and_leaving_stops_every_child() -> None:
    mount = McpMount([route("/a", prestart=2), route("/b")], 1024)
    assert my_children() == []  # nothing runs before it is entered
    async with mount:
        health = {h["path"]: h for h in mount.health()}
        assert health["/a"]["prestarted"] == 2
        assert health["/b"]["prestarted"] == 0
        assert set(health["/a"]) == {
            "path",
            "status",
            "reason",
            "failed_starts",
            "sessions",
            "dead_sessions",
            "upstream_deaths",
            "spawn_failures",
            "prestarted",
        }
        assert health["/a"]["status"] == "ok"  # its prestarted servers answered
        assert health["/b"]["status"] == "unknown"  # none started yet
        assert mount.failing() == []
        session = await mount.endpoints[1].route.open_session("c")
        described = {d["path"]: d for d in mount.describe()}
        assert described["/a"]["upstream"] == sys.executable
        assert [s["id"] for s in described["/b"]["sessions"]] == [session.id]
        pids = my_children()
        assert len(pids) == 3
    assert all(reaped(pid) for pid in pids)
    assert session.ended_reason == "the proxy is shutting down"


async def test_failing_names_each_route_whose_server_cannot_start(tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.touch()
    mount = McpMount([route("/a", "--fail-if", str(broken), prestart=1), route("/b")], 1024)
    async with mount:
        [why] = mount.failing()
        assert why.startswith("MCP route /a is failing: its server exits before answering: ")
        assert why.endswith(f"exited with code 1; last stderr: cannot start: {broken} exists")
        [health_a, health_b] = mount.health()
        assert (health_a["status"], health_a["reason"]) == ("failing", why.split(": ", 1)[1])
        assert health_b["status"] == "unknown"


async def test_requests_reach_the_route_of_their_path(
    serve_asgi: Any, http: aiohttp.ClientSession
) -> None:
    mount = McpMount([route("/a", "--name", "alpha"), route("/b/c", "--name", "beta")], 1024)
    async with mount:
        base = await serve_asgi(serving(mount))
        for path, name in (("/a", "alpha"), ("/b/c", "beta")):
            status, _, body = await post(http, base + path, INIT)
            assert status == 200
            assert body["result"]["serverInfo"]["name"] == name
        async with http.get(base + "/b/c/sse") as legacy:
            assert legacy.status == 200
            assert (await legacy.content.readline()) == b"event: endpoint\n"
            assert (await legacy.content.readline()).startswith(b"data: /b/c/messages?session_id=")
            sessions = {d["path"]: len(d["sessions"]) for d in mount.describe()}
            assert sessions == {"/a": 1, "/b/c": 2}
        await until(lambda: len(mount.describe()[1]["sessions"]) == 1)  # the SSE one ended


async def test_begin_stop_ends_every_session_at_once(
    serve_asgi: Any, http: aiohttp.ClientSession
) -> None:
    mount = McpMount([route("/a")], 1024)
    async with mount:
        base = await serve_asgi(serving(mount))
        status, headers, _ = await post(http, base + "/a", INIT)
        session = {"Mcp-Session-Id": headers["Mcp-Session-Id"]}
        waiting = asyncio.ensure_future(post(http, base + "/a", request(2, "silent"), session))
        await until(lambda: mount.describe()[0]["sessions"][0]["in_flight"] == 1)
        mount.begin_stop()
        mount.begin_stop()  # once is enough; twice is harmless
        status, _, body = await asyncio.wait_for(waiting, 5)  # an answer, not a hang
        assert status == 200
        assert body["error"]["message"] == "the proxy is shutting down"
        await mount.stop()
        assert mount.describe()[0]["sessions"] == []
        status, _, body = await post(http, base + "/a", INIT)
        assert status == 503
        assert "shutting down" in body["error"]["message"]


async def test_http_upstreams_share_one_kept_alive_connection(
    serve_asgi: Any, http: aiohttp.ClientSession, scripted: Callable[..., Awaitable[Scripted]]
) -> None:
    async def answer(request: web.Request) -> web.StreamResponse:
        message = json.loads(await request.read())
        if "id" not in message:
            return web.Response(status=202)
        body = {"jsonrpc": "2.0", "id": message["id"], "result": {"method": message["method"]}}
        return web.json_response(body)  # no Mcp-Session-Id: a stateless server

    upstream = await scripted(answer)
    config = McpRouteConfig(path="/remote", upstream={"url": upstream.url})
    async with McpMount([config], 1024) as mount:
        base = await serve_asgi(serving(mount))
        for n in range(3):  # three client sessions, one after the other
            status, headers, body = await post(http, base + "/remote", {**INIT, "id": n})
            assert (status, body["id"]) == (200, n)
            session = {"Mcp-Session-Id": headers["Mcp-Session-Id"]}
            status, _, body = await post(
                http, base + "/remote", request("t", "tools/list"), session
            )
            assert body["result"] == {"method": "tools/list"}
        assert mount.describe()[0]["upstream"] == upstream.url
        assert len({d["upstream"] for d in mount.describe()[0]["sessions"]}) == 1
    assert upstream.methods() == ["POST"] * 6
    assert len({seen.peer_port for seen in upstream.seen}) == 1  # one connection for all


# -- end to end: the gateway CLI ---------------------------------------------------------------


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
