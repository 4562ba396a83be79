"""JSON-RPC 2.0 as MCP uses it: what a message is, and the errors the proxy answers with.

Pure: bytes and dicts in, bytes and values out. The proxy reads only what it must (kind, id,
method) and forwards every message byte for byte.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from typing import Any

import orjson

from proxyfleet.errors import InvalidMessage

__all__ = [
    "INTERNAL_ERROR",
    "INVALID_REQUEST",
    "PARSE_ERROR",
    "REQUEST_TIMEOUT",
    "SERVER_ERROR",
    "InvalidMessage",
    "Kind",
    "Message",
    "cancelled",
    "error_body",
    "parse_body",
    "parse_line",
]

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
INTERNAL_ERROR = -32603
SERVER_ERROR = -32000  # implementation-defined: the proxy's own refusals and upstream deaths
REQUEST_TIMEOUT = -32001  # no answer in time (the code the mcp SDKs use for their own timeouts)


class Kind(enum.Enum):
    REQUEST = "request"
    NOTIFICATION = "notification"
    RESPONSE = "response"


@dataclass(frozen=True, slots=True)
class Message:
    kind: Kind
    raw: bytes  # the message as it came, one line, no newline
    id: Any = None  # requests and responses
    method: str | None = None  # requests and notifications


def _classify(data: object, raw: bytes) -> Message:
    if not isinstance(data, dict) or data.get("jsonrpc") != "2.0":
        raise InvalidMessage('not a JSON-RPC 2.0 message (needs "jsonrpc": "2.0")')
    method = data.get("method")
    has_id = "id" in data
    ident = data.get("id")
    if (has_id and not (ident is None or isinstance(ident, str | int))) or isinstance(ident, bool):
        raise InvalidMessage("a JSON-RPC id must be a string or an integer")
    if isinstance(method, str):
        if has_id and ident is not None:
            return Message(Kind.REQUEST, raw, ident, method)
        return Message(Kind.NOTIFICATION, raw, None, method)
    if method is not None:
        raise InvalidMessage("'method' must be a string")
    if has_id and ("result" in data or "error" in data):
        return Message(Kind.RESPONSE, raw, ident)
    raise InvalidMessage("neither a request, a notification nor a response")


def _loads(text: bytes) -> Any:
    """JSON, read fast; a number orjson cannot hold exactly (an integer above 64 bits, such
    as an id above 2**63) is read again exactly, so the value the proxy keeps is the one
    sent."""
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        if "number" not in str(exc):
            raise
        return json.loads(text)
    if (isinstance(data, dict) and isinstance(data.get("id"), float)) or isinstance(data, list):
        return json.loads(text)  # rare: a float id, or a batch whose items are re-encoded
    return data


def parse_line(line: bytes) -> Message:
    """One newline-delimited message from a stdio server."""
    try:
        data = _loads(line)
    except ValueError as exc:
        raise InvalidMessage(f"not JSON: {exc}", PARSE_ERROR) from exc
    return _classify(data, line)


def parse_body(body: bytes) -> list[Message]:
    """A POST body: one message or a batch (a non-empty array). A single message keeps its
    bytes; a batch's items are written out again, each on one line, their values exact."""
    try:
        data = _loads(body)
    except ValueError as exc:
        raise InvalidMessage(f"malformed JSON: {exc}", PARSE_ERROR) from exc
    if isinstance(data, list):
        if not data:
            raise InvalidMessage("an empty batch")
        return [_classify(item, _line(item)) for item in data]
    return [_classify(data, body.strip().replace(b"\n", b" ").replace(b"\r", b" "))]


def _line(item: Any) -> bytes:
    return json.dumps(item, separators=(",", ":"), ensure_ascii=False).encode(
        "utf-8", "surrogatepass"
    )


def _dumps(message: dict[str, Any]) -> bytes:
    """A message the proxy writes itself, on one line; its id as exact as it came (orjson
    refuses integers beyond 64 bits, which JSON-RPC allows)."""
    try:
        return orjson.dumps(message)
    except TypeError:
        return _line(message)


def error_body(ident: Any, code: int, message: str, data: Any = None) -> bytes:
    """A JSON-RPC error response (``id`` null when the request could not be read)."""
    error: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        error["data"] = data
    return _dumps({"jsonrpc": "2.0", "id": ident, "error": error})


def cancelled(ident: Any, reason: str) -> bytes:
    """The MCP notification that asks a server to stop working on request ``ident``."""
    params = {"requestId": ident, "reason": reason}
    return _dumps({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": params})
