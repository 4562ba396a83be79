"""The mock upstream over real sockets: answers, faults set at runtime, counters, clients that
leave, and stopping while a request hangs."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import time

import aiohttp

from tests.conftest import Processes


async def test_faults_and_counters(procs: Processes) -> None:
    mock = procs.mock("--name", "m1")
    root = mock.root
    headers = {"Authorization": "Bearer sk-one"}
    async with aiohttp.ClientSession() as session:
        async with session.post(
            root + "/mock/faults", json={"fail_rate": 1.0, "fail_status": 429}
        ) as r:
            assert (await r.json())["fail_status"] == 429
        async with session.post(root + "/v1/chat/completions", json={}, headers=headers) as r:
            assert r.status == 429
            assert (await r.json())["error"]["code"] == "mock_failure"
        async with session.post(root + "/mock/faults", json={"no_such": 1}) as r:
            assert r.status == 400
            assert "no_such" in (await r.json())["error"]["message"]
        async with session.post(root + "/mock/faults", json={"fail_rate": 0}) as r:
            assert r.status == 200
        async with session.post(root + "/v1/chat/completions", data=b"{oops", headers=headers) as r:
            assert r.status == 400
        async with session.get(root + "/v1/models") as r:
            models = await r.json()
        async with session.get(root + "/mock/stats") as r:
            stats = await r.json()
    assert [m["id"] for m in models["data"]] == ["mock-gpt", "mock-gpt-mini"]
    assert stats["requests"] == 3
    assert stats["credentials"].pop("anonymous")["requests"] == 1  # the models request
    ((label, counter),) = stats["credentials"].items()
    assert label.startswith("cred-")
    assert counter == {"requests": 2, "inflight": 0, "peak": 1}
    assert "sk-one" not in json.dumps(stats) + mock.output()


async def test_chat_only_shapes(procs: Processes) -> None:
    mock = procs.mock("--chunks", "2", "--chunk-size", "3")
    async with (
        aiohttp.ClientSession() as session,
        session.post(mock.url + "/chat/completions", json={"stream": True, "model": "x"}) as r,
    ):
        text = (await r.read()).decode()
    frames = [json.loads(f[6:]) for f in text.split("\n\n") if f.startswith("data: {")]
    assert [f["choices"][0]["delta"].get("content") for f in frames] == ["", "moc", "k m", None]
    assert frames[-1]["choices"][0]["finish_reason"] == "stop"
    assert text.endswith("data: [DONE]\n\n")


async def test_a_client_that_leaves_mid_stream_is_no_traceback(procs: Processes) -> None:
    """A client going away mid-stream is a normal event for a mock (issue 16, item 18)."""
    mock = procs.mock("--chunks", "50", "--latency", "0.05")
    port = int(mock.url.rsplit(":", 1)[1].removesuffix("/v1"))
    body = json.dumps(
        {"model": "m", "stream": True, "messages": [{"role": "user", "content": "x"}]}
    )
    for _ in range(5):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n{body}".encode()
        )
        await reader.readuntil(b"data: ")  # the stream has begun
        writer.transport.abort()  # and the client is gone
    for _ in range(100):
        if mock.get_json("/mock/stats")["inflight"] == 0:
            break
        await asyncio.sleep(0.05)
    assert mock.get_json("/mock/stats")["inflight"] == 0
    assert "Traceback" not in mock.output(), mock.output()


def test_a_hanging_mock_stops_on_sigterm_while_a_request_hangs(procs: Processes) -> None:
    mock = procs.mock("--hang")
    port = int(mock.url.rsplit(":", 1)[1].removesuffix("/v1"))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as client:
        client.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}"
        )
        for _ in range(100):  # the request is in, and hangs
            if mock.get_json("/mock/stats")["inflight"] == 1:
                break
            time.sleep(0.05)
        assert mock.get_json("/mock/stats")["inflight"] == 1
        mock.popen.send_signal(signal.SIGTERM)
        assert mock.popen.wait(10) == 0  # it stops, not waits for the request that hangs
    assert "Traceback" not in mock.output()
