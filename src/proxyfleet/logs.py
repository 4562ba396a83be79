"""Logs are events: one JSON object per line, secrets redacted, written off the event loop.

``configure_logging`` routes every logger through a queue to a background thread, so a slow
terminal or disk never blocks a request. ``event(logger, name, **fields)`` records one event.
"""

from __future__ import annotations

import atexit
import json
import logging
import logging.handlers
import queue
import re
import sys
import time
from typing import Any, TextIO

__all__ = ["SECRET_KEYS", "configure_logging", "event", "looks_secret", "redact"]

SECRET_KEYS = frozenset(
    {"authorization", "cookie", "set-cookie", "x-api-key", "api_key", "apikey", "password", "token"}
)
_BEARER = re.compile(r"(?i)\b(bearer)\s+[A-Za-z0-9._~+/=-]+")
_SK = re.compile(r"\bsk-[A-Za-z0-9_-]{8,}")
_URL_PASSWORD = re.compile(r"(://[^/@:\s]*):[^/@\s]+@")  # user:password@ in a URL
_TOKEN = re.compile(r"^[A-Za-z0-9_.+/=-]{24,}$")  # one long word of key characters


def looks_secret(value: object) -> bool:
    """Could ``value`` be a credential (a key, a token, a URL with a password)? Then an error
    message names the field and the reason, never the value."""
    if not isinstance(value, str):
        return False
    if _SK.search(value) or _BEARER.search(value) or _URL_PASSWORD.search(value):
        return True
    return (
        bool(_TOKEN.match(value))
        and any(c.isdigit() for c in value)
        and any(c.isalpha() for c in value)
    )


def redact(value: Any) -> Any:
    """A copy of ``value`` with credential fields and bearer tokens masked."""
    if isinstance(value, dict):
        return {
            k: "[redacted]" if str(k).lower() in SECRET_KEYS else redact(v)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [redact(v) for v in value]
    if isinstance(value, str):
        value = _URL_PASSWORD.sub(r"\1:[redacted]@", value)
        return _SK.sub("sk-[redacted]", _BEARER.sub(r"\1 [redacted]", value))
    return value


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if fields:
            data.update(fields)
        if record.exc_info and record.exc_info[1] is not None:
            data["error"] = f"{type(record.exc_info[1]).__name__}: {record.exc_info[1]}"
        return json.dumps(redact(data), default=str, separators=(",", ":"))


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "fields", None) or {}
        tail = " ".join(f"{k}={v}" for k, v in redact(fields).items())
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        text = f"{stamp} {record.levelname.lower():7} {redact(record.getMessage())} {tail}"
        return text.rstrip()


def event(logger: logging.Logger, name: str, level: int = logging.INFO, **fields: Any) -> None:
    if logger.isEnabledFor(level):
        logger.log(level, name, extra={"fields": fields})


def configure_logging(level: str = "info", fmt: str = "json", stream: TextIO | None = None) -> None:
    """Send every log record, as JSON (or text), through a queue to ``stream`` (stderr)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    listener = logging.handlers.QueueListener(records, handler)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(logging.handlers.QueueHandler(records))
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "aiohttp"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    listener.start()
    atexit.register(listener.stop)
