"""Both SDK generations through the proxy: mcp 1.x clients and servers (in their own uv
environment, as users run them) with the 2.x ones of this project's environment."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mcp import Client
from mcp.shared.exceptions import MCPError

from tests.conftest import Proc, Processes

HERE = Path(__file__).parent
SERVER_V2 = str(HERE / "server_app.py")
SERVER_V1 = str(HERE / "sdk1" / "server_v1.py")
CLIENT_V1 = str(HERE / "sdk1" / "client_v1.py")
SDK1 = "mcp>=1.20,<2"


def _uv() -> list[str]:
    found = shutil.which("uv")
    if found:
        return [found]
    python = shutil.which("python3")
    if (
        python
        and subprocess.run([python, "-m", "uv", "--version"], capture_output=True).returncode == 0
    ):
        return [python, "-m", "uv"]
    if os.environ.get("CI") == "true":
        pytest.fail("CI must have uv (scripts/check installs it)")
    pytest.skip("needs uv to build an mcp 1.x environment")


def _sdk1(uv: list[str], script: str, *args: str) -> list[str]:
    return [*uv, "run", "--no-project", "--quiet", "--with", SDK1, "python", script, *args]


def _gateway(procs: Processes, tmp: Path, command: list[str]) -> Proc:
    config = {"mcp": [{"path": "/mcp", "upstream": {"command": command}}]}
    (tmp / "mcp.yaml").write_text(yaml.safe_dump(config))
    return procs.gateway("--config", str(tmp / "mcp.yaml"))


def _client_v1(uv: list[str], url: str, text: str, *flags: str) -> dict[str, object]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PROXYFLEET_", "VIRTUAL_ENV"))}
    result = subprocess.run(
        _sdk1(uv, CLIENT_V1, url, text, *flags),
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


@pytest.mark.parametrize("transport", ["streamable-http", "sse"])
async def test_sdk1_clients_with_an_sdk2_server(
    procs: Processes, tmp_path: Path, transport: str
) -> None:
    uv = _uv()
    gw = _gateway(procs, tmp_path, [sys.executable, SERVER_V2])
    url = gw.root + "/mcp" + ("/sse" if transport == "sse" else "")
    outcomes = await asyncio.gather(
        *(asyncio.to_thread(_client_v1, uv, url, f"v1-{n}") for n in range(3))
    )
    for n, outcome in enumerate(outcomes):
        assert outcome["server"] == "proxyfleet-test-server"
        assert outcome["echo"] == f"echo:v1-{n}"
        assert outcome["notes"] == [f"note:v1-{n}"]
    assert len({o["pid"] for o in outcomes}) == 3


async def test_sdk2_and_sdk1_clients_with_an_sdk1_server(procs: Processes, tmp_path: Path) -> None:
    uv = _uv()
    gw = _gateway(procs, tmp_path, _sdk1(uv, SERVER_V1))
    outcome = await asyncio.to_thread(_client_v1, uv, gw.root + "/mcp", "old-old")
    assert outcome["server"] == "proxyfleet-test-server-v1"
    assert outcome["echo"] == "echo:old-old"
    assert outcome["notes"] == ["note:old-old"]
    seen: list[str] = []

    async def on_log(params: object) -> None:
        seen.append(str(getattr(params, "data", "")))

    # a 2.x client in auto mode: it probes the new generation, the 1.x server declines, and
    # it falls back to the initialize handshake, all through the proxy
    async with Client(
        gw.root + "/mcp", mode="auto", logging_callback=on_log, log_level="info"
    ) as client:  # type: ignore[arg-type]
        result = await client.call_tool("echo", {"text": "new-old"})
        assert result.content[0].text == "echo:new-old"  # type: ignore[union-attr]
        pid = (await client.call_tool("whoami", {})).content[0].text  # type: ignore[union-attr]
    assert seen == ["note:new-old"]
    assert pid != outcome["pid"]


# -- a session whose server died: what each generation's client does after it ----------------
# Neither starts a new session by itself: the application sees the error, with the reason, on
# that call and on every later one, and connects again for a new session.


def _children_started(gw: Proc) -> int:
    return gw.get_json("/admin/sessions")["routes"][0]["children_started"]  # type: ignore[no-any-return]


async def test_an_sdk2_client_keeps_its_dead_session_until_it_connects_again(
    procs: Processes, tmp_path: Path
) -> None:
    gw = _gateway(procs, tmp_path, [sys.executable, SERVER_V2])
    async with Client(gw.root + "/mcp", mode="legacy") as client:
        first = (await client.call_tool("whoami", {})).content[0].text  # type: ignore[union-attr]
        died = rf"the session's upstream is gone: the MCP server \(pid {first}\) exited with code 3"
        with pytest.raises(MCPError, match="^" + died):
            await client.call_tool("crash", {})
        for _ in range(2):  # the 404 of the ended session, with why, every time
            with pytest.raises(MCPError, match=r"^MCP session [0-9a-f]{32} has ended: " + died):
                await client.call_tool("whoami", {})
    assert _children_started(gw) == 1  # it did not start a new session
    async with Client(gw.root + "/mcp", mode="legacy") as again:  # connecting again does
        second = (await again.call_tool("whoami", {})).content[0].text  # type: ignore[union-attr]
    assert second != first
    assert _children_started(gw) == 2


@pytest.mark.parametrize(
    ("transport", "later"),
    [  # streamable HTTP: it reads the 404 as the end; SSE: the session's stream ended
        ("streamable-http", ["McpError: Session terminated"] * 2),
        ("sse", ["McpError: Connection closed", "ClosedResourceError: "]),
    ],
)
async def test_an_sdk1_client_keeps_its_dead_session_until_it_connects_again(
    procs: Processes, tmp_path: Path, transport: str, later: list[str]
) -> None:
    uv = _uv()
    gw = _gateway(procs, tmp_path, [sys.executable, SERVER_V2])
    where = gw.root + "/mcp" + ("/sse" if transport == "sse" else "")
    outcome = await asyncio.to_thread(_client_v1, uv, where, "dies", "--crash")
    pid = outcome["pid"]
    assert outcome["after_crash"] == [
        f"McpError: the session's upstream is gone: the MCP server (pid {pid}) exited with code 3",
        *later,
    ]
    assert _children_started(gw) == 1  # it did not start a new session
    again = await asyncio.to_thread(_client_v1, uv, where, "again")  # connecting again does
    assert again["pid"] != pid
    assert _children_started(gw) == 2
