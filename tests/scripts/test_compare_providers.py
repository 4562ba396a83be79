"""The dual-proxy comparison script: same conversation, both provider modes, side by side."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import Processes

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "compare_providers.py"


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=180,
        stdin=subprocess.DEVNULL,
    )


def test_passthrough_and_chat_modes_agree() -> None:
    result = _run()
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count(": same") == 6
    assert result.stdout.rstrip().endswith("no difference")


def test_a_difference_is_reported(procs: Processes) -> None:
    one = procs.gateway("--upstream", procs.mock().url)
    other = procs.gateway("--upstream", procs.mock("--chunks", "3").url)
    result = _run("--passthrough-url", one.url, "--chat-url", other.url)
    assert result.returncode == 1
    assert "turn 1: DIFFERENT" in result.stdout
    assert "turn 2: same" in result.stdout
