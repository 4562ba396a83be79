"""Hostile and unlucky clients against ``proxyfleet serve`` over raw sockets, each promise
measured where it is kept: at the upstream (the mock's own counters), on the wire (the bytes
that come back), in the log (no traceback).

Single-flight when clients leave, bodies forwarded only whole, time and size limits on every
read, strict HTTP/1.1, the end of a drain, and the gateway's own key never going upstream.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import Proc, Processes, write_keys

KEYS = {"alice": "sk-test-alice-0001", "bob": "sk-test-bob-0002", "carol": "sk-test-carol-0003"}
STREAM = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]}


def port_of(proc: Proc) -> int:
    return int(proc.root.rsplit(":", 1)[1])


def exchange(port: int, data: bytes, *, half_close: bool = False, timeout: float = 10.0) -> bytes:
    """Send ``data`` as it is; everything the gateway sends back until it closes or goes
    quiet for ``timeout``."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        out = b""
        try:
            while chunk := sock.recv(65536):
                out += chunk
                if _complete(out):
                    break
        except TimeoutError:
            pass
    return out


def _complete(data: bytes) -> bool:
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value)
    return False


def status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/") else 0


def error_code(answer: bytes) -> str:
    body = answer.partition(b"\r\n\r\n")[2]
    return str(json.loads(body)["error"]["code"])


def requests_seen(mock: Proc) -> int:
    return int(mock.get_json("/mock/stats")["requests"])


@pytest.fixture
def pair(procs: Processes) -> tuple[Proc, Proc]:
    mock = procs.mock()
    gateway = procs.gateway(
        "--upstream",
        mock.url,
        env={
            "PROXYFLEET_SERVER__HEADER_TIMEOUT": "1",
            "PROXYFLEET_SERVER__BODY_TIMEOUT": "1",
        },
    )
    return mock, gateway


# -- 1. single-flight as the upstream sees it, whatever clients do --------------------------------


@pytest.mark.parametrize("abandon", ["drain", "close"])
async def test_single_flight_holds_when_clients_leave_after_the_first_chunk(
    procs: Processes, tmp_path: Path, abandon: str
) -> None:
    mock = procs.mock("--chunks", "8", "--latency", "0.05")
    creds = write_keys(tmp_path / "accounts", KEYS)
    gateway = procs.gateway(
        "--credentials-dir",
        str(creds),
        "--upstream",
        mock.url,
        env={"PROXYFLEET_POOL__ABANDON": abandon, "PROXYFLEET_POOL__ABANDON_GRACE": "1"},
    )

    async def leave_after_first_chunk(session: aiohttp.ClientSession) -> None:
        async with session.post(gateway.url + "/chat/completions", json=STREAM) as response:
            await response.content.readany()
            response.close()  # the client goes away mid-stream

    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(leave_after_first_chunk(session) for _ in range(30)))
    deadline = time.monotonic() + 15

    def settled() -> bool:
        pool = gateway.get_json("/admin/pool")
        return (
            not mock.get_json("/mock/stats")["inflight"]
            and not pool["waiting"]
            and all(b["state"] == "idle" for b in pool["backends"])
        )

    while not settled():
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)
    credentials = mock.get_json("/mock/stats")["credentials"]
    assert len(credentials) == 3
    assert {c["peak"] for c in credentials.values()} == {1}, credentials
    assert sum(c["requests"] for c in credentials.values()) == 30
    pool = gateway.get_json("/admin/pool")["backends"]
    assert all(b["state"] == "idle" for b in pool)
    assert sum(b["failures"] for b in pool) == 0  # a client leaving says nothing of a backend


# -- 2. a request goes upstream only whole ---------------------------------------------------------


def test_a_non_websocket_upgrade_is_served_as_plain_http_with_its_body(
    pair: tuple[Proc, Proc],
) -> None:
    _, gateway = pair
    body = b'{"hello": "h2c"}'
    answer = exchange(
        port_of(gateway),
        b"POST /v1/echo HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\n"
        b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body),
    )
    assert status(answer) == 200, answer
    assert json.loads(answer.partition(b"\r\n\r\n")[2])["body_bytes"] == len(body)


