"""Running the mock as a server: ``running_mock`` in this process (a free port, its own debug
log, the socket closed after), and ``serve_mock`` as the real ``python -m proxyfleet mock``
process: its first line, stopping cleanly on SIGTERM and SIGINT, a busy port, and dying with
the parent that started it."""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import time
from pathlib import Path

import aiohttp
import pytest

from proxyfleet.mock.runner import running_mock
from proxyfleet.mock.server import MockSettings, credential_label
from tests.conftest import Processes, run_cli


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as handle:  # a zombie is not alive either
            return handle.read().rsplit(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False


def wait_gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def debug_files(directory: Path) -> dict[str, Path]:
    """``<session>_<category>.jsonl`` files by ``<category>.jsonl``."""
    return {p.name.split("_", 2)[2]: p for p in directory.glob("*.jsonl")}


async def test_running_mock_serves_on_a_free_port_and_closes_it() -> None:
    settings = MockSettings(name="m1", chunks=2, chunk_size=3)
    async with running_mock("127.0.0.1", 0, settings) as server:
        port = server.port
        assert port != 0
        assert server.base_url == f"http://127.0.0.1:{port}/v1"
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{port}/health") as response:
                assert await response.json() == {"status": "ok", "name": "m1"}
            body = {"model": "x", "messages": [{"role": "user", "content": "hi"}]}
            async with session.post(server.base_url + "/chat/completions", json=body) as response:
                answer = await response.json()
        assert answer["choices"][0]["message"]["content"] == "mock m"
        stats = server.app_stats()
        assert (stats["requests"], stats["inflight"], stats["peak"]) == (1, 0, 1)
        assert stats["recent"][0]["path"] == "/v1/chat/completions"
    assert refused(port)


async def test_running_mock_writes_its_own_debug_log(tmp_path: Path) -> None:
    secret = "Bearer sk-runner-secret-123456"
    async with running_mock("127.0.0.1", 0, MockSettings(name="m2"), tmp_path) as server:
        headers = {"X-Request-ID": "corr-1", "Authorization": secret}
        async with (
            aiohttp.ClientSession() as session,
            session.post(server.base_url + "/responses", json={"input": "x"}, headers=headers) as r,
        ):
            assert r.status == 200
        port = server.port
    files = debug_files(tmp_path)
    assert set(files) == {"session.jsonl", "requests.jsonl"}
    start, end = (json.loads(line) for line in files["session.jsonl"].read_text().splitlines())
    assert (start["event"], start["component"], start["name"], start["port"]) == (
        "session_start",
        "mock",
        "m2",
        port,
    )
    assert end["event"] == "session_end"  # stopped with the server
    (request,) = (json.loads(line) for line in files["requests.jsonl"].read_text().splitlines())
    assert (request["request_id"], request["method"], request["path"]) == (
        "corr-1",
        "POST",
        "/v1/responses",
    )
    assert request["credential"] == credential_label(secret)
    assert "sk-runner-secret" not in "".join(p.read_text() for p in files.values())


async def test_running_mock_on_a_busy_port_raises() -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        with pytest.raises(OSError, match="in use") as caught:
            async with running_mock("127.0.0.1", port, MockSettings()):
                pass
    assert caught.value.errno == errno.EADDRINUSE


def test_serve_mock_announces_its_base_url_first(procs: Processes) -> None:
    mock = procs.mock("--name", "served")
    first, second = mock.output().splitlines()[:2]
    assert first == f"mock listening on {mock.url}"
    port = int(mock.url.rsplit(":", 1)[1].removesuffix("/v1"))
    assert second == f"  stats: http://127.0.0.1:{port}/mock/stats   faults: POST /mock/faults"
    assert mock.get_json("/health") == {"status": "ok", "name": "served"}


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_serve_mock_stops_cleanly(procs: Processes, tmp_path: Path, sig: signal.Signals) -> None:
    mock = procs.mock("--debug-dir", str(tmp_path / "logs"))
    port = int(mock.url.rsplit(":", 1)[1].removesuffix("/v1"))
    assert mock.get_json("/health")["status"] == "ok"
    started = time.monotonic()
    assert mock.stop(sig) == 0
    assert time.monotonic() - started < 5
    assert refused(port)
    (session,) = (tmp_path / "logs").glob("*_session.jsonl")
    events = [json.loads(line)["event"] for line in session.read_text().splitlines()]
    assert events == ["session_start", "session_end"]  # its debug log closed on the way out
    assert "Traceback" not in mock.output()


def test_serve_mock_on_a_busy_port_exits_1() -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = run_cli("mock", "--port", str(port))
    assert result.returncode == 1
    assert f"mock: port {port} on 127.0.0.1 is already in use" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_mock_whose_parent_is_already_gone_stops_at_once(procs: Processes) -> None:
    """``PROXYFLEET_DIE_WITH_PARENT`` names the orchestrator that started it; when that is not
    its parent any more, the mock stops rather than outlive it."""
    proc = procs.spawn(
        "mock", "--port", "0", env={"PROXYFLEET_DIE_WITH_PARENT": str(2**22 + 12345)}
    )
    assert proc.popen.wait(15) == 0
    assert proc.output().startswith("mock listening on ")


PARENT = """
import os, subprocess, sys, time
child = subprocess.Popen(
    [sys.executable, "-m", "proxyfleet", "mock", "--port", "0"],
    env=dict(os.environ, PROXYFLEET_DIE_WITH_PARENT=str(os.getpid())),
)
print("child", child.pid, flush=True)
time.sleep(120)
"""


def test_a_mock_dies_with_the_parent_that_started_it(procs: Processes) -> None:
    parent = procs.spawn_python("-c", PARENT)
    child = int(parent.wait_for_line("child ").split()[1])
    try:
        parent.wait_for_line("mock listening on ")  # the child's output, to the same file
        assert alive(child)
        parent.popen.kill()  # SIGKILL: the parent cannot pass anything on
        parent.popen.wait(5)
        assert wait_gone(child), "the mock outlived its parent"
    finally:
        if alive(child):
            os.kill(child, signal.SIGKILL)
