"""Debug mode's encoder: the process that turns recorded entries into JSONL files.

The gateway only appends tuples to lists; a timer on its event loop sends them here in batches
over a pipe (see :class:`proxyfleet.debuglog.writer.DebugLog`), so the line formatting, the
redaction and the file writes cost the gateway's core nothing. This process runs at a lower
priority (nice 10), may be pinned to other CPUs (``debug.encoder_cpus``), ignores SIGINT and
SIGTERM, and stops at the end of its input: when the gateway closes the pipe, or dies,
everything sent so far is still written.

Files are ``<session>_<category>.jsonl``, 0600, opened in append mode. Every line starts with
``session_id``, ``timestamp`` (UTC, RFC 3339 with nanoseconds) and ``elapsed_seconds``, then
``request_id`` where there is one, then the category's fields.

A batch (a *frame*) is ``marshal`` data: a dict with ``anchor`` (``time.time_ns()`` and
``time.perf_counter()`` read together, which turns the rows' perf-counter times into wall
clock), ``strategy`` (the pool's selection strategy), ``requests`` and ``selections`` (lists
of rows, see :mod:`proxyfleet.debuglog.columns`) and ``entries`` (JSON: ``[category, time_ns,
request_id, fields]`` for every other entry).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import marshal
import os
import signal
import sys
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from proxyfleet.debuglog.columns import FRAME, RequestRow, Selection, SelectionRow
from proxyfleet.logs import SECRET_KEYS, redact

__all__ = [
    "FRAME",
    "Encoder",
    "main",
]

#: A frame on the pipe: its length (unsigned 32-bit, little-endian), then its bytes.

_COMMON = b'%s%s.%09dZ","elapsed_seconds":%.6f,"request_id":"%s"'
_REQUESTS_LINE = _COMMON + (
    b',"method":%s,"path":%s,"status":%d,"duration_ms":%.3f,"backend":%s,"bytes":%d,"ttfb_ms":%s,'
    b'"sample_weight":%d}'
)
_SELECTION_LINE = _COMMON + (
    b',"strategy":%s,"backend":%s,"wait_ms":%.3f,"queue_depth":%d,"candidates":%d,"attempt":%d}'
)
_SUSPECT = ("earer", "sk-", "ookie", "pi-key", "pi_key")


@functools.lru_cache(maxsize=4)
def _second_bytes(seconds: int) -> bytes:
    """The date-and-time part of a timestamp, computed once per second."""
    stamp = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S").encode()


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


class Encoder:
    """Entries in, lines out: one instance per debug session, used by :func:`main`."""

    def __init__(
        self, directory: Path, session_id: str, start_ns: int, secret_fields: Iterable[str] = ()
    ) -> None:
        self.directory = directory
        self.session_id = session_id
        self._start_ns = start_ns
        self._head = b'{"session_id":"' + session_id.encode() + b'","timestamp":"'
        self._secret = SECRET_KEYS | frozenset(s.lower() for s in secret_fields)
        self._strings: dict[str, bytes] = {}  # JSON-encoded (and redacted) hot strings
        self._files: dict[str, BinaryIO] = {}
        self.written = 0
        self.failed = 0  # entries lost to a failed write (a full disk, say)

    def path(self, category: str) -> Path:
        return self.directory / f"{self.session_id}_{category}.jsonl"

    def write(self, frame: dict[str, Any]) -> None:
        """Encode and append one frame's entries; a file that cannot be written loses its
        lines (and says so once on stderr) but never stops the others."""
        batches = self._row_lines(frame)
        ends = []  # session_end goes last: its counts must know what this frame lost
        for category, ns, rid, fields in orjson.loads(frame["entries"]):
            if category == "session" and fields.get("event") == "session_end":
                ends.append((ns, rid, fields))
                continue
            batches.setdefault(category, []).append(self._line(category, ns, rid, fields))
        self._write(batches)
        if ends:
            self._write({"session": [self._line("session", *end) for end in ends]})

    def _write(self, batches: dict[str, list[bytes]]) -> None:
        for category, lines in batches.items():
            try:
                handle = self._file(category)
                handle.write(b"\n".join(lines) + b"\n")
                handle.flush()
            except OSError as exc:
                if not self.failed:
                    print(f"proxyfleet debug encoder: {exc}", file=sys.stderr)
                self.failed += len(lines)
            else:
                self.written += len(lines)

    def _row_lines(self, frame: dict[str, Any]) -> dict[str, list[bytes]]:
        """The ``requests`` and ``engine_selection`` lines of a frame's rows."""
        anchor_ns: int = frame["anchor"][0]
        anchor_perf: float = frame["anchor"][1]

        def wall(perf: float) -> int:
            return anchor_ns + int((perf - anchor_perf) * 1e9)

        string, common = self._string, self._common
        strategy = string(frame["strategy"])

        def selection_line(rid: bytes, backend: bytes, lease: Selection) -> bytes:
            at, wait, depth, candidates, attempt = lease
            return _SELECTION_LINE % (
                *common(wall(at)),
                rid,
                strategy,
                backend,
                wait * 1000,
                depth,
                candidates,
                attempt,
            )

        requests, selections = [], []
        row: RequestRow
        for row in frame["requests"]:
            rid, method, path, backend, status, started, elapsed, size, first, lease, weight = row
            rid_bytes, backend_json = rid.encode(), string(backend)
            if lease is not None:
                selections.append(selection_line(rid_bytes, backend_json, lease))
            requests.append(
                _REQUESTS_LINE
                % (
                    *common(wall(started + elapsed)),
                    rid_bytes,
                    string(method),
                    string(path),
                    status,
                    elapsed * 1000,
                    backend_json,
                    size,
                    b"%.3f" % ((first - started) * 1000) if first else b"null",
                    weight,
                )
            )
        own: SelectionRow
        for own in frame["selections"]:
            rid, backend, lease = own
            selections.append(selection_line(rid.encode(), string(backend), lease))
        batches: dict[str, list[bytes]] = {}
        if requests:
            batches["requests"] = requests
        if selections:
            batches["engine_selection"] = selections
        return batches

    def lost(self, frame: dict[str, Any] | None, exc: Exception) -> None:
        """A frame that could not be read or written: its entries count as failed (one, when
        the frame itself could not be read)."""
        print(f"proxyfleet debug encoder: a batch was lost: {exc!r}", file=sys.stderr)
        if frame is None:
            self.failed += 1
            return
        with contextlib.suppress(Exception):
            self.failed += len(frame["requests"]) + len(frame["selections"])
            self.failed += len(orjson.loads(frame["entries"]))

    def close(self) -> None:
        for handle in self._files.values():
            handle.close()
        self._files.clear()

    def _line(self, category: str, ns: int, rid: str | None, fields: dict[str, Any]) -> bytes:
        if category == "session" and fields.get("event") == "session_end" and self.failed:
            fields = {
                **fields,
                "entries_written": fields.get("entries_written", 0) - self.failed,
                "entries_dropped": fields.get("entries_dropped", 0) + self.failed,
            }
        return self._encode(ns, rid, _clean(fields, self._secret))

    def _common(self, ns: int) -> tuple[bytes, bytes, int, float]:
        """The common fields' values for a line at ``ns``: the templates put ``request_id``
        in as it is (the gateway's, or a client's checked against a safe character set)."""
        seconds, rest = divmod(ns, 1_000_000_000)
        return self._head, _second_bytes(seconds), rest, (ns - self._start_ns) / 1e9

    def _encode(self, ns: int, rid: str | None, fields: dict[str, Any]) -> bytes:
        """One line: the common fields, then ``fields`` (already clean) as JSON."""
        body = orjson.dumps(fields, default=str)
        rid_part = b',"request_id":' + orjson.dumps(rid) if rid is not None else b""
        return b'%s%s.%09dZ","elapsed_seconds":%.6f%s%s' % (
            *self._common(ns),
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

    def _file(self, category: str) -> BinaryIO:
        handle = self._files.get(category)
        if handle is None:
            path = self.path(category)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            handle = self._files[category] = os.fdopen(fd, "ab")
        return handle


def read_frames(source: BinaryIO) -> Iterator[bytes]:
    """The frames' bytes from ``source`` until its end (a torn last frame is the end too)."""
    while True:
        head = source.read(FRAME.size)
        if len(head) < FRAME.size:
            return
        (size,) = FRAME.unpack(head)
        body = source.read(size)
        if len(body) < size:
            return
        yield body


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m proxyfleet.debuglog.encoder",
        description="Write the debug entries a proxyfleet process sends on stdin as JSONL files "
        "(started by the process itself; not meant to be run by hand).",
    )
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("--session", required=True)
    parser.add_argument("--start-ns", type=int, required=True)
    parser.add_argument("--secret-field", action="append", default=[])
    args = parser.parse_args(argv)
    for number in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(number, signal.SIG_IGN)  # the end of input is the only way to stop
    os.nice(10)
    encoder = Encoder(args.dir, args.session, args.start_ns, args.secret_field)
    with os.fdopen(sys.stdin.fileno(), "rb", buffering=1 << 20, closefd=False) as source:
        for body in read_frames(source):
            frame = None
            try:
                frame = marshal.loads(body)
                encoder.write(frame)
            except Exception as exc:  # a frame it cannot read: said, counted, not fatal
                encoder.lost(frame, exc)
    encoder.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