@pytest.mark.parametrize("sent", [b"", b'{"model": "m", "mess'])
def test_a_body_that_never_arrives_is_never_forwarded(pair: tuple[Proc, Proc], sent: bytes) -> None:
    mock, gateway = pair
    warm = exchange(port_of(gateway), b"GET /v1/echo HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status(warm) == 200  # a kept-alive upstream connection is ready to be used
    exchange(
        port_of(gateway),
        b"POST /v1/echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 5000\r\n\r\n" + sent,
        half_close=True,
        timeout=3,
    )
    time.sleep(0.3)
    assert requests_seen(mock) == 1


def test_a_broken_chunked_body_is_answered_and_never_forwarded(pair: tuple[Proc, Proc]) -> None:
    mock, gateway = pair
    answer = exchange(
        port_of(gateway),
        b"POST /v1/echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhel\r\nzz-not-a-chunk\r\n",
        timeout=3,
    )
    assert status(answer) == 400
    assert error_code(answer) == "invalid_request"
    time.sleep(0.3)
    assert requests_seen(mock) == 0


# -- 3. time limits on every read ------------------------------------------------------------------


async def test_slow_bodies_cannot_hold_every_session(procs: Processes) -> None:
    mock = procs.mock()
    gateway = procs.gateway(
        "--upstream",
        mock.url,
        env={"PROXYFLEET_SERVER__MAX_SESSIONS": "20", "PROXYFLEET_SERVER__BODY_TIMEOUT": "1"},
    )
    port = port_of(gateway)
    holders = []
    for _ in range(20):  # 20 connections that never finish their bodies
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{"
        )
        holders.append(sock)
    await asyncio.sleep(0.3)
    started = time.monotonic()
    for sock in holders:
        sock.settimeout(5)
        answer = sock.recv(65536)
        assert status(answer) == 408, answer
        assert error_code(answer) == "request_timeout"
        sock.close()
    assert time.monotonic() - started < 3
    async with (
        aiohttp.ClientSession() as session,
        session.post(gateway.url + "/chat/completions", json={"model": "m", "messages": []}) as r,
    ):
        assert r.status == 200
    assert requests_seen(mock) == 1


def test_a_head_that_never_ends_is_closed_with_408(pair: tuple[Proc, Proc]) -> None:
    _, gateway = pair
    started = time.monotonic()
    answer = exchange(
        port_of(gateway), b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Slow: ", timeout=5
    )
    assert status(answer) == 408
    assert error_code(answer) == "request_timeout"
    assert time.monotonic() - started < 4
    silent = exchange(port_of(gateway), b"", timeout=5)  # connects and says nothing at all
    assert status(silent) == 408


# -- 4. size limits --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("head", "code"),
    [
        (b"X-Big: " + b"a" * (8 * 1024 * 1024) + b"\r\n", "header_too_large"),
        (b"X-Big: " + b"a" * (100 * 1024) + b"\r\n", "header_too_large"),
        (b"".join(b"X-H%d: v\r\n" % n for n in range(500)), "too_many_headers"),
    ],
)
def test_oversized_heads_are_refused_before_a_lease(
    pair: tuple[Proc, Proc], head: bytes, code: str
) -> None:
    mock, gateway = pair
    started = time.monotonic()
    answer = exchange(
        port_of(gateway), b"GET /v1/models HTTP/1.1\r\nHost: x\r\n" + head + b"\r\n", timeout=10
    )
    assert status(answer) == 431, answer[:200]
    assert error_code(answer) == code
    assert time.monotonic() - started < 5
    assert requests_seen(mock) == 0
    assert "Traceback" not in gateway.output()


