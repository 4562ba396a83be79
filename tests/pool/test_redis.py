"""One pool shared through a real ``redis-server`` by several ``proxyfleet serve`` processes,
measured where the promise is kept: at the mock upstream, which counts requests in flight per
account. Single-flight holds across processes; a killed process's leases end within
``lease_ttl``; Redis trouble is a clear error, and serving resumes when Redis returns; Redis
never holds a secret."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from proxyfleet.errors import StoreUnavailable
from proxyfleet.pool import Grant, Member, Outcome
from proxyfleet.pool.health import HealthPolicy
from proxyfleet.pool.redis import RedisStore
from tests import redisd
from tests.conftest import Proc, Processes, run_cli
from tests.relay import Relay

KEYS = {"acct-a": "sk-live-aaaa1111", "acct-b": "sk-live-bbbb2222", "acct-c": "sk-live-cccc3333"}
BODY = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]}


def shared_config(
    tmp_path: Path, url: str, prefix: str, mock: Proc, *, ttl: float = 15.0, name: str = "pool"
) -> Path:
    config = {
        "upstream": {"base_url": mock.url},
        "pool": {
            "backends": [{"id": k, "api_key": v} for k, v in KEYS.items()],
            "lease_timeout": 60,
            "queue_limit": 1000,
            "store": {"redis": {"url": url, "key_prefix": prefix, "lease_ttl": ttl}},
        },
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(json.dumps(config))
    return path


async def stream(session: aiohttp.ClientSession, url: str) -> int:
    async with session.post(url + "/chat/completions", json=BODY) as response:
        body = await response.read()
        assert response.status != 200 or body.rstrip().endswith(b"data: [DONE]"), body[-200:]
        return response.status


def peaks(mock: Proc) -> dict[str, int]:
    return {k: c["peak"] for k, c in mock.get_json("/mock/stats")["credentials"].items()}


def post_status(url: str) -> tuple[int, dict[str, Any], dict[str, str]]:
    request = urllib.request.Request(
        url + "/chat/completions",
        data=json.dumps(dict(BODY, stream=False)).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.load(response), _lower(response.headers.items())
    except urllib.error.HTTPError as error:
        return error.code, json.load(error), _lower(error.headers.items())


def _lower(headers: Any) -> dict[str, str]:
    return {k.lower(): v for k, v in headers}


async def test_two_processes_share_one_single_flight_pool(procs: Processes, tmp_path: Path) -> None:
    """The shape that broke: two gateways given the same three accounts. 60 concurrent streams
    spread over both: the upstream never sees two at once on one account, and LRU spreads
    the work across the fleet."""
    redis = redisd.shared()
    mock = procs.mock("--chunks", "4", "--latency", "0.02")
    config = shared_config(tmp_path, redis.url, redisd.prefix(), mock)
    gateways = [procs.gateway("--config", str(config)) for _ in range(2)]
    async with aiohttp.ClientSession() as session:
        statuses = await asyncio.gather(*(stream(session, gateways[n % 2].url) for n in range(60)))
    assert statuses == [200] * 60
    assert peaks(mock) == {redis_label(k): 1 for k in KEYS.values()}
    served = [b["leases_served"] for b in gateways[0].get_json("/admin/pool")["backends"]]
    assert sum(served) == 60  # either process shows the whole fleet's counters
    assert max(served) - min(served) <= 2, served


def redis_label(key: str) -> str:
    from proxyfleet.mock.server import credential_label

    return credential_label(f"Bearer {key}")


async def test_a_release_in_one_process_wakes_a_waiter_in_another(
    procs: Processes, tmp_path: Path
) -> None:
    redis = redisd.shared()
    mock = procs.mock("--chunks", "2", "--latency", "0.3")
    config = tmp_path / "one.yaml"
    prefix = redisd.prefix()
    one = {"id": "only", "api_key": "sk-live-only0000"}
    config.write_text(
        json.dumps(
            {
                "upstream": {"base_url": mock.url},
                "pool": {
                    "backends": [one],
                    "store": {"redis": {"url": redis.url, "key_prefix": prefix}},
                },
            }
        )
    )
    first, second = (procs.gateway("--config", str(config)) for _ in range(2))
    async with aiohttp.ClientSession() as session:
        holder = asyncio.ensure_future(stream(session, first.url))
        await asyncio.sleep(0.2)  # first holds the only account
        waiter = asyncio.ensure_future(stream(session, second.url))
        await asyncio.sleep(0.2)
        assert second.get_json("/admin/queue")["waiting"] == 1  # waiting in the other process
        # either process shows who holds the lease (request, process, host) and who serves
        pool = second.get_json("/admin/pool")
        ((held_by,),) = [b["holders"] for b in pool["backends"]]
        assert f":{first.popen.pid}:" in held_by["process"]
        assert held_by["host"] == socket.gethostname()
        assert held_by["request_id"]
        assert pool["store"]["kind"] == "redis"
        pids = sorted(int(p["process"].split(":")[-2]) for p in pool["store"]["processes"])
        assert pids == sorted([first.popen.pid, second.popen.pid])
        assert await holder == 200
        started = time.monotonic()
        assert await waiter == 200
    assert time.monotonic() - started < 5  # woken by the release, not by its lease timeout
    assert peaks(mock) == {redis_label("sk-live-only0000"): 1}


def test_redis_unreachable_at_start_exits_2_naming_the_url(
    tmp_path: Path, procs: Processes
) -> None:
    mock = procs.mock()
    dead = redisd.RedisServer()  # a port nothing listens on
    config = shared_config(tmp_path, dead.url, "x", mock)
    result = run_cli("serve", "--port", "0", "--config", str(config), timeout=60)
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"the pool store at {dead.url}" in result.stderr
    assert "unreachable" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_processes_with_other_backends_are_refused_at_start(
    tmp_path: Path, procs: Processes
) -> None:
    redis = redisd.shared()
    mock = procs.mock()
    prefix = redisd.prefix()
    procs.gateway("--config", str(shared_config(tmp_path, redis.url, prefix, mock)))
    other = json.loads(shared_config(tmp_path, redis.url, prefix, mock, name="o").read_text())
    other["pool"]["backends"] = [*other["pool"]["backends"][:2], {"id": "acct-z", "api_key": "k"}]
    path = tmp_path / "other.yaml"
    path.write_text(json.dumps(other))
    result = run_cli("serve", "--port", "0", "--config", str(path), timeout=60)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "not in theirs: acct-z" in result.stderr
    assert "only in theirs: acct-c" in result.stderr


async def test_a_killed_process_loses_its_leases_within_the_ttl(
    procs: Processes, tmp_path: Path
) -> None:
    redis = redisd.shared()
    hanging = procs.mock("--hang")
    prefix = redisd.prefix()
    config = shared_config(tmp_path, redis.url, prefix, hanging, ttl=2.0)
    doomed, survivor = (procs.gateway("--config", str(config)) for _ in range(2))
    async with aiohttp.ClientSession() as session:
        held = [asyncio.ensure_future(stream(session, doomed.url)) for _ in range(3)]
        for _ in range(100):
            serving = [b["serving"] for b in survivor.get_json("/admin/pool")["backends"]]
            if all(serving):
                break
            await asyncio.sleep(0.05)
        assert all(serving), serving  # every account is held by the doomed process
        doomed.popen.send_signal(signal.SIGKILL)
        doomed.popen.wait(5)
        for task in held:
            task.cancel()
        killed_at = time.monotonic()
        for _ in range(200):
            if all(b["inflight"] == 0 for b in survivor.get_json("/admin/pool")["backends"]):
                break
            await asyncio.sleep(0.05)
        freed = time.monotonic() - killed_at
    assert all(b["inflight"] == 0 for b in survivor.get_json("/admin/pool")["backends"])
    assert freed < 2.0 + 2.0  # lease_ttl, and a heartbeat or an acquire to notice


async def test_a_release_with_a_stale_token_is_refused_and_counted() -> None:
    redis = redisd.shared()
    members = [Member("a", 1, "http", "http://127.0.0.1:1/a")]
    prefix = redisd.prefix()
    store = RedisStore(members, HealthPolicy(), url=redis.url, key_prefix=prefix, lease_ttl=1.0)
    async with store:
        grant = await store.acquire("lru", holder="r1")
        assert isinstance(grant, Grant)
        await asyncio.sleep(0)
        store._held.clear()  # as if this process had stopped renewing it
        await asyncio.sleep(1.5)
        again = await store.acquire("lru", holder="r2")  # the expired lease was reaped
        assert isinstance(again, Grant)
        assert again.token != grant.token
        assert not await store.release(grant, Outcome.SUCCESS)  # the old holder, too late
        assert store.stale_releases == 1
        assert await store.release(again, Outcome.SUCCESS)


@pytest.mark.parametrize(("script", "times"), [("ACQUIRE", 1), ("RELEASE", 1), ("RELEASE", 2)])
async def test_an_answer_lost_with_its_connection_is_not_acted_on_twice(
    script: str, times: int
) -> None:
    """Redis ran the script, then the connection broke before its answer came back (a Redis
    restart, a reset on the way): the store asks again on a new connection. The acquire
    asked again is not granted a second lease; the release asked again is not refused as
    stale, nor is one whose second answer was lost too (kept, and settled with the next
    call as the same call). Seen in Redis: one lease, then none."""
    members = [Member("a", 2, "http", "http://127.0.0.1:1/a")]
    async with Relay(redisd.shared().port) as relay:
        store = RedisStore(
            members, HealthPolicy(), url=relay.url, key_prefix=redisd.prefix(), lease_ttl=60
        )
        async with store:
            if script == "ACQUIRE":
                relay.cut_answer_to(b"EVALSHA")
            grant = await store.acquire("lru", holder="r1")
            assert isinstance(grant, Grant)
            [status] = await store.snapshot()
            assert (status.inflight, status.leases_served) == (1, 1)
            if script == "RELEASE":
                relay.cut_answer_to(b"EVALSHA", times)
            assert await store.release(grant, Outcome.SUCCESS)
            if times == 2:
                assert len(store._pending) == 1  # kept: Redis did not answer it
                answered = await store.acquire("lru", holder="next")  # Redis is back: settled
                assert isinstance(answered, Grant)
                await asyncio.sleep(0.1)
                assert not store._pending
                assert await store.release(answered, Outcome.SUCCESS)
            assert store.stale_releases == 0
            [status] = await store.snapshot()
            assert (status.inflight, status.holders) == (0, ())


async def test_a_redis_stalled_past_the_timeout_leaves_nothing_held() -> None:
    """Redis stops answering (a fork for a save, a stopped process) with an acquire and a
    release in its socket: both callers hear 503 after ``timeout``, and when Redis goes on,
    the grant it made for nobody goes back at once (not after ``lease_ttl``), and the release
    kept for later is settled as soon as Redis answers again (not at the next heartbeat)."""
    server = redisd.RedisServer().start()
    members = [Member("a", 1, "http", "http://127.0.0.1:1/a"), Member("b", 1, "http", "")]
    store = RedisStore(
        members, HealthPolicy(), url=server.url, key_prefix="stall", lease_ttl=60, timeout=0.3
    )
    assert server.popen is not None

    async def idle() -> bool:
        with contextlib.suppress(StoreUnavailable):
            return all(s.inflight == 0 for s in await store.snapshot())
        return False

    try:
        async with store:
            held = await store.acquire("lru", holder="held")
            assert isinstance(held, Grant)
            server.popen.send_signal(signal.SIGSTOP)
            try:
                with pytest.raises(StoreUnavailable):
                    await store.acquire("lru", holder="stalled")
                assert await store.release(held, Outcome.SUCCESS)  # kept for later
            finally:
                server.popen.send_signal(signal.SIGCONT)
            deadline = time.monotonic() + 5  # lease_ttl would free the grant after 60 s
            while not await idle():
                assert time.monotonic() < deadline, "a grant made for nobody is still held"
                await asyncio.sleep(0.05)
            assert not store._pending  # settled once Redis answered, not at a heartbeat
        assert store.stale_releases == 0
    finally:
        server.close()


async def test_redis_lost_and_back(procs: Processes, tmp_path: Path) -> None:
    """Redis stopped mid-run: 503 store_unavailable with Retry-After, /ready 503. Redis
    started again (empty, nothing was saved): requests succeed without restarting the
    gateway, and no account is left leased."""
    redis = redisd.RedisServer().start()
    try:
        mock = procs.mock()
        config = shared_config(tmp_path, redis.url, "lost", mock, ttl=3.0)
        gateway = procs.gateway("--config", str(config))
        assert post_status(gateway.url)[0] == 200
        redis.stop()
        status, body, headers = post_status(gateway.url)
        assert status == 503, body
        assert body["error"]["code"] == "store_unavailable"
        assert headers.get("retry-after") == "1"
        with pytest.raises(urllib.error.HTTPError) as ready:
            gateway.get_json("/ready")
        assert ready.value.code == 503
        assert "unreachable" in json.load(ready.value)["reason"]
        redis.start()
        for _ in range(100):
            if post_status(gateway.url)[0] == 200:
                break
            await asyncio.sleep(0.1)
        assert post_status(gateway.url)[0] == 200
        assert gateway.get_json("/ready")["status"] == "ready"
        assert all(b["inflight"] == 0 for b in gateway.get_json("/admin/pool")["backends"])
        assert "store_unavailable" in gateway.output()  # the log said why
    finally:
        redis.close()


async def test_redis_holds_no_secret(procs: Processes, tmp_path: Path) -> None:
    redis = redisd.shared()
    mock = procs.mock()
    prefix = redisd.prefix()
    config = shared_config(tmp_path, redis.url, prefix, mock)
    gateway = procs.gateway("--config", str(config))
    async with aiohttp.ClientSession() as session:
        assert await asyncio.gather(*(stream(session, gateway.url) for _ in range(6))) == [200] * 6
    dump = dump_prefix(redis, prefix)
    assert dump  # the pool is there
    for key in KEYS.values():
        assert key.encode() not in dump
    assert b"Bearer" not in dump


def dump_prefix(redis: redisd.RedisServer, prefix: str) -> bytes:
    """Every key under ``prefix`` and every value, as raw bytes (DUMP of each key)."""
    keys = redis.command("KEYS", f"{prefix}:*")
    out = [keys]
    for line in keys.split(b"\r\n"):
        if line.startswith(prefix.encode()):
            out.append(redis.command("DUMP", line.decode()))
    return b"".join(out)
