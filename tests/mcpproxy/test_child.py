"""One stdio MCP server process (:mod:`proxyfleet.mcpproxy.child`), real processes only: the
mirror server (tests/mcpproxy/mirror_server.py) and the mcp SDK server. Start, messages both
ways, bad lines, how an exit is described, the stop sequence (stdin, SIGTERM, SIGKILL) to the
whole process group, reaping, env and cwd; what crosses into a child (its stdio alone), and an
exit seen though a process the server started keeps its pipes open. End to end too: a gateway
killed with SIGKILL leaves its port to the next one."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import uvloop

from proxyfleet.errors import UpstreamGone
from proxyfleet.mcpproxy.child import Child
from proxyfleet.mcpproxy.jsonrpc import Kind, Message
from tests.conftest import Processes
from tests.mcpproxy.support import (
    INIT,
    SERVER,
    alive,
    gateway,
    line,
    mirror,
    raw_post,
    reaped,
    request,
    until,
)


class Watched:
    """A child with what it said and when it exited recorded."""

    def __init__(self, argv: list[str], env: dict[str, str] | None = None, cwd: Path | None = None):
        self.messages: asyncio.Queue[Message] = asyncio.Queue()
        self.exits: list[Child] = []
        self.child = Child(
            argv,
            dict(os.environ) if env is None else env,
            cwd,
            self.messages.put_nowait,
            self.exits.append,
        )

    async def next(self, timeout: float = 5.0) -> Message:
        return await asyncio.wait_for(self.messages.get(), timeout)

    async def ask(self, message: dict[str, Any]) -> Any:
        """Send a request; its response's JSON (whatever came before it is dropped)."""
        self.child.send(line(message))
        while True:
            answer = await self.next()
            if answer.kind is Kind.RESPONSE and answer.id == message["id"]:
                return orjson.loads(answer.raw)


@pytest.fixture
async def start() -> AsyncIterator[Callable[..., Any]]:
    """``watched = await start(argv)``: started now, stopped (and reaped) at the end."""
    started: list[Watched] = []

    async def begin(argv: list[str], **kwargs: Any) -> Watched:
        watched = Watched(argv, **kwargs)
        await watched.child.start()
        started.append(watched)
        return watched

    yield begin
    for watched in started:
        await watched.child.stop(1.0)


async def test_a_child_answers_on_stdout_and_stops_when_stdin_closes(start: Any) -> None:
    watched = await start(mirror())
    child = watched.child
    assert child.pid is not None
    assert child.alive
    assert child.label == f"pid {child.pid}"
    assert child.returncode is None
    answer = await watched.ask(request(1, "whoami"))
    assert answer["result"]["pid"] == child.pid
    began = time.monotonic()
    await child.stop(5.0)
    assert time.monotonic() - began < 1.0  # stdin closed: it left by itself, no signal needed
    assert child.returncode == 0
    assert not child.alive
    assert watched.exits == [child]  # on_exit, exactly once
    assert reaped(child.pid)
    assert child.describe_exit() == f"the MCP server (pid {child.pid}) exited with code 0"
    with pytest.raises(UpstreamGone, match="exited with code 0"):
        child.send(line(request(2, "ping")))
    await child.stop(5.0)  # a second stop is harmless
    assert watched.exits == [child]


async def test_the_sdk_server_answers_initialize_over_stdio(start: Any) -> None:
    watched = await start([sys.executable, SERVER])
    answer = await watched.ask(INIT)
    assert answer["result"]["serverInfo"]["name"] == "proxyfleet-test-server"
    await watched.child.stop(5.0)
    assert watched.child.returncode == 0
    assert reaped(watched.child.pid)


async def test_messages_keep_their_order_and_bad_lines_are_skipped(start: Any) -> None:
    watched = await start(mirror())
    watched.child.send(line(request(1, "garbage")))
    watched.child.send(line(request(2, "notify", text="hi")))
    got = [await watched.next() for _ in range(3)]
    assert [(m.kind, m.id) for m in got] == [
        (Kind.RESPONSE, 1),  # the lines before it that are not JSON-RPC never came through
        (Kind.NOTIFICATION, None),
        (Kind.RESPONSE, 2),
    ]
    assert orjson.loads(got[0].raw)["result"] == "after garbage"
    assert got[1].method == "notifications/message"
    assert watched.messages.empty()
    # what goes in arrives as it was sent, byte for byte
    sent = b'{"jsonrpc":"2.0", "id":3,  "method":"raw"}'
    watched.child.send(sent)
    answer = await watched.next()
    assert orjson.loads(answer.raw)["result"]["line"] == sent.decode()


