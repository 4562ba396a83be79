"""``proxyfleet demo``: the embedded default works with no config and no network."""

from __future__ import annotations

import socket

from tests.conftest import run_cli


def test_demo_burst_is_single_flight_and_exits_clean() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = run_cli("demo", "--no-serve", "--port", str(port), "--burst", "8", timeout=90)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "8/8 succeeded" in result.stdout
    for n in range(1, 5):
        assert f"account-{n}: 2 requests, peak concurrency 1" in result.stdout
