"""The orchestrator's health as the elastic pool keeps it: polled status, and the block that
makes requests needing a new backend fail fast with the ETA as Retry-After."""

from __future__ import annotations

import time

import pytest

from proxyfleet.config.model import ProvisionerConfig
from proxyfleet.orchestrator import HttpProvisioner
from proxyfleet.orchestrator.health import OrchestratorHealth, retry_after
from tests.conftest import Processes


def test_retry_after_is_whole_seconds_at_least_one() -> None:
    assert [retry_after(v) for v in (None, 0.0, 0.2, 1.0, 41.1)] == [1.0, 1.0, 1.0, 1.0, 42.0]


async def test_a_blocked_orchestrator_blocks_with_its_eta(procs: Processes) -> None:
    orch = procs.orchestrator("--fault", "blocked=42")
    provisioner = HttpProvisioner(ProvisionerConfig(url=orch.url))
    await provisioner.open()
    health = OrchestratorHealth(provisioner, status_interval=5.0, debug=None)
    try:
        await health.poll()
        assert health.status is not None
        assert not health.status.can_provision
        blocked = health.blocked(time.monotonic())
        assert blocked is not None
        assert (blocked.status, blocked.code, blocked.retry_after) == (
            503,
            "provisioning_blocked",
            42.0,
        )
        assert health.reason
    finally:
        await provisioner.close()


def test_a_refusal_with_an_eta_blocks_until_then() -> None:
    health = OrchestratorHealth(None, status_interval=5.0, debug=None)  # type: ignore[arg-type]
    assert health.blocked(100.0) is None
    health.block("breaker open", 30.0, now=100.0)
    blocked = health.blocked(110.0)
    assert blocked is not None
    assert blocked.retry_after == 20.0
    assert "breaker open" in blocked.message
    assert health.blocked(130.0) is None  # the ETA passed: try again
    assert health.reason is None
    health.block("again", 30.0, now=200.0)
    health.clear()
    assert health.blocked(201.0) is None


async def test_an_unreachable_orchestrator_reports_unavailable() -> None:
    provisioner = HttpProvisioner(ProvisionerConfig(url="http://127.0.0.1:1", timeout=2))
    await provisioner.open()
    health = OrchestratorHealth(provisioner, status_interval=7.0, debug=None)
    try:
        await health.poll()
        assert health.status is not None
        assert (health.status.status, health.status.can_provision) == ("unavailable", False)
        blocked = health.blocked(time.monotonic())
        assert blocked is not None
        assert blocked.retry_after == pytest.approx(7.0)  # no ETA: the next status poll
    finally:
        await provisioner.close()


async def test_a_refusals_eta_holds_whatever_the_status_says(procs: Processes) -> None:
    orch = procs.orchestrator()  # its status says it can provision
    provisioner = HttpProvisioner(ProvisionerConfig(url=orch.url))
    await provisioner.open()
    health = OrchestratorHealth(provisioner, status_interval=5.0, debug=None)
    try:
        now = time.monotonic()
        health.block("Circuit breaker is open", 300.0, now)
        await health.poll()
        assert health.status is not None
        assert health.status.can_provision
        blocked = health.blocked(now + 10.0)
        assert blocked is not None  # the refusal said 300 s: not before
        assert blocked.retry_after == 290.0
        assert "Circuit breaker is open" in blocked.message
        assert health.blocked(now + 300.0) is None
    finally:
        await provisioner.close()
