"""``up --watch``: ``changed_servers`` (pure: what restarts, what is added, what goes) and the
Watcher's debounce on real files in tmp_path (one apply after the edits settle, invalid
changes refused with the fleet untouched, only watched files count). The end-to-end watch
(route change, refused change, port held by someone) is in test_manager.py; here the one
scenario run for real is a config edit, alone and together with a refused deployment edit."""

from __future__ import annotations

import os
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from proxyfleet.fleet.deploy import Deployment, load_deployment
from proxyfleet.fleet.manager import Manager, Supervisor
from proxyfleet.fleet.watch import Watcher, changed_servers

CORE = Path("/srv/core.yaml")
OTHER = Path("/srv/other.yaml")

BASE: dict[str, Any] = {
    "nginx": {"port": 8000},
    "servers": {
        "core": {"port": 8003, "config": str(CORE), "routes": ["/"]},
        "broker": {"port": 8101, "instances": 2, "command": ["app", "{port}"], "routes": ["/b"]},
        "feed": {"port": 8010, "command": ["feed", "{port}"], "routes": ["/f"]},
    },
    "routing": {"core": "core"},
}


def _deployment(**servers: dict[str, Any] | None) -> Deployment:
    """BASE with some servers' fields changed (a None server is removed, a new name added)."""
    data = yaml.safe_load(yaml.safe_dump(BASE))
    for name, changes in servers.items():
        if changes is None:
            del data["servers"][name]
        else:
            data["servers"].setdefault(name, {}).update(changes)
    return Deployment.model_validate(data)


OLD = _deployment()


@pytest.mark.parametrize(
    ("new", "touched", "expected"),
    [
        (OLD, set(), (set(), set(), set())),
        # what only nginx needs: no restart
        (_deployment(broker={"routes": ["/b", "/orders"]}), set(), (set(), set(), set())),
        (_deployment(feed={"websocket_routes": ["/f/ws"]}), set(), (set(), set(), set())),
        (_deployment(broker={"health": "/ready"}), set(), (set(), set(), set())),
        (
            Deployment.model_validate({**BASE, "nginx": {"port": 9000, "worker_processes": 4}}),
            set(),
            (set(), set(), set()),
        ),
        # what the processes run with: a restart
        (_deployment(broker={"port": 9001}), set(), ({"broker"}, set(), set())),
        (_deployment(broker={"instances": 3}), set(), ({"broker"}, set(), set())),
        (
            _deployment(feed={"command": ["feed", "--fast", "{port}"]}),
            set(),
            ({"feed"}, set(), set()),
        ),
        (_deployment(core={"config": str(OTHER)}), set(), ({"core"}, set(), set())),
        (
            _deployment(feed={"command": None, "config": str(OTHER)}),
            set(),
            ({"feed"}, set(), set()),
        ),
        # a config file whose content changed restarts the servers that run it
        (OLD, {CORE}, ({"core"}, set(), set())),
        (OLD, {OTHER}, (set(), set(), set())),  # nobody runs it
        (OLD, {Path("/srv/deploy.yaml")}, (set(), set(), set())),  # the deployment file itself
        (
            _deployment(feed={"command": None, "config": str(CORE)}),
            {CORE},
            ({"core", "feed"}, set(), set()),
        ),
        # servers that come and go
        (
            _deployment(extra={"port": 8100, "command": ["x"], "routes": ["/x"]}),
            set(),
            (set(), {"extra"}, set()),
        ),
        (
            _deployment(extra={"port": 8100, "config": str(CORE), "routes": ["/x"]}),
            {CORE},
            ({"core"}, {"extra"}, set()),  # a new server starts anyway: it is no restart
        ),
        (_deployment(feed=None), set(), (set(), set(), {"feed"})),
        (
            _deployment(feed=None, broker={"port": 9001}, new={"port": 9100, "command": ["n"]}),
            set(),
            ({"broker"}, {"new"}, {"feed"}),
        ),
    ],
)
def test_changed_servers(
    new: Deployment, touched: set[Path], expected: tuple[set[str], set[str], set[str]]
) -> None:
    assert changed_servers(OLD, new, touched) == expected


