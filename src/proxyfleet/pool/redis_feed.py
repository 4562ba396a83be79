"""The Redis store's change feed: pub/sub on the pool's channel, subscribed again after Redis
comes back, with word that messages may have been missed meanwhile."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions

__all__ = ["REDIS_ERRORS", "follow", "text"]

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
) -> None:
    """Every message on ``channel`` to ``heard``, until cancelled; ``subscribed`` is set once
    the first subscription holds, and ``missed`` is awaited after each new one that follows a
    lost connection."""
    lost = False
    while True:
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(channel)
            subscribed.set()
            if lost:
                lost = False
                await missed()
            async for message in pubsub.listen():
                if message.get("type") == "message":
                    await heard(text(message["data"]))
        except REDIS_ERRORS:
            lost = True
            await asyncio.sleep(0.25)
        finally:
            with contextlib.suppress(*REDIS_ERRORS):
                await pubsub.aclose()  # type: ignore[no-untyped-call]
