"""Bad requests are features: size, JSON, paths, auth, session limit, header hygiene."""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path

import aiohttp
import openai
import pytest

from tests.conftest import Proc, Processes


def raw_http(proc: Proc, request: bytes) -> tuple[int, bytes]:
    """Send bytes as they are (clients would normalise the path) and read the answer."""
    host, port = proc.root.split("//")[1].split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data or len(data) < data.index(b"\r\n\r\n") + 4 + _length(data):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def _length(data: bytes) -> int:
    for line in data.split(b"\r\n\r\n")[0].split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":")[1])
    return 0


@pytest.fixture
def gateway(procs: Processes) -> Proc:
    mock = procs.mock()
    proc = procs.gateway("--upstream", mock.url, env={"PROXYFLEET_SERVER__MAX_BODY_BYTES": "1000"})
    proc.extra["mock"] = mock
    return proc


async def _post(url: str, data: bytes, headers: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            url, data=data, headers=headers or {"Content-Type": "application/json"}
        ) as response,
    ):
        return response.status, await response.json(), response.headers


async def test_body_too_large_is_413(gateway: Proc) -> None:
    status, body, _ = await _post(gateway.url + "/chat/completions", b"x" * 2000)
    assert status == 413
    assert body["error"]["code"] == "payload_too_large"
    assert set(body["error"]) == {"message", "type", "code"}


@pytest.mark.parametrize("payload", [b"{not json", b"[1, 2]", b"", b"\xff\xfe"])
async def test_malformed_json_is_400(gateway: Proc, payload: bytes) -> None:
    for route in ("/chat/completions", "/responses"):
        status, body, _ = await _post(gateway.url + route, payload)
        assert status == 400
        assert body["error"]["type"] == "invalid_request_error"
        assert body["error"]["code"] == "invalid_json"
    assert gateway.extra["mock"].get_json("/mock/stats")["requests"] == 0


@pytest.mark.parametrize(
    "target",
    [
        b"/v1/../admin/pool",
        b"/v1/%2e%2e/mock/stats",
        b"/v1//evil",
        b"/v1/a/%252e%252e/b",
        b"/v1/a\\..\\b",
    ],
)
def test_path_tricks_are_400(gateway: Proc, target: bytes) -> None:
    status, body = raw_http(gateway, b"GET " + target + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 400, body
    assert json.loads(body)["error"]["code"] == "invalid_path"
    assert gateway.extra["mock"].get_json("/mock/stats")["requests"] == 0


@pytest.mark.parametrize(
    "target", [b"http://203.0.113.9/v1/echo", b"https://203.0.113.9:8443/v1/echo"]
)
def test_absolute_form_is_refused(gateway: Proc, target: bytes) -> None:
    status, body = raw_http(gateway, b"GET " + target + b" HTTP/1.1\r\nHost: 203.0.113.9\r\n\r\n")
    assert status == 400, body
    assert json.loads(body)["error"]["code"] == "invalid_path"
    assert gateway.extra["mock"].get_json("/mock/stats")["requests"] == 0


def test_outside_v1_is_404_in_openai_shape(gateway: Proc) -> None:
    status, body = raw_http(gateway, b"GET /nothing HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 404
    assert json.loads(body)["error"]["code"] == "not_found"


async def test_hop_by_hop_headers_are_not_forwarded(gateway: Proc) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            gateway.url + "/echo",
            headers={
                "Connection": "keep-alive, X-Secret-Hop",
                "X-Secret-Hop": "1",
                "Proxy-Authorization": "Basic abc",
                "TE": "trailers",
                "X-Kept": "yes",
            },
        ) as response,
    ):
        assert response.status == 200
    seen = gateway.extra["mock"].get_json("/mock/stats")["recent"][-1]["headers"]
    assert "x-kept" in seen
    assert "x-request-id" in seen
    for hop in ("x-secret-hop", "proxy-authorization", "te"):
        assert hop not in seen


async def test_client_auth(procs: Processes, tmp_path: Path) -> None:
    mock = procs.mock()
    keys = tmp_path / "keys.txt"
    keys.write_text("# team keys\nclient-key-one\nclient-key-two\n")
    gateway = procs.gateway("--upstream", mock.url, "--auth-keys-file", str(keys))
    body = {"model": "mock-gpt", "messages": [{"role": "user", "content": "hi"}]}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"X-API-Key": "nope"}):
        status, answer, _ = await _post(
            gateway.url + "/chat/completions", json.dumps(body).encode(), headers
        )
        assert status == 401
        assert answer["error"]["code"] == "invalid_api_key"
    with openai.OpenAI(base_url=gateway.url, api_key="client-key-two") as client:
        assert client.chat.completions.create(**body).choices[0].message.content  # type: ignore[call-overload]
    status, _, _ = await _post(
        gateway.url + "/chat/completions",
        json.dumps(body).encode(),
        {"X-API-Key": "client-key-one"},
    )
    assert status == 200
    recent = mock.get_json("/mock/stats")["recent"]
    assert all(r["credential"] == "anonymous" for r in recent)  # client keys never go upstream


async def test_max_sessions(procs: Processes) -> None:
    mock = procs.mock("--latency", "2")
    gateway = procs.gateway(
        "--upstream",
        mock.url,
        "--max-concurrency",
        "10",
        env={"PROXYFLEET_SERVER__MAX_SESSIONS": "2"},
    )
    body = json.dumps({"model": "m", "messages": []}).encode()
    url = gateway.url + "/chat/completions"
    busy = [asyncio.ensure_future(_post(url, body)) for _ in range(2)]
    await asyncio.sleep(0.5)
    status, answer, headers = await _post(url, body)
    assert status == 503
    assert answer["error"]["code"] == "too_many_sessions"
    assert headers["Retry-After"] == "1"
    assert [s for s, _, _ in await asyncio.gather(*busy)] == [200, 200]
