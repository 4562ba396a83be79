"""Script calls on one pipelined connection: every call made in a turn of the event loop goes
out in one write, and the answers come back in order.

A busy gateway asks the store for a lease and a release per request. Through redis-py's
command path each call costs a pooled connection, a command packed in Python, a write, a read
and a timeout of its own: more CPU in the gateway than the request itself, and several turns
of the loop between an answer's arrival and its caller (measured with
``bench/run.py --only store``). Here a call is packed by hiredis (redis-py's own parser
library) into a buffer; the buffer is written once per turn of the loop on a connection kept
for scripts alone. redis-py opens it (so the URL, AUTH, the database and TLS are as for every
other command); then the connection's transport is this module's: its answers are parsed by
hiredis as they arrive and handed to their callers in order, in the same turn. One
connection also keeps Redis's order the one the gateway asked in: a release sent before an
acquire is run before it.

Each caller gets its own answer or its own error. A script Redis no longer knows (it
restarted) is loaded again and the call sent again; a call whose connection was lost is sent
once more on a new one (a Redis that restarted closed the old one). A script named in
``once`` is safe to send twice: its first run keeps its answer under a key of the call's own,
and a second run of the same call (its answer was lost with the connection) gives that
answer back instead of running again, so a retried acquire never grants twice. The key goes
once its answer came (one ``UNLINK`` with the next write), or after a minute.

A call waits at most the store's timeout for its answer: when the oldest unanswered call on
the connection is older than that, Redis is not answering (stopped, partitioned, a network
that drops without a reset). Every call waiting on it hears a timeout and the connection is
retired: the next call opens a new one, answers still coming on the old one go to their
orphans, and it is closed ``_DEAD`` timeouts after its oldest call. One timer per
connection watches this.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import itertools
import secrets
from collections.abc import Callable, Collection
from typing import Any, cast

import hiredis
import redis.asyncio as aioredis
import redis.exceptions
from redis.asyncio.connection import AbstractConnection

__all__ = ["ScriptBatcher", "once_wrapped"]

_LOST = (redis.exceptions.ConnectionError, OSError)
_NOT_YET = object()  # hiredis's word for "no whole answer buffered yet"
#: How long the watch waits for a call seen overdue before it ends the connection (seconds).
_LOOK_AGAIN = 0.05
#: A retired connection is closed this many timeouts after its oldest call was written.
_DEAD = 3
#: How long a once-call's answer is kept when its own UNLINK never comes (milliseconds).
KEEP_MS = 60_000
#: A call's future (None for the batcher's own clean-up) and what takes its answer if its
#: caller stopped waiting.
_Asked = tuple["asyncio.Future[Any] | None", "Callable[[Any], None] | None"]
#: The same, with when it was written.
_Sent = tuple["asyncio.Future[Any] | None", "Callable[[Any], None] | None", float]


def _pack(*parts: Any) -> bytes:
    """One command in RESP, packed by hiredis."""
    packed: bytes = hiredis.pack_command(cast(Any, parts))
    return packed


def _reply_error(message: str) -> Exception:
    """An error reply as redis-py's exception for it."""
    code = message.split(" ", 1)[0]
    if code == "NOSCRIPT":
        return redis.exceptions.NoScriptError(message)
    if code == "LOADING":  # a ConnectionError: Redis is starting, ask again later
        return redis.exceptions.BusyLoadingError(message)
    return redis.exceptions.ResponseError(message)


def once_wrapped(source: str) -> str:
    """``source`` run at most once per call key (``KEYS[1]``, when one is given): a second
    run with the same key answers what the first did. The stored answer is cjson's: numbers
    keep 14 digits (a script answering larger integers must answer them as strings), and an
    array with a nil inside comes back with it as null."""
    return (
        "local function run()\n"
        f"{source}\n"
        "end\n"
        "local key = KEYS[1]\n"
        "if key then\n"
        "  local done = redis.call('GET', key)\n"
        "  if done then return cjson.decode(done) end\n"
        "end\n"
        "local answer = run()\n"
        f"if key then redis.call('SET', key, cjson.encode(answer), 'PX', {KEEP_MS}) end\n"
        "return answer\n"
    )


