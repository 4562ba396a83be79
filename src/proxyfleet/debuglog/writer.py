"""Debug mode's writer: ``<session>_<category>.jsonl``, one flat JSON object per line.

Every line starts with ``session_id``, ``timestamp`` (UTC, RFC 3339 with nanoseconds) and
``elapsed_seconds``, then ``request_id`` where there is one, then the category's fields. The
request path only appends a dict (or, for the per-request categories, a tuple) to a bounded
queue (when full, the entry is counted as dropped, never waited for); a background thread
encodes, redacts and writes in batches. Files are 0600 in
a 0700 directory. The number of dropped entries goes to the ``session`` file at the end.
"""

from __future__ import annotations

import collections
import contextlib
import datetime
import functools
import os
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from proxyfleet.logs import SECRET_KEYS, redact

__all__ = ["CATEGORIES", "HOT_FIELDS", "DebugLog", "rfc3339_ns"]

CATEGORIES = (
    "session",
    "requests",
    "engine_selection",
    "provisioning",
    "orchestrator_health",
    "streams",
    "stress",
    "errors",
    "disconnects",
)


_COMMON = b'%s%s.%09dZ","elapsed_seconds":%.6f,"request_id":"%s"'
_REQUESTS_LINE = _COMMON + (
    b',"method":%s,"path":%s,"status":%d,"duration_ms":%.3f,"backend":%s,"bytes":%d,"ttfb_ms":%s}'
)
_SELECTION_LINE = _COMMON + (
    b',"strategy":%s,"backend":%s,"wait_ms":%.3f,"queue_depth":%d,"candidates":%d,"attempt":%d}'
)


@functools.lru_cache(maxsize=4)
def _second_bytes(seconds: int) -> bytes:
    return _second(seconds).encode()


@functools.lru_cache(maxsize=4)
def _second(seconds: int) -> str:
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S")


def rfc3339_ns(ns: int) -> str:
    """UTC, RFC 3339 with nanoseconds (the date part is computed once per second)."""
    seconds, rest = divmod(ns, 1_000_000_000)
    return f"{_second(seconds)}.{rest:09d}Z"


_SUSPECT = ("earer", "sk-", "ookie", "pi-key", "pi_key")
_DICT, _HOT = 0, 1
#: The per-request categories written from tuples, and their fields in order.
HOT_FIELDS = {
    "requests": ("method", "path", "status", "duration_ms", "backend", "bytes", "ttfb_ms"),
    "engine_selection": (
        "strategy",
        "backend",
        "wait_ms",
        "queue_depth",
        "candidates",
        "attempt",
    ),
}


