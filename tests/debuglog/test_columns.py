"""The per-request row layout and the strings codec: exact round trips, odd values included."""

from __future__ import annotations

import pytest

from proxyfleet.debuglog.columns import (
    NO_SELECTION,
    REQUEST_HEAD,
    REQUEST_NUMBERS,
    SELECTION_NUMBERS,
    pack_strings,
    unpack_strings,
)


def test_a_request_row_is_its_head_then_its_selection() -> None:
    head = REQUEST_HEAD.pack(200, 1.5, 0.25, 512, 1.6)
    selection = SELECTION_NUMBERS.pack(1.55, 0.01, 3, 64, 1)
    assert REQUEST_NUMBERS.unpack(head + selection) == (
        200,
        1.5,
        0.25,
        512,
        1.6,
        1.55,
        0.01,
        3,
        64,
        1,
    )
    assert SELECTION_NUMBERS.unpack(NO_SELECTION)[0] == 0.0  # "no lease" reads as at == 0


@pytest.mark.parametrize(
    "values",
    [
        [],
        ["rid-1", "POST", "/v1/chat/completions", "b001"],
        ["", "", "x"],
        ["caf\u00e9", "\u6f22\u5b57", "nul\x00inside", "\udcff-lone-surrogate"],
    ],
)
def test_strings_round_trip(values: list[str]) -> None:
    kind, _ = packed = pack_strings(values)
    assert kind == "s"
    assert unpack_strings(len(values), packed) == values


def test_a_none_falls_back_to_marshal_and_still_round_trips() -> None:
    values = ["rid", None, "/p"]
    packed = pack_strings(values)
    assert packed[0] == "m"
    assert unpack_strings(3, packed) == values


def test_a_count_that_does_not_match_is_refused() -> None:
    with pytest.raises(ValueError, match="expected 2 strings, found 3"):
        unpack_strings(2, pack_strings(["a", "b", "c"]))
