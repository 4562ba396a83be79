"""A TCP relay on 127.0.0.1 in front of a real server, for the faults a real network has and a
process on loopback does not: an answer lost with its connection after the request reached
the server (:meth:`Relay.cut_answer_to`), bytes the server never sent (:meth:`Relay.inject`), or
connections gone silent, nothing forwarded and
nothing closed, as in a partition (:meth:`Relay.silence`). Connections opened after either
are relayed as usual."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Self

__all__ = ["Relay"]


class _Pair:
    def __init__(self, client: asyncio.StreamWriter, server: asyncio.StreamWriter) -> None:
        self.client, self.server = client, server
        self.silent = False
        self.cut_next_answer = False

    def abort(self) -> None:
        for writer in (self.client, self.server):
            writer.transport.abort()


class Relay:
    """``async with Relay(port) as relay``: ``relay.port`` forwards to ``port``."""

    def __init__(self, port: int) -> None:
        self._target = port
        self._pairs: list[_Pair] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._cut: bytes | None = None
        self._cuts = 0
        self._server: asyncio.Server | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def cut_answer_to(self, marker: bytes, times: int = 1) -> None:
        """The next request containing ``marker`` reaches the server; its connection is closed
        when the server's answer comes, and the answer is never delivered (``times`` such
        requests in a row)."""
        self._cut, self._cuts = marker, times

    def inject(self, data: bytes) -> None:
        """``data`` to every client now connected, as if its server had sent it."""
        for pair in self._pairs:
            pair.client.write(data)

    def silence(self) -> None:
        """Every connection open now forwards nothing more, either way, and stays open."""
        for pair in self._pairs:
            pair.silent = True

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for pair in self._pairs:
            pair.abort()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self._target)
        pair = _Pair(writer, up_writer)
        self._pairs.append(pair)
        for task in (
            asyncio.ensure_future(self._pump(pair, reader, up_writer, upward=True)),
            asyncio.ensure_future(self._pump(pair, up_reader, writer, upward=False)),
        ):
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pump(
        self,
        pair: _Pair,
        source: asyncio.StreamReader,
        sink: asyncio.StreamWriter,
        *,
        upward: bool,
    ) -> None:
        try:
            while data := await source.read(65536):
                if pair.silent:
                    continue  # a partition: gone, and nobody told
                if upward and self._cut is not None and self._cut in data:
                    self._cuts -= 1
                    if not self._cuts:
                        self._cut = None
                    pair.cut_next_answer = True
                elif not upward and pair.cut_next_answer:
                    pair.abort()  # the request ran; its answer is lost with the connection
                    return
                sink.write(data)
        except (ConnectionError, OSError):
            pass
        finally:
            if not pair.silent:
                pair.abort()
