"""Scale held: 10,000 slow SSE streams through one gateway process complete with zero errors.

The streams are real: ``bench/scale.py`` starts the mock (a chunk a second) and ``proxyfleet
serve`` as processes and reads every stream over its own socket to ``[DONE]``. A proxied stream
holds two descriptors in the gateway, so where the hard open-files limit cannot be raised (a
container without CAP_SYS_RESOURCE) the count is what that limit holds; the gateway raises its
own soft limit, and the bench says when the count was lowered.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
WANTED = 10_000


def _fits(wanted: int) -> int:
    sys.path.insert(0, str(BENCH))
    try:
        from scale import streams_that_fit

        return int(streams_that_fit(wanted))
    finally:
        sys.path.remove(str(BENCH))


#: 30 s before the first chunk: on a busy machine opening them all takes a while
HOLD = ("--ttft", "30", "--chunks", "10")


@pytest.mark.timeout(450)
def test_ten_thousand_streams_through_one_gateway_complete_without_an_error() -> None:
    expected = _fits(WANTED)
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert expected == WANTED or hard < 2 * WANTED + 100, "lowered only by the hard limit"
    assert expected >= 9_000, f"this machine's hard open-files limit {hard} holds too few"
    result = subprocess.run(
        [sys.executable, str(BENCH / "scale.py"), "--streams", str(WANTED), "--json", *HOLD],
        capture_output=True,
        text=True,
        timeout=400,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (figures,) = json.loads(result.stdout)
    assert figures["proxy"] == "proxyfleet"
    assert figures["streams"] == expected
    assert (figures["failed"], figures["errors"]) == (0, {})
    assert figures["completed"] == expected
    # every stream was held at once, as the client saw it and as the upstream counted it
    assert figures["peak_held"] == figures["upstream_peak"] == expected, (
        f"opening every stream took {figures['opening_seconds']:.1f} s"
    )
    assert figures["kb_per_stream"] > 0
    assert figures["cpu_us_per_stream_second"] > 0
