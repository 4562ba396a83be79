"""Debug mode's writer: ``<session>_<category>.jsonl``, one flat JSON object per line.

Every line starts with ``session_id``, ``timestamp`` (UTC, RFC 3339 with nanoseconds) and
``elapsed_seconds``, then ``request_id`` where there is one, then the category's fields. The
request path only appends a dict to a bounded queue (when full, the entry is counted as dropped,
never waited for); a background thread encodes, redacts and writes in batches. Files are 0600 in
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

__all__ = ["CATEGORIES", "DebugLog", "rfc3339_ns"]

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


@functools.lru_cache(maxsize=4)
def _second(seconds: int) -> str:
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S")


def rfc3339_ns(ns: int) -> str:
    """UTC, RFC 3339 with nanoseconds (the date part is computed once per second)."""
    seconds, rest = divmod(ns, 1_000_000_000)
    return f"{_second(seconds)}.{rest:09d}Z"


_SUSPECT = ("earer", "sk-", "ookie", "pi-key", "pi_key")


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
        # (category, time_ns, request_id, fields, False) or (category, 0, None, line, True)
        self._queue: collections.deque[
            tuple[str, int, str | None, dict[str, Any] | bytes, bool]
        ] = collections.deque()
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
        self._queue.append(("session", time.time_ns(), None, end, False))
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
        self._queue.append((category, time.time_ns(), request_id, fields, False))

    def log_trusted(self, category: str, request_id: str, fields: dict[str, Any]) -> None:
        """:meth:`log` for entries the gateway built from its own values (numbers, ids,
        methods, paths without query): they skip the secret scan. Never pass client text."""
        if len(self._queue) >= self._limit:
            self.dropped += 1
            return
        # encoded here, in C, so the writer thread only joins and writes them
        self._queue.append(
            (category, 0, None, self._encode(time.time_ns(), request_id, fields), True)
        )

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

    def _drain(self) -> None:
        batches: dict[str, list[bytes]] = collections.defaultdict(list)
        queue, secret = self._queue, self._secret
        while queue:
            category, ns, rid, payload, encoded = queue.popleft()
            if encoded:
                assert isinstance(payload, bytes)
                batches[category].append(payload)
            else:
                assert isinstance(payload, dict)
                batches[category].append(self._encode(ns, rid, _clean(payload, secret)))
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
