"""The README's deployment with ``redis:``, run for real: our CLI's ``up``/``down``, real nginx,
a real ``redis-server`` that ``up`` starts, and the mock upstream, which counts requests in
flight per account. The shape that broke (a proxyfleet server of ``instances: 2`` sharing
three accounts: the upstream saw two requests at once on every account) now holds: single-
flight and LRU across every instance, clients leaving at any point, an instance killed with
SIGKILL; and ``down`` stops Redis last and leaves nothing running."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from proxyfleet.fleet.manager import Manager
from tests import redisd
from tests.conftest import Proc, Processes, run_cli
from tests.fleet.test_manager import _group_pids, _listening, _mock, _ports, _readme_deployment
from tests.fleet.test_manager import pytestmark as _needs_nginx
from tests.pool.test_redis import redis_label

pytestmark = _needs_nginx

KEYS = {"acct-a": "sk-live-aaaa1111", "acct-b": "sk-live-bbbb2222", "acct-c": "sk-live-cccc3333"}
BODY = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]}


class Fleet:
    """The README's deploy.yaml as written, its ports filled in, its core given ``instances``
    and three accounts on the mock ``upstream``; up (detached) until :meth:`down`."""

    def __init__(
        self, root: Path, upstream: Proc, instances: int, store: dict[str, Any] | None = None
    ) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root, self.upstream = root, upstream
        data = _readme_deployment()
        assert "port" in data["redis"], data  # the README's deployment starts its Redis
        core, broker = data["servers"]["core"], data["servers"]["broker"]
        core["instances"] = instances
        ports = _ports(2 + instances + broker["instances"])
        data["nginx"]["port"], data["redis"]["port"], core["port"] = ports[:3]
        broker["port"] = ports[2 + instances]
        broker["command"] = _mock("broker")  # the README's broker_app is only an example
        self.nginx, self.redis, self.core = ports[:3]
        self.instances = [self.core + i for i in range(instances)]
        pool: dict[str, Any] = {
            "backends": [{"id": k, "api_key": v} for k, v in KEYS.items()],
            "lease_timeout": 60,
        }
        if store is not None:  # the deployment gives the URL; the config may tune the rest
            pool["store"] = {"redis": store}
        config = {"upstream": {"base_url": upstream.url}, "pool": pool}
        (root / core["config"]).write_text(yaml.safe_dump(config))
        self.deploy = root / "deploy.yaml"
        self.deploy.write_text(yaml.safe_dump(data, sort_keys=False))
        self.env = {"PROXYFLEET_RUNTIME_DIR": str(root / "runtime")}
        self.up = run_cli("up", "-f", str(self.deploy), "--detach", env=self.env, timeout=90)
        assert self.up.returncode == 0, self.up.stdout + self.up.stderr

    @property
    def state_dir(self) -> Path:
        return Manager(self.deploy, self.root / "runtime", print).state_dir

    def ps(self) -> list[dict[str, Any]]:
        ps = run_cli("ps", "-f", str(self.deploy), "--json", env=self.env)
        rows: list[dict[str, Any]] = json.loads(ps.stdout)
        return rows

    def pool(self, port: int | None = None) -> list[dict[str, Any]]:
        """/admin/pool of one instance (the fleet's state, whichever it is)."""
        url = f"http://127.0.0.1:{port or self.core}/admin/pool"
        return json_get(url)["backends"]  # type: ignore[no-any-return]

    def served(self) -> dict[str, int]:
        return {b["id"]: b["leases_served"] for b in self.pool()}

    def peaks(self) -> dict[str, int]:
        stats = self.upstream.get_json("/mock/stats")["credentials"]
        return {label: counter["peak"] for label, counter in stats.items()}

    def down(self) -> subprocess.CompletedProcess[str]:
        return run_cli("down", "-f", str(self.deploy), env=self.env, timeout=90)


def json_get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.load(response)


def wait_until(check: Callable[[], bool], timeout: float, step: float = 0.05) -> float:
    """Seconds it took ``check`` to hold; fails after ``timeout``."""
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < timeout, f"not within {timeout}s"
        time.sleep(step)
    return time.monotonic() - started


async def stream(session: aiohttp.ClientSession, port: int, rid: str) -> bool:
    """One streamed chat completion through ``port``: True when it ended with [DONE]."""
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    try:
        async with session.post(url, json=BODY, headers={"X-Request-ID": rid}) as response:
            body = await response.read()
            return response.status == 200 and body.rstrip().endswith(b"data: [DONE]")
    except (TimeoutError, aiohttp.ClientError):
        return False


def _session() -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(limit=0)  # no client-side cap: 300 at once
    return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=90))


@pytest.fixture(scope="module")
def fleets(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[int], Fleet]]:
    """Fleets of N core instances, each up once for the module (its tests count deltas)."""
    root = tmp_path_factory.mktemp("fleets")
    procs = Processes(root)
    up: dict[int, Fleet] = {}

    def fleet(instances: int) -> Fleet:
        if instances not in up:
            upstream = procs.mock("--chunks", "3", "--latency", "0.01")
            up[instances] = Fleet(root / f"x{instances}", upstream, instances)
        return up[instances]

    try:
        yield fleet
    finally:
        for each in up.values():
            each.down()
        procs.close()


