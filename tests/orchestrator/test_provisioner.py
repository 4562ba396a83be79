"""Provisioners against real counterparts: the HTTP provisioner against the mock orchestrator
(a real process with real engines), the command provisioner running real commands."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from proxyfleet.config.model import ProvisionerConfig
from proxyfleet.errors import ProvisionerAuthError, ProvisionerError
from proxyfleet.orchestrator import CommandProvisioner, HttpProvisioner, build_provisioner
from tests.conftest import Processes


async def test_the_http_provisioner_provisions_lists_and_releases(procs: Processes) -> None:
    orch = procs.orchestrator("--api-key", "orch-key")
    provisioner = build_provisioner(ProvisionerConfig(url=orch.url, api_key="orch-key"))
    assert isinstance(provisioner, HttpProvisioner)
    await provisioner.open()
    try:
        engine = await provisioner.provision("rid-1")
        assert engine.url.startswith("http://127.0.0.1:")
        assert engine.url.endswith("/v1")
        assert [e.id for e in await provisioner.engines()] == [engine.id]
        status = await provisioner.status()
        assert (status.status, status.can_provision) == ("healthy", True)
        await provisioner.release(engine.id)
        assert await provisioner.engines() == []
    finally:
        await provisioner.close()


@pytest.mark.parametrize(("key", "status"), [("wrong", 403), (None, 401)])
async def test_a_refused_key_is_an_auth_error_on_every_call(
    procs: Processes, key: str | None, status: int
) -> None:
    orch = procs.orchestrator("--api-key", "orch-key")
    provisioner = HttpProvisioner(ProvisionerConfig(url=orch.url, api_key=key))
    await provisioner.open()
    try:
        for call in (
            provisioner.provision("rid-2"),
            provisioner.release("mock-engine-1"),
            provisioner.stream_event("ended", {"stream_id": "s"}, "rid-2"),
        ):
            with pytest.raises(ProvisionerAuthError) as info:
                await call
            assert (info.value.status, info.value.retryable) == (status, False)
            assert "wrong" not in info.value.message
        assert (await provisioner.status()).can_provision  # the status needs no key there
    finally:
        await provisioner.close()


async def test_an_orchestrator_that_is_down_is_a_retryable_error() -> None:
    provisioner = HttpProvisioner(ProvisionerConfig(url="http://127.0.0.1:1", timeout=2))
    await provisioner.open()
    try:
        with pytest.raises(ProvisionerError) as info:
            await provisioner.provision("rid-3")
        assert info.value.retryable
    finally:
        await provisioner.close()


def _script(tmp_path: Path, body: str) -> tuple[str, ...]:
    script = tmp_path / "provision.py"
    script.write_text(body)
    return (sys.executable, str(script))


async def test_a_command_provisioner_reads_the_backend_it_prints(tmp_path: Path) -> None:
    command = _script(
        tmp_path, 'import json; print(json.dumps({"id": "e1", "url": "http://127.0.0.1:9001/v1"}))'
    )
    provisioner = build_provisioner(ProvisionerConfig(command=command))
    assert isinstance(provisioner, CommandProvisioner)
    assert not provisioner.has_status
    await provisioner.open()
    engine = await provisioner.provision("rid-4")
    assert (engine.id, engine.url) == ("e1", "http://127.0.0.1:9001/v1")
    await provisioner.close()


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ('print("not json")', "JSON"),
        ('import json; print(json.dumps({"id": "e", "url": "http://203.0.113.5/v1"}))', "host"),
        ("import sys; sys.exit(3)", "3"),
    ],
)
async def test_a_command_that_fails_or_lies_is_refused(
    tmp_path: Path, body: str, needle: str
) -> None:
    provisioner = CommandProvisioner(ProvisionerConfig(command=_script(tmp_path, body)))
    await provisioner.open()
    with pytest.raises(ProvisionerError, match=needle):
        await provisioner.provision("rid-5")
    await provisioner.close()


def test_only_stdin_stdout_and_stderr_cross_into_a_provisioning_command(tmp_path: Path) -> None:
    """Under uvloop, as the gateway runs: an inheritable descriptor of the gateway's (a socket,
    a pipe) never reaches the command, nor anything the command leaves behind."""
    import json
    import os

    import uvloop

    listing = tmp_path / "fds.json"
    command = _script(
        tmp_path,
        "import json, os\n"
        f"fds = sorted(int(n) for n in os.listdir('/proc/self/fd'))\n"
        f"open({str(listing)!r}, 'w').write(json.dumps(fds))\n"
        'print(json.dumps({"id": "e1", "url": "http://127.0.0.1:9001/v1"}))\n',
    )
    read, write = os.pipe()
    os.set_inheritable(read, True)
    os.set_inheritable(write, True)

    async def provision() -> None:
        provisioner = CommandProvisioner(ProvisionerConfig(command=command))
        await provisioner.open()
        try:
            await provisioner.provision("rid-fds")
        finally:
            await provisioner.close()

    try:
        uvloop.run(provision())
    finally:
        os.close(read)
        os.close(write)
    fds = json.loads(listing.read_text())
    assert [fd for fd in fds if fd > 2][1:] == [], fds  # 0, 1, 2 and the listing's own