@pytest.mark.parametrize("route", ["/chat/completions", "/responses"])
@pytest.mark.parametrize(
    ("payload", "needle"),
    [
        (b'{"model": "m", "x": ' + b"[" * 5000 + b"]" * 5000 + b"}", "nested deeper"),
        (b'{"model": "m", "n": ' + b"7" * 5000 + b"}", "number"),
    ],
)
async def test_hostile_json_is_400_not_500(
    pair: tuple[Proc, Proc], route: str, payload: bytes, needle: str
) -> None:
    mock, gateway = pair
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            gateway.url + route, data=payload, headers={"Content-Type": "application/json"}
        ) as response,
    ):
        assert response.status == 400
        error = (await response.json())["error"]
    assert error["code"] == "invalid_json"
    assert needle in error["message"]
    assert requests_seen(mock) == 0
    assert "Traceback" not in gateway.output()


# -- 5. protocol slips -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "request_line",
    [
        b"GET /v1/models\nX-Injected: yes HTTP/1.1\r\n",  # a bare LF in the target
        b"GET /v1/models\r\n",  # no HTTP version
    ],
)
def test_malformed_request_lines_are_refused(pair: tuple[Proc, Proc], request_line: bytes) -> None:
    mock, gateway = pair
    answer = exchange(port_of(gateway), request_line + b"Host: x\r\n\r\n", timeout=3)
    assert status(answer) == 400
    assert requests_seen(mock) == 0


@pytest.mark.parametrize(
    "target",
    [b"//elsewhere.example/v1/models", b"http://elsewhere.example/health", b"http://x/admin/pool"],
)
def test_targets_that_name_another_host_are_400_invalid_path(
    pair: tuple[Proc, Proc], target: bytes
) -> None:
    mock, gateway = pair
    answer = exchange(port_of(gateway), b"GET " + target + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status(answer) == 400
    assert error_code(answer) == "invalid_path"
    assert requests_seen(mock) == 0


def test_an_http_1_0_stream_is_close_delimited(pair: tuple[Proc, Proc]) -> None:
    _, gateway = pair
    body = json.dumps(STREAM).encode()
    answer = exchange(
        port_of(gateway),
        b"POST /v1/chat/completions HTTP/1.0\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body),
    )
    head, _, rest = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert b"transfer-encoding" not in head.lower()
    assert b"connection: close" in head.lower()
    assert rest.startswith(b"data: ")  # the events as they are, no chunk framing
    assert rest.endswith(b"data: [DONE]\n\n")


async def test_streams_cut_at_the_end_of_the_drain_end_with_shutting_down(
    procs: Processes,
) -> None:
    mock = procs.mock("--chunks", "100", "--latency", "0.1")
    gateway = procs.gateway("--upstream", mock.url, env={"PROXYFLEET_SERVER__DRAIN_GRACE": "1"})
    async with (
        aiohttp.ClientSession() as session,
        session.post(gateway.url + "/chat/completions", json=STREAM) as response,
    ):
        await response.content.readuntil(b"\n\n")
        gateway.popen.send_signal(signal.SIGTERM)
        body = await response.content.read()
    assert b"event: error" in body
    last = body.rstrip().rsplit(b"\n\n", 1)[-1]
    assert json.loads(last.split(b"data: ", 1)[1])["error"]["code"] == "shutting_down"
    assert await asyncio.to_thread(gateway.popen.wait, 10) == 0


# -- 6. secrets stay home --------------------------------------------------------------------------


async def test_the_gateways_own_key_in_the_query_never_goes_upstream(
    procs: Processes, tmp_path: Path
) -> None:
    mock = procs.mock()
    keys = tmp_path / "keys"
    keys.write_text("gw-secret-key-1\n")
    gateway = procs.gateway("--upstream", mock.url, "--auth-keys-file", str(keys))
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            gateway.url + "/echo?api_key=gw-secret-key-1&page=2&mine=gw-secret-key-1",
            headers={"Authorization": "Bearer gw-secret-key-1"},
        ) as response,
    ):
        assert response.status == 200
        echoed: dict[str, Any] = await response.json()
    assert echoed["query"] == "page=2"
    assert "gw-secret-key-1" not in json.dumps(mock.get_json("/mock/stats"))
