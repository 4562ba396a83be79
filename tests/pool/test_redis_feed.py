"""The change feed against a real redis-server: messages reach the listener, and after Redis
restarts the feed subscribes again and says that messages may have been missed."""

from __future__ import annotations

import asyncio
import contextlib

import redis.asyncio as aioredis

from proxyfleet.errors import StoreUnavailable
from proxyfleet.pool.redis_feed import follow, text
from tests import redisd
from tests.relay import Relay


async def test_messages_reach_the_listener_and_a_restart_is_reported_as_missed() -> None:
    server = redisd.RedisServer().start()
    client = aioredis.Redis.from_url(server.url, socket_connect_timeout=1)
    heard: list[str] = []
    missed = asyncio.Event()
    subscribed = asyncio.Event()

    async def on_text(message: str) -> None:
        heard.append(message)

    async def on_missed() -> None:
        missed.set()

    feed = asyncio.ensure_future(follow(client, "ch", subscribed, on_text, on_missed))
    try:
        await asyncio.wait_for(subscribed.wait(), 5)
        await client.publish("ch", "one")
        for _ in range(100):
            if heard:
                break
            await asyncio.sleep(0.02)
        assert heard == ["one"]
        server.stop()
        server.start()
        await asyncio.wait_for(missed.wait(), 10)  # subscribed again, and said so
        async with aioredis.Redis.from_url(server.url) as fresh:  # the old one's pool is stale
            await fresh.publish("ch", b"two")
        for _ in range(100):
            if len(heard) == 2:
                break
            await asyncio.sleep(0.02)
        assert heard == ["one", "two"]
        assert text(b"x") == text("x") == "x"
    finally:
        feed.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await feed
        await client.aclose()
        server.close()


async def test_a_subscription_gone_silent_is_noticed_and_made_again() -> None:
    """A partition leaves the subscription's connection open and mute: without a probe no
    release elsewhere would be heard again. The feed's ping goes unanswered, it subscribes
    on a new connection, says what may have been missed (asked again when that fails: the
    feed is never left ended), and hears what follows."""
    server = redisd.shared()
    channel = redisd.prefix()
    heard: list[str] = []
    missed = asyncio.Event()
    subscribed = asyncio.Event()

    async def on_text(message: str) -> None:
        heard.append(message)

    async def on_missed() -> None:
        if not tries:  # Redis answers SUBSCRIBE while still loading, the store's reads not yet
            tries.append(1)
            raise StoreUnavailable("the pool store is unreachable", retry_after=1.0)
        missed.set()

    tries: list[int] = []
    async with Relay(server.port) as relay:
        client = aioredis.Redis.from_url(relay.url, socket_connect_timeout=1)
        feed = asyncio.ensure_future(
            follow(client, channel, subscribed, on_text, on_missed, probe=0.2, answer_within=0.4)
        )
        try:
            await asyncio.wait_for(subscribed.wait(), 5)
            relay.silence()
            async with aioredis.Redis.from_url(server.url) as other:
                await other.publish(channel, "lost")  # into the partition
                await asyncio.wait_for(missed.wait(), 5)
                await other.publish(channel, "after")
            for _ in range(100):
                if heard:
                    break
                await asyncio.sleep(0.02)
            assert heard == ["after"]
        finally:
            feed.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await feed
            await client.aclose()
