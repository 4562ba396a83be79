"""The mock orchestrator as a real process: its API, its faults, and no engine left behind."""

from __future__ import annotations

import json
import os
import socket
import time
import urllib.error
import urllib.request
from typing import Any

import pytest

from tests.conftest import Proc, Processes, run_cli

KEY = "mock-orch-key"


def call(proc: Proc, method: str, path: str, body: object = None, key: str | None = KEY) -> Any:
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(proc.url + path, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as handle:  # a zombie is not alive either
        return handle.read().split(") ", 1)[1][0] != "Z"


def test_provision_release_and_no_engine_left_after_shutdown(procs: Processes) -> None:
    orch = procs.orchestrator("--api-key", KEY)
    assert call(orch, "POST", "/provision/acestream", {}, key=None)[0] == 401
    assert call(orch, "POST", "/provision/acestream", {}, key="nope")[0] == 401
    status, first = call(orch, "POST", "/provision/acestream", {})
    assert status == 200
    status, second = call(orch, "POST", "/provision/acestream", {})
    assert first["container_id"] != second["container_id"]
    assert first["host_http_port"] != second["host_http_port"]
    engine = urllib.request.urlopen(f"http://127.0.0.1:{first['host_http_port']}/health", timeout=5)
    assert json.load(engine)["name"] == first["container_id"]
    engines = orch.get_json("/engines")
    pids = [e["pid"] for e in engines]
    assert len(engines) == 2
    assert all(alive(pid) for pid in pids)
    assert call(orch, "DELETE", f"/containers/{first['container_id']}")[0] == 200
    assert call(orch, "DELETE", f"/containers/{first['container_id']}")[0] == 404
    assert not alive(pids[0])
    assert orch.get_json("/orchestrator/status")["engines"]["total"] == 1
    assert orch.stop() == 0
    assert not any(alive(pid) for pid in pids)


def test_faults_shape_status_and_refusals(procs: Processes) -> None:
    orch = procs.orchestrator("--fault", "blocked=30", "--fault", "slow=0")
    status = orch.get_json("/orchestrator/status")
    assert status["status"] == "unavailable"
    assert status["provisioning"]["can_provision"] is False
    assert status["provisioning"]["blocked_reason_details"]["recovery_eta_seconds"] == 30
    code, body = call(orch, "POST", "/provision/acestream", {})
    assert code == 503
    assert body["detail"]["code"] == "vpn_disconnected"
    assert call(orch, "POST", "/mock/faults", {"blocked": None, "degraded": True})[0] == 200
    status = orch.get_json("/orchestrator/status")
    assert (status["status"], status["provisioning"]["can_provision"]) == ("degraded", True)
    call(orch, "POST", "/mock/faults", {"fail": 1})
    assert call(orch, "POST", "/provision/acestream", {})[0] == 500
    assert call(orch, "POST", "/provision/acestream", {})[0] == 200  # only the next one failed
    code, body = call(orch, "POST", "/mock/faults", {"blocked": "soon"})
    assert code == 400
    assert "seconds" in body["detail"]
    code, body = call(orch, "POST", "/mock/faults", {"nonsense": 1})
    assert code == 400
    assert "unknown fault" in body["detail"]
    code, _ = call(orch, "POST", "/events/stream_started", {"labels": {"stream_id": "s1"}})
    assert code == 200
    assert call(orch, "POST", "/events/stream_ended", {"no": "id"})[0] == 400
    assert [e["kind"] for e in orch.get_json("/mock/events")] == ["started"]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--fault", "sideways"], "unknown fault 'sideways'"),
        (["--fault", "slow"], "needs a value"),
        (["--fault", "fail=lots"], "not a number"),
        (["--max-engines", "0"], "at least 1"),
    ],
)
def test_bad_flags_exit_2(flags: list[str], message: str) -> None:
    result = run_cli("mock-orchestrator", "--port", "0", *flags)
    assert result.returncode == 2
    assert message in result.stderr


def test_busy_port_exits_1() -> None:
    with socket.create_server(("127.0.0.1", 0)) as sock:
        port = sock.getsockname()[1]
        result = run_cli("mock-orchestrator", "--port", str(port))
    assert result.returncode == 1
    assert str(port) in result.stderr


def test_engines_die_with_a_killed_orchestrator(procs: Processes) -> None:
    orch = procs.orchestrator()
    status, _ = call(orch, "POST", "/provision/acestream", {}, key=None)
    assert status == 200
    pid = orch.get_json("/engines")[0]["pid"]
    orch.popen.kill()  # no chance to clean up
    orch.popen.wait(5)
    deadline = time.monotonic() + 10
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(pid)
