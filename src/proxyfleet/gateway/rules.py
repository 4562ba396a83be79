"""Pure request and header rules of the gateway: no I/O, tested without sockets."""

from __future__ import annotations

import itertools
import re
import secrets
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from urllib.parse import unquote, unquote_plus

import orjson

from proxyfleet.errors import BadRequest

__all__ = [
    "HOP_BY_HOP",
    "client_credential",
    "forwarded_headers",
    "header",
    "request_id",
    "response_headers",
    "upstream_path",
]

#: Headers that belong to one connection and are never forwarded (RFC 9110 §7.6.1), plus the
#: ones the gateway sets itself.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
_NOT_UPSTREAM = HOP_BY_HOP | {b"host", b"content-length", b"x-request-id", b"expect"}
_CLIENT_AUTH = frozenset({b"authorization", b"x-api-key"})
_NOT_UPSTREAM_AUTH = _NOT_UPSTREAM | _CLIENT_AUTH
_NOT_DOWNSTREAM = HOP_BY_HOP | {b"content-length", b"x-request-id", b"server", b"date"}
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:@/+=-]{1,128}$")
_PREFIX = "/v1"
#: Paths made of plain segments only (no ``%``, no segment starting with a dot, no ``//``).
_PLAIN = re.compile(r"^(?:/[A-Za-z0-9_\-~:@+,;=!$'()*][A-Za-z0-9_.\-~:@+,;=!$'()*]*)+$")


_ID_PREFIX = secrets.token_hex(10)  # 20 hex digits, random per process
_ID_COUNTER = itertools.count(1)


def request_id(given: bytes | None) -> str:
    """The client's ``X-Request-ID`` when it is sane, else a fresh one: 32 hex digits, a random
    per-process prefix and a counter (unique, and cheaper than uuid4)."""
    if given:
        text = given.decode("latin-1")
        if _REQUEST_ID.match(text):
            return text
    return f"{_ID_PREFIX}{next(_ID_COUNTER) & 0xFFFFFFFFFFFF:012x}"


def upstream_path(path: str, raw_path: bytes | None, query: bytes) -> str:
    """The part to append to the upstream base URL for a client path under ``/v1``.

    Refuses anything that could leave the configured upstream: dot segments (also encoded),
    empty segments, backslashes, control characters, and absolute-form request targets.
    """
    raw = (raw_path or path.encode()).decode("latin-1")
    if not raw.startswith("/"):
        raise BadRequest("request target must be an absolute path", code="invalid_path")
    if not (path == _PREFIX or path.startswith(_PREFIX + "/")):
        raise BadRequest(f"only paths under {_PREFIX}/ are proxied", code="invalid_path")
    if _PLAIN.match(raw):  # the common case: nothing to decode, no dot or empty segment
        tail = raw[len(_PREFIX) :]
        return f"{tail}?{query.decode('latin-1')}" if query else tail
    decoded = unquote(unquote(raw))
    segments = decoded.split("/")[1:]
    if (
        "\\" in decoded
        or any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in decoded)
        or any(seg in (".", "..") for seg in segments)
        or any(seg == "" for seg in segments[:-1])
    ):
        raise BadRequest("path traversal or malformed path refused", code="invalid_path")
    tail = raw[len(_PREFIX) :]
    return f"{tail}?{query.decode('latin-1')}" if query else tail


def header(scope: Mapping[str, Any], name: bytes) -> bytes | None:
    """The first value of a request header (``name`` lowercase, as ASGI gives them)."""
    for key, value in scope["headers"]:
        if key == name:
            return value  # type: ignore[no-any-return]
    return None


