"""Debug mode's writer, the part that lives in the recording process.

Recording appends to lists: a request's row to ``requests``, a lease of its own to
``selections``, as tuples laid out as :mod:`proxyfleet.debuglog.columns` says;
:meth:`DebugLog.log` takes every other entry. A timer on the process's event loop takes what is
there every ``flush_interval`` seconds and sends it as one frame to the encoder process
(:mod:`proxyfleet.debuglog.encoder`), which formats the lines, redacts and writes the files
away from the event loop's core. Nothing on the request path waits: the pipe is
non-blocking, a batch the encoder has not taken yet waits in memory, and past ``queue_limit``
entries waiting, new ones are dropped and counted. Should the encoder die, what was in flight is
counted as dropped and a new encoder carries on with the same files. The number of dropped
entries goes to the ``session`` file at the end.

Why a timer on the loop rather than a thread of its own: on a 2-core VM a thread's wake-up
cost 100-200 us of CPU (the wake itself, the GIL handed over and back), where a timer callback
on the loop, which is awake anyway while requests come in, costs tens of microseconds. While
nothing is recorded the timer backs off to once a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import fcntl
import logging
import marshal
import os
import select
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import orjson

from proxyfleet.debuglog.columns import FRAME, RequestRow, SelectionRow
from proxyfleet.logs import event

__all__ = ["DebugLog"]

_log = logging.getLogger("proxyfleet.debuglog")
_RESPAWNS = 5  # encoders started after the first died, before the log gives up
_PIPE_SIZE = 1 << 20
_OPTIONS = orjson.OPT_NON_STR_KEYS
_QUIET_INTERVAL = 1.0  # seconds between flushes once nothing is being recorded
_DRAIN = 8.0  # seconds stop() waits for the encoder to take what is left


def _plain(value: Any) -> Any:
    """``value`` as JSON can carry it, for the rare entry orjson refuses (an int past 64 bits)."""
    if value is None or isinstance(value, bool | float | str):
        return value
    if isinstance(value, int):
        return value if -(2**63) <= value < 2**64 else str(value)
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return str(value)


class DebugLog:
    """Open with :meth:`start` (on the event loop that will send the batches), close with
    :meth:`stop`. Recording never blocks: :meth:`log` for an entry with named fields, the
    ``requests`` and ``selections`` lists for the per-request rows."""

    def __init__(
        self,
        directory: Path,
        *,
        queue_limit: int = 10_000,
        secret_fields: Iterable[str] = (),
        flush_interval: float = 0.5,
        encoder_cpus: Iterable[int] = (),
        strategy: str = "",
        on_flush: Callable[[], None] | None = None,
    ) -> None:
        self.directory = directory
        self._on_flush = on_flush  # called before each flush
        self.strategy = strategy  # the pool's selection strategy, for engine_selection lines
        self._start_ns = time.time_ns()
        self.session_id = datetime.datetime.now(datetime.UTC).strftime("%Y%m%d_%H%M%S")
        # The same lists for the whole session (the sender takes rows off their front): the
        # recorder hands them to the gateway once.
        self.requests: list[RequestRow] = []
        self.selections: list[SelectionRow] = []
        self._entries: list[tuple[str, int, str | None, dict[str, Any]]] = []
        self._limit = queue_limit
        self.dropped = 0
        self.sent = 0  # entries handed to an encoder
        self._pending: deque[tuple[memoryview, int]] = deque()  # frames not taken yet, entries
        self._waiting = 0  # entries in those frames
        self._secret_fields = tuple(secret_fields)
        self._cpus = frozenset(encoder_cpus)
        self._interval = flush_interval
        self._delay = flush_interval  # until the next flush: longer while nothing comes in
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._encoder: subprocess.Popen[bytes] | None = None
        self._respawns = 0

    def start(self, **fields: Any) -> None:
        """Open the directory, start the encoder and the flush timer; call it from the running
        event loop."""
        self._loop = asyncio.get_running_loop()
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        with contextlib.suppress(OSError):
            os.chmod(self.directory, 0o700)
        self._encoder = self._spawn()
        self._timer = self._loop.call_later(self._interval, self._tick)
        self.log("session", event="session_start", **fields)

    def stop(self, **fields: Any) -> None:
        """Send what is left with the ``session_end`` entry, then wait (10 s at most) for the
        encoder to have written it all. Blocks while it waits: it is the end."""
        timer = self._timer
        if timer is None:
            return
        self._timer = None
        timer.cancel()
        self._take(fields)
        deadline = time.monotonic() + _DRAIN
        while self._pending and self._encoder is not None and time.monotonic() < deadline:
            self._send(wait=0.1)
        encoder = self._encoder
        if encoder is None:
            return
        if encoder.stdin is not None:
            with contextlib.suppress(OSError):
                encoder.stdin.close()  # the encoder's end of input: it writes the rest and exits
        try:
            encoder.wait(10)
        except subprocess.TimeoutExpired:
            encoder.kill()
            encoder.wait()

    def log(self, category: str, request_id: str | None = None, **fields: Any) -> None:
        """Record one entry with named fields; drop it (and count it) when the queue is full."""
        if len(self._entries) + self._waiting >= self._limit:
            self.dropped += 1
            return
        self._entries.append((category, time.time_ns(), request_id, fields))

    @property
    def encoder_pid(self) -> int | None:
        """The encoder process's pid (``None`` before start, and once given up on)."""
        return self._encoder.pid if self._encoder is not None else None

    def path(self, category: str) -> Path:
        return self.directory / f"{self.session_id}_{category}.jsonl"

    # -- sending, on the event loop ----------------------------------------------------------
    def _spawn(self) -> subprocess.Popen[bytes]:
        command = [
            sys.executable,
            "-m",
            "proxyfleet.debuglog.encoder",
            "--dir",
            str(self.directory),
            "--session",
            self.session_id,
            "--start-ns",
            str(self._start_ns),
        ]
        for name in self._secret_fields:
            command += ["--secret-field", name]
        # Its own session: a Ctrl-C or a killpg of ours does not cut it short (the end of its
        # input does), and where the kernel schedules by session (autogroup), its work on
        # another core does not shrink the gateway's share of its own.
        encoder = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            start_new_session=True,
        )
        assert encoder.stdin is not None
        fd = encoder.stdin.fileno()
        with contextlib.suppress(OSError):  # Linux: room for bursts while the encoder is busy
            fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, _PIPE_SIZE)
        os.set_blocking(fd, False)
        if self._cpus:
            try:
                os.sched_setaffinity(encoder.pid, self._cpus)
            except OSError as exc:
                event(
                    _log,
                    "debug_encoder_unpinned",
                    logging.WARNING,
                    cpus=sorted(self._cpus),
                    error=exc.strerror,
                )
        return encoder

    def flush_now(self) -> None:
        """Flush at once rather than at the next tick (a burst of rows came in)."""
        if self._timer is not None:
            self._timer.cancel()
            self._tick()

    def _tick(self) -> None:
        """Send what was recorded since the last time; again after ``flush_interval`` while
        entries come in, backing off to once a second while none do."""
        if self._timer is None or self._loop is None:
            return  # stopped
        if self._on_flush is not None:
            self._on_flush()
        if self._take() or self._pending:
            self._delay = self._interval
        else:
            self._delay = max(min(self._delay * 2, _QUIET_INTERVAL), self._interval)
        self._send()
        self._timer = self._loop.call_later(self._delay, self._tick)

    def _take(self, end: dict[str, Any] | None = None) -> int:
        """What was recorded since the last time, as one frame; past the limit, dropped. With
        ``end``, the ``session_end`` entry goes last (its counts include everything before it;
        the encoder takes off what it failed to write). How many entries were taken."""
        room = max(self._limit - self._waiting, 0)
        entries = self._rows(self._entries, room)
        requests = self._rows(self.requests, room - len(entries))
        selections = self._rows(self.selections, room - len(entries) - len(requests))
        count = len(requests) + len(selections) + len(entries)
        if end is not None:
            fields = {
                "event": "session_end",
                "entries_written": self.sent + self._waiting + count,
                "entries_dropped": self.dropped,
                **end,
            }
            entries.append(("session", time.time_ns(), None, fields))
            count += 1
        if not count:
            return 0
        if self._encoder is None:  # given up: counted, not sent
            self.dropped += count
            return count
        try:
            cold = orjson.dumps(entries, option=_OPTIONS, default=str)
        except TypeError:  # something orjson refuses even with default=str
            cold = orjson.dumps(_plain(entries), option=_OPTIONS)
        frame = {
            "anchor": (time.time_ns(), time.perf_counter()),
            "strategy": self.strategy,
            "requests": requests,
            "selections": selections,
            "entries": cold,
        }
        data = marshal.dumps(frame)
        self._pending.append((memoryview(FRAME.pack(len(data)) + data), count))
        self._waiting += count
        return count

    def _rows(self, rows: list[Any], room: int) -> list[Any]:
        """The rows there are, taken off the front of ``rows``; past ``room``, the newest are
        dropped and counted."""
        count = len(rows)
        taken = rows[:count]
        del rows[:count]  # rows appended meanwhile stay for the next time
        if count > room:
            self.dropped += count - room
            del taken[room:]
        return taken

    def _send(self, wait: float = 0.0) -> None:
        """Write pending frames while the pipe takes them (waiting up to ``wait`` for room)."""
        encoder = self._encoder
        if encoder is None or encoder.stdin is None:
            return
        fd = encoder.stdin.fileno()
        pending = self._pending
        try:
            while pending:
                frame, count = pending[0]
                if wait:
                    select.select([], [fd], [], wait)
                try:
                    written = os.write(fd, frame)
                except BlockingIOError:
                    return
                if written < len(frame):
                    pending[0] = (frame[written:], count)
                    continue
                pending.popleft()
                self._waiting -= count
                self.sent += count
        except OSError:  # the encoder is gone
            self._replace_encoder()

    def _replace_encoder(self) -> None:
        """The encoder died (killed, crashed): what was in flight is lost and counted; start
        another unless that has happened too often already."""
        lost = self._waiting
        self._pending.clear()
        self._waiting = 0
        self.dropped += lost
        old = self._encoder
        self._encoder = None
        code = None
        if old is not None:
            try:
                code = old.wait(1)
            except subprocess.TimeoutExpired:  # closed its input but hangs: not ours to wait on
                old.kill()
                code = old.wait()
        if old is not None and old.stdin is not None:
            with contextlib.suppress(OSError):
                old.stdin.close()
        retry = self._respawns < _RESPAWNS
        event(
            _log,
            "debug_encoder_exited",
            logging.ERROR,
            exit_code=code,
            restarting=retry,
            entries_lost=lost,
        )
        if retry:
            self._respawns += 1
            self._encoder = self._spawn()
