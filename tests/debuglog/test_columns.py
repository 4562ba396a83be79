"""The row layouts of :mod:`proxyfleet.debuglog.columns` against what reads them: rows built
position by position as the docs say, turned by the encoder into the documented ``requests``
and ``engine_selection`` fields, and the positions the recorder's sampling reads."""

from __future__ import annotations

import json
import typing
from pathlib import Path
from typing import Any

import orjson
import pytest

from proxyfleet.debuglog.columns import RequestRow, Selection, SelectionRow
from proxyfleet.debuglog.encoder import Encoder

ANCHOR_NS = 1_700_000_000_000_000_000  # 2023-11-14T22:13:20Z, perf_counter() 500.0

REQUEST_FIELDS = [
    "session_id",
    "timestamp",
    "elapsed_seconds",
    "request_id",
    "method",
    "path",
    "status",
    "duration_ms",
    "backend",
    "bytes",
    "ttfb_ms",
    "sample_weight",
]
SELECTION_FIELDS = [
    "session_id",
    "timestamp",
    "elapsed_seconds",
    "request_id",
    "strategy",
    "backend",
    "wait_ms",
    "queue_depth",
    "candidates",
    "attempt",
]


def encoded(
    tmp_path: Path, requests: list[RequestRow], selections: list[SelectionRow] | None = None
) -> dict[str, list[dict[str, Any]]]:
    encoder = Encoder(tmp_path, "S", ANCHOR_NS)
    encoder.write(
        {
            "anchor": (ANCHOR_NS, 500.0),
            "strategy": "least-busy",
            "requests": requests,
            "selections": selections or [],
            "entries": orjson.dumps([]),
        }
    )
    encoder.close()
    out = {}
    for category in ("requests", "engine_selection"):
        path = encoder.path(category)
        text = path.read_text() if path.exists() else ""
        out[category] = [json.loads(line) for line in text.splitlines()]
    return out


def test_the_aliases_have_the_documented_arity() -> None:
    assert len(typing.get_args(Selection)) == 5
    assert len(typing.get_args(RequestRow)) == 11
    assert len(typing.get_args(SelectionRow)) == 3
    assert typing.get_args(RequestRow)[9] == Selection | None  # the lease, at position 9
    assert typing.get_args(SelectionRow)[2] == Selection


def test_a_request_row_becomes_the_documented_request_and_selection_fields(
    tmp_path: Path,
) -> None:
    lease: Selection = (500.125, 0.0125, 3, 4, 1)  # at, waited, waiting, candidates, attempts
    row: RequestRow = (
        "rid-1",  # request id
        "POST",  # method
        "/v1/chat/completions",  # path
        "b2",  # backend
        201,  # status
        500.25,  # started
        1.5,  # seconds it took
        2048,  # bytes
        500.375,  # first byte
        lease,  # its lease
        7,  # weight
    )
    lines = encoded(tmp_path, [row])
    (request,) = lines["requests"]
    assert list(request) == REQUEST_FIELDS
    assert request == {
        "session_id": "S",
        "timestamp": "2023-11-14T22:13:21.750000000Z",  # started + elapsed on the wall clock
        "elapsed_seconds": 1.75,
        "request_id": "rid-1",
        "method": "POST",
        "path": "/v1/chat/completions",
        "status": 201,
        "duration_ms": 1500.0,
        "backend": "b2",
        "bytes": 2048,
        "ttfb_ms": 125.0,  # first byte - started
        "sample_weight": 7,
    }
    (selection,) = lines["engine_selection"]
    assert list(selection) == SELECTION_FIELDS
    assert selection == {
        "session_id": "S",
        "timestamp": "2023-11-14T22:13:20.125000000Z",  # when the lease was granted
        "elapsed_seconds": 0.125,
        "request_id": "rid-1",
        "strategy": "least-busy",
        "backend": "b2",  # the row's backend
        "wait_ms": 12.5,
        "queue_depth": 3,
        "candidates": 4,
        "attempt": 1,
    }


def test_no_backend_no_first_byte_no_lease(tmp_path: Path) -> None:
    row: RequestRow = ("rid-2", "GET", "/v1/models", None, 499, 500.0, 0.25, 0, 0.0, None, 1)
    lines = encoded(tmp_path, [row])
    (request,) = lines["requests"]
    assert (request["backend"], request["ttfb_ms"], request["status"]) == (None, None, 499)
    assert lines["engine_selection"] == []  # no lease: no selection line


def test_a_selection_row_is_a_line_of_its_own(tmp_path: Path) -> None:
    own: SelectionRow = ("rid-3", "b1", (500.5, 2.0, 9, 4, 0))  # a WebSocket's lease
    failed_over: SelectionRow = ("rid-3", None, (500.0, 0.0, 0, 4, 0))
    lines = encoded(tmp_path, [], [own, failed_over])
    assert lines["requests"] == []
    first, second = lines["engine_selection"]
    assert (first["backend"], first["wait_ms"], first["queue_depth"]) == ("b1", 2000.0, 9)
    assert first["timestamp"] == "2023-11-14T22:13:20.500000000Z"
    assert second["backend"] is None
    assert [list(line) for line in (first, second)] == [SELECTION_FIELDS] * 2


def test_a_row_of_the_old_layout_is_refused_not_misread(tmp_path: Path) -> None:
    """A layout change on one side only fails loudly (the encoder counts the frame as lost)."""
    ten = ("rid", "GET", "/p", "b", 200, 500.0, 0.1, 1, 0.0, None)  # the weight missing
    encoder = Encoder(tmp_path, "S", ANCHOR_NS)
    frame = {"anchor": (ANCHOR_NS, 500.0), "strategy": "", "requests": [ten]}
    frame |= {"selections": [], "entries": orjson.dumps([])}
    with pytest.raises(ValueError, match="values to unpack"):
        encoder.write(frame)
    encoder.lost(frame, ValueError("layout"))  # what the encoder's main loop does with it
    assert encoder.failed == 1
    assert not encoder.path("requests").exists()