async def test_an_exit_is_described_with_its_code_and_last_stderr_line(start: Any) -> None:
    watched = await start(mirror("--stderr", "starting up"))
    child = watched.child
    tail = "\n".join(f"line {n}" for n in range(30)) + "\nfatal: " + "x" * 600
    child.send(line(request(1, "exit", code=3, stderr=tail)))
    await until(lambda: watched.exits, timeout=5)
    assert watched.exits == [child]
    assert child.returncode == 3
    assert not child.alive
    description = child.describe_exit()
    assert description.startswith(f"the MCP server (pid {child.pid}) exited with code 3")
    assert description.endswith("; last stderr: fatal: " + "x" * 493)  # lines cut at 500
    await child.stop(1.0)  # the readers are done after a stop
    assert len(child.stderr_tail) == 20  # the last lines only
    assert child.stderr_tail[0] == "line 11"
    assert "starting up" not in child.stderr_tail
    with pytest.raises(UpstreamGone, match="exited with code 3; last stderr: fatal"):
        child.send(line(request(2, "ping")))


async def test_a_killed_child_is_described_with_its_signal(start: Any) -> None:
    watched = await start(mirror())
    child = watched.child
    await watched.ask(request(1, "ping"))
    os.kill(child.pid, signal.SIGKILL)
    await until(lambda: watched.exits, timeout=5)
    assert child.returncode == -signal.SIGKILL
    assert child.describe_exit() == f"the MCP server (pid {child.pid}) was killed by signal 9"
    assert reaped(child.pid)


@pytest.mark.parametrize(
    ("flags", "returncode", "at_least", "at_most"),
    [
        (("--ignore-eof",), -signal.SIGTERM, 0.3, 1.5),  # stdin ignored: SIGTERM
        (("--ignore-eof", "--ignore-term"), -signal.SIGKILL, 0.6, 2.5),  # SIGTERM too: SIGKILL
    ],
)
async def test_stop_escalates_from_stdin_to_sigterm_to_sigkill(
    start: Any, flags: tuple[str, ...], returncode: int, at_least: float, at_most: float
) -> None:
    watched = await start(mirror(*flags))
    child = watched.child
    await watched.ask(request(1, "ping"))  # its signal handlers are in place
    began = time.monotonic()
    await child.stop(0.3)
    took = time.monotonic() - began
    assert child.returncode == returncode
    assert at_least <= took <= at_most
    assert reaped(child.pid)
    assert watched.exits == [child]


async def test_stop_reaches_the_whole_process_group(start: Any) -> None:
    watched = await start(mirror())
    child = watched.child
    grandchild = (await watched.ask(request(1, "spawn")))["result"]["pid"]
    assert alive(grandchild)
    assert os.getpgid(grandchild) == child.pid  # the child leads a group of its own
    await child.stop(0.5)
    assert reaped(child.pid)
    await until(lambda: not alive(grandchild), timeout=3)


async def test_a_child_being_stopped_takes_no_more_messages(start: Any) -> None:
    watched = await start(mirror("--ignore-eof"))
    child = watched.child
    await watched.ask(request(1, "ping"))
    stopping = asyncio.ensure_future(child.stop(0.3))
    await asyncio.sleep(0.05)
    assert child.stopping
    assert child.returncode is None
    with pytest.raises(UpstreamGone, match=rf"pid {child.pid}\) is stopping"):
        child.send(line(request(2, "ping")))
    await stopping
    assert child.returncode == -signal.SIGTERM


async def test_env_and_cwd_are_the_childs_own(start: Any, tmp_path: Path) -> None:
    env = {"PATH": os.environ.get("PATH", ""), "MCP_MARK": "marked"}
    watched = await start(mirror(), env=env, cwd=tmp_path)
    answer = await watched.ask(request(1, "whoami", env=["MCP_MARK", "HOME"]))
    assert answer["result"]["env"] == {"MCP_MARK": "marked", "HOME": None}
    assert Path(answer["result"]["cwd"]) == tmp_path


async def test_a_command_that_does_not_exist_fails_to_start() -> None:
    watched = Watched(["/no/such/mcp-server"])
    with pytest.raises(FileNotFoundError):
        await watched.child.start()
    assert watched.child.pid is None
    assert not watched.child.alive
    with pytest.raises(UpstreamGone):
        watched.child.send(b"{}")
    await watched.child.stop(1.0)  # nothing to stop: returns at once
    assert watched.exits == []


