"""What a per-request debug row holds, in which order.

A recorded request appends one row to a list, as a plain tuple of values it already has (no
formatting, no packing), and the writer's loop timer sends a batch of rows to the encoder as
they are (``marshal`` writes tuples of strings and numbers in C). Under load most ordinary
requests get no row at all (see :class:`~proxyfleet.debuglog.recorder.DebugRecorder`), and a
lease granted at once on a request's first attempt records nothing when it is granted: its
selection is rebuilt for the row, at the request's start (its body was read just before).
Times are ``time.perf_counter()`` readings; each batch carries an anchor that puts them on the
wall clock.
"""

from __future__ import annotations

import struct

__all__ = ["FRAME", "RequestRow", "Selection", "SelectionRow"]

#: The length prefix of each batch the writer sends the encoder (little-endian uint32).
FRAME = struct.Struct("<I")

#: A lease: ``perf_counter()`` when granted (for one granted at once on the first attempt,
#: when its request started), seconds waited, requests still waiting then, backends in the pool
#: then, earlier attempts of the request.
Selection = tuple[float, float, int, int, int]

#: A request: request id, method, path, backend id (``None`` when no backend answered),
#: status, ``perf_counter()`` when it started, seconds it took, bytes sent,
#: ``perf_counter()`` of the first byte (0.0 when none went out), the lease that served it
#: (``None`` when it never got one), and how many requests the row stands for (1, or N when
#: ordinary requests are sampled 1 in N).
RequestRow = tuple[str, str, str, str | None, int, float, float, int, float, Selection | None, int]

#: A lease that is not the one of a request's row (an attempt that failed over, a WebSocket's):
#: request id, backend id, the lease.
SelectionRow = tuple[str, str | None, Selection]
