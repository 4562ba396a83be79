"""The deployment model: every validation rule, with the field and both users of a port (the
deployment's Redis included)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from proxyfleet.errors import ConfigError
from proxyfleet.fleet.deploy import load_deployment

BASE = {
    "nginx": {"port": 8000},
    "servers": {
        "core": {"port": 8003, "config": "core.yaml", "routes": ["/"]},
        "broker": {
            "port": 8001,
            "instances": 2,
            "command": ["app", "--port", "{port}"],
            "routes": ["/api/v1/broker"],
            "websocket_routes": ["/api/v1/broker/ws"],
        },
    },
    "routing": {"core": "core"},
}


def _load(tmp_path: Path, data: dict[str, object]):  # type: ignore[no-untyped-def]
    path = tmp_path / "deploy.yaml"
    path.write_text(yaml.safe_dump(data))  # keys sorted: broker comes before core
    return load_deployment(path)


def _with(**changes: object) -> dict[str, object]:
    data = yaml.safe_load(yaml.safe_dump(BASE))
    for dotted, value in changes.items():
        node = data
        *parents, last = dotted.split("__")
        for key in parents:
            node = node[key]
        if value is None:
            del node[last]
        else:
            node[last] = value
    return data  # type: ignore[no-any-return]


def test_valid_deployment(tmp_path: Path) -> None:
    deployment = _load(tmp_path, BASE)
    assert deployment.servers["core"].config == tmp_path / "core.yaml"  # relative to the file
    assert deployment.servers["broker"].ports() == [8001, 8002]
    assert deployment.stop_order() == ["broker", "core"]


@pytest.mark.parametrize(
    ("binary", "expected"),
    [
        ("bin/nginx", "{base}/bin/nginx"),  # a path: relative to the deployment file
        ("/usr/sbin/nginx", "/usr/sbin/nginx"),
        ("nginx", "nginx"),  # a command name: looked up on the PATH when it runs
    ],
)
def test_nginx_binary_is_relative_to_the_file(tmp_path: Path, binary: str, expected: str) -> None:
    deployment = _load(tmp_path, _with(nginx__binary=binary))
    assert deployment.nginx.binary == expected.format(base=tmp_path)
    assert _load(tmp_path, BASE).nginx.binary is None  # none given: nginx on the PATH


@pytest.mark.parametrize(
    ("changes", "field", "reason"),
    [
        (
            {"servers__core__port": 8002},
            "servers.core.port",
            "port 8002 is used by both servers.broker (instance 2) and servers.core",
        ),
        (
            {"nginx__port": 8001},
            "servers.broker.port",
            "port 8001 is used by both nginx.port and servers.broker (instance 1)",
        ),
        ({"servers__broker__port": 70000}, "servers.broker.port", "less than or equal to 65535"),
        ({"servers__broker__instances": 0}, "servers.broker.instances", "greater than or equal"),
        ({"routing__core": "missing"}, "routing.core", "'missing' is not one of the servers"),
        ({"routing": None}, "routing", "Field required"),
        ({"servers__core__command": ["x"]}, "servers.core", "exactly one of 'config'"),
        ({"servers__core__config": None}, "servers.core", "exactly one of 'config'"),
        (
            {"servers__core__routes": ["/api/v1/broker"]},
            "servers.core.routes",
            "route /api/v1/broker is claimed by both servers.broker and servers.core",
        ),
        ({"servers__core__routes": ["no-slash"]}, "servers.core.routes.0", "should match"),
        ({"servers__core__routes": ["/", "/admin/"]}, "servers.core.routes", "reserved"),
        ({"servers__broker__health": "health"}, "servers.broker.health", "should match"),
        ({"servers__core__extra": 1}, "servers.core.extra", "unknown key"),
        ({"routing__strategy": "header"}, "routing.strategy", "'path' or 'query'"),
        ({"servers": {}}, "servers", "at least 1 item"),
        # the deployment's Redis: started on a port of its own, or one that exists
        ({"redis": {"port": 8000}}, "redis.port", "port 8000 is used by both nginx.port and redis"),
        (
            {"redis": {"port": 8002}},
            "servers.broker.port",
            "port 8002 is used by both redis.port and servers.broker (instance 2)",
        ),
        ({"redis": {}}, "redis", "give exactly one of 'port'"),
        (
            {"redis": {"port": 6390, "url": "redis://127.0.0.1:6379/0"}},
            "redis",
            "give exactly one of 'port'",
        ),
        ({"redis": {"url": "http://127.0.0.1:6379"}}, "redis.url", "should match"),
        (
            {"redis": {"url": "redis://127.0.0.1:6379/0", "persist": True}},
            "redis",
            "'persist' and 'binary' are for a Redis that up starts",
        ),
        ({"redis": {"port": 6390, "save": True}}, "redis.save", "unknown key"),
        ({"redis": {"port": 0}}, "redis.port", "greater than or equal to 1"),
    ],
)
def test_invalid(tmp_path: Path, changes: dict[str, object], field: str, reason: str) -> None:
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, _with(**changes))
    assert info.value.field == field
    assert reason in info.value.reason
    assert info.value.source.endswith("deploy.yaml")


def test_the_deployments_redis(tmp_path: Path) -> None:
    assert _load(tmp_path, BASE).redis is None  # none: every server keeps its own store
    started = _load(tmp_path, _with(redis={"port": 6390})).redis
    assert started is not None
    assert (started.port, started.persist, started.binary) == (6390, False, None)
    assert started.store_url == "redis://127.0.0.1:6390/0"  # loopback only
    existing = _load(tmp_path, _with(redis={"url": "redis://10.0.0.5:6379/2"})).redis
    assert existing is not None
    assert (existing.port, existing.store_url) == (None, "redis://10.0.0.5:6379/2")
    binary = _load(tmp_path, _with(redis={"port": 6390, "binary": "bin/redis-server"})).redis
    assert binary is not None
    assert binary.binary == str(tmp_path / "bin/redis-server")  # relative to the file
    named = _load(tmp_path, _with(redis={"port": 6390, "binary": "redis-server"})).redis
    assert named is not None
    assert named.binary == "redis-server"  # a command name: looked up on the PATH


def test_only_what_processes_run_with_restarts_them(tmp_path: Path) -> None:
    from proxyfleet.fleet.watch import changed_servers

    old = _load(tmp_path, BASE)
    routes = _load(tmp_path, _with(servers__broker__routes=["/api/v1/broker", "/x"]))
    assert changed_servers(old, routes, set()) == (set(), set(), set())
    moved = _load(tmp_path, _with(servers__broker__port=9001))
    assert changed_servers(old, moved, set()) == ({"broker"}, set(), set())
    assert changed_servers(old, old, {tmp_path / "core.yaml"}) == ({"core"}, set(), set())
    grown = _with()
    grown["servers"]["feed"] = {"port": 9100, "command": ["f"], "routes": ["/feed"]}  # type: ignore[index]
    assert changed_servers(old, _load(tmp_path, grown), set()) == (set(), {"feed"}, set())