# -- what crosses into a child -------------------------------------------------------------------


def test_only_stdin_stdout_and_stderr_cross_into_a_child() -> None:
    """Under uvloop, as in the gateway (it has no close_fds): a descriptor of the proxy marked
    inheritable (a listening socket, say) and the pipes of the child started before never
    reach a child; a process the server starts would hold them after the proxy is gone."""
    inheritable = socket.create_server(("127.0.0.1", 0))
    inheritable.set_inheritable(True)

    async def scenario() -> list[list[str]]:
        children = [Watched(mirror()) for _ in range(2)]
        try:
            for watched in children:
                await watched.child.start()
            for watched in children:
                await watched.ask(request(1, "ping"))
            return [sorted(os.listdir(f"/proc/{w.child.pid}/fd"), key=int) for w in children]
        finally:
            for watched in children:
                await watched.child.stop(1.0)

    try:
        seen = uvloop.run(scenario())
    finally:
        inheritable.close()
    assert seen == [["0", "1", "2"], ["0", "1", "2"]]


def _port(root: str) -> int:
    return int(root.rsplit(":", 1)[1])


def _refused(port: int) -> bool:
    """A connection to the port is refused at once: nothing listens there any more (a port
    held by a process that never accepts would take the connection and leave it hanging)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            return False
    except ConnectionRefusedError:
        return True


async def test_a_gateway_killed_leaves_its_port_to_the_next(
    procs: Processes, tmp_path: Path
) -> None:
    gw = gateway(procs, tmp_path, command=mirror())
    async with aiohttp.ClientSession() as http:
        status, headers, _ = await raw_post(http, gw, INIT)
        assert status == 200
        session = {"Mcp-Session-Id": headers["mcp-session-id"]}
        status, _, body = await raw_post(http, gw, request(2, "spawn"), session)
        assert status == 200
    grandchild = body["result"]["pid"]  # in the server's process group: it outlives the gateway
    [described] = gw.get_json("/admin/sessions")["routes"][0]["sessions"]
    server = described["upstream_pid"]
    port = _port(gw.root)
    gw.stop(signal.SIGKILL)  # no chance to stop its children
    try:
        assert alive(grandchild)
        assert _refused(port)
        again = gateway(procs, tmp_path, command=mirror(), flags=("--port", str(port)))
        assert _port(again.root) == port
        assert again.get_json("/live") == {"status": "alive"}
    finally:
        for pid in (server, grandchild):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


# -- an exit seen for what it is -----------------------------------------------------------------


@pytest.mark.parametrize("own_session", [False, True], ids=["in-its-group", "in-its-own-session"])
async def test_an_exit_is_seen_though_a_process_the_server_started_keeps_its_pipes(
    start: Any, own_session: bool
) -> None:
    watched = await start(mirror("--stderr", "started"))
    child = watched.child
    spawned = await watched.ask(request(1, "spawn", own_session=own_session))
    grandchild = spawned["result"]["pid"]
    try:
        os.kill(child.pid, signal.SIGKILL)  # the server alone: what it started holds its stdout
        await until(lambda: watched.exits, timeout=15)
        assert watched.exits == [child]
        assert child.returncode == -signal.SIGKILL
        assert not child.alive
        assert reaped(child.pid)
        assert child.describe_exit() == (
            f"the MCP server (pid {child.pid}) was killed by signal 9; last stderr: started"
        )
        with pytest.raises(UpstreamGone, match="killed by signal 9"):
            child.send(line(request(2, "ping")))
        if not own_session:  # what it left in its process group went with it
            await until(lambda: not alive(grandchild), timeout=5)
        await child.stop(1.0)
        assert watched.exits == [child]
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(grandchild, signal.SIGKILL)


async def test_an_exit_is_seen_where_the_system_has_no_pidfds(
    start: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delattr(os, "pidfd_open")  # as on kernels before 5.3, or other systems
    watched = await start(mirror())
    child = watched.child
    grandchild = (await watched.ask(request(1, "spawn")))["result"]["pid"]
    os.kill(child.pid, signal.SIGKILL)
    await until(lambda: watched.exits, timeout=15)
    assert child.returncode == -signal.SIGKILL
    assert reaped(child.pid)
    await until(lambda: not alive(grandchild), timeout=5)  # its group went with it
