"""Script calls batched per turn of the event loop: one round trip to Redis for all of them.

A busy gateway asks the store for many leases and releases at once; each asked alone costs a
write, a read and the client's own work per command. Calls made in the same turn of the loop
go out as one pipeline (not a transaction: each script is atomic by itself) and each caller
gets its own answer or its own error. A script Redis no longer knows (it restarted) is loaded
again and the batch sent again.
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions

__all__ = ["ScriptBatcher"]


class ScriptBatcher:
    """``await batcher.call(name, args)``: the script ``name`` of ``scripts`` run with
    ``args``, sent with every other call made in the same turn of the event loop."""

    def __init__(self, client: aioredis.Redis, scripts: dict[str, str]) -> None:
        self._client = client
        self._sources = scripts
        self._shas = {
            name: hashlib.sha1(text.encode()).hexdigest() for name, text in scripts.items()
        }
        self._queue: list[tuple[str, list[Any], asyncio.Future[Any]]] = []
        self._flushing = False
        self._sending: set[asyncio.Task[None]] = set()

    async def load(self) -> None:
        """Every script into Redis's cache (at open, and after Redis forgot them)."""
        for text in self._sources.values():
            await self._client.script_load(text)

    def call(self, name: str, args: list[Any]) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.append((name, args, future))
        if not self._flushing:
            self._flushing = True
            asyncio.get_running_loop().call_soon(self._flush)
        return future

    def _flush(self) -> None:
        batch, self._queue = self._queue, []
        self._flushing = False
        task = asyncio.ensure_future(self._send(batch))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send(self, batch: list[tuple[str, list[Any], asyncio.Future[Any]]]) -> None:
        try:
            try:
                results = await self._execute(batch)
            except redis.exceptions.ConnectionError:  # a pooled connection Redis closed
                results = await self._execute(batch)
            if any(isinstance(r, redis.exceptions.NoScriptError) for r in results):
                await self.load()  # Redis restarted and forgot them
                results = await self._execute(batch)
        except BaseException as exc:  # the batch could not be sent: every caller hears why
            for _, _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for (_, _, future), result in zip(batch, results, strict=True):
            if future.done():
                continue
            if isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)

    async def _execute(self, batch: list[tuple[str, list[Any], asyncio.Future[Any]]]) -> list[Any]:
        if len(batch) == 1:
            name, args, _ = batch[0]
            try:
                return [await self._client.evalsha(self._shas[name], 0, *args)]
            except redis.exceptions.ResponseError as exc:
                return [exc]
        pipe = self._client.pipeline(transaction=False)
        for name, args, _ in batch:
            pipe.evalsha(self._shas[name], 0, *args)
        return list(await pipe.execute(raise_on_error=False))
