"""Stream events as the mock orchestrator receives them (it validates them as the real one's
models do): started before the first byte, with a payload both orchestrator versions accept;
ended exactly once with its reason, naming the stream the orchestrator said it started and
only when it did; a refused report logged with the orchestrator's reason, never failing the
request."""

from __future__ import annotations

import json
import logging
import re
import urllib.request
from pathlib import Path

import aiohttp
import pytest
import yaml

from proxyfleet.config.model import ProvisionerConfig
from proxyfleet.gateway.recording import Recording
from proxyfleet.orchestrator import HttpProvisioner, StreamEvents
from proxyfleet.orchestrator import events as events_module
from proxyfleet.pool import BackendSpec
from tests.conftest import Proc, Processes

README = Path(__file__).resolve().parent.parent.parent / "README.md"
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def set_faults(orch: Proc, **faults: object) -> None:
    request = urllib.request.Request(
        orch.url + "/mock/faults",
        data=json.dumps(faults).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    urllib.request.urlopen(request, timeout=5).close()


def start_other_stream(orch: Proc, container: str) -> None:
    """Someone else's stream on ``container``, started the way the real API wants it."""
    engine = "http://127.0.0.1:19001/v1"
    body = {
        "container_id": container,
        "engine": {"host": "127.0.0.1", "port": 19001},
        "stream": {"key_type": "url", "key": engine + "#other"},
        "session": {
            "playback_session_id": "other",
            "stat_url": engine,
            "command_url": engine,
            "is_live": 0,
        },
        "labels": {"stream_id": "other"},
    }
    request = urllib.request.Request(
        orch.url + "/events/stream_started",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    urllib.request.urlopen(request, timeout=5).close()


def active_streams(orch: Proc) -> int:
    return int(orch.get_json("/orchestrator/status")["streams"]["active"])


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
    assert [(e["kind"], e["stream_id"], e["reason"]) for e in received] == [
        ("started", "rid-1", None),
        ("ended", "rid-1", "completed"),
    ]
    assert received[0]["key"] == "http://127.0.0.1:19001/v1#rid-1"  # one key per stream
    assert events.sent == {"started": 1, "ended": 1, "failed": 0}


@pytest.mark.parametrize(
    "base_url",
    ["http://127.0.0.1:19001/v1", "http://127.0.0.1/v1", "https://localhost/v1", "http://[::1]:9/"],
)
async def test_the_orchestrator_accepts_the_start_of_any_backend(
    procs: Processes, base_url: str
) -> None:
    orch = procs.orchestrator()
    provisioner = HttpProvisioner(ProvisionerConfig(url=orch.url))
    await provisioner.open()
    events = StreamEvents(provisioner, timeout=5.0)
    try:
        await events.started("rid-any", BackendSpec("engine-any", base_url))
        await events.close()
    finally:
        await provisioner.close()
    assert events.sent == {"started": 1, "ended": 1, "failed": 0}
    assert [e["kind"] for e in orch.get_json("/mock/events")] == ["started", "ended"]


async def test_a_refused_start_keeps_its_reason_and_is_never_ended(
    procs: Processes, caplog: pytest.LogCaptureFixture
) -> None:
    orch = procs.orchestrator()
    start_other_stream(orch, "engine-1")  # another stream open on the same engine
    set_faults(orch, reject_events=True)
    provisioner = HttpProvisioner(ProvisionerConfig(url=orch.url))
    await provisioner.open()
    events = StreamEvents(provisioner, timeout=5.0)
    try:
        with caplog.at_level(logging.WARNING, logger="proxyfleet.orchestrator.events"):
            await events.started("rid-2", BackendSpec("engine-1", "http://127.0.0.1:19001/v1"))
            events.ended("rid-2", "completed")
            await events.close()
    finally:
        await provisioner.close()
    assert events.sent == {"started": 0, "ended": 0, "failed": 1}
    # the orchestrator's reason, as its 422 detail gave it, is in the log
    (record,) = [r for r in caplog.records if r.getMessage() == "stream_event_failed"]
    error = str(record.__dict__.get("fields", {}).get("error"))
    assert "422" in error
    assert "stream.key_type" in error
    assert "fault reject_events" in error
    # no stream_ended went out: it would have ended the other stream there
    assert [e["stream_id"] for e in orch.get_json("/mock/events")] == ["other"]
    assert active_streams(orch) == 1


async def test_a_stream_that_moves_to_another_backend_ends_on_the_first(
    procs: Processes,
) -> None:
    orch = procs.orchestrator()
    provisioner = HttpProvisioner(ProvisionerConfig(url=orch.url))
    await provisioner.open()
    events = StreamEvents(provisioner, timeout=5.0)
    try:
        await events.started("rid-4", BackendSpec("engine-a", "http://127.0.0.1:19001/v1"))
        # the first backend broke off after its head: the request fails over to another
        await events.started("rid-4", BackendSpec("engine-b", "http://127.0.0.1:19002/v1"))
        events.ended("rid-4", "completed")
        await events.close()
    finally:
        await provisioner.close()
    received = orch.get_json("/mock/events")
    assert [(e["kind"], e["container_id"], e["reason"]) for e in received] == [
        ("started", "engine-a", None),
        ("ended", "engine-a", "upstream_error"),
        ("started", "engine-b", None),
        ("ended", "engine-b", "completed"),
    ]
    assert active_streams(orch) == 0


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
    assert events.sent == {"started": 0, "ended": 0, "failed": 1}  # no end for what never began


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
    assert [(e["kind"], e["reason"]) for e in received] == [
        ("started", None),
        ("ended", "gateway_shutdown"),
    ]


async def test_through_the_gateway_a_refused_report_never_fails_the_request(
    procs: Processes, tmp_path: Path
) -> None:
    orch = procs.orchestrator("--fault", "reject_events")
    config = tmp_path / "gateway.yaml"
    provisioner = {"url": orch.url, "min_backends": 1, "status_interval": 0.2}
    config.write_text(yaml.safe_dump({"pool": {"provisioner": provisioner}}))
    gateway = procs.gateway("--config", str(config))
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            gateway.url + "/chat/completions", json=CHAT, headers={"X-Request-ID": "gw-rid"}
        ) as response,
    ):
        assert response.status == 200
        await response.read()
    gateway.stop()
    failed = [
        json.loads(line)
        for line in gateway.output().splitlines()
        if '"stream_event_failed"' in line
    ]
    assert [(f["request_id"], f["kind"]) for f in failed] == [("gw-rid", "started")]
    assert "fault reject_events" in failed[0]["error"]
    assert orch.get_json("/mock/events") == []  # no end for a start it refused


def test_every_end_reason_the_gateway_can_give_is_known_and_in_the_readme() -> None:
    seen = set()
    for gone in (False, True):
        for broken in (None, "timeout", "upstream_error"):  # what the pump sets (forward.py)
            for complete in (False, True):
                for status in (200, 502):
                    recording = Recording(None, "r", 0.0)  # type: ignore[arg-type]
                    recording.gone, recording.broken = gone, broken
                    recording.complete, recording.status = complete, status
                    seen.add(recording.end_reason())
    reasons = events_module.END_REASONS
    assert seen | {"gateway_shutdown"} == set(reasons)
    section = README.read_text().split("- **Stream events.**", 1)[1].split("\n- **", 1)[0]
    section = section.split("\n\n", 1)[0]
    reasons_sentence = section.split("with the reason", 1)[1].split(". ", 1)[0]
    listed = re.findall(r"`([a-z_]+)`", reasons_sentence)
    assert sorted(listed) == sorted(reasons)
