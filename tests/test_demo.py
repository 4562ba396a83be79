"""``proxyfleet demo``: the embedded default works with no config and no network."""

from __future__ import annotations

import json
import signal
import socket
import urllib.request

from tests.conftest import Processes, run_cli


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_demo_burst_is_single_flight_and_exits_clean() -> None:
    port = _free_port()
    result = run_cli("demo", "--no-serve", "--port", str(port), "--burst", "8", timeout=90)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "8/8 succeeded" in result.stdout
    for n in range(1, 5):
        assert f"account-{n}: 2 requests, peak concurrency 1" in result.stdout


def test_demo_keeps_serving_until_ctrl_c(procs: Processes) -> None:
    port = _free_port()
    demo = procs.spawn("demo", "--port", str(port), "--burst", "4")
    demo.wait_for_line("Serving on ", timeout=60)
    assert f'OpenAI(base_url="http://127.0.0.1:{port}/v1"' in demo.output()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/chat/completions",
        data=json.dumps({"model": "mock-gpt", "messages": []}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert json.load(response)["choices"][0]["message"]["content"]
    assert demo.stop(signal.SIGINT) == 0
