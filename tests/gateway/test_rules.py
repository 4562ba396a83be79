"""Pure request rules: paths, request ids, header hygiene."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxyfleet.errors import BadRequest
from proxyfleet.gateway.rules import (
    client_credential,
    forwarded_headers,
    parse_json,
    request_id,
    response_headers,
    upstream_path,
)


@pytest.mark.parametrize(
    ("path", "raw", "query", "tail"),
    [
        ("/v1/chat/completions", b"/v1/chat/completions", b"", "/chat/completions"),
        ("/v1/files/a b", b"/v1/files/a%20b", b"x=1", "/files/a%20b?x=1"),
        ("/v1/a.b/c", None, b"", "/a.b/c"),
        ("/v1", b"/v1", b"", ""),
    ],
)
def test_upstream_path(path: str, raw: bytes | None, query: bytes, tail: str) -> None:
    assert upstream_path(path, raw, query) == tail


@pytest.mark.parametrize(
    ("path", "raw"),
    [
        ("/v1/../x", b"/v1/../x"),
        ("/v1/../x", b"/v1/%2e%2e/x"),
        ("/v1/%2e%2e/x", b"/v1/%252e%252e/x"),
        ("/v1//x", b"/v1//x"),
        ("/v1/a\\b", b"/v1/a%5cb"),
        ("/v1/a\nb", b"/v1/a%0ab"),
        ("/admin", b"/admin"),
        ("/v1x", b"/v1x"),
        ("/v1/x", b"http://evil/v1/x"),
    ],
)
def test_upstream_path_refuses(path: str, raw: bytes) -> None:
    with pytest.raises(BadRequest):
        upstream_path(path, raw, b"")


def test_request_id() -> None:
    assert request_id(b"abc-123") == "abc-123"
    generated = {request_id(b"bad id with spaces") for _ in range(100)}
    assert len(generated) == 100
    assert all(len(r) == 32 for r in generated)
    assert len(request_id(b"x" * 200)) == 32


def test_client_credential() -> None:
    assert client_credential([(b"authorization", b"Bearer k1")]) == "k1"
    assert client_credential([(b"x-api-key", b"k2")]) == "k2"
    assert client_credential([(b"authorization", b"Basic zzz")]) is None
    assert client_credential([]) is None


def test_forwarded_headers() -> None:
    client = [
        (b"host", b"gw"),
        (b"connection", b"keep-alive, x-hop"),
        (b"x-hop", b"1"),
        (b"authorization", b"Bearer client"),
        (b"content-type", b"application/json"),
        (b"content-length", b"10"),
        (b"x-request-id", b"theirs"),
        (b"accept", b"a"),
        (b"accept", b"b"),
        (b"te", b"trailers"),
    ]
    out = forwarded_headers(client, "rid", strip_client_auth=True, extra={"accept-encoding": "x"})
    assert out == {
        "content-type": "application/json",
        "accept": "a, b",
        "accept-encoding": "x",
        "x-request-id": "rid",
    }
    kept = forwarded_headers(client, "rid", strip_client_auth=False)
    assert kept["authorization"] == "Bearer client"


def test_response_headers() -> None:
    upstream = [
        (b"Content-Type", b"text/event-stream"),
        (b"Transfer-Encoding", b"chunked"),
        (b"Connection", b"x-private"),
        (b"X-Private", b"1"),
        (b"Content-Length", b"5"),
        (b"X-Request-ID", b"upstream"),
        (b"Server", b"up"),
    ]
    assert response_headers(upstream, b"rid") == [
        (b"content-type", b"text/event-stream"),
        (b"x-request-id", b"rid"),
    ]


# -- JSON bodies: what parse_json accepts and how it refuses -------------------------------------

_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=30,
)


def _depth(value: object) -> int:
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    return 0


@settings(max_examples=300)
@given(value=st.dictionaries(st.text(max_size=5), _VALUES, max_size=5), limit=st.integers(1, 8))
def test_parse_json_takes_what_fits_and_names_the_limit_otherwise(
    value: dict[str, object], limit: int
) -> None:
    body = json.dumps(value).encode()
    if _depth(value) <= limit:
        assert parse_json(body, limit) == value
    else:
        with pytest.raises(BadRequest, match=rf"nested deeper than {limit} levels") as info:
            parse_json(body, limit)
        assert info.value.code == "invalid_json"


@settings(max_examples=300)
@given(body=st.binary(max_size=200))
def test_parse_json_never_raises_anything_but_a_400(body: bytes) -> None:
    refused: BadRequest | None = None
    try:
        assert isinstance(parse_json(body, 16), dict)
    except BadRequest as exc:  # the one way to refuse; anything else fails the test
        refused = exc
    if refused is not None:
        assert (refused.status, refused.code) == (400, "invalid_json")


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (b'{"a": ' + b"[" * 2000 + b"]" * 2000 + b"}", "nested deeper than 64"),
        (b'{"n": ' + b"9" * 400 + b"}", "number out of range"),
        (b'{"n": 1e999}', "number out of range"),
        (b"[1, 2]", "JSON object"),
        (b"", "JSON object"),
        (b"\xff", "malformed"),
    ],
)
def test_parse_json_refusals(body: bytes, needle: str) -> None:
    with pytest.raises(BadRequest, match=needle):
        parse_json(body, 64)
