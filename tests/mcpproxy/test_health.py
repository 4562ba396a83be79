"""Whether a route's server starts (:mod:`proxyfleet.mcpproxy.health`), without processes:
unknown until a server answers or fails, failing (with why) after a failed start until one
answers again, and the re-check delay that doubles while it keeps failing."""

from __future__ import annotations

import pytest

from proxyfleet.mcpproxy.health import StartHealth, StartState


def test_a_new_route_is_unknown_and_not_failing() -> None:
    health = StartHealth()
    assert health.state is StartState.UNKNOWN
    assert health.reason is None
    assert not health.failing
    assert health.describe() == {"status": "unknown", "reason": None, "failures": 0}


def test_a_server_that_answers_makes_it_ok() -> None:
    health = StartHealth()
    assert health.answered() is False  # not a recovery: it never failed
    assert health.state is StartState.OK
    assert health.describe() == {"status": "ok", "reason": None, "failures": 0}


def test_a_failed_start_makes_it_failing_with_why_until_a_server_answers() -> None:
    health = StartHealth(first_retry=1.0, max_retry=30.0)
    health.answered()
    assert health.failed("cannot start the MCP server 'x': No such file or directory") == 1.0
    assert health.failing
    assert health.describe() == {
        "status": "failing",
        "reason": "cannot start the MCP server 'x': No such file or directory",
        "failures": 1,
    }
    assert health.failed("its server exits before answering: code 1") == 2.0
    assert health.reason == "its server exits before answering: code 1"  # the latest reason
    assert health.answered() is True  # a recovery
    assert health.describe() == {"status": "ok", "reason": None, "failures": 0}
    assert health.failed("again") == 1.0  # the delay starts over


@pytest.mark.parametrize(
    ("failures", "delay"), [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (5, 5.0), (50, 5.0)]
)
def test_the_recheck_delay_doubles_up_to_its_cap(failures: int, delay: float) -> None:
    health = StartHealth(first_retry=0.5, max_retry=5.0)
    delays = [health.failed("x") for _ in range(failures)]
    assert delays[-1] == delay
