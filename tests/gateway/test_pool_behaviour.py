"""Pool semantics seen from outside, over real sockets with the real mock: single-flight and
LRU spread as the upstream counts them, and clients that disconnect. (Timeouts, FIFO order,
quarantine and failover are tested in-process on virtual time: test_openai.py,
test_failover.py.)"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
import openai

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


async def test_disconnecting_clients_free_every_lease(procs: Processes, tmp_path: Path) -> None:
    """Waiting clients that leave free nothing they did not hold; streaming ones free their
    backend once its abandoned answer was drained for pool.abandon_grace, then cut."""
    mock = procs.mock("--latency", "0.2", "--chunks", "200")  # streams of ~40 s
    creds = write_keys(tmp_path / "accounts", {f"k{i}": f"sk-key-{i:04d}" for i in range(20)})
    gateway = procs.gateway(
        "--credentials-dir",
        str(creds),
        "--upstream",
        mock.url,
        env={"PROXYFLEET_POOL__ABANDON_GRACE": "0.5"},
    )
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
        assert time.monotonic() - gone < 2.5, pool
        await asyncio.sleep(0.05)
    assert time.monotonic() - gone > 0.4  # each backend was held while its answer drained
    await asyncio.sleep(0.5)
    assert mock.get_json("/mock/stats")["inflight"] == 0  # the upstream requests ended too
