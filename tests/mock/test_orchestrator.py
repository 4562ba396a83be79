"""The mock orchestrator: as a real process (its API, its faults, no engine left behind), and
in this process on a loopback port (faults and their precedence, capacity, engines that die,
stream events, its debug log), with its pure parts (fault parsing, status) on their own. Where
the real acestream-orchestrator (FastAPI, pydantic models) refuses something, the mock refuses
it the same way, so a payload that would not pass there does not pass here either."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from proxyfleet.debuglog.writer import DebugLog
from proxyfleet.mock.orchestrator import (
    Faults,
    OrchestratorMock,
    build_orchestrator_app,
    parse_fault,
)
from proxyfleet.mock.runner import start_site
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
    assert call(orch, "POST", "/provision/acestream", {}, key=None) == (
        401,
        {"detail": "missing bearer token"},
    )
    assert call(orch, "POST", "/provision/acestream", {}, key="nope") == (
        403,
        {"detail": "invalid token"},
    )
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
    gone = call(orch, "DELETE", f"/containers/{first['container_id']}")  # always 200, as there
    assert gone == (200, {"deleted": first["container_id"]})
    assert not alive(pids[0])
    assert orch.get_json("/orchestrator/status")["engines"]["total"] == 1
    assert orch.stop() == 0
    assert not any(alive(pid) for pid in pids)


def test_faults_shape_status_and_refusals(procs: Processes) -> None:
    orch = procs.orchestrator("--fault", "blocked=30", "--fault", "slow=0")
    status = orch.get_json("/orchestrator/status")
    assert status["status"] == "unavailable"  # no engine yet: that is what unavailable means
    assert status["provisioning"]["can_provision"] is False
    assert status["provisioning"]["blocked_reason_details"]["recovery_eta_seconds"] == 30
    code, body = call(orch, "POST", "/provision/acestream", {})
    assert code == 503
    assert body["detail"]["code"] == "vpn_disconnected"
    assert call(orch, "POST", "/mock/faults", {"blocked": None})[0] == 200
    status = orch.get_json("/orchestrator/status")
    assert (status["status"], status["provisioning"]["can_provision"]) == ("unavailable", True)
    call(orch, "POST", "/mock/faults", {"fail": 1})
    assert call(orch, "POST", "/provision/acestream", {})[0] == 500
    assert call(orch, "POST", "/provision/acestream", {})[0] == 200  # only the next one failed
    assert call(orch, "POST", "/mock/faults", {"degraded": True})[0] == 200
    status = orch.get_json("/orchestrator/status")
    assert (status["status"], status["provisioning"]["can_provision"]) == ("degraded", True)
    code, body = call(orch, "POST", "/mock/faults", {"blocked": "soon"})
    assert code == 400
    assert "seconds" in body["detail"]
    code, body = call(orch, "POST", "/mock/faults", {"nonsense": 1})
    assert code == 400
    assert "unknown fault" in body["detail"]
    code, _ = call(orch, "POST", "/events/stream_started", started_event("s1"))
    assert code == 200
    assert call(orch, "POST", "/events/stream_ended", {"stream_id": 7})[0] == 422
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


# -- the same API in this process, on a loopback port ---------------------------------------


def test_parse_fault() -> None:
    assert parse_fault("slow=2.5") == {"slow": 2.5}
    assert parse_fault("blocked=30") == {"blocked": 30.0}
    assert parse_fault("breaker=0") == {"breaker": 0.0}
    assert parse_fault("fail=-1") == {"fail": -1}
    assert parse_fault(" degraded ") == {"degraded": True}
    assert parse_fault("refuse=yes") == {"refuse": True}
    assert parse_fault("refuse=0") == {"refuse": False}
    assert parse_fault("reject_events") == {"reject_events": True}
    for text, message in [
        ("slow", "needs a value"),
        ("fail=2.5", "not a number"),
        ("blocked=soon", "not a number"),
        ("vpn=down", "unknown fault 'vpn'"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse_fault(text)


def test_faults_updated_checks_what_it_takes() -> None:
    faults = Faults().updated({"blocked": 30, "slow": 0.5})
    assert (faults.blocked, faults.slow) == (30, 0.5)
    assert faults.updated({"blocked": None}).blocked is None  # cleared
    assert Faults() == Faults(0.0, None, None, False, 0, False)  # nothing on by default
    for changes, message in [
        ({"slow": -1}, "slow must be a number of seconds >= 0"),
        ({"breaker": "60"}, "breaker must be a number"),
        ({"fail": 1.5}, "fail must be an integer"),
        ({"vpn": True, "dns": 1}, "unknown fault\\(s\\): dns, vpn"),
    ]:
        with pytest.raises(ValueError, match=message):
            faults.updated(changes)


class _Engines(dict[str, Any]):
    """Stands for ``engines`` running engines in a status test (no process is started)."""

    def __init__(self, engines: int) -> None:
        super().__init__({f"e{n}": None for n in range(engines)})


@pytest.mark.parametrize(
    ("faults", "engines", "capacity", "status", "can_provision", "code", "can_retry"),
    [
        (Faults(), 1, 2, "healthy", True, None, None),
        (Faults(), 0, 2, "unavailable", True, None, None),  # unavailable: no engine at all
        (Faults(degraded=True), 1, 2, "degraded", True, None, None),
        (Faults(blocked=30), 1, 2, "degraded", False, "vpn_disconnected", True),
        (Faults(blocked=30, breaker=60), 1, 2, "degraded", False, "vpn_disconnected", True),
        (Faults(breaker=60), 1, 2, "degraded", False, "circuit_breaker", False),
        (Faults(breaker=60), 0, 2, "unavailable", False, "circuit_breaker", False),
        (Faults(refuse=True), 1, 2, "healthy", True, None, None),  # refused when asked only
        (Faults(), 1, 1, "healthy", False, "max_capacity", False),  # no room for an engine
    ],
)
def test_status_from_faults_and_capacity(
    faults: Faults,
    engines: int,
    capacity: int,
    status: str,
    can_provision: bool,
    code: str | None,
    can_retry: bool | None,
) -> None:
    mock = OrchestratorMock(faults, max_engines=capacity)
    mock.engines = _Engines(engines)
    body = mock.status()
    assert body["status"] == status
    assert body["provisioning"]["can_provision"] is can_provision
    detail = body["provisioning"]["blocked_reason_details"]
    assert (detail and detail["code"]) == code
    if detail is not None:
        assert body["provisioning"]["blocked_reason"]
        assert "error" not in detail  # the status's details have no 'error', the refusal's do
        assert (detail["can_retry"], detail["should_wait"]) == (can_retry, True)
    used = min(engines, capacity)
    assert body["capacity"] == {"total": capacity, "used": used, "available": capacity - used}
    assert (body["engines"], body["streams"]) == ({"total": engines}, {"active": 0})


def test_refusals_carry_what_the_real_one_says() -> None:
    # its own breaker open: wait for the ETA, do not retry (can_retry only when half-open)
    assert OrchestratorMock(Faults(breaker=60)).refusal() == (
        503,
        {
            "error": "provisioning_blocked",
            "code": "circuit_breaker",
            "message": "Circuit breaker is open due to repeated failures",
            "recovery_eta_seconds": 60,
            "can_retry": False,
            "should_wait": True,
        },
    )
    status, vpn = OrchestratorMock(Faults(blocked=20)).refusal() or (0, {})
    assert (status, vpn["code"], vpn["recovery_eta_seconds"], vpn["can_retry"]) == (
        503,
        "vpn_disconnected",
        20,
        True,
    )
    status, refused = OrchestratorMock(Faults(refuse=True)).refusal() or (0, {})
    assert (status, refused["code"], refused["can_retry"], refused["should_wait"]) == (
        500,
        "general_error",
        False,
        False,
    )
    assert refused["recovery_eta_seconds"] is None
    assert OrchestratorMock(Faults()).refusal() is None


def test_active_streams_count_started_not_ended() -> None:
    mock = OrchestratorMock(Faults())
    for stream in ("a", "b"):
        mock.start_stream(started_event(stream))
    mock.end_stream({"stream_id": "a"})
    mock.end_stream({"stream_id": "zz", "container_id": "nowhere"})
    assert mock.active_streams() == 1


Served = Callable[..., Awaitable[tuple[OrchestratorMock, str]]]


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    """``await served(mock)``: the orchestrator app for ``mock`` on 127.0.0.1; its engines are
    stopped with it at the end."""
    runners: list[web.AppRunner] = []

    async def serve(mock: OrchestratorMock) -> tuple[OrchestratorMock, str]:
        runner = web.AppRunner(build_orchestrator_app(mock), access_log=None)
        runners.append(runner)
        port = await start_site(runner, "127.0.0.1", 0)
        return mock, f"http://127.0.0.1:{port}"

    yield serve
    for runner in runners:
        await runner.cleanup()


async def send(
    url: str, method: str, path: str, body: Any = None, *, key: str | None = KEY, **headers: str
) -> tuple[int, Any]:
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, url + path, json=body, headers=headers) as response,
    ):
        return response.status, await response.json()


async def test_refusal_is_not_retryable_and_counted(served: Served) -> None:
    _, url = await served(OrchestratorMock(Faults(refuse=True), api_key=KEY))
    status, body = await send(url, "POST", "/provision", {})  # the short path as well
    assert status == 500  # the real one has no 400 refusal: a general failure is a 500
    assert (body["detail"]["can_retry"], body["detail"]["should_wait"]) == (False, False)
    assert body["detail"]["code"] == "general_error"
    assert (await send(url, "POST", "/provision/acestream", {}, key="wrong"))[0] == 403
    assert (await send(url, "DELETE", "/containers/x", key=None))[0] == 401
    assert (await send(url, "GET", "/orchestrator/status", key=None))[0] == 200  # no key there
    status, stats = await send(url, "GET", "/mock/stats")
    assert {
        k: stats[k] for k in ("provision_requests", "failed", "unauthorized", "status_requests")
    } == {"provision_requests": 1, "failed": 1, "unauthorized": 2, "status_requests": 1}
    assert stats["faults"]["refuse"] is True


@pytest.mark.parametrize(
    ("authorization", "status", "detail"),
    [
        (None, 401, "missing bearer token"),
        ("Basic " + KEY, 401, "missing bearer token"),
        (f"bearer {KEY}", 401, "missing bearer token"),  # the real one wants 'Bearer '
        ("Bearer wrong", 403, "invalid token"),
        (f"Bearer {KEY}x", 403, "invalid token"),
    ],
)
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/provision/acestream"),
        ("DELETE", "/containers/mock-engine-1"),
        ("POST", "/events/stream_started"),
        ("POST", "/events/stream_ended"),
    ],
)
async def test_auth_is_refused_as_the_real_one_refuses_it(
    served: Served, authorization: str | None, status: int, detail: str, method: str, path: str
) -> None:
    mock, url = await served(OrchestratorMock(Faults(), api_key=KEY))
    headers = {} if authorization is None else {"Authorization": authorization}
    assert await send(url, method, path, started_event(), key=None, **headers) == (
        status,
        {"detail": detail},
    )
    assert mock.counts["unauthorized"] == 1
    assert (mock.engines, mock.events) == ({}, [])


async def test_fail_minus_one_fails_every_provisioning(served: Served) -> None:
    mock, url = await served(OrchestratorMock(Faults(fail=-1)))
    for _ in range(3):
        status, body = await send(url, "POST", "/provision/acestream", {}, key=None)
        assert (status, body) == (500, {"detail": "engine container failed to start"})
    assert mock.faults.fail == -1
    assert mock.counts["failed"] == 3
    assert mock.engines == {}


async def test_engines_run_with_the_engine_args_and_fill_capacity(served: Served) -> None:
    _, url = await served(
        OrchestratorMock(
            Faults(), max_engines=1, engine_args=("--chunks", "1", "--chunk-size", "4")
        )
    )
    status, engine = await send(url, "POST", "/provision/acestream", {})
    assert status == 200
    assert engine["container_id"] == "mock-engine-1"
    assert engine["host_http_port"] == engine["container_http_port"]
    base = f"http://127.0.0.1:{engine['host_http_port']}"
    chat = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    status, answer = await send(base, "POST", "/v1/chat/completions", chat)
    assert answer["choices"][0]["message"]["content"] == "mock"  # --chunks 1 --chunk-size 4
    status, body = await send(url, "POST", "/provision/acestream", {})
    assert status == 500  # there is no capacity refusal there: starting one more fails
    assert (body["detail"]["code"], body["detail"]["can_retry"]) == ("general_error", False)
    assert "maximum" in body["detail"]["message"]
    blocked = (await send(url, "GET", "/orchestrator/status"))[1]["provisioning"]
    assert (blocked["can_provision"], blocked["blocked_reason_details"]["code"]) == (
        False,
        "max_capacity",
    )
    (listed,) = (await send(url, "GET", "/engines"))[1]
    assert (listed["container_id"], listed["host"], listed["port"]) == (
        "mock-engine-1",
        "127.0.0.1",
        engine["host_http_port"],
    )
    assert listed["health_status"] == "healthy"
    os.kill(listed["pid"], signal.SIGKILL)  # the engine dies under the orchestrator
    deadline = time.monotonic() + 10
    while (await send(url, "GET", "/engines"))[1][0]["health_status"] != "unhealthy":
        assert time.monotonic() < deadline, "a dead engine still listed as healthy"
        await asyncio.sleep(0.05)
    assert (await send(url, "DELETE", "/containers/mock-engine-1"))[0] == 200
    assert (await send(url, "GET", "/orchestrator/status"))[1]["provisioning"]["can_provision"]
    status, second = await send(url, "POST", "/provision/acestream", {})
    assert (status, second["container_id"]) == (200, "mock-engine-2")


async def test_stream_events_are_recorded_and_counted(served: Served) -> None:
    mock, url = await served(OrchestratorMock(Faults(), api_key=KEY))
    status, body = await send(
        url, "POST", "/events/stream_started", started_event("s-1"), **{"X-Request-ID": "rid-1"}
    )
    assert status == 200
    # a StreamState: its id is labels.stream_id, what stream_ended must name
    assert (body["id"], body["status"], body["container_id"]) == ("s-1", "started", "e1")
    assert (body["key_type"], body["key"]) == ("url", "http://127.0.0.1:19001/v1#s-1")
    await send(url, "POST", "/events/stream_started", started_event("s-2", container="e2"))
    assert (await send(url, "GET", "/orchestrator/status"))[1]["streams"]["active"] == 2
    ended = {"container_id": "e1", "stream_id": "s-1", "reason": "completed"}
    status, body = await send(url, "POST", "/events/stream_ended", ended)
    assert (status, body["updated"], body["stream"]["id"]) == (200, True, "s-1")
    assert body["stream"]["status"] == "ended"
    assert (await send(url, "GET", "/orchestrator/status"))[1]["streams"]["active"] == 1
    events = (await send(url, "GET", "/mock/events"))[1]
    assert [(e["kind"], e["stream_id"], e["reason"]) for e in events] == [
        ("started", "s-1", None),
        ("started", "s-2", None),
        ("ended", "s-1", "completed"),
    ]
    assert (events[0]["container_id"], events[0]["request_id"]) == ("e1", "rid-1")
    assert (await send(url, "POST", "/events/stream_ended", {"stream_id": "s"}, key=None))[0] == 401
    assert len(mock.events) == 3


def started_event(
    stream_id: str = "s-1", container: str | None = "e1", port: int = 19001, **parts: Any
) -> dict[str, Any]:
    """A stream_started body both the real orchestrator's versions accept; ``parts``
    replace its top-level parts (``session={...}``)."""
    engine = f"http://127.0.0.1:{port}/v1"
    body: dict[str, Any] = {
        "container_id": container,
        "engine": {"host": "127.0.0.1", "port": port},
        "stream": {"key_type": "url", "key": f"{engine}#{stream_id}"},
        "session": {
            "playback_session_id": stream_id,
            "stat_url": engine,
            "command_url": engine,
            "is_live": 0,
        },
        "labels": {"stream_id": stream_id},
    }
    return {**body, **parts}


def _locations(detail: list[dict[str, Any]]) -> list[tuple[str, ...]]:
    for item in detail:
        assert isinstance(item["msg"], str)
        assert item["msg"]
        assert isinstance(item["type"], str)
        assert item["type"]
    return [tuple(str(part) for part in item["loc"]) for item in detail]


async def test_a_stream_start_the_real_models_refuse_is_a_422_naming_each_field(
    served: Served,
) -> None:
    mock, url = await served(OrchestratorMock(Faults()))
    # what proxyfleet used to send: a key type neither version knows, no stat or command URL
    old = started_event(
        stream={"key_type": "request_id", "key": "rid-1"},
        session={"playback_session_id": "rid-1", "is_live": 0},
    )
    status, body = await send(url, "POST", "/events/stream_started", old)
    assert status == 422
    assert _locations(body["detail"]) == [
        ("body", "stream", "key_type"),
        ("body", "session", "stat_url"),
        ("body", "session", "command_url"),
    ]
    assert body["detail"][1]["msg"] == "Field required"
    assert mock.events == []


@pytest.mark.parametrize(
    ("parts", "where"),
    [
        # accepted by v2.0 only: v1.6.1 knows content_id, infohash, url and magnet
        ({"stream": {"key_type": "direct_url", "key": "k"}}, ("body", "stream", "key_type")),
        ({"engine": {"host": "127.0.0.1", "port": "http"}}, ("body", "engine", "port")),
        ({"engine": {"host": "127.0.0.1"}}, ("body", "engine", "port")),
        ({"engine": {"host": None, "port": 80}}, ("body", "engine", "host")),
        (
            {
                "session": {
                    "playback_session_id": "p",
                    "stat_url": "not a url",
                    "command_url": "http://127.0.0.1/x",
                    "is_live": 0,
                }
            },
            ("body", "session", "stat_url"),
        ),
        (
            {
                "session": {
                    "playback_session_id": "p",
                    "stat_url": "http://127.0.0.1/x",
                    "command_url": "http://127.0.0.1/x",
                }
            },
            ("body", "session", "is_live"),
        ),
        ({"labels": {"stream_id": "s", "n": 1}}, ("body", "labels", "n")),
        ({"container_id": 5}, ("body", "container_id")),
    ],
)
async def test_each_field_is_checked_like_the_real_models(
    served: Served, parts: dict[str, Any], where: tuple[str, ...]
) -> None:
    _, url = await served(OrchestratorMock(Faults()))
    status, body = await send(url, "POST", "/events/stream_started", started_event(**parts))
    assert status == 422
    assert _locations(body["detail"]) == [where]


async def test_a_body_that_is_not_an_object_is_a_422(served: Served) -> None:
    _, url = await served(OrchestratorMock(Faults()))
    status, body = await send(url, "POST", "/events/stream_started", [1, 2])
    assert (status, _locations(body["detail"])) == (422, [("body",)])
    async with (
        aiohttp.ClientSession() as session,
        session.post(url + "/events/stream_ended", data=b"{not json") as response,
    ):
        assert response.status == 422
        (item,) = (await response.json())["detail"]
        assert item["type"] == "json_invalid"


async def test_a_stream_without_a_stream_id_label_gets_the_real_ones_id(served: Served) -> None:
    _, url = await served(OrchestratorMock(Faults()))
    status, body = await send(url, "POST", "/events/stream_started", started_event(labels={}))
    assert (status, body["id"]) == (200, "http://127.0.0.1:19001/v1#s-1|s-1")  # key|session


async def test_stream_ended_behaves_as_the_real_one_even_where_that_hurts(
    served: Served,
) -> None:
    mock, url = await served(OrchestratorMock(Faults()))
    for stream, container in (("a", "e1"), ("b", "e1"), ("c", "e2")):
        assert (
            await send(url, "POST", "/events/stream_started", started_event(stream, container))
        )[0] == 200
    # an id it does not know ends the latest open stream of the container: "b", not "zz"
    status, body = await send(
        url, "POST", "/events/stream_ended", {"container_id": "e1", "stream_id": "zz"}
    )
    assert (status, body["updated"], body["stream"]["id"]) == (200, True, "b")
    # no container and no id: the latest open stream anywhere
    status, body = await send(url, "POST", "/events/stream_ended", {})
    assert (status, body["stream"]["id"]) == (200, "c")
    status, body = await send(url, "POST", "/events/stream_ended", {"container_id": "e9"})
    assert (status, body) == (200, {"updated": False, "stream": None})
    # streams sharing a key end together
    same = {"key_type": "url", "key": "http://127.0.0.1:19001/v1"}
    for stream in ("k1", "k2"):
        await send(url, "POST", "/events/stream_started", started_event(stream, stream=same))
    await send(url, "POST", "/events/stream_ended", {"stream_id": "k1", "reason": "completed"})
    ended = [(e["stream_id"], e["reason"]) for e in mock.events if e["kind"] == "ended"]
    assert ended == [("b", None), ("c", None), ("k1", "completed"), ("k2", "completed")]
    assert mock.active_streams() == 1  # "a"


async def test_reject_events_refuses_every_stream_start_with_a_422(served: Served) -> None:
    mock, url = await served(OrchestratorMock(Faults(reject_events=True)))
    status, body = await send(url, "POST", "/events/stream_started", started_event())
    assert status == 422
    (item,) = body["detail"]
    assert item["loc"] == ["body", "stream", "key_type"]
    assert "reject_events" in item["msg"]
    assert mock.events == []


async def test_faults_change_live_and_bad_changes_are_refused(served: Served) -> None:
    mock, url = await served(OrchestratorMock(Faults()))
    status, faults = await send(url, "POST", "/mock/faults", {"breaker": 45, "degraded": True})
    assert (status, faults["breaker"], faults["degraded"]) == (200, 45, True)
    assert mock.faults.breaker == 45
    status, body = await send(url, "POST", "/mock/faults", ["breaker"])
    assert (status, body) == (400, {"detail": "send a JSON object of faults"})
    assert (await send(url, "GET", "/mock/faults"))[1] == faults  # unchanged by the refusal
    status, body = await send(url, "POST", "/provision/acestream", {})
    assert (status, body["detail"]["recovery_eta_seconds"]) == (503, 45)
    assert (body["detail"]["can_retry"], body["detail"]["should_wait"]) == (False, True)


async def test_its_debug_log_pairs_with_the_gateways_request_ids(
    served: Served, tmp_path: Path
) -> None:
    debug = DebugLog(tmp_path)
    debug.start(component="mock-orchestrator")
    try:
        _, url = await served(OrchestratorMock(Faults(fail=1), debug=debug))
        rid = {"X-Request-ID": "gw-7"}
        assert (await send(url, "POST", "/provision/acestream", {}, **rid))[0] == 500
        assert (await send(url, "GET", "/orchestrator/status"))[0] == 200
        started = started_event("s-9")
        assert (await send(url, "POST", "/events/stream_started", started))[0] == 200
    finally:
        debug.stop()
    provisioning = [json.loads(x) for x in debug.path("provisioning").read_text().splitlines()]
    assert [(p["request_id"], p["operation"]) for p in provisioning] == [
        ("gw-7", "start_acestream_begin"),
        ("gw-7", "start_acestream_failed"),
    ]
    assert (provisioning[1]["success"], provisioning[1]["error"]) == (False, "start_failed")
    (health,) = [json.loads(x) for x in debug.path("orchestrator_health").read_text().splitlines()]
    assert (health["status"], health["can_provision"], health["engine_count"]) == (
        "unavailable",  # no engine yet
        True,
        0,
    )
    (stream,) = [json.loads(x) for x in debug.path("streams").read_text().splitlines()]
    assert (stream["request_id"], stream["event"]) == ("s-9", "stream_started")  # no id: stream's


async def test_a_fault_change_during_a_slow_provisioning_is_kept(served: Served) -> None:
    _, url = await served(OrchestratorMock(Faults(slow=0.3, fail=2)))
    pending = asyncio.ensure_future(send(url, "POST", "/provision/acestream", {}, key=None))
    await asyncio.sleep(0.1)  # it sleeps its 0.3 s
    status, _ = await send(url, "POST", "/mock/faults", {"slow": 0, "degraded": True})
    assert status == 200
    assert (await pending)[0] == 500  # the first of the two failures asked for
    faults = (await send(url, "GET", "/mock/faults"))[1]
    assert (faults["slow"], faults["degraded"], faults["fail"]) == (0, True, 1)