def client_credential(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """The key a client presented: ``Authorization: Bearer <key>`` or ``X-API-Key``."""
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
        elif name == b"x-api-key" and value:
            return value.decode("latin-1").strip()
    return None


def _tokens(value: bytes) -> set[bytes]:
    """Header names a ``Connection`` header declares hop-by-hop (RFC 9110 §7.6.1)."""
    return {t.strip().lower() for t in value.split(b",") if t.strip()}


def forwarded_headers(
    client: Iterable[tuple[bytes, bytes]],
    rid: str,
    *,
    strip_client_auth: bool,
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Client headers minus hop-by-hop ones (and the client's own key when client auth is on),
    ``extra`` on top, our request id. The backend's credentials are its transport's to add."""
    drop = _NOT_UPSTREAM_AUTH if strip_client_auth else _NOT_UPSTREAM
    out: dict[str, str] = {}
    connection: bytes | None = None
    for raw_name, raw_value in client:
        if raw_name in drop:
            if raw_name == b"connection":
                connection = raw_value
            continue
        key = raw_name.decode("latin-1")
        text = raw_value.decode("latin-1")
        out[key] = f"{out[key]}, {text}" if key in out else text
    if connection is not None and connection.lower() not in (b"keep-alive", b"close"):
        for token in _tokens(connection):
            out.pop(token.decode("latin-1"), None)
    if extra:
        out.update(extra)
    out["x-request-id"] = rid
    return out


def response_headers(
    upstream: Iterable[tuple[bytes, bytes]], rid: bytes
) -> list[tuple[bytes, bytes]]:
    """Upstream response headers for the client: hop-by-hop and length removed, request id set."""
    out = []
    connection: bytes | None = None
    for name, value in upstream:
        lowered = name.lower()
        if lowered in _NOT_DOWNSTREAM:
            if lowered == b"connection":
                connection = value
            continue
        out.append((lowered, value))
    if connection is not None and connection.lower() not in (b"keep-alive", b"close"):
        extra = _tokens(connection)
        out = [(k, v) for k, v in out if k not in extra]
    out.append((b"x-request-id", rid))
    return out


def _too_deep(value: object, limit: int) -> bool:
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values() if isinstance(v, dict | list))
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item if isinstance(v, dict | list))
    return False


def parse_json(body: bytes, max_depth: int) -> dict[str, Any]:
    """A request body that must be a JSON object, nested at most ``max_depth`` levels, its
    numbers within a 64-bit integer or a double; else 400 ``invalid_json`` saying which."""
    if not body:
        raise BadRequest("request body must be a JSON object", code="invalid_json")
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        reason = str(exc)
        if "depth" in reason or "recursion" in reason:
            reason = f"nested deeper than {max_depth} levels (server.max_json_depth)"
        elif "number" in reason or "integer" in reason.lower():
            reason = f"a number out of range (numbers must fit a 64-bit integer or a double): {exc}"
        raise BadRequest(f"malformed JSON: {reason}", code="invalid_json") from exc
    if not isinstance(data, dict):
        raise BadRequest("request body must be a JSON object", code="invalid_json")
    # a container count within the limit cannot nest deeper: most bodies stop here
    if body.count(b"{") + body.count(b"[") > max_depth and _too_deep(data, max_depth):
        raise BadRequest(
            f"malformed JSON: nested deeper than {max_depth} levels (server.max_json_depth)",
            code="invalid_json",
        )
    return data


#: Query parameters that carry a key, whoever's: dropped when client auth is on.
_KEY_PARAMS = frozenset({"api_key", "api-key", "apikey", "x-api-key", "access_token"})


def strip_query(query: bytes, is_key: Callable[[str], bool]) -> bytes:
    """``query`` without parameters that carry a key: those named like one, and any whose
    value ``is_key`` (a gateway client key). The others keep their bytes as they were."""
    kept = []
    for part in query.split(b"&"):
        name, _, value = part.partition(b"=")
        text = unquote_plus(name.decode("latin-1")).lower()
        if text in _KEY_PARAMS or (value and is_key(unquote_plus(value.decode("latin-1")))):
            continue
        kept.append(part)
    return b"&".join(kept)
