"""A bounded soak through ``proxyfleet serve`` against a pool that misbehaves in every way at
once: healthy accounts, a flaky upstream whose failures flap (in and out of quarantine), one
that breaks streams, one that hangs, one that refuses connections; clients that mix streams
and plain answers and leave at every phase. It ends by checking, where each promise is kept:

- at the upstreams (the mocks' own counters): no account ever served two requests at once,
  and nothing is left in flight;
- at the gateway: no lease held, nobody waiting;
- at the clients: every request that stayed was answered, or told why (an OpenAI error, or an
  SSE error event ending its stream);
- in the log: no traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import socket
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from tests.conftest import Proc, Processes

REQUESTS = 6000
WORKERS = 48
BUDGET = 50.0  # seconds: the soak stops by itself, whatever happens


def dead_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])  # closed again: connections to it are refused


def account(directory: Path, name: str, upstream: str) -> None:
    data = {"headers": {"Authorization": f"Bearer sk-chaos-{name}-0001"}, "upstream": upstream}
    (directory / f"{name}.json").write_text(json.dumps(data))


@dataclass
class Tally:
    answered: int = 0  # a complete answer
    told_why: int = 0  # an OpenAI error, or a stream ending with an error event
    left: int = 0  # the client left on purpose
    unexplained: list[str] = field(default_factory=list)


async def one(session: aiohttp.ClientSession, url: str, tally: Tally, rng: random.Random) -> None:
    stream = rng.random() < 0.5
    body = {"model": "m", "stream": stream, "messages": [{"role": "user", "content": "hi"}]}
    leave = rng.choices(["stay", "early", "first", "mid"], [60, 10, 15, 15])[0]
    try:
        async with asyncio.timeout(rng.uniform(0.0, 0.05) if leave == "early" else 30):
            async with session.post(url, json=body) as response:
                if leave in ("first", "mid") and response.status == 200:
                    await response.content.readany()
                    if leave == "mid":
                        await response.content.readany()
                    response.close()
                    tally.left += 1
                    return
                data = await response.read()
    except TimeoutError:
        if leave == "early":
            tally.left += 1
        else:
            tally.unexplained.append(f"no answer within 30 s (stream={stream})")
        return
    except aiohttp.ClientError as exc:
        tally.unexplained.append(f"{type(exc).__name__}: {exc} (stream={stream})")
        return
    if response.status >= 400:
        error = json.loads(data).get("error", {})
        if {"message", "type", "code"} <= set(error):
            tally.told_why += 1
        else:
            tally.unexplained.append(f"{response.status} without an OpenAI error: {data[:200]!r}")
    elif stream and data.endswith(b"data: [DONE]\n\n"):
        tally.answered += 1
    elif stream and b"event: error\ndata: " in data.rsplit(b"\n\n", 2)[-2]:
        tally.told_why += 1  # broke mid-stream, and said so
    elif not stream and "choices" in json.loads(data):
        tally.answered += 1
    else:
        tally.unexplained.append(f"{response.status} unexpected body: {data[-200:]!r}")


async def flap(mock: Proc, stop: asyncio.Event) -> None:
    """The flaky upstream fails every request for a second, then a second not at all."""
    failing = False
    while not stop.is_set():
        failing = not failing
        request = urllib.request.Request(
            mock.root + "/mock/faults",
            data=json.dumps({"fail_rate": 1.0 if failing else 0.0}).encode(),
            headers={"Content-Type": "application/json"},
        )
        await asyncio.to_thread(lambda r=request: urllib.request.urlopen(r, timeout=5).close())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 1.0)


async def test_a_soak_of_every_kind_of_trouble_leaves_nothing_behind(
    procs: Processes, tmp_path: Path
) -> None:
    quick = ("--chunks", "4", "--latency", "0.01")
    healthy = procs.mock(*quick, "--name", "healthy")
    flaky = procs.mock(*quick, "--name", "flaky")
    dropping = procs.mock(*quick, "--drop-after", "2", "--name", "dropping")
    hanging = procs.mock("--hang", "--name", "hanging")
    print("mocks:", healthy.url, flaky.url, dropping.url, hanging.url)
    accounts = tmp_path / "accounts"
    accounts.mkdir()
    for n in range(16):
        account(accounts, f"ok{n}", healthy.url)
    for n in range(3):
        account(accounts, f"flaky{n}", flaky.url)
    account(accounts, "drop0", dropping.url)
    account(accounts, "hang0", hanging.url)
    account(accounts, "dead0", f"http://127.0.0.1:{dead_port()}/v1")
    config = tmp_path / "chaos.yaml"
    config.write_text(
        json.dumps(
            {
                "server": {"max_sessions": 10000},
                "upstream": {"connect_timeout": 1, "read_timeout": 1.5},
                "pool": {
                    "credentials_dir": str(accounts),
                    "unhealthy_after": 2,
                    "cooldown": 1,
                    "retries": 2,
                    "lease_timeout": 10,
                    "queue_limit": 10000,
                    "abandon_grace": 1,
                },
            }
        )
    )
    gateway = procs.gateway("--config", str(config))
    url = gateway.url + "/chat/completions"
    rng = random.Random(20261201)
    tally = Tally()
    todo = iter(range(REQUESTS))
    stop = asyncio.Event()
    started = time.monotonic()

    async def worker(session: aiohttp.ClientSession) -> None:
        for _ in todo:
            if time.monotonic() - started > BUDGET:
                return
            await one(session, url, tally, rng)

    flapping = asyncio.ensure_future(flap(flaky, stop))
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(worker(session) for _ in range(WORKERS)))
    stop.set()
    await flapping
    took = time.monotonic() - started
    done = tally.answered + tally.told_why + tally.left + len(tally.unexplained)
    assert done >= 2000, f"only {done} requests in {took:.0f} s"
    assert not tally.unexplained, tally.unexplained[:10]
    assert tally.answered > done // 3
    mocks = (healthy, flaky, dropping, hanging)

    def settled() -> bool:
        pool = gateway.get_json("/admin/pool")
        return (
            pool["waiting"] == 0
            and all(b["inflight"] == 0 and not b["serving"] for b in pool["backends"])
            and all(m.get_json("/mock/stats")["inflight"] == 0 for m in mocks)
        )

    deadline = time.monotonic() + 15
    while not settled():
        assert time.monotonic() < deadline, gateway.get_json("/admin/pool")
        await asyncio.sleep(0.2)
    for mock in mocks:
        peaks = {k: c["peak"] for k, c in mock.get_json("/mock/stats")["credentials"].items()}
        assert all(peak <= 1 for peak in peaks.values()), (mock.url, peaks)
    output = gateway.output()
    assert "Traceback" not in output
    print(
        f"chaos: {done} requests in {took:.1f} s: {tally.answered} answered, "
        f"{tally.told_why} told why, {tally.left} left on purpose"
    )
