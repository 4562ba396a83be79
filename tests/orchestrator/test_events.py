"""Stream events as the mock orchestrator receives them: started before the first byte,
ended exactly once with its reason, a failed report never failing the request."""

from __future__ import annotations

from proxyfleet.config.model import ProvisionerConfig
from proxyfleet.orchestrator import HttpProvisioner, StreamEvents
from proxyfleet.pool import BackendSpec
from tests.conftest import Processes


async def test_started_then_ended_once(procs: Processes) -> None:
    orch = procs.orchestrator()
    provisioner = HttpProvisioner(ProvisionerConfig(url=orch.url))
    await provisioner.open()
    events = StreamEvents(provisioner, timeout=5.0)
    backend = BackendSpec("engine-1", "http://127.0.0.1:19001/v1")
    try:
        await events.started("rid-1", backend)
        await events.started("rid-1", backend)  # a second start of the same stream: nothing
        events.ended("rid-1", "completed")
        events.ended("rid-1", "client_disconnected")  # only the first end counts
        await events.close()
    finally:
        await provisioner.close()
    received = orch.get_json("/mock/events")
    assert len(received) == 2, received
    assert "completed" in str(received[1])
    assert events.sent == {"started": 1, "ended": 1, "failed": 0}


async def test_a_report_that_fails_is_counted_and_never_raised() -> None:
    provisioner = HttpProvisioner(ProvisionerConfig(url="http://127.0.0.1:1", timeout=1))
    await provisioner.open()
    events = StreamEvents(provisioner, timeout=2.0)
    try:
        await events.started("rid-2", BackendSpec("e", "http://127.0.0.1:1/v1"))
        events.ended("rid-2", "completed")
        await events.close()
    finally:
        await provisioner.close()
    assert events.sent["failed"] >= 1
    assert events.sent["started"] == 0


async def test_closing_ends_what_is_still_open_as_gateway_shutdown(procs: Processes) -> None:
    orch = procs.orchestrator()
    provisioner = HttpProvisioner(ProvisionerConfig(url=orch.url))
    await provisioner.open()
    events = StreamEvents(provisioner, timeout=5.0)
    try:
        await events.started("rid-3", BackendSpec("engine-3", "http://127.0.0.1:19003/v1"))
        await events.close()
    finally:
        await provisioner.close()
    received = orch.get_json("/mock/events")
    assert any("gateway_shutdown" in str(e) for e in received), received
