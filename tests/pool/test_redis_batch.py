"""Script calls batched per turn of the event loop, against a real redis-server: each caller
gets its own answer or its own error, and scripts Redis forgot are loaded again."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis
import redis.exceptions

from proxyfleet.pool.redis_batch import ScriptBatcher
from tests import redisd

SCRIPTS = {
    "ECHO": "return ARGV[1]",
    "FAIL": "return redis.error_reply('refused: ' .. ARGV[1])",
    "COUNT": "return redis.call('INCR', ARGV[1])",
}


async def test_calls_in_one_turn_each_get_their_own_answer() -> None:
    client = aioredis.Redis.from_url(redisd.shared().url)
    batcher = ScriptBatcher(client, SCRIPTS)
    await batcher.load()
    key = redisd.prefix()
    answers = await asyncio.gather(*(batcher.call("ECHO", [str(n)]) for n in range(50)))
    assert answers == [str(n).encode() for n in range(50)]
    counts = await asyncio.gather(*(batcher.call("COUNT", [key]) for _ in range(20)))
    assert sorted(counts) == list(range(1, 21))  # every script ran once, atomically
    await client.aclose()


async def test_an_error_reaches_only_its_caller() -> None:
    client = aioredis.Redis.from_url(redisd.shared().url)
    batcher = ScriptBatcher(client, SCRIPTS)
    await batcher.load()
    good, bad = batcher.call("ECHO", ["fine"]), batcher.call("FAIL", ["no"])
    assert await good == b"fine"
    with pytest.raises(redis.exceptions.ResponseError, match="refused: no"):
        await bad
    await client.aclose()


async def test_scripts_redis_forgot_are_loaded_again() -> None:
    server = redisd.shared()
    client = aioredis.Redis.from_url(server.url)
    batcher = ScriptBatcher(client, SCRIPTS)
    await batcher.load()
    await client.script_flush()
    assert await batcher.call("ECHO", ["alone"]) == b"alone"  # one call alone
    await client.script_flush()
    together = await asyncio.gather(batcher.call("ECHO", ["a"]), batcher.call("ECHO", ["b"]))
    assert together == [b"a", b"b"]  # and a batch
    await client.aclose()


async def test_redis_gone_fails_every_caller_of_the_batch() -> None:
    server = redisd.RedisServer().start()
    client = aioredis.Redis.from_url(server.url, socket_connect_timeout=1, socket_timeout=1)
    batcher = ScriptBatcher(client, SCRIPTS)
    await batcher.load()
    server.close()
    calls = [batcher.call("ECHO", [str(n)]) for n in range(3)]
    for call in calls:
        with pytest.raises((redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)):
            await call
    await client.aclose()
