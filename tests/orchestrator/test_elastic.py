"""Elastic pools end to end: the gateway CLI, the mock orchestrator CLI and the mock engines
it starts are real processes talking over 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from proxyfleet.orchestrator.elastic import fleet_engines
from proxyfleet.pool import BackendSpec
from tests import redisd
from tests.conftest import Proc, Processes, run_cli

KEY = "orch-key-SECRET-5150"
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def write_config(tmp: Path, provisioner: dict[str, Any], **pool: Any) -> Path:
    path = tmp / "gateway.yaml"
    config = {"pool": {"lease_timeout": 20, **pool, "provisioner": provisioner}}
    path.write_text(yaml.safe_dump(config))
    return path


def orchestrated(orch: Proc, **fields: Any) -> dict[str, Any]:
    return {"url": orch.url, "api_key": KEY, "status_interval": 0.3, **fields}


def post_json(proc: Proc, path: str, body: object) -> Any:
    request = urllib.request.Request(
        proc.root + path,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.load(response)


async def until(check: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


async def chat(
    session: aiohttp.ClientSession, gateway: Proc, rid: str, stream: bool = False
) -> tuple[int, dict[str, str], Any]:
    async with session.post(
        gateway.url + "/chat/completions",
        json={**CHAT, "stream": stream},
        headers={"X-Request-ID": rid},
    ) as response:
        body = await response.read()
        data = json.loads(body) if not stream or response.status != 200 else body
        return response.status, dict(response.headers), data


async def test_scales_up_under_load_and_back_down_after_idle_ttl(
    procs: Processes, tmp_path: Path
) -> None:
    orch = procs.orchestrator("--api-key", KEY, "--engine-arg=--latency=0.4")
    config = write_config(
        tmp_path, orchestrated(orch, min_backends=1, max_backends=4, idle_ttl=1.5)
    )
    gateway = procs.gateway("--config", str(config))
    await until(lambda: len(orch.get_json("/engines")) == 1)  # min_backends at start
    peak = 0

    async def watch() -> None:
        nonlocal peak
        while True:
            peak = max(peak, len(gateway.get_json("/admin/pool")["backends"]))
            await asyncio.sleep(0.05)

    watcher = asyncio.ensure_future(watch())
    async with aiohttp.ClientSession() as session:
        results = await asyncio.gather(*(chat(session, gateway, f"load-{n}") for n in range(20)))
    watcher.cancel()
    assert [status for status, _, _ in results] == [200] * 20
    stats = orch.get_json("/mock/stats")
    assert 2 <= stats["provisioned"] <= 4  # grew, and never past max_backends
    assert stats["provision_requests"] == stats["provisioned"]  # one call per new backend
    assert peak >= 2
    # idle for idle_ttl: back down to min_backends, the released engines stopped
    await until(lambda: len(orch.get_json("/engines")) == 1, timeout=10)
    pool = gateway.get_json("/admin/pool")
    assert len(pool["backends"]) == 1
    assert pool["elastic"]["released_total"] == stats["provisioned"] - 1
    assert "backend_released" in gateway.output()
    assert KEY not in gateway.output()


async def test_blocked_orchestrator_answers_503_with_its_eta(
    procs: Processes, tmp_path: Path
) -> None:
    orch = procs.orchestrator("--api-key", KEY, "--fault", "blocked=42")
    gateway = procs.gateway("--config", str(write_config(tmp_path, orchestrated(orch))))
    async with aiohttp.ClientSession() as session:
        status, headers, body = await chat(session, gateway, "blocked-1")
        assert status == 503
        assert headers["Retry-After"] == "42"
        assert body["error"]["code"] == "provisioning_blocked"
        assert "VPN not connected" in body["error"]["message"]  # the status's blocked_reason
        assert orch.get_json("/mock/stats")["provision_requests"] == 0  # failed fast
        # the orchestrator recovers: the next status poll lets provisioning through
        post_json(orch, "/mock/faults", {"blocked": None})
        await until(lambda: gateway.get_json("/admin/pool")["elastic"]["blocked"] is None)
        status, _, _ = await chat(session, gateway, "blocked-2")
        assert status == 200


async def test_a_refusal_with_an_eta_fails_the_waiters_with_that_eta(
    procs: Processes, tmp_path: Path
) -> None:
    orch = procs.orchestrator("--api-key", KEY)
    provisioner = orchestrated(orch, status_interval=60)  # the refusal, not the status, says so
    gateway = procs.gateway("--config", str(write_config(tmp_path, provisioner)))
    post_json(orch, "/mock/faults", {"breaker": 17})
    async with aiohttp.ClientSession() as session:
        status, headers, body = await chat(session, gateway, "eta-1")
    assert status == 503
    assert headers["Retry-After"] == "17"
    assert body["error"]["code"] == "provisioning_blocked"
    assert "Circuit breaker is open" in body["error"]["message"]
    assert orch.get_json("/mock/stats")["provision_requests"] == 1


async def test_a_refusal_that_says_wait_ends_the_burst_and_holds_until_its_eta(
    procs: Processes, tmp_path: Path
) -> None:
    orch = procs.orchestrator("--api-key", KEY, "--engine-arg=--latency=1.5")
    provisioner = orchestrated(
        orch,
        min_backends=1,
        max_backends=3,
        status_interval=60,  # the refusal, not the status, says so
        attempts=5,
        backoff=0.01,
        backoff_cap=0.05,
    )
    gateway = procs.gateway("--config", str(write_config(tmp_path, provisioner)))
    await until(lambda: len(gateway.get_json("/admin/pool")["backends"]) == 1)
    # its own breaker opens: "wait 300 s, do not retry" (can_retry false, should_wait true)
    post_json(orch, "/mock/faults", {"breaker": 300})
    async with aiohttp.ClientSession() as session:
        # the second request needs a backend: one call, refused; it waits for the first one's
        results = await asyncio.gather(chat(session, gateway, "w-1"), chat(session, gateway, "w-2"))
        assert [status for status, _, _ in results] == [200, 200]
        assert orch.get_json("/mock/stats")["provision_requests"] == 2  # at start, and that one
        # until the ETA, a request that would need a new backend fails fast, with no call
        busy = asyncio.ensure_future(chat(session, gateway, "w-3"))
        await until(lambda: gateway.get_json("/admin/pool")["backends"][0]["inflight"] == 1)
        status, headers, body = await chat(session, gateway, "w-4")
        assert (status, body["error"]["code"]) == (503, "provisioning_blocked")
        assert 290 <= int(headers["Retry-After"]) <= 300
        assert (await busy)[0] == 200
    assert orch.get_json("/mock/stats")["provision_requests"] == 2
    elastic = gateway.get_json("/admin/pool")["elastic"]
    assert "Circuit breaker is open" in elastic["blocked"]
    assert elastic["breaker"]["state"] == "closed"  # one refusal is not a flapping provisioner


async def test_while_the_status_says_it_cannot_provision_no_call_goes_out(
    procs: Processes, tmp_path: Path
) -> None:
    orch = procs.orchestrator("--api-key", KEY, "--fault", "blocked=42")
    provisioner = orchestrated(
        orch, min_backends=1, status_interval=0.05, backoff=0.01, backoff_cap=0.05
    )
    gateway = procs.gateway("--config", str(write_config(tmp_path, provisioner)))
    polls = orch.get_json("/mock/stats")["status_requests"]
    await until(lambda: orch.get_json("/mock/stats")["status_requests"] >= polls + 20)
    assert orch.get_json("/mock/stats")["provision_requests"] == 0  # min_backends waits too
    post_json(orch, "/mock/faults", {"blocked": None})  # its VPN is back: the next poll says so
    await until(lambda: len(gateway.get_json("/admin/pool")["backends"]) == 1)
    assert orch.get_json("/mock/stats")["provision_requests"] == 1


async def test_a_flapping_provisioner_opens_the_breaker(procs: Processes, tmp_path: Path) -> None:
    orch = procs.orchestrator("--api-key", KEY, "--fault", "fail=-1")
    provisioner = orchestrated(
        orch,
        attempts=10,
        backoff=0.05,
        backoff_cap=0.1,
        breaker_failures=3,
        breaker_cooldown=30,
    )
    gateway = procs.gateway(
        "--config",
        str(write_config(tmp_path, provisioner)),
        "--debug",
        "--debug-dir",
        str(tmp_path / "dbg"),
    )
    async with aiohttp.ClientSession() as session:
        status, headers, body = await chat(session, gateway, "flap-1")
        assert status == 503
        assert body["error"]["code"] == "provisioning_failed"
        assert "circuit breaker" in body["error"]["message"]
        assert 28 <= int(headers["Retry-After"]) <= 30
        assert orch.get_json("/mock/stats")["failed"] == 3  # stopped after three in a row
        status, _, body = await chat(session, gateway, "flap-2")  # fails fast, no call
        assert status == 503
        assert body["error"]["code"] == "provisioning_failed"
    assert orch.get_json("/mock/stats")["provision_requests"] == 3
    elastic = gateway.get_json("/admin/pool")["elastic"]
    assert elastic["breaker"]["state"] == "open"
    gateway.stop()
    stress = next((tmp_path / "dbg").glob("*_stress.jsonl")).read_text()
    assert stress.count("provisioning_circuit_breaker") == 1
    attempts = [
        json.loads(line)
        for line in next((tmp_path / "dbg").glob("*_provisioning.jsonl")).read_text().splitlines()
    ]
    failed = [a for a in attempts if a["operation"] == "provision_attempt_failed"]
    assert [a["retry"] for a in failed] == [1, 2, 3]
    assert all(a["request_id"] == "flap-1" and a["success"] is False for a in failed)


async def test_a_refusal_that_must_not_be_retried_fails_at_once(
    procs: Processes, tmp_path: Path
) -> None:
    orch = procs.orchestrator("--api-key", KEY, "--fault", "refuse")
    provisioner = orchestrated(orch, status_interval=60, attempts=5, backoff=0.05)
    # the status says it cannot provision; refuse it anyway to reach the call itself
    post_json(orch, "/mock/faults", {"refuse": False})
    gateway = procs.gateway("--config", str(write_config(tmp_path, provisioner)))
    post_json(orch, "/mock/faults", {"refuse": True})
    started = time.monotonic()
    async with aiohttp.ClientSession() as session:
        status, _, body = await chat(session, gateway, "refused-1")
    assert status == 503
    assert body["error"]["code"] == "provisioning_failed"
    assert "engine image is not configured" in body["error"]["message"]
    assert orch.get_json("/mock/stats")["provision_requests"] == 1
    assert time.monotonic() - started < 5


@pytest.mark.parametrize(("api_key", "status"), [("wrong-key-XYZ", 403), (None, 401)])
async def test_a_refused_key_is_reported_stops_the_calls_and_makes_ready_say_why(
    procs: Processes, tmp_path: Path, api_key: str | None, status: int
) -> None:
    orch = procs.orchestrator("--api-key", KEY)
    provisioner = orchestrated(
        orch, api_key=api_key, min_backends=1, status_interval=0.05, backoff=0.01
    )
    gateway = procs.gateway("--config", str(write_config(tmp_path, provisioner)))
    # reported at start: the first call (min_backends) was refused
    await until(lambda: '"orchestrator_auth_failed"' in gateway.output())
    (report,) = [
        json.loads(line)
        for line in gateway.output().splitlines()
        if '"orchestrator_auth_failed"' in line
    ]
    assert (report["level"], report["status"]) == ("error", status)
    assert "pool.provisioner.api_key" in report["error"]
    # no call per status poll: it waits breaker_cooldown (30 s) before trying again
    polls = orch.get_json("/mock/stats")["status_requests"]
    await until(lambda: orch.get_json("/mock/stats")["status_requests"] >= polls + 20)
    assert orch.get_json("/mock/stats")["unauthorized"] == 1
    # /ready says why
    with pytest.raises(urllib.error.HTTPError) as refused:
        gateway.get_json("/ready")
    assert refused.value.code == 503
    ready = json.load(refused.value)
    assert ready["status"] == "unavailable"
    assert "pool.provisioner.api_key" in ready["reason"]
    assert str(status) in ready["reason"]
    # a client gets an OpenAI-shaped error that does not invite a retry in a second
    async with aiohttp.ClientSession() as session:
        code, headers, body = await chat(session, gateway, "badkey-1")
    assert code == 503
    assert "Retry-After" not in headers
    assert (body["error"]["type"], body["error"]["code"]) == (
        "server_error",
        "provisioning_unauthorized",
    )
    assert "pool.provisioner.api_key" in body["error"]["message"]
    assert orch.get_json("/mock/stats")["unauthorized"] == 1  # and it made no call
    output = gateway.output()
    assert "general_error" not in output
    assert "wrong-key-XYZ" not in output
    assert gateway.get_json("/admin/pool")["elastic"]["unauthorized"]


async def test_stream_events_arrive_exactly_once_and_correlate(
    procs: Processes, tmp_path: Path
) -> None:
    gw_dir, orch_dir = tmp_path / "gw", tmp_path / "orch"
    orch = procs.orchestrator(
        "--api-key",
        KEY,
        "--engine-arg=--latency=0.1",
        "--debug-dir",
        str(orch_dir),
    )
    config = write_config(
        tmp_path, orchestrated(orch, min_backends=2, max_backends=3), max_concurrency=2
    )
    gateway = procs.gateway("--config", str(config), "--debug", "--debug-dir", str(gw_dir))
    await until(lambda: len(orch.get_json("/engines")) == 2)
    first_byte: dict[str, float] = {}
    async with aiohttp.ClientSession() as session:

        async def one(rid: str, stream: bool) -> int:
            async with session.post(
                gateway.url + "/chat/completions",
                json={**CHAT, "stream": stream},
                headers={"X-Request-ID": rid},
            ) as response:
                first_byte[rid] = time.time()
                await response.read()
                return response.status

        async def leave() -> None:
            async with session.post(
                gateway.url + "/chat/completions",
                json={**CHAT, "stream": True},
                headers={"X-Request-ID": "ev-gone"},
            ) as response:
                first_byte["ev-gone"] = time.time()
                await response.content.readany()
                await asyncio.Event().wait()

        statuses = await asyncio.gather(*(one(f"ev-{n}", stream=n % 2 == 0) for n in range(8)))
        assert statuses == [200] * 8
        task = asyncio.ensure_future(leave())
        await asyncio.sleep(0.35)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    rids = {f"ev-{n}" for n in range(8)} | {"ev-gone"}
    await until(lambda: sum(e["kind"] == "ended" for e in orch.get_json("/mock/events")) >= 9)
    await asyncio.sleep(0.3)  # nothing more may come
    gateway.stop()
    events = orch.get_json("/mock/events")
    engines = {e["container_id"] for e in orch.get_json("/engines")}
    for rid in rids:
        mine = [e for e in events if e["stream_id"] == rid]
        assert sorted(e["kind"] for e in mine) == ["ended", "started"], (rid, mine)
        started = next(e for e in mine if e["kind"] == "started")
        ended = next(e for e in mine if e["kind"] == "ended")
        assert started["received"] <= first_byte[rid]  # reported before the first byte
        assert started["container_id"] in engines
        assert ended["reason"] == ("client_disconnected" if rid == "ev-gone" else "completed")
    assert len(events) == 2 * len(rids)
    orch.stop()

    # debug: the provisioning and orchestrator_health categories, with the common fields
    for category in ("provisioning", "orchestrator_health"):
        lines = next(gw_dir.glob(f"*_{category}.jsonl")).read_text().splitlines()
        assert lines
        for line in lines:
            assert list(json.loads(line))[:3] == ["session_id", "timestamp", "elapsed_seconds"]
    polls = next(gw_dir.glob("*_orchestrator_health.jsonl")).read_text().splitlines()
    first, last = json.loads(polls[0]), json.loads(polls[-1])
    assert (first["status"], first["can_provision"]) == ("unavailable", True)  # no engine yet
    assert (last["status"], last["can_provision"]) == ("healthy", True)
    everything = "".join(p.read_text() for d in (gw_dir, orch_dir) for p in d.glob("*"))
    assert KEY not in everything
    # the gateway's and the orchestrator's entries for the same request are paired
    correlated = run_cli("debug", "correlate", str(gw_dir), str(orch_dir), "--within", "1s")
    assert correlated.returncode == 0, correlated.stderr
    assert "request_id=ev-3" in correlated.stdout
    assert "stream_started" in correlated.stdout


async def test_command_provisioner(procs: Processes, tmp_path: Path) -> None:
    mock = procs.mock("--name", "from-command")
    runs = tmp_path / "runs"
    script = tmp_path / "provision.py"
    script.write_text(
        "import json, os, sys\n"
        f"open({str(runs)!r}, 'a').write(os.environ.get('PROXYFLEET_REQUEST_ID', '') + '\\n')\n"
        f"print(json.dumps({{'id': 'cmd-1', 'url': {mock.url!r}}}))\n"
    )
    config = write_config(
        tmp_path,
        {"command": [__import__("sys").executable, str(script)], "idle_ttl": 60},
    )
    gateway = procs.gateway("--config", str(config))
    async with aiohttp.ClientSession() as session:
        status, _, _ = await chat(session, gateway, "cmd-req")
    assert status == 200
    backends = gateway.get_json("/admin/pool")["backends"]
    assert [(b["id"], b["source"]) for b in backends] == [("cmd-1", "provisioned:provision.py")]
    assert runs.read_text().split() == ["cmd-req"]
    assert mock.get_json("/mock/stats")["requests"] == 1


async def test_command_provisioner_may_not_hand_out_a_foreign_host(
    procs: Processes, tmp_path: Path
) -> None:
    script = tmp_path / "provision.py"
    script.write_text('print(\'{"id": "far", "url": "http://10.9.8.7:80/v1"}\')\n')
    config = write_config(
        tmp_path, {"command": [__import__("sys").executable, str(script)], "backoff": 0.05}
    )
    gateway = procs.gateway("--config", str(config))
    async with aiohttp.ClientSession() as session:
        status, _, body = await chat(session, gateway, "far-1")
    assert status == 503
    assert "allowed_hosts" in body["error"]["message"]


def test_provisioner_config_errors_name_the_field(tmp_path: Path) -> None:
    both = write_config(tmp_path, {"url": "http://127.0.0.1:1", "command": ["x"]})
    result = run_cli("config", "--config", str(both))
    assert result.returncode == 2
    assert "pool.provisioner" in result.stderr
    assert "exactly one" in result.stderr
    sizes = write_config(
        tmp_path, {"url": "http://127.0.0.1:1", "min_backends": 5, "max_backends": 2}
    )
    result = run_cli("config", "--config", str(sizes))
    assert result.returncode == 2
    assert "min_backends (5) exceeds max_backends (2)" in result.stderr


async def test_an_engine_the_orchestrator_drops_leaves_the_pool(
    procs: Processes, tmp_path: Path
) -> None:
    orch = procs.orchestrator("--api-key", KEY)
    gateway = procs.gateway(
        "--config", str(write_config(tmp_path, orchestrated(orch, min_backends=2, max_backends=2)))
    )
    await until(lambda: len(gateway.get_json("/admin/pool")["backends"]) == 2)
    victim = orch.get_json("/engines")[0]["container_id"]
    async with (
        aiohttp.ClientSession() as session,
        session.delete(  # the orchestrator removes it on its own
            orch.url + f"/containers/{victim}", headers={"Authorization": f"Bearer {KEY}"}
        ) as response,
    ):
        assert response.status == 200
    await until(
        lambda: victim not in {b["id"] for b in gateway.get_json("/admin/pool")["backends"]}
    )
    assert "backend_vanished" in gateway.output()
    async with aiohttp.ClientSession() as session:  # the pool refills to min_backends
        status, _, _ = await chat(session, gateway, "after-vanish")
    assert status == 200
    await until(lambda: len(gateway.get_json("/admin/pool")["backends"]) == 2)


async def test_a_fleet_sharing_redis_provisions_once_per_burst_and_sees_every_engine(
    procs: Processes, tmp_path: Path
) -> None:
    """Two gateways sharing one pool through Redis, each with a request that needs a backend
    at the same moment: one provisioning call for the fleet (a lock in Redis), and the engine
    it brought is in both gateways' pool; each request is served."""
    redis = redisd.shared()
    orch = procs.orchestrator("--api-key", KEY, "--fault", "slow=0.5")
    store = {"redis": {"url": redis.url, "key_prefix": redisd.prefix()}}
    config = write_config(
        tmp_path, orchestrated(orch, max_backends=4), max_concurrency=2, store=store
    )
    first, second = (procs.gateway("--config", str(config)) for _ in range(2))
    async with aiohttp.ClientSession() as session:
        results = await asyncio.gather(
            chat(session, first, "burst-1"), chat(session, second, "burst-2")
        )
    assert [status for status, _, _ in results] == [200, 200]
    stats = orch.get_json("/mock/stats")
    assert stats["provision_requests"] == 1, stats  # one call for the fleet's burst
    engines = [e["container_id"] for e in orch.get_json("/engines")]
    for gateway in (first, second):
        assert [b["id"] for b in gateway.get_json("/admin/pool")["backends"]] == engines


