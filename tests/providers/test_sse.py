"""Server-sent events framing: the incremental parser (events split across chunks, CRLF,
comments, other fields, multi-line data, what ``close`` returns) and the writer."""

from __future__ import annotations

import itertools
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxyfleet.providers.sse import SSEParser, encode_event

STREAM = (
    b": keep-alive comment\n"
    b"event: message\n"
    b"id: 7\n"
    b"retry: 1000\n"
    b'data: {"a":1}\n'
    b"\n"
    b"data:no-space\n"
    b"\n"
    b"data: line one\n"
    b"data:  two spaces kept but one\n"
    b"\n"
    b"data: [DONE]\n"
    b"\n"
)
EXPECTED = ['{"a":1}', "no-space", "line one\n two spaces kept but one", "[DONE]"]


def test_a_whole_stream_at_once() -> None:
    parser = SSEParser()
    assert parser.feed(STREAM) == EXPECTED
    assert parser.close() == []


def test_one_byte_at_a_time() -> None:
    parser = SSEParser()
    events = [e for i in range(len(STREAM)) for e in parser.feed(STREAM[i : i + 1])]
    assert events == EXPECTED


@given(cuts=st.lists(st.integers(0, len(STREAM)), max_size=12))
def test_any_split_gives_the_same_events(cuts: list[int]) -> None:
    points = [0, *sorted(cuts), len(STREAM)]
    parser = SSEParser()
    events = [e for a, b in itertools.pairwise(points) for e in parser.feed(STREAM[a:b])]
    assert events + parser.close() == EXPECTED


def test_crlf_line_endings() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: a\r\n\r\ndata: b\r\ndata: c\r\n\r\n") == ["a", "b\nc"]


def test_crlf_split_between_cr_and_lf() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: x\r") == []
    assert parser.feed(b"\n\r") == []
    assert parser.feed(b"\n") == ["x"]


def test_an_event_is_given_only_at_its_blank_line() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: partial") == []
    assert parser.feed(b" json\n") == []
    assert parser.feed(b"\n") == ["partial json"]


def test_blank_lines_and_comments_alone_give_nothing() -> None:
    parser = SSEParser()
    assert parser.feed(b"\n\n: ping\n\n: ping\n\nevent: only-a-name\n\n") == []
    assert parser.close() == []


def test_utf8_split_inside_a_character() -> None:
    encoded = "data: caf\u00e9 \u6f22\u5b57\n\n".encode()
    parser = SSEParser()
    cut = encoded.index("\u00e9".encode()) + 1  # between the two bytes of é
    assert parser.feed(encoded[:cut]) == []
    assert parser.feed(encoded[cut:]) == ["caf\u00e9 \u6f22\u5b57"]


def test_invalid_utf8_is_replaced_not_raised() -> None:
    assert SSEParser().feed(b"data: \xff\xfe\n\n") == ["\ufffd\ufffd"]


@pytest.mark.parametrize(
    ("tail", "events"),
    [
        (b"data: last", ["last"]),  # a last line without its newline
        (b"data: last\n", ["last"]),  # the blank line missing
        (b"data: a\ndata: b\n", ["a\nb"]),
        (b"data: done\n\n", []),  # already given by feed
        (b"", []),
        (b": a comment", []),
    ],
)
def test_close_gives_the_event_the_stream_ended_on(tail: bytes, events: list[str]) -> None:
    parser = SSEParser()
    parser.feed(tail)
    assert parser.close() == events
    assert parser.close() == []  # nothing twice


def test_encode_event() -> None:
    event = {"type": "response.output_text.delta", "delta": "caf\u00e9\n\nnext", "n": 1}
    frame = encode_event(event)
    assert frame.startswith(b"event: response.output_text.delta\ndata: {")
    assert frame.endswith(b"}\n\n")
    assert frame.count(b"\n\n") == 1  # newlines in values are escaped: one event
    assert "caf\u00e9".encode() in frame  # not \u-escaped
    assert b'"n":1' in frame  # compact


@given(
    st.dictionaries(
        st.text(max_size=8),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.text(),
            lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner),
            max_leaves=8,
        ),
        max_size=4,
    ),
    st.text(
        alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\r\n"),
        min_size=1,
        max_size=20,
    ),
)
def test_encoded_events_parse_back(fields: dict[str, object], kind: str) -> None:
    event = {**fields, "type": kind}
    (data,) = SSEParser().feed(encode_event(event))
    assert json.loads(data) == event


def test_encode_event_needs_a_type() -> None:
    with pytest.raises(KeyError):
        encode_event({"delta": "x"})


def test_a_lone_surrogate_from_upstream_json_can_be_sent_on() -> None:
    delta = json.loads('"half an emoji: \\ud83d"')  # valid JSON, as a provider may send it
    frame = encode_event({"type": "response.output_text.delta", "delta": delta})
    (data,) = SSEParser().feed(frame)
    assert json.loads(data)["type"] == "response.output_text.delta"
