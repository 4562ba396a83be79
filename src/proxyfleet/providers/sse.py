"""Server-sent events: an incremental parser (bytes in, ``data`` payloads out) and a writer."""

from __future__ import annotations

import json
from typing import Any

__all__ = ["SSEParser", "encode_event"]


class SSEParser:
    """Feed bytes as they arrive; get the ``data`` of every complete event (multi-line data is
    joined with newlines, comments and other fields are ignored)."""

    def __init__(self) -> None:
        self._buffer = b""
        self._data: list[bytes] = []

    def feed(self, chunk: bytes) -> list[str]:
        self._buffer += chunk
        events: list[str] = []
        while True:
            end = self._buffer.find(b"\n")
            if end < 0:
                return events
            line = self._buffer[:end].rstrip(b"\r")
            self._buffer = self._buffer[end + 1 :]
            if not line:
                if self._data:
                    events.append(b"\n".join(self._data).decode("utf-8", "replace"))
                    self._data = []
            elif line.startswith(b"data:"):
                value = line[5:]
                self._data.append(value[1:] if value.startswith(b" ") else value)

    def close(self) -> list[str]:
        """Whatever complete event the stream ended on without a blank line."""
        tail = self.feed(b"\n\n") if self._buffer or self._data else []
        return tail


def encode_event(event: dict[str, Any]) -> bytes:
    """One SSE event. Text goes out as UTF-8; a lone surrogate (half of a pair an upstream
    split across two escapes) stays escaped, ``\\ud83d``, as JSON allows."""
    data = json.dumps(event, separators=(",", ":"), ensure_ascii=False)
    text = f"event: {event['type']}\ndata: {data}\n\n"
    try:
        return text.encode()
    except UnicodeEncodeError:
        escaped = json.dumps(event, separators=(",", ":"))
        return f"event: {event['type']}\ndata: {escaped}\n\n".encode()
