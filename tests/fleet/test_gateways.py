"""A deployment's proxyfleet servers as they will run: the deployment's Redis as every one's
pool store, and the rules checked before anything starts (files in tmp_path, no process):
several instances never keep one pool each in memory, a config never names another store
than the deployment's, and two servers on one shared pool have the same backends."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from proxyfleet.errors import ConfigError
from proxyfleet.fleet.deploy import Deployment, load_deployment
from proxyfleet.fleet.gateways import STORE_URL_ENV, check_gateways, gateway_env

ACCOUNTS = [{"id": f"acct-{n}", "api_key": f"sk-test-{n}{n}{n}{n}"} for n in "abc"]


def _pool(**extra: Any) -> dict[str, Any]:
    return {
        "upstream": {"base_url": "http://127.0.0.1:9/v1"},
        "pool": {"backends": ACCOUNTS, **extra},
    }


class Files:
    def __init__(self, tmp_path: Path) -> None:
        self.dir = tmp_path
        self.deploy = tmp_path / "deploy.yaml"

    def config(self, name: str, data: dict[str, Any]) -> Path:
        path = self.dir / name
        path.write_text(yaml.safe_dump(data))
        return path

    def deployment(self, redis: dict[str, Any] | None = None, **servers: Any) -> Deployment:
        data: dict[str, Any] = {
            "nginx": {"port": 8000},
            "servers": {
                name: {"port": 8100 + 10 * n, "routes": [f"/{name}"], **spec}
                for n, (name, spec) in enumerate(servers.items())
            },
            "routing": {"core": next(iter(servers))},
        }
        if redis is not None:
            data["redis"] = redis
        self.deploy.write_text(yaml.safe_dump(data, sort_keys=False))
        return load_deployment(self.deploy)


@pytest.fixture
def files(tmp_path: Path) -> Files:
    return Files(tmp_path)


def test_two_instances_keeping_their_pool_in_memory_are_refused(files: Files) -> None:
    """The shape that broke: each instance leased the same accounts, two requests at once."""
    files.config("core.yaml", _pool())
    deployment = files.deployment(core={"config": "core.yaml", "instances": 2})
    with pytest.raises(ConfigError) as refused:
        check_gateways(deployment, files.deploy, {})
    error = refused.value
    assert (error.source, error.field) == (str(files.deploy), "servers.core.instances")
    assert "2 instances" in error.reason
    assert f"{files.dir / 'core.yaml'} keeps the pool in memory" in error.reason
    assert "same accounts at once" in error.reason
    assert "'redis: {port: N}'" in error.reason  # what to do about it
    assert error.exit_code == 2


def test_one_instance_in_memory_and_any_command_server_are_fine(files: Files) -> None:
    files.config("core.yaml", _pool())
    deployment = files.deployment(
        core={"config": "core.yaml"},
        broker={"command": ["app", "{port}"], "instances": 3},  # not ours: its own business
    )
    configs = check_gateways(deployment, files.deploy, {})
    assert list(configs) == ["core"]
    assert configs["core"].pool.store.kind == "memory"
    assert gateway_env(deployment) == {}


def test_the_deployments_redis_is_every_servers_store(files: Files) -> None:
    """Only the URL comes from the deployment: a config may still set its key prefix, lease
    TTL and timeout."""
    store = {"redis": {"key_prefix": "team-a", "lease_ttl": 5, "timeout": 1}}
    files.config("core.yaml", _pool(store=store))
    files.config("plain.yaml", _pool())
    deployment = files.deployment(
        redis={"port": 6390},
        core={"config": "core.yaml", "instances": 4},
        plain={"config": "plain.yaml", "instances": 2},
    )
    assert gateway_env(deployment) == {STORE_URL_ENV: "redis://127.0.0.1:6390/0"}
    assert STORE_URL_ENV == "PROXYFLEET_POOL__STORE__REDIS__URL"  # the loader's own variable
    configs = check_gateways(deployment, files.deploy, {})
    core = configs["core"].pool.store.redis
    assert core is not None
    assert (core.url, core.key_prefix, core.lease_ttl, core.timeout) == (
        "redis://127.0.0.1:6390/0",
        "team-a",
        5,
        1,
    )
    plain = configs["plain"].pool.store.redis
    assert plain is not None
    assert (plain.url, plain.key_prefix) == ("redis://127.0.0.1:6390/0", "proxyfleet")


def test_a_redis_that_runs_already_is_given_as_it_is(files: Files) -> None:
    files.config("core.yaml", _pool())
    url = "redis://127.0.0.1:6379/3"
    deployment = files.deployment(redis={"url": url}, core={"config": "core.yaml", "instances": 2})
    assert gateway_env(deployment) == {STORE_URL_ENV: url}
    store = check_gateways(deployment, files.deploy, {})["core"].pool.store.redis
    assert store is not None
    assert store.url == url


def test_a_server_with_its_own_shared_store_may_run_several_instances(files: Files) -> None:
    store = {"redis": {"url": "redis://127.0.0.1:6379/0", "key_prefix": "own"}}
    files.config("core.yaml", _pool(store=store))
    deployment = files.deployment(core={"config": "core.yaml", "instances": 2})
    assert check_gateways(deployment, files.deploy, {})["core"].pool.store.kind == "redis"


@pytest.mark.parametrize(
    ("store", "says"),
    [
        ("memory", "sets pool.store: memory"),
        (
            {"redis": {"url": "redis://127.0.0.1:6379/0"}},
            "names its own pool.store.redis.url (redis://127.0.0.1:6379/0)",
        ),
    ],
)
def test_a_config_naming_another_store_than_the_deployments_is_refused(
    files: Files, store: object, says: str
) -> None:
    files.config("core.yaml", _pool(store=store))
    deployment = files.deployment(redis={"port": 6390}, core={"config": "core.yaml"})
    with pytest.raises(ConfigError) as refused:
        check_gateways(deployment, files.deploy, {})
    error = refused.value
    assert (error.source, error.field) == (str(files.deploy), "servers.core.config")
    assert f"{files.dir / 'core.yaml'} {says}" in error.reason
    assert "the deployment's redis (redis://127.0.0.1:6390/0)" in error.reason


def test_the_same_url_as_the_deployments_is_no_conflict(files: Files) -> None:
    store = {"redis": {"url": "redis://127.0.0.1:6390/0", "key_prefix": "x"}}
    files.config("core.yaml", _pool(store=store))
    deployment = files.deployment(redis={"port": 6390}, core={"config": "core.yaml"})
    assert check_gateways(deployment, files.deploy, {})["core"].pool.store.redis is not None


def test_two_servers_on_one_shared_pool_must_have_the_same_backends(files: Files) -> None:
    """They would meet in one pool (one URL, one key prefix): the second would exit 2 at start
    (one membership), so up refuses before anything starts, naming both."""
    files.config("core.yaml", _pool())
    other = _pool()
    other["pool"]["backends"] = [*ACCOUNTS[:2], {"id": "acct-z", "api_key": "sk-test-zzzz"}]
    files.config("chat.yaml", other)
    deployment = files.deployment(
        redis={"port": 6390}, core={"config": "core.yaml"}, chat={"config": "chat.yaml"}
    )
    with pytest.raises(ConfigError) as refused:
        check_gateways(deployment, files.deploy, {})
    error = refused.value
    assert (error.source, error.field) == (str(files.deploy), "servers.chat.config")
    assert "servers.core" in error.reason
    assert "key_prefix 'proxyfleet'" in error.reason
    assert "only here: acct-z" in error.reason
    assert "only there: acct-c" in error.reason
    assert "sk-test" not in error.reason  # ids, never a key
    # the same accounts may share one pool; other accounts need a prefix of their own
    files.config("chat.yaml", _pool())
    assert set(check_gateways(deployment, files.deploy, {})) == {"core", "chat"}
    other["pool"]["store"] = {"redis": {"key_prefix": "chat"}}
    files.config("chat.yaml", other)
    assert set(check_gateways(deployment, files.deploy, {})) == {"core", "chat"}


def test_a_broken_config_is_its_own_error(files: Files) -> None:
    files.config("core.yaml", {"pool": {"selection": "fastest"}})
    deployment = files.deployment(redis={"port": 6390}, core={"config": "core.yaml"})
    with pytest.raises(ConfigError) as refused:
        check_gateways(deployment, files.deploy, {})
    assert (refused.value.source, refused.value.field) == (
        str(files.dir / "core.yaml"),
        "pool.selection",
    )


def test_the_environment_the_servers_get_is_the_one_checked(files: Files) -> None:
    files.config("core.yaml", _pool())
    deployment = files.deployment(core={"config": "core.yaml", "instances": 2})
    environ = {"PROXYFLEET_POOL__STORE__REDIS__URL": "redis://127.0.0.1:6379/0"}
    store = check_gateways(deployment, files.deploy, environ)["core"].pool.store.redis
    assert store is not None  # shared through the environment every instance inherits
