"""The Redis store's scripts, read back from Redis itself: only the documented keys, leases
with their holder and expiry, an expired lease reaped by the next acquire and published, and
leases put back after Redis restarted empty with their tokens still unique."""

from __future__ import annotations

import asyncio
import json
import re

import redis.asyncio as aioredis

from proxyfleet.pool import Grant, Member, Outcome
from proxyfleet.pool.health import HealthPolicy
from proxyfleet.pool.redis import RedisStore
from proxyfleet.pool.redis_scripts import __doc__ as LAYOUT
from tests import redisd

MEMBERS = [Member(f"b{i}", 1, "http", f"http://127.0.0.1:1/{i}") for i in range(2)]


def documented_keys(prefix: str) -> re.Pattern[str]:
    """The key names the module's docstring lists, as a pattern."""
    assert LAYOUT is not None
    names = re.findall(r"P:([a-z<>]+)", LAYOUT)
    parts = [re.escape(n).replace("<id>", "[^:]+") for n in names]
    return re.compile(rf"{re.escape(prefix)}:({'|'.join(parts)})(:[^:]+)?")


async def test_only_the_documented_keys_and_holders_with_their_process() -> None:
    server = redisd.shared()
    prefix = redisd.prefix()
    client = aioredis.Redis.from_url(server.url)
    async with RedisStore(MEMBERS, HealthPolicy(), url=server.url, key_prefix=prefix) as store:
        grant = await store.acquire("lru", holder="req-7")
        assert isinstance(grant, Grant)
        keys = sorted(k.decode() for k in await client.keys(f"{prefix}:*"))
        pattern = documented_keys(prefix)
        assert all(pattern.fullmatch(k) for k in keys), keys
        holder = json.loads(await client.hget(f"{prefix}:l:{grant.backend_id}", grant.token))
        assert holder == {
            "rid": "req-7",
            "process": store.process,
            "host": store.process.split(":")[0],
        }
        expiry = await client.zscore(f"{prefix}:exp", f"{grant.backend_id}:{grant.token}")
        assert expiry is not None
        await store.release(grant, Outcome.SUCCESS)
        assert not await client.hgetall(f"{prefix}:l:{grant.backend_id}")
        assert await client.zcard(f"{prefix}:exp") == 0
    assert await client.zscore(f"{prefix}:procs", store.process) is None  # it said goodbye
    await client.aclose()


async def test_an_expired_lease_is_reaped_by_the_next_acquire_and_published() -> None:
    server = redisd.shared()
    prefix = redisd.prefix()
    client = aioredis.Redis.from_url(server.url)
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(f"{prefix}:changes")
    clock = [1_000.0]
    store = RedisStore(MEMBERS[:1], HealthPolicy(), lambda: clock[0], url=server.url,
                       key_prefix=prefix, lease_ttl=15.0)  # fmt: skip
    async with store:
        grant = await store.acquire("lru", holder="r")
        assert isinstance(grant, Grant)
        store._held.clear()  # its holder stopped renewing it
        clock[0] += 16.0
        await store.want(lambda: 1)  # a process with waiters: releases are news to it
        again = await store.acquire("lru", holder="r2")
        assert isinstance(again, Grant)
        assert int(await client.get(f"{prefix}:expired")) == 1
        message = None
        for _ in range(50):
            message = await pubsub.get_message(timeout=0.1)
            if message is not None:
                break
        assert message is not None
        assert message["data"].decode() == f"released {grant.backend_id} 0 -"
    await pubsub.aclose()
    await client.aclose()


async def test_leases_are_put_back_after_redis_restarted_empty() -> None:
    server = redisd.RedisServer().start()
    try:
        store = RedisStore(MEMBERS, HealthPolicy(), url=server.url, key_prefix="restore",
                           lease_ttl=3.0)  # fmt: skip
        async with store:
            held = await store.acquire("lru", holder="r")
            assert isinstance(held, Grant)
            server.stop()
            server.start()  # nothing was saved: the pool is gone from Redis
            fresh = await store.acquire("lru", holder="r2")  # opens the pool again, restores
            assert isinstance(fresh, Grant)
            assert fresh.backend_id != held.backend_id  # the held one is still held
            assert fresh.token > held.token  # tokens stay unique
            statuses = {s.id: s for s in await store.snapshot()}
            assert statuses[held.backend_id].serving == ("r",)
            assert await store.release(held, Outcome.SUCCESS)
            assert await store.release(fresh, Outcome.SUCCESS)
            assert all(s.inflight == 0 for s in await store.snapshot())
    finally:
        server.close()
    await asyncio.sleep(0)


async def test_a_release_is_published_only_while_some_process_has_waiters() -> None:
    """A busy fleet with nobody waiting sends no message per release to every process."""
    server = redisd.shared()
    prefix = redisd.prefix()
    client = aioredis.Redis.from_url(server.url)
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(f"{prefix}:changes")
    async with RedisStore(MEMBERS, HealthPolicy(), url=server.url, key_prefix=prefix) as store:

        async def one_lease() -> None:
            grant = await store.acquire("lru", holder="r")
            assert isinstance(grant, Grant)
            await store.release(grant, Outcome.SUCCESS)

        async def heard() -> list[str]:
            out = []
            while (message := await pubsub.get_message(timeout=0.2)) is not None:
                out.append(message["data"].decode().split(" ")[0])
            return out

        await one_lease()
        assert await heard() == []  # nobody waits anywhere
        await store.want(lambda: 1)
        await one_lease()
        assert await heard() == ["released"]
    await pubsub.aclose()
    await client.aclose()