@pytest.mark.parametrize("instances", [2, 4])
async def test_300_streams_through_nginx_keep_every_account_single_flight_and_lru(
    fleets: Callable[[int], Fleet], instances: int
) -> None:
    fleet = fleets(instances)
    before = fleet.served()
    started = time.monotonic()
    async with _session() as session:
        results = await asyncio.gather(
            *(stream(session, fleet.nginx, f"load-{instances}-{n}") for n in range(300))
        )
    took = time.monotonic() - started
    served = {k: v - before[k] for k, v in fleet.served().items()}
    print(f"{instances} instances: {results.count(True)}/300 in {took:.1f}s, served {served}")
    assert results.count(True) == 300
    assert fleet.peaks() == {redis_label(key): 1 for key in KEYS.values()}
    assert sum(served.values()) == 300  # one lease per request, none lost or doubled
    assert max(served.values()) - min(served.values()) <= 2, served  # LRU, fleet-wide
    everywhere = [{b["id"]: b["leases_served"] for b in fleet.pool(p)} for p in fleet.instances]
    assert all(view == everywhere[0] for view in everywhere)  # any instance shows the fleet


async def _leaving_client(port: int, n: int, rng: random.Random) -> str:
    """One client through nginx that leaves at a random point (or reads to the end): which."""
    phase = rng.choice(["head", "body", "sent", "first", "mid", "end"])
    body = json.dumps(BODY).encode()
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Request-ID: leave-{n}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        if phase == "head":
            writer.write(head[: rng.randrange(10, len(head) - 4)])
        elif phase == "body":
            writer.write(head + body[: rng.randrange(1, len(body))])
        else:
            writer.write(head + body)
        await writer.drain()
        await asyncio.sleep(rng.uniform(0, 0.03))
        if phase == "first":
            await asyncio.wait_for(reader.readuntil(b"data: "), 30)
        elif phase == "mid":
            await asyncio.wait_for(reader.read(rng.randrange(1, 400)), 30)
        elif phase == "end":
            answer = await asyncio.wait_for(reader.read(-1), 60)
            assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
            assert b"data: [DONE]" in answer, answer[-200:]
    finally:
        writer.transport.abort()  # a reset, not a polite close: the harshest way to leave
    return phase


async def test_clients_that_leave_at_random_points_leave_every_account_idle(
    fleets: Callable[[int], Fleet],
) -> None:
    fleet = fleets(2)
    rng = random.Random(20260513)
    phases = await asyncio.gather(*(_leaving_client(fleet.nginx, n, rng) for n in range(300)))
    assert len(set(phases)) == 6  # every way of leaving happened

    def idle() -> bool:
        backends = fleet.pool()
        stats = fleet.upstream.get_json("/mock/stats")["credentials"]
        return all(b["state"] == "idle" and b["inflight"] == 0 for b in backends) and all(
            c["inflight"] == 0 for c in stats.values()
        )

    settled = wait_until(idle, timeout=20)  # drains, and settle_grace for what was cut
    counts = {phase: phases.count(phase) for phase in sorted(set(phases))}
    print(f"leaving clients: {counts}; every account idle {settled:.2f}s after the last left")
    assert fleet.peaks() == {redis_label(key): 1 for key in KEYS.values()}
    async with _session() as session:  # and the fleet still serves every account
        results = await asyncio.gather(*(stream(session, fleet.nginx, f"x{n}") for n in range(9)))
    assert all(results)


