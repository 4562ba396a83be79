"""JSON-RPC 2.0 as the MCP proxy reads it (:mod:`proxyfleet.mcpproxy.jsonrpc`): what kind a
message is, which ones are refused with which code, POST bodies and batches, error bodies and
cancellations, ids beyond 64 bits kept exact. Pure functions: no sockets, no processes."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxyfleet.errors import InvalidMessage, ProxyfleetError
from proxyfleet.mcpproxy.jsonrpc import (
    INTERNAL_ERROR,
    INVALID_REQUEST,
    PARSE_ERROR,
    SERVER_ERROR,
    Kind,
    Message,
    cancelled,
    error_body,
    parse_body,
    parse_line,
)


@pytest.mark.parametrize(
    ("message", "kind", "ident", "method"),
    [
        ({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}, Kind.REQUEST, 1, "tools/list"),
        ({"jsonrpc": "2.0", "id": "a-1", "method": "ping"}, Kind.REQUEST, "a-1", "ping"),
        ({"jsonrpc": "2.0", "id": 0, "method": "ping"}, Kind.REQUEST, 0, "ping"),
        ({"jsonrpc": "2.0", "id": -7, "method": "ping"}, Kind.REQUEST, -7, "ping"),
        (
            {"jsonrpc": "2.0", "method": "notifications/x"},
            Kind.NOTIFICATION,
            None,
            "notifications/x",
        ),
        ({"jsonrpc": "2.0", "id": None, "method": "n"}, Kind.NOTIFICATION, None, "n"),
        ({"jsonrpc": "2.0", "id": 3, "result": {}}, Kind.RESPONSE, 3, None),
        ({"jsonrpc": "2.0", "id": "x", "result": None}, Kind.RESPONSE, "x", None),
        ({"jsonrpc": "2.0", "id": 4, "error": {"code": 1, "message": "m"}}, Kind.RESPONSE, 4, None),
        ({"jsonrpc": "2.0", "id": None, "error": {"code": -32700}}, Kind.RESPONSE, None, None),
    ],
)
def test_each_kind_of_message_is_told_apart(
    message: dict[str, Any], kind: Kind, ident: Any, method: str | None
) -> None:
    raw = orjson.dumps(message)
    parsed = parse_line(raw)
    assert parsed == Message(kind, raw, ident, method)


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        ([1, 2], "not a JSON-RPC 2.0 message"),
        ("text", "not a JSON-RPC 2.0 message"),
        ({"id": 1, "method": "x"}, "not a JSON-RPC 2.0 message"),
        ({"jsonrpc": "1.0", "id": 1, "method": "x"}, "not a JSON-RPC 2.0 message"),
        ({"jsonrpc": 2.0, "id": 1, "method": "x"}, "not a JSON-RPC 2.0 message"),
        ({"jsonrpc": "2.0", "id": 1.5, "method": "x"}, "a string or an integer"),
        ({"jsonrpc": "2.0", "id": True, "method": "x"}, "a string or an integer"),
        ({"jsonrpc": "2.0", "id": False, "result": {}}, "a string or an integer"),
        ({"jsonrpc": "2.0", "id": [1], "method": "x"}, "a string or an integer"),
        ({"jsonrpc": "2.0", "id": {"a": 1}, "result": 1}, "a string or an integer"),
        ({"jsonrpc": "2.0", "id": 1, "method": 5}, "'method' must be a string"),
        ({"jsonrpc": "2.0", "method": None, "id": 1}, "neither a request"),
        ({"jsonrpc": "2.0", "id": 1}, "neither a request"),
        ({"jsonrpc": "2.0", "result": {}}, "neither a request"),
        ({"jsonrpc": "2.0"}, "neither a request"),
    ],
)
def test_what_is_not_json_rpc_is_an_invalid_request(message: object, reason: str) -> None:
    for read in (parse_line, lambda raw: parse_body(raw)[0]):
        with pytest.raises(InvalidMessage, match=reason) as caught:
            read(orjson.dumps(message))
        assert caught.value.code == INVALID_REQUEST


@pytest.mark.parametrize("raw", [b"{not json", b"", b"{", b'{"jsonrpc": "2.0",}', b"\xff\xfe"])
def test_what_is_not_json_is_a_parse_error(raw: bytes) -> None:
    with pytest.raises(InvalidMessage, match="not JSON") as line_error:
        parse_line(raw)
    assert line_error.value.code == PARSE_ERROR
    with pytest.raises(InvalidMessage, match="malformed JSON") as body_error:
        parse_body(raw)
    assert body_error.value.code == PARSE_ERROR
    assert isinstance(body_error.value, ProxyfleetError)


def test_a_single_message_body_keeps_its_bytes_on_one_line() -> None:
    body = b'\n  {"jsonrpc": "2.0",\r\n   "id": 7,\n   "method": "tools/call",\n   "params": {}}\n'
    [message] = parse_body(body)
    assert message.kind is Kind.REQUEST
    assert message.id == 7
    assert b"\n" not in message.raw
    assert b"\r" not in message.raw
    assert orjson.loads(message.raw) == orjson.loads(body)
    # nothing else is touched: spacing and number spelling stay the client's own
    assert (
        message.raw
        == b'{"jsonrpc": "2.0",     "id": 7,    "method": "tools/call",    "params": {}}'
    )
    exact = b'{"jsonrpc":"2.0","id":1,"method":"x","params":{"n":1.50,"big":123456789012345678901}}'
    assert parse_body(exact)[0].raw == exact


def test_a_batch_is_split_into_its_messages_in_order() -> None:
    batch = [
        {"jsonrpc": "2.0", "id": 1, "method": "a"},
        {"jsonrpc": "2.0", "method": "notifications/b"},
        {"jsonrpc": "2.0", "id": "c", "result": {"ok": True}},
    ]
    messages = parse_body(orjson.dumps(batch))
    assert [(m.kind, m.id, m.method) for m in messages] == [
        (Kind.REQUEST, 1, "a"),
        (Kind.NOTIFICATION, None, "notifications/b"),
        (Kind.RESPONSE, "c", None),
    ]
    assert [orjson.loads(m.raw) for m in messages] == batch
    assert all(b"\n" not in m.raw for m in messages)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"[]", "an empty batch"),
        (b'[{"jsonrpc": "2.0", "id": 1, "method": "a"}, {"id": 2}]', "not a JSON-RPC 2.0"),
        (b'[{"jsonrpc": "2.0", "id": 1, "method": "a"}, 3]', "not a JSON-RPC 2.0"),
        (b"[[]]", "not a JSON-RPC 2.0"),
    ],
)
def test_a_bad_batch_is_refused_whole(body: bytes, reason: str) -> None:
    with pytest.raises(InvalidMessage, match=reason) as caught:
        parse_body(body)
    assert caught.value.code == INVALID_REQUEST


def test_a_batch_item_keeps_its_numbers() -> None:
    item = b'{"jsonrpc":"2.0","id":1,"method":"x","params":{"n":123456789012345678901234567890}}'
    [message] = parse_body(b"[" + item + b"]")
    assert b"123456789012345678901234567890" in message.raw


@pytest.mark.parametrize("ident", [2**63, 2**64 - 1, 2**64 + 1, -(2**63) - 1, 10**30])
def test_ids_beyond_64_bits_are_read_exactly(ident: int) -> None:
    raw = b'{"jsonrpc":"2.0","id":%d,"method":"ping"}' % ident
    assert parse_line(raw) == Message(Kind.REQUEST, raw, ident, "ping")
    assert parse_body(raw) == [Message(Kind.REQUEST, raw, ident, "ping")]
    [item] = parse_body(b"[" + raw + b"]")
    assert (item.id, item.raw) == (ident, raw)
    answer = b'{"jsonrpc":"2.0","id":%d,"result":{}}' % ident
    assert parse_line(answer).id == ident  # the server's answer matches the request's id
    error = error_body(ident, SERVER_ERROR, "gone")
    assert b'"id":%d,' % ident in error  # written back as the number it was
    assert parse_line(error).id == ident


@pytest.mark.parametrize("ident", [7, "r-1", 2**64 + 1])
def test_a_cancellation_names_its_request(ident: Any) -> None:
    notice = parse_line(cancelled(ident, "no answer within 2 s"))
    assert (notice.kind, notice.method) == (Kind.NOTIFICATION, "notifications/cancelled")
    params = {"requestId": ident, "reason": "no answer within 2 s"}
    assert json.loads(notice.raw) == {"jsonrpc": "2.0", "method": notice.method, "params": params}


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ((5, SERVER_ERROR, "gone"), {"id": 5, "error": {"code": -32000, "message": "gone"}}),
        ((None, PARSE_ERROR, "bad"), {"id": None, "error": {"code": -32700, "message": "bad"}}),
        (
            ("r", INTERNAL_ERROR, "x", {"pid": "12"}),
            {"id": "r", "error": {"code": -32603, "message": "x", "data": {"pid": "12"}}},
        ),
    ],
)
def test_error_bodies(args: tuple[Any, ...], expected: dict[str, Any]) -> None:
    body = error_body(*args)
    assert orjson.loads(body) == {"jsonrpc": "2.0", **expected}
    parsed = parse_line(body)  # what the proxy answers is itself a valid response
    assert parsed.kind is Kind.RESPONSE
    assert parsed.id == expected["id"]


_ints = st.integers(min_value=-(2**63), max_value=2**63 - 1)
_ids = st.one_of(st.text(max_size=20), _ints)
_methods = st.text(min_size=1, max_size=30)


@given(ident=_ids, method=_methods, params=st.dictionaries(st.text(max_size=5), _ints))
def test_any_request_is_read_back_as_itself(ident: Any, method: str, params: Any) -> None:
    raw = orjson.dumps({"jsonrpc": "2.0", "id": ident, "method": method, "params": params})
    assert parse_line(raw) == Message(Kind.REQUEST, raw, ident, method)
    [again] = parse_body(orjson.dumps([orjson.loads(raw)]))
    assert (again.kind, again.id, again.method) == (Kind.REQUEST, ident, method)