def test_a_removed_server_whose_config_changed_is_only_removed() -> None:
    old = _deployment(feed={"command": None, "config": str(OTHER)})
    new = _deployment(feed=None)
    assert changed_servers(old, new, {OTHER}) == (set(), set(), {"feed"})


def test_changed_servers_leaves_its_inputs_alone() -> None:
    new = _deployment(broker={"port": 9001}, feed=None)
    before = (OLD.model_dump(), new.model_dump())
    touched = {CORE}
    first = changed_servers(OLD, new, touched)
    assert changed_servers(OLD, new, touched) == first  # the same answer again
    assert (OLD.model_dump(), new.model_dump()) == before
    assert touched == {CORE}


_spec = st.fixed_dictionaries(
    {
        "port": st.sampled_from([8100, 8200, 8300]),
        "instances": st.integers(1, 2),
        "config": st.sampled_from([str(CORE), str(OTHER), None]),
        "routes": st.sampled_from([[], ["/r"]]),
    }
)
_servers = st.dictionaries(st.sampled_from(["a", "b", "c", "d"]), _spec, min_size=1)


def _build(servers: dict[str, dict[str, Any]]) -> Deployment:
    specs = {}
    for n, (name, spec) in enumerate(sorted(servers.items())):
        spec = {**spec, "port": spec["port"] + 10 * n}  # no port used twice
        if spec["config"] is None:
            spec = {**spec, "command": ["run", "{port}"]}
        spec["routes"] = [f"{route}/{name}" for route in spec["routes"]]
        specs[name] = {k: v for k, v in spec.items() if v is not None}
    return Deployment.model_validate(
        {"nginx": {"port": 8000}, "servers": specs, "routing": {"core": min(servers)}}
    )


@given(_servers, _servers, st.sets(st.sampled_from([CORE, OTHER])))
def test_changed_servers_partitions_the_names(
    old: dict[str, dict[str, Any]], new: dict[str, dict[str, Any]], touched: set[Path]
) -> None:
    before, after = _build(old), _build(new)
    restart, add, remove = changed_servers(before, after, touched)
    assert add == set(after.servers) - set(before.servers)
    assert remove == set(before.servers) - set(after.servers)
    assert restart <= set(before.servers) & set(after.servers)
    for name in set(before.servers) & set(after.servers):
        a, b = before.servers[name], after.servers[name]
        differs = (a.port, a.instances, a.config, a.command) != (
            b.port,
            b.instances,
            b.config,
            b.command,
        )
        assert (name in restart) == (differs or b.config in touched)


# -- the Watcher on real files ----------------------------------------------------------------


class Layout:
    """A deployment file and the config it names, watched by a real Watcher (nothing runs)."""

    def __init__(self, tmp_path: Path, nginx: int = 18000, core: int = 18003) -> None:
        self.deploy = tmp_path / "deploy.yaml"
        self.config = tmp_path / "core.yaml"
        self.data: dict[str, Any] = {
            "nginx": {"port": nginx},
            "servers": {
                "core": {"port": core, "config": "core.yaml", "routes": ["/"], "health": "/live"}
            },
            "routing": {"core": "core"},
        }
        self.config.write_text("pool: {upstreams: ['http://127.0.0.1:9/v1']}\n")
        self.write(self.data)
        self.said: list[str] = []
        self.manager = Manager(self.deploy, tmp_path / "runtime", self.said.append)
        self.deployment = load_deployment(self.deploy)
        self.supervisor = Supervisor(self.manager, self.deployment)
        self.stamp = time.time_ns()

    def _bump(self, path: Path) -> None:
        """A new mtime for sure (two writes may share a coarse timestamp)."""
        self.stamp += 1_000_000_000
        os.utime(path, ns=(self.stamp, self.stamp))

    def write(self, data: dict[str, Any]) -> None:
        self.deploy.write_text(yaml.safe_dump(data, sort_keys=False))
        if hasattr(self, "stamp"):
            self._bump(self.deploy)

    def write_config(self, text: str) -> None:
        self.config.write_text(text)
        self._bump(self.config)

    def invalid(self) -> dict[str, Any]:
        data = yaml.safe_load(yaml.safe_dump(self.data))
        data["routing"]["core"] = "nobody"
        return data

    def refusals(self) -> list[str]:
        return [line for line in self.said if line.startswith("change refused")]