async def test_an_engine_whose_gateway_died_is_released_by_the_rest_of_the_fleet(
    procs: Processes, tmp_path: Path
) -> None:
    """A gateway of a fleet provisions an engine and is killed. The engine is the fleet's: once
    idle for ``idle_ttl``, another gateway releases it to the orchestrator (which would run it
    for nobody otherwise); and an engine the orchestrator drops while its gateway is gone
    leaves the pool all the same."""
    orch = procs.orchestrator("--api-key", KEY)
    store = {"redis": {"url": redisd.shared().url, "key_prefix": redisd.prefix()}}
    idle = write_config(tmp_path, orchestrated(orch, max_backends=2, idle_ttl=1), store=store)
    first = procs.gateway("--config", str(idle))
    second = procs.gateway("--config", str(idle))
    async with aiohttp.ClientSession() as session:
        status, _, _ = await chat(session, first, "brought-by-first")
    assert status == 200
    assert len(orch.get_json("/engines")) == 1
    first.stop(signal.SIGKILL)
    await until(lambda: orch.get_json("/engines") == [], timeout=20)
    assert second.get_json("/admin/pool")["backends"] == []
    await until(lambda: "backend_released" in second.output())  # logged once it was answered
    assert orch.get_json("/mock/stats")["provision_requests"] == 1


