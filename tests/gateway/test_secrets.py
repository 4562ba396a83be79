"""Credentials never show: not in logs (debug level, access log, errors), admin, metrics."""

from __future__ import annotations

import json
import urllib.error
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import Processes

SECRETS = [
    "sk-live-secret-AAAA1111",
    "sk-live-secret-BBBB2222",
    "cookie-secret-CCCC3333",
    "header-secret-DDDD4444",
    "client-secret-EEEE5555",
]


async def test_no_secret_in_any_output(procs: Processes, tmp_path: Path) -> None:
    mock = procs.mock()
    accounts = tmp_path / "accounts"
    accounts.mkdir()
    (accounts / "a.key").write_text(SECRETS[0])
    (accounts / "b.key").write_text(SECRETS[1])
    (accounts / "c.json").write_text(
        json.dumps(
            {
                "cookies": [
                    {"name": "session", "value": SECRETS[2], "domain": "127.0.0.1", "path": "/"}
                ]
            }
        )
    )
    (accounts / "d.json").write_text(json.dumps({"headers": {"X-Org-Token": SECRETS[3]}}))
    keys = tmp_path / "keys"
    keys.write_text(SECRETS[4] + "\n")
    gateway = procs.gateway(
        "--credentials-dir",
        str(accounts),
        "--upstream",
        mock.url,
        "--auth-keys-file",
        str(keys),
        "--access-log",
        "--log-level",
        "debug",
    )
    auth = {"Authorization": f"Bearer {SECRETS[4]}"}
    async with aiohttp.ClientSession() as session:
        for n in range(8):
            async with session.post(
                gateway.url + "/chat/completions",
                headers=auth,
                json={"model": "m", "messages": [], "n": n},
            ) as response:
                assert response.status == 200
        async with session.post(
            gateway.url + "/chat/completions",
            headers={"Authorization": "Bearer sk-wrong-FFFF6666"},
            json={},
        ) as response:
            assert response.status == 401
        mock.popen.kill()  # upstream errors get logged too
        mock.popen.wait(5)
        async with session.post(
            gateway.url + "/chat/completions", headers=auth, json={"model": "m", "messages": []}
        ) as response:
            assert response.status == 502
    seen = [
        gateway.get_json("/admin/pool", headers=auth),
        gateway.get_json("/admin/queue", headers=auth),
    ]
    with pytest.raises(urllib.error.HTTPError) as info:  # admin needs the client key too
        gateway.get_json("/admin/pool")
    assert info.value.code == 401
    info.value.close()
    async with aiohttp.ClientSession() as session, session.get(gateway.root + "/metrics") as r:
        metrics = await r.text()
    assert "proxyfleet_requests_total" in metrics
    gateway.stop()
    output = gateway.output() + mock.output() + json.dumps(seen) + metrics
    assert '"event":"request"' in output  # the access log was on and is in the scan
    for secret in [*SECRETS, "sk-wrong-FFFF6666"]:
        assert secret not in output, secret
