"""Pool semantics seen from outside: single-flight, LRU spread, timeouts, failover, disconnects."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from email.message import Message
from pathlib import Path

import aiohttp
import openai
import pytest

from tests.conftest import Processes, write_keys

KEYS = {"alice": "sk-test-alice-0001", "bob": "sk-test-bob-0002", "carol": "sk-test-carol-0003"}


async def test_fifty_streams_single_flight_even_spread(procs: Processes, tmp_path: Path) -> None:
    mock = procs.mock("--ttft", "0.02", "--latency", "0.01", "--chunks", "6")
    creds = write_keys(tmp_path / "accounts", KEYS)
    gateway = procs.gateway("--credentials-dir", str(creds), "--upstream", mock.url)
    client = openai.AsyncOpenAI(base_url=gateway.url, api_key="unused", max_retries=0)

    async def one(n: int) -> str:
        stream = await client.chat.completions.create(
            model="mock-gpt", messages=[{"role": "user", "content": str(n)}], stream=True
        )
        return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

    texts = await asyncio.gather(*(one(n) for n in range(50)))
    await client.close()
    assert texts == [("mock " * 10)[:48]] * 50
    stats = mock.get_json("/mock/stats")
    assert len(stats["credentials"]) == 3
    assert all(c["peak"] == 1 for c in stats["credentials"].values()), stats["credentials"]
    served = [c["requests"] for c in stats["credentials"].values()]
    assert sum(served) == 50
    assert max(served) - min(served) <= 1, served


def _post(url: str, body: dict[str, object], timeout: float = 10.0) -> tuple[int, Message, bytes]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.headers, error.read()


async def _hold(session: aiohttp.ClientSession, url: str, body: dict[str, object]) -> None:
    async with session.post(url, json=body) as response:
        await response.read()


async def test_lease_timeout_gives_503_with_retry_after(procs: Processes, tmp_path: Path) -> None:
    mock = procs.mock("--latency", "3")
    gateway = procs.gateway("--upstream", mock.url, "--lease-timeout", "0.3")
    body = {"model": "m", "messages": []}
    async with aiohttp.ClientSession() as session:
        holder = asyncio.ensure_future(_hold(session, gateway.url + "/chat/completions", body))
        await asyncio.sleep(0.3)
        status, headers, payload = await asyncio.to_thread(
            _post, gateway.url + "/chat/completions", body
        )
        holder.cancel()
        await asyncio.gather(holder, return_exceptions=True)
    assert status == 503
    assert headers["Retry-After"] == "1"
    error = json.loads(payload)["error"]
    assert error["code"] == "lease_timeout"
    assert error["type"] == "server_error"
    assert "0.3s" in error["message"]


async def test_queue_full_is_refused_at_once(procs: Processes, tmp_path: Path) -> None:
    mock = procs.mock("--latency", "3")
    gateway = procs.gateway("--upstream", mock.url, "--queue-limit", "1")
    body = {"model": "m", "messages": []}
    async with aiohttp.ClientSession() as session:
        url = gateway.url + "/chat/completions"
        busy = [asyncio.ensure_future(_hold(session, url, body)) for _ in range(2)]
        await asyncio.sleep(0.4)  # one holds the backend, one waits
        started = time.monotonic()
        status, _, payload = await asyncio.to_thread(_post, url, body)
        assert time.monotonic() - started < 2.5
        for task in busy:
            task.cancel()
        await asyncio.gather(*busy, return_exceptions=True)
    assert status == 503
    assert json.loads(payload)["error"]["code"] == "queue_full"


async def test_killed_backend_fails_over_then_recovers(procs: Processes, tmp_path: Path) -> None:
    mocks = [procs.mock("--name", f"m{i}") for i in range(3)]
    gateway = procs.gateway(
        *[a for m in mocks for a in ("--upstream", m.url)],
        env={"PROXYFLEET_POOL__UNHEALTHY_AFTER": "1", "PROXYFLEET_POOL__COOLDOWN": "1.0"},
    )
    victim = mocks[1]
    port = victim.url.split(":")[2].split("/")[0]
    victim.popen.kill()
    victim.popen.wait(5)
    client = openai.AsyncOpenAI(base_url=gateway.url, api_key="unused", max_retries=0)
    for n in range(9):
        answer = await client.chat.completions.create(
            model="mock-gpt", messages=[{"role": "user", "content": str(n)}]
        )
        assert answer.choices[0].message.content
    pool = gateway.get_json("/admin/pool")["backends"]
    dead = next(b for b in pool if b["id"].endswith(f":{port}"))
    assert dead["state"] == "unhealthy"
    assert dead["failures"] >= 1
    assert gateway.get_json("/ready")["status"] == "ready"
    # The backend comes back on the same port; after the cooldown a half-open request proves it.
    procs.mock("--name", "m1-again", port=int(port))
    await asyncio.sleep(1.1)
    for n in range(6):
        await client.chat.completions.create(
            model="mock-gpt", messages=[{"role": "user", "content": str(n)}]
        )
    await client.close()
    pool = gateway.get_json("/admin/pool")["backends"]
    back = next(b for b in pool if b["id"].endswith(f":{port}"))
    assert back["state"] == "idle", back
    assert back["leases_served"] >= 2


async def test_no_healthy_backend(procs: Processes) -> None:
    mock = procs.mock()
    gateway = procs.gateway(
        "--upstream",
        mock.url,
        env={"PROXYFLEET_POOL__UNHEALTHY_AFTER": "1", "PROXYFLEET_POOL__COOLDOWN": "30"},
    )
    mock.popen.kill()
    mock.popen.wait(5)
    status, _, payload = await asyncio.to_thread(
        _post, gateway.url + "/chat/completions", {"model": "m", "messages": []}
    )
    assert status == 502  # the failure itself
    status, headers, payload = await asyncio.to_thread(
        _post, gateway.url + "/chat/completions", {"model": "m", "messages": []}
    )
    assert status == 503
    assert json.loads(payload)["error"]["code"] == "no_healthy_backend"
    assert 1 <= int(headers["Retry-After"]) <= 30
    with pytest.raises(urllib.error.HTTPError) as info:
        gateway.get_json("/ready")
    assert info.value.code == 503
    info.value.close()


async def test_disconnecting_clients_free_every_lease(procs: Processes, tmp_path: Path) -> None:
    mock = procs.mock("--latency", "0.2", "--chunks", "200")  # streams of ~40 s
    creds = write_keys(tmp_path / "accounts", {f"k{i}": f"sk-key-{i:04d}" for i in range(20)})
    gateway = procs.gateway("--credentials-dir", str(creds), "--upstream", mock.url)
    body = {"model": "m", "stream": True, "messages": []}

    async def client(session: aiohttp.ClientSession) -> None:
        async with session.post(gateway.url + "/chat/completions", json=body) as response:
            await response.content.readany()  # the stream has started …
            await asyncio.Event().wait()  # … and the client holds it until cancelled

    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:
        tasks = [asyncio.ensure_future(client(session)) for _ in range(200)]
        await asyncio.sleep(1.0)  # 20 stream, 180 wait in the queue
        pool = gateway.get_json("/admin/pool")
        assert sum(b["inflight"] for b in pool["backends"]) == 20
        assert pool["waiting"] == 180
        for task in tasks:
            task.cancel()  # … and every client goes away
        await asyncio.gather(*tasks, return_exceptions=True)
    gone = time.monotonic()
    while True:
        pool = gateway.get_json("/admin/pool")
        if all(b["state"] == "idle" for b in pool["backends"]) and pool["waiting"] == 0:
            break
        assert time.monotonic() - gone < 1.0, pool
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)
    assert mock.get_json("/mock/stats")["inflight"] == 0  # the upstream requests ended too
