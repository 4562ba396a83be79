"""Script calls on one pipelined connection, against a real redis-server: each caller gets its
own answer or its own error, in the order asked; scripts Redis forgot are loaded again; a
restarted Redis is reached on a new connection."""

from __future__ import annotations

import asyncio
import signal

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
    await batcher.aclose()
    await client.aclose()


async def test_an_error_reaches_only_its_caller() -> None:
    client = aioredis.Redis.from_url(redisd.shared().url)
    batcher = ScriptBatcher(client, SCRIPTS)
    await batcher.load()
    good, bad, after = await asyncio.gather(
        batcher.call("ECHO", ["fine"]),
        batcher.call("FAIL", ["no"]),
        batcher.call("ECHO", ["still"]),
        return_exceptions=True,
    )
    assert (good, after) == (b"fine", b"still")
    assert isinstance(bad, redis.exceptions.ResponseError)
    assert "refused: no" in str(bad)
    await batcher.aclose()
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
    await batcher.aclose()
    await client.aclose()


async def test_redis_gone_fails_every_caller_of_the_batch() -> None:
    server = redisd.RedisServer().start()
    client = aioredis.Redis.from_url(server.url, socket_connect_timeout=1, socket_timeout=1)
    batcher = ScriptBatcher(client, SCRIPTS)
    await batcher.load()
    server.close()
    calls = await asyncio.gather(
        *(batcher.call("ECHO", [str(n)]) for n in range(3)), return_exceptions=True
    )
    for answer in calls:
        assert isinstance(
            answer, redis.exceptions.ConnectionError | redis.exceptions.TimeoutError
        ), answer
    await batcher.aclose()
    await client.aclose()


async def test_calls_run_in_redis_in_the_order_they_were_made() -> None:
    """One connection: a release asked before an acquire is run before it, whatever turn."""
    client = aioredis.Redis.from_url(redisd.shared().url)
    batcher = ScriptBatcher(client, SCRIPTS)
    await batcher.load()
    key = redisd.prefix()
    counts = []
    for _ in range(5):  # calls over several turns, each started before the last answered
        counts.append(asyncio.ensure_future(batcher.call("COUNT", [key])))
        await asyncio.sleep(0)
    counts += [asyncio.ensure_future(batcher.call("COUNT", [key])) for _ in range(5)]
    assert await asyncio.gather(*counts) == list(range(1, 11))
    await batcher.aclose()
    await client.aclose()


async def test_a_restarted_redis_is_reached_on_a_new_connection() -> None:
    server = redisd.RedisServer().start()
    client = aioredis.Redis.from_url(server.url, socket_connect_timeout=1, socket_timeout=1)
    batcher = ScriptBatcher(client, SCRIPTS)
    try:
        await batcher.load()
        assert await batcher.call("ECHO", ["before"]) == b"before"
        server.stop()
        server.start()  # blocks this loop: the old connection's end is not read yet
        assert await batcher.call("ECHO", ["after"]) == b"after"  # loaded again, too
    finally:
        await batcher.aclose()
        await client.aclose()
        server.close()


async def test_a_silent_redis_times_a_call_out_and_a_later_answer_goes_nowhere() -> None:
    server = redisd.RedisServer().start()
    client = aioredis.Redis.from_url(server.url, socket_connect_timeout=1, socket_timeout=0.5)
    batcher = ScriptBatcher(client, SCRIPTS)
    try:
        await batcher.load()
        assert server.popen is not None
        server.popen.send_signal(signal.SIGSTOP)
        try:
            with pytest.raises(redis.exceptions.TimeoutError):
                await batcher.call("ECHO", ["late"])
        finally:
            server.popen.send_signal(signal.SIGCONT)
        assert await batcher.call("ECHO", ["next"]) == b"next"  # not the late one's answer
    finally:
        await batcher.aclose()
        await client.aclose()
        server.close()


async def test_the_answer_to_a_caller_that_left_goes_to_its_orphan() -> None:
    """Cancelled while Redis was away: what the script did is still done, and its answer is
    handed to the orphan when it comes (a grant goes back instead of waiting out a ttl)."""
    server = redisd.RedisServer().start()
    client = aioredis.Redis.from_url(server.url, socket_connect_timeout=1, socket_timeout=5)
    batcher = ScriptBatcher(client, SCRIPTS)
    orphaned: list[object] = []
    try:
        await batcher.load()
        assert server.popen is not None
        server.popen.send_signal(signal.SIGSTOP)
        try:
            call = asyncio.ensure_future(batcher.call("ECHO", ["left"], orphaned.append))
            await asyncio.sleep(0.1)  # written, not answered
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call
        finally:
            server.popen.send_signal(signal.SIGCONT)
        assert await batcher.call("ECHO", ["next"]) == b"next"  # answers come in order
        assert orphaned == [b"left"]
    finally:
        await batcher.aclose()
        await client.aclose()
        server.close()


async def test_nothing_is_sent_once_closed() -> None:
    client = aioredis.Redis.from_url(redisd.shared().url)
    batcher = ScriptBatcher(client, SCRIPTS)
    await batcher.load()
    assert await batcher.call("ECHO", ["open"]) == b"open"
    await batcher.aclose()
    with pytest.raises(redis.exceptions.ConnectionError, match="closed"):
        await batcher.call("ECHO", ["late"])  # and no connection is opened for it
    await client.aclose()