def _taken_late(future: asyncio.Future[Any]) -> bool:
    """An answer (not an error) came, and its caller was cancelled before it took it."""
    if future.cancelled() or not future.done() or future.exception() is not None:
        return False
    return not isinstance(future.result(), Exception)


class _Link(asyncio.Protocol):
    """A connection once it is the batcher's: answers parsed as they arrive, each to the call
    first in line; retired when the oldest unanswered call is older than ``timeout``."""

    def __init__(
        self,
        writer: asyncio.StreamWriter,
        timeout: float | None,
        gone: Callable[[_Link], None],
    ) -> None:
        self._writer = writer  # kept: its finalizer would close the transport
        self._transport = cast(asyncio.Transport, writer.transport)
        self._timeout = timeout
        self._gone = gone
        self._loop = asyncio.get_running_loop()
        self._parser = hiredis.Reader(replyError=_reply_error, notEnoughData=_NOT_YET)
        self._watch: asyncio.TimerHandle | None = None
        self._overdue: _Sent | None = None  # the call seen overdue once, looked at again
        self.waiting: collections.deque[_Sent] = collections.deque()
        self.alive = True
        self.retired = False  # overdue: no new calls, late answers to orphans, then closed
        self._transport.set_protocol(self)

    def send(self, data: bytes, callers: list[_Asked]) -> None:
        now = self._loop.time()
        self.waiting.extend((future, orphan, now) for future, orphan in callers)
        self._transport.write(data)
        if self._watch is None and self._timeout is not None:
            self._watch = self._loop.call_at(now + self._timeout, self._check)

    def data_received(self, data: bytes) -> None:
        parser, waiting = self._parser, self.waiting
        parser.feed(data)
        while True:
            try:
                answer = parser.gets()
            except hiredis.ProtocolError as exc:
                self.end(redis.exceptions.ConnectionError(f"Redis sent what is not RESP: {exc}"))
                return
            if answer is _NOT_YET:
                return
            if isinstance(answer, hiredis.PushNotification):
                continue  # RESP3 news nobody asked for (maintenance, tracking): not an answer
            if not waiting:
                self.end(redis.exceptions.ConnectionError("Redis answered what was not asked"))
                return
            future, orphan, _ = waiting.popleft()
            if future is None:
                pass  # the batcher's own clean-up
            elif not future.done():
                future.set_result(answer)
            elif orphan is not None and not isinstance(answer, Exception):
                orphan(answer)  # its caller left, or was told Redis did not answer in time
            if self.retired and not waiting:
                self.end(redis.exceptions.ConnectionError("retired"), gently=True)

    def connection_lost(self, exc: Exception | None) -> None:
        why = f"lost the connection to Redis: {exc}" if exc else "Redis closed the connection"
        self.end(redis.exceptions.ConnectionError(why))

    def end(self, error: Exception, *, gently: bool = False) -> None:
        """Close the connection (``gently``: after what is written goes out); every call still
        waiting on it hears ``error`` (what a script did stays done: a grant ends by ttl)."""
        if not self.alive:
            return
        self.alive = False
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        if gently:
            self._transport.close()
        else:
            self._transport.abort()
        while self.waiting:
            future, _, _ = self.waiting.popleft()
            if future is not None and not future.done():
                future.set_exception(error)
        self._gone(self)

    def _check(self) -> None:
        """The watch. The oldest unanswered call overdue, and still so after one more look at
        the socket (a loop that was blocked runs timers before it reads what came meanwhile:
        an answer waiting there must not be taken for silence): every call waiting here is
        told Redis did not answer, and the connection is retired. New calls go to a new
        one; answers that still come here go to their orphans (a grant goes back), until
        ``_DEAD`` timeouts after the oldest call was written, when it is closed."""
        self._watch = None
        if not self.waiting or not self.alive or self._timeout is None:
            return
        now, front = self._loop.time(), self.waiting[0]
        if self.retired:
            dead = front[2] + _DEAD * self._timeout
            if dead > now:
                self._watch = self._loop.call_at(dead, self._check)
            else:
                self.end(self._late())
            return
        due = front[2] + self._timeout
        if due > now:
            self._watch = self._loop.call_at(due, self._check)
        elif self._overdue is not front:
            self._overdue = front
            self._watch = self._loop.call_later(_LOOK_AGAIN, self._check)
        else:
            self.retired = True
            late = self._late()
            for future, _, _ in self.waiting:
                if future is not None and not future.done():
                    future.set_exception(late)
            self._gone(self)
            self._watch = self._loop.call_at(front[2] + _DEAD * self._timeout, self._check)

    def _late(self) -> Exception:
        return redis.exceptions.TimeoutError(f"Redis did not answer within {self._timeout:g}s")


