"""How per-request debug rows are laid out, and how their strings cross the pipe.

A row's numbers are packed where the row is made (one ``struct`` call: a ``bytes`` object,
which the garbage collector never has to look at) and its strings are appended to a plain
list beside it. A batch then crosses the pipe as the numbers joined and the strings joined with
their lengths alongside: a few dozen instructions per value for the gateway, where formatting
each one would cost hundreds.
"""

from __future__ import annotations

import marshal
import struct
from collections.abc import Sequence
from typing import Any

__all__ = [
    "NO_SELECTION",
    "REQUEST_HEAD",
    "REQUEST_NUMBERS",
    "REQUEST_STRINGS",
    "SELECTION_NUMBERS",
    "SELECTION_STRINGS",
    "pack_strings",
    "unpack_strings",
]

#: A request's numbers: status, then ``time.perf_counter()`` when it started, seconds it
#: took, bytes sent, ``perf_counter()`` of the first byte (0.0 when none went out); then the
#: lease that served it (:data:`SELECTION_NUMBERS`). Its strings: request id, method, path,
#: backend id ("" when none).
REQUEST_NUMBERS = struct.Struct("<qddqdddqqq")
#: The request's own numbers: :data:`REQUEST_NUMBERS` without the lease's.
REQUEST_HEAD = struct.Struct("<qddqd")
REQUEST_STRINGS = 4
#: A lease's numbers: ``perf_counter()`` when granted, seconds waited, requests still waiting
#: then, backends in the pool then, earlier attempts of the request. Its strings, when it is a
#: row of its own: request id, backend id.
SELECTION_NUMBERS = struct.Struct("<ddqqq")
SELECTION_STRINGS = 2
#: The selection part of a request that never got a lease.
NO_SELECTION = SELECTION_NUMBERS.pack(0.0, 0.0, 0, 0, 0)


def pack_strings(values: Sequence[Any]) -> tuple[str, Any]:
    """``values`` as one text and their lengths; anything but strings (a ``None``) makes it
    ``marshal`` instead."""
    try:
        return "s", ("".join(values), struct.pack(f"<{len(values)}Q", *map(len, values)))
    except TypeError:
        return "m", marshal.dumps(tuple(values))


def unpack_strings(count: int, packed: tuple[str, Any]) -> list[Any]:
    """The ``count`` values :func:`pack_strings` packed."""
    kind, data = packed
    if kind == "m":
        values = list(marshal.loads(data))
    else:
        text, lengths = data
        values, start = [], 0
        for length in struct.unpack(f"<{len(lengths) // 8}Q", lengths):
            values.append(text[start : start + length])
            start += length
    if len(values) != count:
        raise ValueError(f"expected {count} strings, found {len(values)}")
    return values
