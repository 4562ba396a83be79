"""Script calls on one pipelined connection, against a real redis-server: each caller gets its
own answer or its own error, in the order asked; scripts Redis forgot are loaded again; a
restarted Redis is reached on a new connection."""

from __future__ import annotations

import asyncio
import signal
import socket
import threading
import time

import pytest
import redis.asyncio as aioredis
import redis.exceptions
import uvloop

from proxyfleet.pool.redis_batch import ScriptBatcher
from tests import redisd
from tests.relay import Relay

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


async def test_a_connection_gone_silent_is_dropped_and_the_next_call_served() -> None:
    """A partition drops packets without a reset: nothing would ever end the connection.
    The call waiting on it times out, the connection goes with it, and the next call is
    served on a new one (on the old one it would time out too)."""
    async with Relay(redisd.shared().port) as relay:
        client = aioredis.Redis.from_url(relay.url, socket_connect_timeout=1, socket_timeout=0.5)
        batcher = ScriptBatcher(client, SCRIPTS)
        try:
            await batcher.load()
            assert await batcher.call("ECHO", ["before"]) == b"before"
            relay.silence()
            with pytest.raises(redis.exceptions.TimeoutError, match=r"0\.5s"):
                await batcher.call("ECHO", ["lost"])
            assert await batcher.call("ECHO", ["next"]) == b"next"
        finally:
            await batcher.aclose()
            await client.aclose()


async def test_a_once_script_whose_answer_was_lost_runs_once() -> None:
    """The answer is lost with its connection after Redis ran the script: the call is sent
    again on a new connection and answered what the first run did, not run a second time.
    A script not named once runs again (it must be safe to)."""
    key = redisd.prefix()
    async with Relay(redisd.shared().port) as relay:
        client = aioredis.Redis.from_url(relay.url, socket_connect_timeout=1, socket_timeout=2)
        batcher = ScriptBatcher(
            client, {**SCRIPTS, "ONCE": SCRIPTS["COUNT"]}, once=["ONCE"], once_prefix=key + ":c:"
        )
        try:
            await batcher.load()
            relay.cut_answer_to(b"EVALSHA")
            assert await batcher.call("ONCE", [key]) == 1
            assert await batcher.call("ONCE", [key]) == 2
            relay.cut_answer_to(b"EVALSHA")
            assert await batcher.call("COUNT", [key]) == 4  # ran twice: 3 was lost
            await asyncio.sleep(0.1)  # the once-keys' UNLINK, written with the next turn
            assert await client.keys(key + ":c:*") == []
        finally:
            await batcher.aclose()
            await client.aclose()


class _Stall(asyncio.Protocol):
    """Blocks the loop for ``seconds`` in the middle of its I/O, when data comes."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def data_received(self, data: bytes) -> None:
        time.sleep(self.seconds)  # the blocked loop is the point


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_loop_blocked_past_the_timeout_does_not_take_an_answer_waiting_for_silence(
    loop: str,
) -> None:
    """The answer came while the loop was blocked in another connection's callback: uvloop
    then runs its timers before it reads the socket, so the watch must look again before it
    calls Redis silent. Redis runs a script of 0.3 s; 0.05 s in, the loop blocks for 1 s;
    the call's timeout is 0.5 s."""

    async def scenario() -> None:
        client = aioredis.Redis.from_url(redisd.shared().url, socket_timeout=0.5)
        slow = "local t = redis.call('TIME') local t0 = t[1] * 1e6 + t[2] "
        slow += "repeat t = redis.call('TIME') until t[1] * 1e6 + t[2] - t0 > 300000 return 1"
        batcher = ScriptBatcher(client, {"SLOW": slow})
        ours, theirs = socket.socketpair()
        transport, _ = await asyncio.get_running_loop().create_connection(
            lambda: _Stall(1.0), sock=ours
        )
        try:
            await batcher.load()
            call = asyncio.ensure_future(batcher.call("SLOW", []))
            threading.Timer(0.05, theirs.send, (b"x",)).start()
            assert await call == 1
        finally:
            transport.close()
            theirs.close()
            await batcher.aclose()
            await client.aclose()

    if loop == "uvloop":
        uvloop.run(scenario())
    else:
        asyncio.run(scenario())


async def test_news_redis_pushes_unasked_is_no_callers_answer() -> None:
    """RESP3 push frames (maintenance notices, tracking invalidations) may come between
    answers: taken for one, every later caller would get the answer of the one before."""
    async with Relay(redisd.shared().port) as relay:
        client = aioredis.Redis.from_url(relay.url, socket_timeout=2)
        batcher = ScriptBatcher(client, SCRIPTS)
        try:
            await batcher.load()
            assert await batcher.call("ECHO", ["first"]) == b"first"
            calls = [asyncio.ensure_future(batcher.call("ECHO", [str(n)])) for n in range(5)]
            for _ in range(3):  # written: their answers are on their way
                await asyncio.sleep(0)
            relay.inject(b">3\r\n$9\r\nMIGRATING\r\n:1\r\n$1\r\n0\r\n")
            assert await asyncio.gather(*calls) == [str(n).encode() for n in range(5)]
        finally:
            await batcher.aclose()
            await client.aclose()