def _clean(value: Any, secret: frozenset[str]) -> Any:
    """Secrets out: fields by name (built-in and configured), bearer tokens and API keys in
    text. Numbers and ordinary strings pass untouched, which keeps this cheap."""
    if isinstance(value, str):
        return redact(value) if any(s in value for s in _SUSPECT) else value
    if isinstance(value, dict):
        return {
            k: "[redacted]" if str(k).lower() in secret else _clean(v, secret)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [_clean(v, secret) for v in value]
    return value


class DebugLog:
    """Open with :meth:`start`, close with :meth:`stop`; :meth:`log` never blocks."""

    def __init__(
        self,
        directory: Path,
        *,
        queue_limit: int = 10_000,
        secret_fields: Iterable[str] = (),
        flush_interval: float = 0.2,
    ) -> None:
        self.directory = directory
        self._start_ns = time.time_ns()
        self.session_id = datetime.datetime.now(datetime.UTC).strftime("%Y%m%d_%H%M%S")
        self._head = b'{"session_id":"' + self.session_id.encode() + b'","timestamp":"'
        # (category, time_ns, request_id, fields dict or hot tuple, kind)
        self._queue: collections.deque[
            tuple[str, int, str | None, dict[str, Any] | tuple[Any, ...], int]
        ] = collections.deque()
        self._strings: dict[str, bytes] = {}  # JSON-encoded (and redacted) hot strings
        self._limit = queue_limit
        self.dropped = 0
        self.written = 0
        self._secret = SECRET_KEYS | frozenset(s.lower() for s in secret_fields)
        self._interval = flush_interval
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._files: dict[str, BinaryIO] = {}
        self._thread: threading.Thread | None = None

    def start(self, **fields: Any) -> None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        with contextlib.suppress(OSError):
            os.chmod(self.directory, 0o700)
        self._thread = threading.Thread(target=self._run, name="proxyfleet-debuglog", daemon=True)
        self._thread.start()
        self.log("session", event="session_start", **fields)

    def stop(self, **fields: Any) -> None:
        if self._thread is None:
            return
        end = {
            "event": "session_end",
            "entries_written": self.written + len(self._queue),
            "entries_dropped": self.dropped,
            **fields,
        }
        self._queue.append(("session", time.time_ns(), None, end, _DICT))
        self._stop.set()
        self._wake.set()
        self._thread.join(10)
        self._thread = None
        for handle in self._files.values():
            handle.close()
        self._files.clear()

    def log(self, category: str, request_id: str | None = None, **fields: Any) -> None:
        """Queue one entry; drop it (and count it) when the queue is full."""
        if len(self._queue) >= self._limit:
            self.dropped += 1
            return
        self._queue.append((category, time.time_ns(), request_id, fields, _DICT))

    def log_hot(self, category: str, request_id: str, values: tuple[Any, ...]) -> None:
        """:meth:`log` for the per-request categories (``requests``, ``engine_selection``):
        a tuple in the category's fixed field order, formatted by the writer thread from a
        template (see :data:`HOT_FIELDS`). The cheapest entry there is: no dict, no encoding here.
        """
        if len(self._queue) >= self._limit:
            self.dropped += 1
            return
        self._queue.append((category, time.time_ns(), request_id, values, _HOT))

    def path(self, category: str) -> Path:
        return self.directory / f"{self.session_id}_{category}.jsonl"

    # -- the writer thread ---------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self._interval)
            self._wake.clear()
            self._drain()
        self._drain()

    def _encode(self, ns: int, rid: str | None, fields: dict[str, Any]) -> bytes:
        """One line: the common fields, then ``fields`` (already clean) as JSON."""
        seconds, rest = divmod(ns, 1_000_000_000)
        body = orjson.dumps(fields, default=str)
        rid_part = b',"request_id":' + orjson.dumps(rid) if rid is not None else b""
        return b'%s%s.%09dZ","elapsed_seconds":%.6f%s%s' % (
            self._head,
            _second(seconds).encode(),
            rest,
            (ns - self._start_ns) / 1e9,
            rid_part,
            b"," + body[1:] if len(body) > 2 else b"}",
        )

    def _string(self, value: str | None) -> bytes:
        """A hot string field as JSON, redacted when it looks like a secret; memoised (the
        values repeat: methods, routes, backend ids)."""
        if value is None:
            return b"null"
        encoded = self._strings.get(value)
        if encoded is None:
            encoded = orjson.dumps(_clean(value, self._secret))
            if len(self._strings) < 4096:
                self._strings[value] = encoded
        return encoded

    def _encode_hot(
        self, category: str, ns: int, rid: str | None, values: tuple[Any, ...]
    ) -> bytes:
        """One template per category. Request ids are the gateway's (checked against a safe
        character set), so they go in as they are; other strings through :meth:`_string`."""
        seconds, rest = divmod(ns, 1_000_000_000)
        string = self._string
        common = (
            self._head,
            _second_bytes(seconds),
            rest,
            (ns - self._start_ns) / 1e9,
            (rid or "").encode(),
        )
        if category == "requests":
            method, path, status, duration, backend, size, ttfb = values
            return _REQUESTS_LINE % (
                *common,
                string(method),
                string(path),
                status,
                duration * 1000,
                string(backend),
                size,
                b"null" if ttfb is None else b"%.3f" % (ttfb * 1000),
            )
        strategy, backend, wait, depth, candidates, attempt = values
        return _SELECTION_LINE % (
            *common,
            string(strategy),
            string(backend),
            wait * 1000,
            depth,
            candidates,
            attempt,
        )

    def _drain(self) -> None:
        batches: dict[str, list[bytes]] = {}
        queue, secret = self._queue, self._secret
        popleft, hot, encode = queue.popleft, self._encode_hot, self._encode
        for _ in range(len(queue)):
            category, ns, rid, payload, kind = popleft()
            line = (
                hot(category, ns, rid, payload)  # type: ignore[arg-type]
                if kind == _HOT
                else encode(ns, rid, _clean(payload, secret))
            )
            lines = batches.get(category)
            if lines is None:
                lines = batches[category] = []
            lines.append(line)
        for category, lines in batches.items():
            handle = self._file(category)
            handle.write(b"\n".join(lines) + b"\n")
            handle.flush()
            self.written += len(lines)

    def _file(self, category: str) -> BinaryIO:
        handle = self._files.get(category)
        if handle is None:
            path = self.path(category)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            handle = self._files[category] = os.fdopen(fd, "ab")
        return handle