async def test_an_engine_dropped_while_its_gateway_is_gone_leaves_the_fleets_pool(
    procs: Processes, tmp_path: Path
) -> None:
    orch = procs.orchestrator("--api-key", KEY)
    store = {"redis": {"url": redisd.shared().url, "key_prefix": redisd.prefix()}}
    config = write_config(tmp_path, orchestrated(orch, max_backends=2), store=store)
    first = procs.gateway("--config", str(config))
    second = procs.gateway("--config", str(config))
    async with aiohttp.ClientSession() as session:
        status, _, _ = await chat(session, first, "brought-by-first")
    assert status == 200
    [engine] = orch.get_json("/engines")
    first.stop(signal.SIGKILL)
    async with (
        aiohttp.ClientSession() as session,
        session.delete(
            orch.url + f"/containers/{engine['container_id']}",
            headers={"Authorization": f"Bearer {KEY}"},
        ) as response,
    ):
        assert response.status == 200
    await until(lambda: second.get_json("/admin/pool")["backends"] == [], timeout=20)
    await until(lambda: "backend_vanished" in second.output())


def test_fleet_engines_tracks_this_provisioners_engines_and_forgets_those_gone() -> None:
    members: dict[str, Any] = {}
    url = "http://127.0.0.1:9/v1"
    pool = [
        BackendSpec("mine", url, origin="provisioned:orchestrator"),
        BackendSpec("found", url, origin="adopted:orchestrator"),
        BackendSpec("theirs", url, origin="provisioned:other"),
        BackendSpec("configured", url, source="pool.upstreams"),
    ]
    fleet_engines(members, pool, "orchestrator")
    assert {k: m.origin for k, m in members.items()} == {"mine": "provisioned", "found": "adopted"}
    fleet_engines(members, pool[1:], "orchestrator")
    assert set(members) == {"found"}
