"""A deployment's proxyfleet servers as they will run, checked before anything starts.

With ``redis:`` in the deployment, every proxyfleet server gets its URL as its pool store
through the loader's own variable (``PROXYFLEET_POOL__STORE__REDIS__URL``, which wins over
the file); its config may still set ``key_prefix``, ``lease_ttl`` and ``timeout`` under
``pool.store.redis``. The rules, each a :class:`~proxyfleet.errors.ConfigError` naming the
deployment file and the field (exit 2):

- a server with ``instances: 2`` or more must share its pool: N instances each keeping one in
  memory would each lease the same accounts, N requests at once on one account;
- a config that names a store other than the deployment's Redis (``store: memory``, another
  URL) is refused, not silently overridden;
- two servers that meet in one shared pool (one URL, one key prefix) must configure the same
  backends, or the second would exit 2 at start (one membership per pool).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from proxyfleet.config import Config, load_config, resolve_backends
from proxyfleet.config.loader import ENV_PREFIX, read_yaml
from proxyfleet.errors import ConfigError
from proxyfleet.fleet.deploy import Deployment
from proxyfleet.pool.backend import Member, public_url

__all__ = ["STORE_URL_ENV", "check_gateways", "gateway_env"]

#: The variable that sets ``pool.store.redis.url`` of a proxyfleet server (the loader's rule).
STORE_URL_ENV = f"{ENV_PREFIX}POOL__STORE__REDIS__URL"


def gateway_env(deployment: Deployment) -> dict[str, str]:
    """What every proxyfleet server of the deployment gets in its environment (pure)."""
    if deployment.redis is None:
        return {}
    return {STORE_URL_ENV: deployment.redis.store_url}


def check_gateways(
    deployment: Deployment, deploy_path: Path, environ: Mapping[str, str]
) -> dict[str, Config]:
    """Every proxyfleet server's config loaded as it will run (``environ`` is what the
    processes inherit, the deployment's store on top), checked against the rules above."""
    source = str(deploy_path)
    env = {**environ, **gateway_env(deployment)}
    configs: dict[str, Config] = {}
    pools: dict[tuple[str, str], tuple[str, frozenset[Member]]] = {}
    for name, server in deployment.servers.items():
        if server.config is None:
            continue
        if deployment.redis is not None:
            _check_store_in_file(server.config, deployment.redis.store_url, source, name)
        config = load_config(server.config, env=env)
        members = frozenset(spec.member for spec in resolve_backends(config))
        store = config.pool.store.redis
        if store is None:
            if server.instances > 1:
                raise ConfigError(
                    source,
                    f"servers.{name}.instances",
                    f"{server.instances} instances would each keep a pool of their own "
                    f"({server.config} keeps the pool in memory), so they would lease the same "
                    "accounts at once: add 'redis: {port: N}' to the deployment (or give "
                    f"{server.config.name} a pool.store.redis), or run 1 instance",
                )
        else:
            key = (store.url, store.key_prefix)
            if key in pools and pools[key][1] != members:
                other, theirs = pools[key]
                raise ConfigError(
                    source,
                    f"servers.{name}.config",
                    f"its pool (key_prefix {store.key_prefix!r} on the same Redis) is the one "
                    f"servers.{other} serves, with other backends ({_differences(members, theirs)})"
                    f": give one of them its own pool.store.redis.key_prefix",
                )
            pools.setdefault(key, (name, members))
        configs[name] = config
    return configs


def _check_store_in_file(config: Path, url: str, source: str, name: str) -> None:
    """A config file that names another store than the deployment's Redis is refused."""
    pool = read_yaml(config).get("pool")
    store = pool.get("store") if isinstance(pool, dict) else None
    own = store.get("redis") if isinstance(store, dict) else None
    said = None
    if store == "memory":
        said = "sets pool.store: memory"
    elif isinstance(own, dict) and own.get("url") not in (None, url):
        said = f"names its own pool.store.redis.url ({public_url(str(own['url']))})"
    if said is not None:
        raise ConfigError(
            source,
            f"servers.{name}.config",
            f"{config} {said}, but the deployment's redis ({public_url(url)}) is the pool store "
            "of every "
            "proxyfleet server it runs: remove it from the config (or the redis: section)",
        )


def _differences(ours: frozenset[Member], theirs: frozenset[Member]) -> str:
    mine, other = {m.id for m in ours}, {m.id for m in theirs}
    parts = []
    if mine - other:
        parts.append("only here: " + ", ".join(sorted(mine - other)))
    if other - mine:
        parts.append("only there: " + ", ".join(sorted(other - mine)))
    return "; ".join(parts) or "the same ids, with other upstreams or caps"