def _take(conn: AbstractConnection, timeout: float | None, gone: Callable[[_Link], None]) -> _Link:
    """The transport redis-py opened and greeted Redis on, as a :class:`_Link`; redis-py's
    connection object lets go of it (it would warn of an unclosed connection otherwise)."""
    writer = getattr(conn, "_writer", None)
    if not isinstance(writer, asyncio.StreamWriter):
        raise redis.exceptions.ConnectionError(
            "this redis-py keeps no stream writer on its connection: the script channel "
            "cannot take it over (redis-py's version is not the one locked)"
        )
    link = _Link(writer, timeout, gone)
    conn._writer = conn._reader = None
    return link


class ScriptBatcher:
    """``await batcher.call(name, args)``: the script ``name`` of ``scripts`` run with
    ``args``, written with every other call made in the same turn of the event loop. Scripts
    named in ``once`` are run at most once per call, under keys starting ``once_prefix``.
    :meth:`aclose` closes its connection."""

    def __init__(
        self,
        client: aioredis.Redis,
        scripts: dict[str, str],
        *,
        once: Collection[str] = (),
        once_prefix: str = "",
    ) -> None:
        self._client = client
        self._once = frozenset(once)
        self._sources = {
            name: once_wrapped(text) if name in self._once else text
            for name, text in scripts.items()
        }
        self._shas = {
            name: hashlib.sha1(text.encode()).hexdigest() for name, text in self._sources.items()
        }
        self._once_prefix = once_prefix or f"once:{secrets.token_hex(6)}:"
        self._numbers = itertools.count()
        timeout = client.connection_pool.connection_kwargs.get("socket_timeout")
        self._timeout: float | None = float(timeout) if timeout else None
        self._link: _Link | None = None
        self._retired: set[_Link] = set()  # overdue ones, open until late answers came
        self._connecting: asyncio.Task[None] | None = None
        self._out: list[bytes] = []  # packed calls not written yet
        self._callers: list[_Asked] = []  # their futures (and orphans), in the same order
        self._spent: list[str] = []  # once-keys whose answers came: unlinked with the next write
        self._flushing = False
        self._closed = False

    async def load(self) -> None:
        """Every script into Redis's cache (at open, and after Redis forgot them)."""
        answers = await asyncio.gather(  # one write, one round trip
            *(self._retried(_pack("SCRIPT", "LOAD", text)) for text in self._sources.values())
        )
        for answer in answers:
            if isinstance(answer, Exception):
                raise answer

    def new_key(self) -> str:
        """A call key of this channel's, for a once-call its caller may ask again later."""
        return f"{self._once_prefix}{next(self._numbers)}"

    async def call(
        self,
        name: str,
        args: list[Any],
        orphan: Callable[[Any], None] | None = None,
        key: str | None = None,
    ) -> Any:
        """The answer of the script ``name``. ``orphan`` is given the answer that comes after
        its caller stopped waiting (cancelled, or told Redis did not answer in time): what
        the script did is still done (a grant it made goes back through it). A script named
        once runs under ``key`` (a new one if not given): asked again later with the same
        key, it answers what it did, unless its answer came and the key went."""
        if name in self._once:
            key = key or self.new_key()
            command = _pack("EVALSHA", self._shas[name], 1, key, *args)
        else:
            key = None
            command = _pack("EVALSHA", self._shas[name], 0, *args)
        answered = False
        try:
            answer = await self._retried(command, orphan)
            if isinstance(answer, redis.exceptions.NoScriptError):
                await self.load()  # Redis restarted and forgot them
                answer = await self._ask(command, orphan)
            answered = True
        except asyncio.CancelledError:
            answered = True  # its answer still comes, before the UNLINK written after it
            raise
        finally:
            if key is not None and answered:  # else it may be asked again: it waits KEEP_MS
                self._spent.append(key)
                self._soon()
        if isinstance(answer, Exception):
            raise answer
        return answer

    @property
    def busy(self) -> bool:
        """Calls asked and not answered yet (or their connection still opening)."""
        waiting = self._link is not None and bool(self._link.waiting)
        return bool(self._out or self._connecting or waiting)

    async def drain(self, timeout: float) -> None:
        """Until what was asked is written and answered (orphans given theirs), at most
        ``timeout`` seconds."""
        deadline = asyncio.get_running_loop().time() + timeout
        while self.busy:
            if asyncio.get_running_loop().time() >= deadline:
                return
            await asyncio.sleep(0.005)  # bounded, at close only

    async def aclose(self) -> None:
        """Close the connection once what was asked is written; a call asked from now on
        fails (it is never sent)."""
        self._closed = True
        if self._connecting is not None:
            await asyncio.gather(self._connecting, return_exceptions=True)
        closed = redis.exceptions.ConnectionError("the store closed")
        if self._link is not None:
            self._flush()
            self._link.end(closed, gently=True)
        for link in list(self._retired):
            link.end(closed, gently=True)
        self._fail_unsent(closed)

    # -- internals ---------------------------------------------------------------------------
    async def _retried(self, command: bytes, orphan: Callable[[Any], None] | None = None) -> Any:
        try:
            return await self._ask(command, orphan)
        except _LOST:  # a connection Redis had closed: once more, on a new one
            return await self._ask(command, orphan)

    async def _ask(self, command: bytes, orphan: Callable[[Any], None] | None = None) -> Any:
        """The answer to one packed command: a reply, or the error reply Redis gave."""
        if self._closed:
            raise redis.exceptions.ConnectionError("the store closed")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._out.append(command)
        self._callers.append((future, orphan))
        self._soon()
        try:
            return await future
        except asyncio.CancelledError:
            # its answer, when it comes, goes to the orphan (the link sees to it); or the
            # answer came and then its caller was cancelled, before it could take it
            if _taken_late(future) and orphan is not None:
                orphan(future.result())
            raise

    def _soon(self) -> None:
        if not self._flushing and not self._closed:
            self._flushing = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        """What this turn asked, in one write; or a connection opened first."""
        self._flushing = False
        link = self._link
        if link is not None and link.alive:
            if self._spent:  # clean-up alone never opens a connection
                self._out.append(_pack("UNLINK", *self._spent))
                self._callers.append((None, None))
                self._spent = []
            if self._out:
                data, callers = b"".join(self._out), self._callers
                self._out, self._callers = [], []
                link.send(data, callers)
        elif self._out and self._connecting is None and not self._closed:
            self._connecting = asyncio.ensure_future(self._connect())

    async def _connect(self) -> None:
        try:
            conn = self._client.connection_pool.make_connection()  # type: ignore[no-untyped-call]
            await conn.connect()
            link = _take(conn, self._timeout, self._gone)
        except BaseException as exc:  # cancelled too: nobody may be left waiting
            self._connecting = None
            self._fail_unsent(
                exc if isinstance(exc, Exception) else redis.exceptions.ConnectionError("closed")
            )
            if not isinstance(exc, Exception):
                raise
            return
        self._connecting = None
        self._link = link
        self._flush()  # what was asked meanwhile, in the order asked

    def _gone(self, link: _Link) -> None:
        """``link`` retired (still open for late answers) or closed."""
        if self._link is link:
            self._link = None
        if link.alive:
            self._retired.add(link)
        else:
            self._retired.discard(link)

    def _fail_unsent(self, error: Exception) -> None:
        callers, self._out, self._callers = self._callers, [], []
        for future, _ in callers:
            if future is not None and not future.done():
                future.set_exception(error)
