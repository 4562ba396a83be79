"""Script calls on one pipelined connection: every call made in a turn of the event loop goes
out in one write, and the answers come back in order.

A busy gateway asks the store for a lease and a release per request. Through redis-py's
command path each call costs a pooled connection, a command packed in Python, a write and a
read of its own: more CPU in the gateway than the request itself (measured with
``bench/run.py --only store``). Here a call is packed by hiredis (redis-py's own parser
library) into a buffer; the buffer goes out once per turn of the loop on a connection kept for
scripts alone, opened by redis-py (so the URL, AUTH, the database and TLS are as for every
other command); one reader task hands each answer to its caller in order. One connection also
keeps Redis's order the one the gateway asked in: a release sent before an acquire is run
before it.

Each caller gets its own answer or its own error. A script Redis no longer knows (it
restarted) is loaded again and the call sent again; a call whose connection was lost is sent
once more on a new one (a Redis that restarted closed the old one), and after that the error
is the caller's. A call waits at most the store's timeout for its answer.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import math
from collections.abc import Callable
from typing import Any, cast

import hiredis
import redis.asyncio as aioredis
import redis.exceptions
from redis.asyncio.connection import AbstractConnection

__all__ = ["ScriptBatcher"]

_LOST = (redis.exceptions.ConnectionError, OSError)
#: A call's future and what takes its answer if its caller stopped waiting.
_Asked = tuple["asyncio.Future[Any]", "Callable[[Any], None] | None"]


def _pack(*parts: Any) -> bytes:
    """One command in RESP, packed by hiredis."""
    packed: bytes = hiredis.pack_command(cast(Any, parts))
    return packed


def _taken_late(future: asyncio.Future[Any]) -> bool:
    """An answer (not an error) came, and its caller was cancelled before it took it."""
    if future.cancelled() or not future.done() or future.exception() is not None:
        return False
    return not isinstance(future.result(), Exception)


class ScriptBatcher:
    """``await batcher.call(name, args)``: the script ``name`` of ``scripts`` run with
    ``args``, written with every other call made in the same turn of the event loop.
    :meth:`aclose` closes its connection."""

    def __init__(self, client: aioredis.Redis, scripts: dict[str, str]) -> None:
        self._client = client
        self._sources = scripts
        self._shas = {
            name: hashlib.sha1(text.encode()).hexdigest() for name, text in scripts.items()
        }
        timeout = client.connection_pool.connection_kwargs.get("socket_timeout")
        self._timeout: float | None = float(timeout) if timeout else None
        self._conn: AbstractConnection | None = None
        self._reader: asyncio.Task[None] | None = None
        self._answers: collections.deque[_Asked] = collections.deque()
        self._out: list[bytes] = []  # packed calls of this turn, not written yet
        self._callers: list[_Asked] = []  # their futures (and orphans), in the same order
        self._flushing = False
        self._writing: set[asyncio.Task[None]] = set()
        self._connecting = asyncio.Lock()
        self._closed = False

    async def load(self) -> None:
        """Every script into Redis's cache (at open, and after Redis forgot them)."""
        answers = await asyncio.gather(  # one write, one round trip
            *(self._retried(_pack("SCRIPT", "LOAD", text)) for text in self._sources.values())
        )
        for answer in answers:
            if isinstance(answer, Exception):
                raise answer

    async def call(
        self, name: str, args: list[Any], orphan: Callable[[Any], None] | None = None
    ) -> Any:
        """The answer of the script ``name``. ``orphan`` is given the answer that comes after
        its caller stopped waiting (cancelled, timed out): what the script did is still done
        (a grant it made goes back through it)."""
        command = _pack("EVALSHA", self._shas[name], 0, *args)
        answer = await self._retried(command, orphan)
        if isinstance(answer, redis.exceptions.NoScriptError):
            await self.load()  # Redis restarted and forgot them
            answer = await self._ask(command, orphan)
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def drain(self, timeout: float) -> None:
        """Until what was asked is written and answered (orphans given theirs), at most
        ``timeout`` seconds."""
        deadline = asyncio.get_running_loop().time() + timeout
        while (self._writing or self._answers or self._out) and self._conn is not None:
            if asyncio.get_running_loop().time() >= deadline:
                return
            await asyncio.sleep(0.005)  # bounded, at close only

    async def aclose(self) -> None:
        """Close the connection; a call asked from now on fails (it is never sent)."""
        self._closed = True
        for task in list(self._writing):  # what was asked is written first
            with contextlib.suppress(Exception):
                await task
        reader = self._reader
        self._drop(redis.exceptions.ConnectionError("the store closed"))
        for task in [*self._writing, *([reader] if reader is not None else [])]:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await task

    # -- internals ---------------------------------------------------------------------------
    async def _retried(self, command: bytes, orphan: Callable[[Any], None] | None = None) -> Any:
        try:
            return await self._ask(command, orphan)
        except _LOST:  # a connection Redis had closed: once more, on a new one
            return await self._ask(command, orphan)

    async def _ask(self, command: bytes, orphan: Callable[[Any], None] | None = None) -> Any:
        """The answer to one packed command: a reply, or the ResponseError Redis gave."""
        if self._closed:
            raise redis.exceptions.ConnectionError("the store closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._out.append(command)
        self._callers.append((future, orphan))
        if not self._flushing:
            self._flushing = True
            loop.call_soon(self._flush)
        try:
            async with asyncio.timeout(self._timeout):
                return await future  # on a timeout it is cancelled, as when its caller is
        except BaseException as exc:
            # cancelled: its answer, when it comes, goes to the orphan (the reader sees to it);
            # or the answer came and then its caller was cancelled, before it could take it
            if _taken_late(future) and orphan is not None:
                orphan(future.result())
            if not isinstance(exc, TimeoutError):
                raise
            raise redis.exceptions.TimeoutError(
                f"Redis did not answer within {self._timeout:g}s"
            ) from None

    def _flush(self) -> None:
        self._flushing = False
        data, callers = b"".join(self._out), self._callers
        self._out, self._callers = [], []
        task = asyncio.ensure_future(self._write(data, callers))
        self._writing.add(task)
        task.add_done_callback(self._writing.discard)

    async def _write(self, data: bytes, callers: list[_Asked]) -> None:
        try:
            async with self._connecting:  # writes and their answers stay in one order
                conn = await self._connected()
                self._answers.extend(callers)
                await conn.send_packed_command(data, check_health=False)
        except BaseException as exc:
            error = exc if isinstance(exc, Exception) else redis.exceptions.ConnectionError()
            for future, _ in callers:
                if not future.done():
                    future.set_exception(error)
            self._drop(error)
            if not isinstance(exc, Exception):
                raise

    async def _connected(self) -> AbstractConnection:
        if self._conn is None:
            if self._closed:
                raise redis.exceptions.ConnectionError("the store closed")
            conn = self._client.connection_pool.make_connection()  # type: ignore[no-untyped-call]
            await conn.connect()
            self._conn = conn
            self._reader = asyncio.ensure_future(self._read(conn))
        return self._conn

    async def _read(self, conn: AbstractConnection) -> None:
        """Each answer to the caller first in line; a lost connection fails every caller still
        waiting on it."""
        try:
            while True:
                try:
                    answer: Any = await conn.read_response(
                        disable_decoding=True, timeout=math.inf, disconnect_on_error=False
                    )
                except redis.exceptions.ResponseError as exc:
                    answer = exc
                if self._answers:
                    future, orphan = self._answers.popleft()
                    if not future.done():
                        future.set_result(answer)
                    elif future.cancelled() and orphan and not isinstance(answer, Exception):
                        orphan(answer)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if self._conn is conn:
                self._drop(exc)

    def _drop(self, error: BaseException) -> None:
        """Close the connection; every caller waiting for an answer on it hears ``error``."""
        conn, self._conn = self._conn, None
        reader, self._reader = self._reader, None
        if reader is not None and reader is not asyncio.current_task():
            reader.cancel()
        while self._answers:  # their answers will not come (what they did ends by ttl)
            future, _ = self._answers.popleft()
            if not future.done():
                future.set_exception(
                    error
                    if isinstance(error, _LOST)
                    else redis.exceptions.ConnectionError(f"lost the connection: {error}")
                )
        if conn is not None:
            task = asyncio.ensure_future(conn.disconnect(nowait=True))
            self._writing.add(task)
            task.add_done_callback(self._writing.discard)
