"""The Redis store's change feed: pub/sub on the pool's channel, subscribed again after Redis
comes back, with word that messages may have been missed meanwhile.

A subscription only reads, so a connection that dies without a reset (a partition, a host
gone) would look like a quiet channel forever, and waiters here would hear of no release
elsewhere again. After each quiet ``probe`` seconds the feed pings Redis on it; a pong
that does not come within ``answer_within`` ends the connection, and the feed subscribes
again on a new one (and says what may have been missed)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions
from redis.asyncio.client import PubSub

from proxyfleet.logs import event

__all__ = ["REDIS_ERRORS", "follow", "text"]

_log = logging.getLogger("proxyfleet.pool")

#: What a Redis that does not answer raises.
REDIS_ERRORS = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)


def text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def follow(
    client: aioredis.Redis,
    channel: str,
    subscribed: asyncio.Event,
    heard: Callable[[str], Awaitable[None]],
    missed: Callable[[], Awaitable[None]],
    *,
    probe: float = 1.0,
    answer_within: float = 2.0,
) -> None:
    """Every message on ``channel`` to ``heard``, until cancelled; ``subscribed`` is set once
    the first subscription holds, and ``missed`` is awaited after each new one that follows a
    lost (or silent) connection."""
    lost = False
    while True:
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(channel)
            subscribed.set()
            if lost:
                await missed()  # until it could tell what was missed, the feed is still lost
                lost = False
            await _listen(pubsub, heard, probe, answer_within)
        except Exception as exc:  # Redis away, or still loading: never the feed's end
            if not lost:
                event(_log, "change_feed_lost", logging.WARNING, error=str(exc) or repr(exc))
            lost = True
            await asyncio.sleep(0.25)
        finally:
            with contextlib.suppress(*REDIS_ERRORS):
                await pubsub.aclose()  # type: ignore[no-untyped-call]


async def _listen(
    pubsub: PubSub,
    heard: Callable[[str], Awaitable[None]],
    probe: float,
    answer_within: float,
) -> None:
    """Messages to ``heard`` until the connection fails or goes silent. The reads block with
    no timeout of redis-py's (a read with one can take a cancellation for its timeout and go
    on); the probe waits beside them."""
    loop = asyncio.get_running_loop()
    last = loop.time()  # when anything at all came (a pong too), or ``heard`` returned
    hearing = False  # reads wait while ``heard`` does: what it waits for is not silence

    async def read() -> None:
        nonlocal last, hearing
        async for message in pubsub.listen():
            last = loop.time()
            if message.get("type") == "message":
                hearing = True
                try:
                    await heard(text(message["data"]))
                finally:
                    hearing, last = False, loop.time()

    reader = asyncio.ensure_future(read())
    try:
        while True:
            await asyncio.wait({reader}, timeout=probe)
            if reader.done():
                return reader.result()  # its error, or the end of the subscription
            if loop.time() - last < probe:
                continue
            asked = loop.time()
            await pubsub.ping()
            await asyncio.wait({reader}, timeout=answer_within)
            if not reader.done() and last < asked and not hearing:
                raise redis.exceptions.TimeoutError(
                    f"the change feed went silent: no pong within {answer_within:g}s"
                )
    finally:
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