async def test_an_instance_killed_mid_run_loses_its_leases_within_lease_ttl(
    tmp_path: Path, procs: Processes
) -> None:
    """SIGKILL one of two instances while both serve: requests through nginx keep succeeding
    once nginx notices, and the accounts the dead one held serve again within lease_ttl."""
    ttl = 2.0
    upstream = procs.mock("--chunks", "6", "--latency", "0.08")  # streams of ~0.5 s
    fleet = Fleet(tmp_path, upstream, 2, store={"lease_ttl": ttl})
    victim_port = fleet.instances[1]
    (victim,) = [p["pid"] for p in fleet.ps() if p["role"] == "worker" and p["port"] == victim_port]
    loads: list[tuple[float, bool]] = []  # (started, succeeded) of every request through nginx
    stop = asyncio.Event()

    async def load(session: aiohttp.ClientSession, i: int) -> None:
        n = 0
        while not stop.is_set():
            started = time.monotonic()
            loads.append((started, await stream(session, fleet.nginx, f"load-{i}-{n}")))
            n += 1

    def victims_held() -> dict[str, str]:
        """account → the victim's request holding it."""
        return {b["id"]: r for b in fleet.pool() for r in b["serving"] if r.startswith("victim")}

    try:
        async with _session() as session:
            clients = [asyncio.ensure_future(load(session, i)) for i in range(6)]
            doomed = [  # straight to the victim: it surely holds leases when it dies
                asyncio.ensure_future(stream(session, victim_port, f"victim-{n}")) for n in range(3)
            ]
            # kill as soon as the victim takes a lease: one that surely outlives the victim
            seen: set[str] = set()
            for _ in range(300):
                held = await asyncio.to_thread(victims_held)
                if set(held.values()) - seen:
                    break
                seen |= set(held.values())
                await asyncio.sleep(0.01)
            assert set(held.values()) - seen, "the victim never took an account"
            os.kill(victim, signal.SIGKILL)
            killed = time.monotonic()
            assert await asyncio.to_thread(victims_held)  # held by nobody alive now
            await asyncio.gather(*doomed)
            while await asyncio.to_thread(victims_held):
                assert time.monotonic() - killed < ttl + 5, "the dead holder's leases stayed"
                await asyncio.sleep(0.05)
            recovered = time.monotonic() - killed
            after = await asyncio.to_thread(fleet.served)
            await asyncio.sleep(1.5)  # the load goes on, over every account again
            stop.set()
            await asyncio.gather(*clients)
        served = fleet.served()
        late = [ok for started, ok in loads if started > killed + 0.5]
        print(
            f"kill: {len(held)} account(s) held by the victim, free again after "
            f"{recovered:.2f}s; {len(loads)} requests through nginx, "
            f"{sum(1 for _, ok in loads if not ok)} failed (in flight on the victim), "
            f"{late.count(True)}/{len(late)} ok from 0.5 s after the kill"
        )
        # lease_ttl after the victim's last renewal, then the survivor's next heartbeat or
        # acquire to notice (a third of lease_ttl at most): 2.3 s measured with lease_ttl 2
        assert recovered < ttl + 2.0
        assert late
        assert all(late)  # nginx no longer sends anything to the dead instance
        assert all(served[account] > after[account] for account in held)  # serving again
        assert fleet.peaks() == {redis_label(key): 1 for key in KEYS.values()}
    finally:
        fleet.down()


def test_up_then_down_leaves_nothing_and_keeps_redis_files_under_the_runtime_dir(
    tmp_path: Path, procs: Processes
) -> None:
    upstream = procs.mock()
    fleet = Fleet(tmp_path, upstream, 2)
    try:
        assert f"redis on 127.0.0.1:{fleet.redis}" in fleet.up.stdout
        rows = fleet.ps()
        assert sorted(r["role"] for r in rows) == ["nginx", "redis"] + ["worker"] * 4
        (redis,) = [r for r in rows if r["role"] == "redis"]
        assert (redis["server"], redis["port"], redis["state"]) == ("redis", fleet.redis, "running")
        state = fleet.state_dir
        assert redis["log"] == str(state / f"redis_{fleet.redis}.log")
        assert "Ready to accept connections" in Path(redis["log"]).read_text()
        assert (state / "redis" / "redis.pid").read_text().strip() == str(redis["pid"])
        client = redisd.RedisServer(port=fleet.redis)  # a client of the fleet's own Redis
        try:
            keys = client.command("KEYS", "proxyfleet:*")
        finally:
            client.close()
        assert b"proxyfleet:members" in keys  # the core's pool lives there
        store = json_get(f"http://127.0.0.1:{fleet.core}/admin/pool")["store"]
        assert len(store["processes"]) == 2  # both instances serve that one pool
        leaders = [r["pid"] for r in rows]
        everyone = _group_pids(leaders)
    finally:
        down = fleet.down()
    assert down.returncode == 0, down.stdout + down.stderr
    assert down.stdout.strip() == "down: stopped 6 processes"
    time.sleep(0.2)
    assert not _group_pids(leaders)
    assert all(not Path(f"/proc/{pid}").exists() or _zombie(pid) for pid in everyone)
    assert not _listening(fleet.redis)
    assert sorted(p.name for p in (state / "redis").iterdir()) == []  # nothing saved, no pid
    logs = [Path(r["log"]).read_text() for r in rows if r["role"] == "worker"]
    assert not [log for log in logs if "store_unavailable" in log]  # Redis went last
    assert fleet.ps() == []


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_down_stops_nginx_then_the_servers_the_core_last_then_redis(tmp_path: Path) -> None:
    said: list[str] = []
    manager = Manager(tmp_path / "deploy.yaml", tmp_path / "runtime", said.append)
    order = tmp_path / "order"
    for role, name, port in [
        ("redis", "redis", 1),
        ("worker", "core", 2),
        ("worker", "broker", 3),
        ("nginx", "nginx", 4),
    ]:
        script = f'trap "echo {name} >> {order}; exit 0" TERM; while :; do sleep 0.02; done'
        manager._spawn(role, name, port, ["sh", "-c", script])
    try:
        time.sleep(0.3)  # every trap is set
        assert manager.stop_processes(manager.processes, ["broker", "core"], timeout=5) == []
        assert order.read_text().split() == ["nginx", "broker", "core", "redis"]
        assert said == []
    finally:
        for process in manager.processes:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