def _tick_until_said(
    watcher: Watcher, said: list[str], lines: int = 1, timeout: float = 5.0
) -> float:
    """Tick as ``up --watch`` does until the watcher has said ``lines`` lines; returns when."""
    deadline = time.monotonic() + timeout
    while len(said) < lines:
        assert time.monotonic() < deadline, "the watcher never acted"
        watcher.tick()
        time.sleep(0.01)
    return time.monotonic()


def test_nothing_changes_nothing_happens(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    watcher = Watcher(layout.manager, layout.supervisor, debounce=0.05)
    for _ in range(10):
        watcher.tick()
        time.sleep(0.01)
    (tmp_path / "notes.txt").write_text("not watched")
    (tmp_path / "other.yaml").write_text("pool: {selection: fastest}\n")  # named by nobody
    for _ in range(10):
        watcher.tick()
        time.sleep(0.01)
    assert layout.said == []


def test_edits_in_a_burst_are_applied_once_after_they_settle(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    debounce = 0.4
    watcher = Watcher(layout.manager, layout.supervisor, debounce=debounce)
    invalid = layout.invalid()
    for _ in range(6):  # an editor saving again and again, faster than the debounce
        layout.write(invalid)
        last = time.monotonic()
        for _ in range(5):
            watcher.tick()
            time.sleep(0.01)
    acted = _tick_until_said(watcher, layout.said)
    assert acted - last >= debounce  # counted from the last edit, not the first
    assert len(layout.refusals()) == 1
    assert "routing.core: 'nobody' is not one of the servers" in layout.refusals()[0]
    assert str(layout.deploy) in layout.refusals()[0]
    for _ in range(int(debounce / 0.01) + 10):  # and only once
        watcher.tick()
        time.sleep(0.01)
    assert len(layout.said) == 1


def test_a_refused_change_leaves_the_fleet_and_its_files_as_they_were(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    watcher = Watcher(layout.manager, layout.supervisor, debounce=0.05)
    layout.write(layout.invalid())
    mtime = layout.deploy.stat().st_mtime_ns
    _tick_until_said(watcher, layout.said)
    assert layout.refusals() == [
        "change refused, the fleet keeps running unchanged: "
        f"{layout.deploy}: routing.core: 'nobody' is not one of the servers (core)"
    ]
    assert layout.supervisor.deployment is layout.deployment  # still the running one
    assert layout.deploy.stat().st_mtime_ns == mtime  # the watcher writes nothing it watches
    assert not layout.manager.state_file.exists()


def test_an_invalid_config_it_names_is_refused(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    watcher = Watcher(layout.manager, layout.supervisor, debounce=0.05)
    layout.write_config("pool: {selection: fastest}\n")
    _tick_until_said(watcher, layout.said)
    (refusal,) = layout.refusals()
    assert f"{layout.config}: pool.selection" in refusal
    assert layout.supervisor.deployment is layout.deployment


def test_a_deleted_deployment_file_is_refused(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    watcher = Watcher(layout.manager, layout.supervisor, debounce=0.05)
    layout.deploy.unlink()
    _tick_until_said(watcher, layout.said)
    (refusal,) = layout.refusals()
    assert f"{layout.deploy}: cannot read file" in refusal


def test_a_refused_change_can_be_fixed_and_refused_again(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    watcher = Watcher(layout.manager, layout.supervisor, debounce=0.05)
    layout.write_config("pool: {selection: fastest}\n")
    _tick_until_said(watcher, layout.said)
    layout.write_config("pool: {retries: -1}\n")  # still wrong, differently
    _tick_until_said(watcher, layout.said, lines=2)
    assert len(layout.refusals()) == 2
    assert "pool.retries" in layout.refusals()[1]


def test_a_second_instance_without_a_shared_store_is_refused(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    watcher = Watcher(layout.manager, layout.supervisor, debounce=0.05)
    data = yaml.safe_load(yaml.safe_dump(layout.data))
    data["servers"]["core"]["instances"] = 2  # its config keeps the pool in memory
    layout.write(data)
    _tick_until_said(watcher, layout.said)
    (refusal,) = layout.refusals()
    assert f"{layout.deploy}: servers.core.instances: 2 instances would each keep" in refusal
    assert layout.supervisor.deployment is layout.deployment


@pytest.mark.parametrize(
    ("before", "after"),
    [
        (None, {"port": 18390}),  # a Redis added
        ({"port": 18390}, {"port": 18391}),  # moved
        ({"port": 18390}, {"port": 18390, "persist": True}),
        ({"port": 18390}, None),  # taken away
        ({"url": "redis://127.0.0.1:6379/0"}, {"url": "redis://127.0.0.1:6379/1"}),
    ],
)
def test_a_change_to_redis_is_refused_with_the_reason(
    tmp_path: Path, before: dict[str, Any] | None, after: dict[str, Any] | None
) -> None:
    """Every proxyfleet server's pool lives there: that needs a down and an up."""
    layout = Layout(tmp_path)
    if before is not None:
        layout.data["redis"] = before
        layout.write(layout.data)
        layout.deployment = layout.supervisor.deployment = load_deployment(layout.deploy)
    watcher = Watcher(layout.manager, layout.supervisor, debounce=0.05)
    data = yaml.safe_load(yaml.safe_dump(layout.data))
    data.pop("redis", None)
    if after is not None:
        data["redis"] = after
    layout.write(data)
    _tick_until_said(watcher, layout.said)
    assert layout.refusals() == [
        "change refused, the fleet keeps running unchanged: redis: every proxyfleet server's "
        "pool lives there; a change to it needs 'proxyfleet down' and 'proxyfleet up'"
    ]
    assert layout.supervisor.deployment is layout.deployment


# -- for real: a config edit, alone, and with a refused deployment edit -----------------------


def _free_ports(n: int) -> list[int]:
    ports: list[int] = []
    holders = []
    try:
        while len(ports) < n:
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            holders.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in holders:
            s.close()
    return ports


@pytest.fixture
def running(tmp_path: Path) -> Iterator[Layout]:
    if shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists():
        if os.environ.get("CI") == "true":
            pytest.fail("CI must provide nginx (see .ci/run)")
        pytest.skip("needs nginx: apt-get install nginx-light")
    nginx, core = _free_ports(2)
    layout = Layout(tmp_path, nginx=nginx, core=core)
    code, deployment = layout.manager.up(wait=20)
    assert code == 0, layout.said
    assert deployment is not None
    layout.supervisor.deployment = deployment
    layout.said.clear()
    try:
        yield layout
    finally:
        layout.manager.down(timeout=5)


def _core_pid(layout: Layout) -> int:
    (core,) = [p for p in layout.manager.processes if p.server == "core"]
    return core.pid


def test_a_config_edit_restarts_the_server_that_runs_it(running: Layout) -> None:
    watcher = Watcher(running.manager, running.supervisor, debounce=0.05)
    before = _core_pid(running)
    running.write_config("pool: {upstreams: ['http://127.0.0.1:9/v1'], selection: round-robin}\n")
    _tick_until_said(watcher, running.said, timeout=30)
    assert running.said == ["change applied: nginx reloaded; servers restarted or changed: core"], (
        running.said
    )
    assert _core_pid(running) != before


def test_a_config_edit_in_a_refused_burst_is_applied_once_the_burst_is_fixed(
    running: Layout,
) -> None:
    watcher = Watcher(running.manager, running.supervisor, debounce=0.05)
    before = _core_pid(running)
    running.write_config("pool: {upstreams: ['http://127.0.0.1:9/v1'], selection: round-robin}\n")
    running.write(running.invalid())  # the same burst: say a checkout of both files
    _tick_until_said(watcher, running.said, timeout=30)
    assert len(running.refusals()) == 1
    running.write(running.data)  # the deployment fixed; core.yaml keeps its new content
    _tick_until_said(watcher, running.said, lines=2, timeout=30)
    assert running.said[1] == (
        "change applied: nginx reloaded; servers restarted or changed: core"
    ), running.said
    assert _core_pid(running) != before  # core runs the config as it is now
