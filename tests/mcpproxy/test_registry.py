"""The sessions of one MCP route (:mod:`proxyfleet.mcpproxy.registry`): a child per session,
``max_sessions`` and ``max_sessions_per_client``, idle expiry, prestarted children, the
stateless generation's leased children, a child that dies or cannot start, the children's env,
shutdown; a route whose server cannot start reported failing (with why) until one answers, and
the gateway unready meanwhile. In process against the mirror server, and end to end: the real
``mcp`` SDK client through the gateway CLI to the SDK server (tests/mcpproxy/server_app.py)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import urllib.error
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from mcp import Client
from mcp.shared.exceptions import MCPError

from proxyfleet.config.model import McpRouteConfig
from proxyfleet.errors import SessionLimit, SpawnFailed
from proxyfleet.mcpproxy.registry import Route
from proxyfleet.mcpproxy.session import Session, SessionState
from tests.conftest import Processes
from tests.mcpproxy.support import (
    INIT,
    SERVER,
    Notes,
    alive,
    drain,
    gateway,
    mirror,
    msg,
    my_children,
    raw_post,
    reaped,
    request,
    until,
    url,
)

MakeRoute = Callable[..., Any]


@pytest.fixture
async def make_route() -> AsyncIterator[MakeRoute]:
    """``route = await make_route(command=..., **config)``: started now, stopped at the end."""
    routes: list[Route] = []

    async def start(command: list[str] | None = None, **config: Any) -> Route:
        upstream = {"command": command or mirror()}
        route = Route(McpRouteConfig(path="/m", upstream=upstream, **config))
        await route.start()
        routes.append(route)
        return route

    yield start
    for route in routes:
        await route.stop()


async def ask(session: Session, ident: Any, method: str, **params: Any) -> Any:
    """One request on a session; its answers."""
    exchange = session.submit([msg(request(ident, method, **params))])
    assert exchange is not None
    return await drain(exchange.queue)


def pid_of(session: Session) -> int:
    assert session.child is not None
    assert session.child.pid is not None
    return session.child.pid


async def test_each_session_gets_a_child_of_its_own(make_route: MakeRoute) -> None:
    route = await make_route()
    one = await route.open_session("client-a")
    two = await route.open_session("client-a")
    assert one.id != two.id
    assert len(one.id) == 32
    assert route.get(one.id) is one
    [whoami] = await ask(one, 1, "whoami")
    assert whoami["result"]["pid"] == pid_of(one)
    assert pid_of(one) != pid_of(two)
    described = route.describe()
    assert described["path"] == "/m"
    assert described["upstream"] == sys.executable
    assert described["children_started"] == 2
    assert [s["id"] for s in described["sessions"]] == [one.id, two.id]
    assert route.health()["sessions"] == 2


async def test_limits_refuse_with_503_and_a_retry_after(make_route: MakeRoute) -> None:
    route = await make_route(max_sessions=2, max_sessions_per_client=1)
    first = await route.open_session("alpha")
    with pytest.raises(
        SessionLimit,
        match=r"this client has 1 MCP sessions open on /m \(max_sessions_per_client 1\)",
    ):
        await route.open_session("alpha")
    await route.open_session("beta")
    with pytest.raises(
        SessionLimit, match=r"2 MCP sessions are open on /m \(max_sessions 2\)"
    ) as e:
        await route.open_session("gamma")
    assert e.value.status == 503
    assert e.value.retry_after == 1.0
    assert route.describe()["children_started"] == 2  # a refusal starts nothing
    await route.close(first, "done")
    await route.open_session("alpha")  # room again


async def test_close_stops_the_child_and_remembers_why(make_route: MakeRoute) -> None:
    route = await make_route()
    session = await route.open_session("c")
    pid = pid_of(session)
    await route.close(session, "ended by the test")
    assert reaped(pid)
    assert route.get(session.id) is None
    assert session.state is SessionState.CLOSED
    assert route.why_gone(session.id) == f"MCP session {session.id} has ended: ended by the test"
    assert route.why_gone("nope") == "unknown MCP session 'nope': start a new one with initialize"
    [ended] = route.describe()["ended"]
    assert (ended["id"], ended["state"], ended["upstream_pid"]) == (session.id, "closed", pid)
    assert route.health()["dead_sessions"] == 0


async def test_idle_sessions_expire_busy_ones_do_not(make_route: MakeRoute) -> None:
    route = await make_route(session_idle_timeout=0.3)
    idle = await route.open_session("c")
    busy = await route.open_session("c")
    assert busy.submit([msg(request(1, "silent"))]) is not None  # never answered: busy
    await until(lambda: route.get(idle.id) is None, timeout=5)  # the reaper saw to it
    assert route.why_gone(idle.id).endswith("has ended: idle for more than 0.3s")
    await until(lambda: reaped(pid_of(idle)), timeout=5)
    assert route.get(busy.id) is busy
    assert await route.expire_idle() == []


async def test_expire_idle_names_what_it_ended(make_route: MakeRoute) -> None:
    route = await make_route(session_idle_timeout=60)
    session = await route.open_session("c")
    assert await route.expire_idle() == []
    session.last_activity -= 61  # as if a minute went by without a message
    assert await route.expire_idle() == [session.id]
    assert route.get(session.id) is None


async def test_a_dead_child_ends_its_session(make_route: MakeRoute) -> None:
    route = await make_route()
    session = await route.open_session("c")
    [answer] = await ask(session, 1, "exit", code=5, stderr="segfault-ish")
    assert "exited with code 5" in answer["error"]["message"]  # the waiting request's error
    assert session.state is SessionState.DEAD
    assert route.get(session.id) is None
    reason = route.why_gone(session.id)
    assert "the session's upstream is gone" in reason
    assert f"(pid {pid_of(session)}) exited with code 5; last stderr: segfault-ish" in reason
    health = route.health()
    assert (health["dead_sessions"], health["upstream_deaths"]) == (1, 1)


async def test_prestarted_children_are_warm_and_topped_up(make_route: MakeRoute) -> None:
    route = await make_route(command=mirror("--delay", "0.3"), prestart=2)
    described = route.describe()
    assert (described["prestarted"], described["children_started"]) == (2, 2)
    session = await route.open_session("c")  # takes one: no start-up to wait for
    assert route.describe()["children_started"] == 2
    [pong] = await asyncio.wait_for(ask(session, 1, "ping"), 0.25)  # quicker than --delay
    assert pong["result"] == {}
    await until(lambda: route.describe()["prestarted"] == 2, timeout=5)
    assert route.describe()["children_started"] == 3


async def test_a_prestarted_child_that_dies_is_replaced(make_route: MakeRoute) -> None:
    route = await make_route(prestart=1)
    [spare] = my_children()
    os.kill(spare, signal.SIGKILL)
    await until(lambda: route.describe()["upstream_deaths"] == 1, timeout=5)
    await until(lambda: route.describe()["prestarted"] == 1, timeout=5)  # after a second
    [replacement] = my_children()
    assert replacement != spare
    assert route.health()["dead_sessions"] == 0  # no session died


async def test_stateless_exchanges_lease_a_child_and_give_it_back(make_route: MakeRoute) -> None:
    route = await make_route()
    async with route.stateless("c") as first:
        assert first.id.startswith("stateless-")
        assert route.describe()["stateless_in_flight"] == 1
        [answer] = await ask(first, 1, "whoami")
    assert route.describe()["stateless_in_flight"] == 0
    assert route.describe()["stateless_idle"] == 1
    assert route.describe()["sessions"] == []
    async with route.stateless("c") as second:
        [again] = await ask(second, 1, "whoami")
        assert second.submit([msg(request(2, "silent"))]) is not None  # left unanswered
    assert again["result"]["pid"] == answer["result"]["pid"]  # the same child, reused
    assert route.describe()["stateless_idle"] == 0  # a busy one is not given back: stopped
    await until(lambda: not alive(answer["result"]["pid"]), timeout=5)


async def test_stateless_exchanges_count_against_max_sessions(make_route: MakeRoute) -> None:
    route = await make_route(max_sessions=1)
    async with route.stateless("c"):
        with pytest.raises(SessionLimit, match="max_sessions 1"):
            await route.open_session("c")
    await route.open_session("c")


async def test_a_command_that_cannot_start_is_a_spawn_failure(make_route: MakeRoute) -> None:
    route = await make_route(command=["/no/such/mcp-server"], prestart=1)  # start still works
    assert route.health()["spawn_failures"] == 1
    with pytest.raises(SpawnFailed, match="cannot start the MCP server '/no/such/mcp-server'") as e:
        await route.open_session("c")
    assert e.value.status == 502
    assert route.health()["spawn_failures"] == 2
    with pytest.raises(SpawnFailed):
        async with route.stateless("c"):
            pass
    assert route.describe()["stateless_in_flight"] == 0  # the lease was given back
    assert route.sessions == {}


async def test_children_get_the_route_env_without_proxyfleet_variables(
    make_route: MakeRoute, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PROXYFLEET_ADMIN_KEY", "secret")
    monkeypatch.setenv("MCP_INHERITED", "yes")
    route = Route(
        McpRouteConfig(
            path="/m",
            upstream={"command": mirror(), "env": {"MCP_TOKEN": "t0k"}, "cwd": str(tmp_path)},
        )
    )
    await route.start()
    try:
        session = await route.open_session("c")
        names = ["MCP_TOKEN", "MCP_INHERITED", "PROXYFLEET_ADMIN_KEY"]
        [answer] = await ask(session, 1, "whoami", env=names)
    finally:
        await route.stop()
    assert answer["result"]["env"] == {
        "MCP_TOKEN": "t0k",
        "MCP_INHERITED": "yes",
        "PROXYFLEET_ADMIN_KEY": None,
    }
    assert Path(answer["result"]["cwd"]) == tmp_path


async def test_stop_ends_every_session_and_stops_every_child(make_route: MakeRoute) -> None:
    route = await make_route(prestart=1)
    sessions = [await route.open_session("c") for _ in range(2)]
    await until(lambda: route.describe()["prestarted"] == 1, timeout=5)
    waiting = sessions[0].submit([msg(request(9, "silent"))])
    assert waiting is not None
    pids = my_children()
    assert len(pids) == 3
    await route.stop()
    [error] = await drain(waiting.queue)
    assert error["error"]["message"] == "the proxy is shutting down"
    assert all(s.state is SessionState.CLOSED for s in sessions)
    assert all(reaped(pid) for pid in pids)
    assert route.describe()["sessions"] == []
    with pytest.raises(SessionLimit, match="shutting down"):
        await route.open_session("c")


async def test_stop_during_a_prestart_top_up_leaves_no_child() -> None:
    route = Route(
        McpRouteConfig(path="/m", upstream={"command": mirror("--delay", "0.5")}, prestart=1)
    )
    await route.start()
    await route.open_session("c")  # takes the spare: a new one is being started and warmed
    await asyncio.sleep(0.1)
    assert len(my_children()) == 2
    try:
        await route.stop()
        assert my_children() == []
    finally:
        for pid in my_children():  # what was left behind, so that the test itself ends
            os.kill(pid, signal.SIGKILL)
        await until(lambda: not my_children(), timeout=5)
        await asyncio.sleep(0.1)  # its reader sees the exit


async def test_stop_finishes_stopping_a_stateless_child() -> None:
    route = Route(McpRouteConfig(path="/m", upstream={"command": mirror("--ignore-eof")}))
    await route.start()
    try:
        async with route.stateless("c") as session:
            assert (await ask(session, 1, "ping"))[0]["result"] == {}
            assert session.submit([msg(request(2, "silent"))]) is not None  # not clean
        await asyncio.sleep(0.05)  # its stop has begun: stdin is closed
        await route.stop()
        await asyncio.sleep(0.5)
        assert my_children() == []
    finally:
        for pid in my_children():
            os.kill(pid, signal.SIGKILL)
        await until(lambda: not my_children(), timeout=5)
        await asyncio.sleep(0.1)


async def test_a_server_that_exits_at_once_makes_the_route_failing_until_one_answers(
    make_route: MakeRoute, tmp_path: Path
) -> None:
    broken = tmp_path / "broken"
    broken.touch()
    route = await make_route(command=mirror("--fail-if", str(broken)))
    assert route.health()["status"] == "unknown"  # nothing started yet
    session = await route.open_session("c")
    pid = pid_of(session)
    [error] = await ask(session, 1, "ping")
    assert f"(pid {pid}) exited with code 1" in error["error"]["message"]
    health = route.health()
    assert health["status"] == "failing"
    assert health["reason"] == (
        f"its server exits before answering: the MCP server (pid {pid}) exited with code 1; "
        f"last stderr: cannot start: {broken} exists"
    )
    broken.unlink()  # the server can start now: a re-check (after a second) sees it
    await until(lambda: route.health()["status"] == "ok", timeout=15)
    assert route.health()["reason"] is None
    await until(lambda: my_children() == [], timeout=5)  # the re-check's child is stopped


async def test_a_server_that_answered_before_it_died_leaves_the_route_ok(
    make_route: MakeRoute,
) -> None:
    route = await make_route()
    session = await route.open_session("c")
    await ask(session, 1, "ping")
    [error] = await ask(session, 2, "exit", code=5)
    assert "exited with code 5" in error["error"]["message"]
    health = route.health()
    assert (health["status"], health["upstream_deaths"]) == ("ok", 1)  # it does start


# -- end to end: the gateway CLI, the SDK client and server ------------------------------------


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


async def test_a_missing_server_command_is_a_config_error(procs: Processes, tmp_path: Path) -> None:
    config = {"mcp": [{"path": "/tools", "upstream": {"command": ["/no/such/mcp-server"]}}]}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    served = procs.spawn("serve", "--port", "0", "--config", str(tmp_path / "c.yaml"))
    assert served.popen.wait(30) == 2
    assert f"{tmp_path / 'c.yaml'}: mcp[0].upstream.command: " in served.output()
    assert "'/no/such/mcp-server' does not exist" in served.output()


@pytest.mark.parametrize("prestart", [0, 1])
async def test_a_route_whose_server_cannot_start_makes_the_gateway_unready(
    procs: Processes, tmp_path: Path, prestart: int
) -> None:
    broken = tmp_path / "broken"
    broken.touch()
    gw = gateway(procs, tmp_path, command=mirror("--fail-if", str(broken)), prestart=prestart)
    if not prestart:  # nothing was started yet: the first session finds out
        assert gw.get_json("/health")["mcp"][0]["status"] == "unknown"
        async with aiohttp.ClientSession() as http:
            status, _, body = await raw_post(http, gw, INIT)
        assert status == 200
        assert "exited with code 1" in body["error"]["message"]
    with pytest.raises(urllib.error.HTTPError) as ready:
        gw.get_json("/ready")
    assert ready.value.code == 503
    answer = json.loads(ready.value.read())
    assert answer["status"] == "unavailable"
    assert answer["reason"].startswith("MCP route /mcp is failing: its server exits before")
    assert answer["reason"].endswith(f"last stderr: cannot start: {broken} exists")
    with pytest.raises(urllib.error.HTTPError) as health:
        gw.get_json("/health")
    assert health.value.code == 503
    answer = json.loads(health.value.read())
    assert answer["status"] == "unavailable"
    [route] = answer["mcp"]
    assert (route["path"], route["status"]) == ("/mcp", "failing")
    assert route["reason"].endswith(f"last stderr: cannot start: {broken} exists")
    broken.unlink()  # fixed: the route's re-check sees it, the gateway is ready again
    await until(lambda: _ready(gw), timeout=20)
    assert gw.get_json("/health")["mcp"][0]["status"] == "ok"


def _ready(gw: Any) -> bool:
    try:
        return gw.get_json("/ready")["status"] == "ready"  # type: ignore[no-any-return]
    except urllib.error.HTTPError:
        return False


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
