"""The deployment's Redis: the ``redis-server`` command line (pure), the binary, and whether a
Redis answers.

A Redis that ``up`` starts listens on 127.0.0.1 only (protected mode on), stays in the
foreground as our child (its own process group, like every process of the deployment), keeps
its pid file and working directory in a directory of ours under the runtime directory, and
writes nothing to disk unless the deployment asks (``persist: true``: an append-only file
there, kept across ``down`` and ``up``).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from urllib.parse import urlsplit

from proxyfleet.errors import ConfigError
from proxyfleet.fleet.deploy import RedisSettings
from proxyfleet.pool.backend import public_url

__all__ = ["find_redis", "redis_answers", "redis_command"]

_SYSTEM_DIRS = "/usr/sbin:/usr/local/sbin:/usr/local/bin:/usr/bin"


def redis_command(binary: str, settings: RedisSettings, directory: Path) -> list[str]:
    """The command line of the deployment's ``redis-server`` (``settings.port`` set)."""
    if settings.port is None:
        raise ValueError("only a Redis with a port is started")
    saving = ["--save", "", "--appendonly", "yes" if settings.persist else "no"]
    return [
        binary,
        "--bind", "127.0.0.1",
        "--protected-mode", "yes",
        "--port", str(settings.port),
        "--daemonize", "no",
        "--dir", str(directory),
        "--pidfile", str(directory / "redis.pid"),
        *saving,
    ]  # fmt: skip


def find_redis(configured: str | None) -> str:
    """The ``redis-server`` binary: the configured path (or command name on PATH), else
    redis-server on PATH (or in the usual system directories)."""
    if configured and "/" not in configured:
        found = shutil.which(configured)
        if found is None:
            raise ConfigError("redis.binary", configured, "no such command on PATH")
        return found
    if configured:
        if not Path(configured).is_file():
            raise ConfigError("redis.binary", configured, "no such file")
        return configured
    found = shutil.which("redis-server") or shutil.which("redis-server", path=_SYSTEM_DIRS)
    if found is None:
        raise ConfigError(
            "redis",
            "binary",
            "redis-server is not installed: install it (Debian/Ubuntu: "
            "'sudo apt-get install redis-server'), set redis.binary, or give redis.url",
        )
    return found


def redis_answers(url: str, timeout: float) -> str | None:
    """None when the Redis at ``url`` answers PING within ``timeout``, else why not (never
    with the URL's password)."""
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
    try:
        client.ping()
    except redis.RedisError as exc:
        reason = str(exc).replace(url, public_url(url))
        password = urlsplit(url).password
        return reason.replace(password, "***") if password else reason
    finally:
        client.close()
    return None
