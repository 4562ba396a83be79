"""The deployment's ``redis-server``: its command line (pure: loopback only, its files in its
own directory, nothing saved unless asked), finding the binary, and the check that a Redis
answers, against a real ``redis-server`` and a port nothing listens on."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxyfleet.errors import ConfigError
from proxyfleet.fleet.deploy import RedisSettings
from proxyfleet.fleet.redis_server import find_redis, redis_answers, redis_command
from tests import redisd


def _pairs(command: list[str]) -> dict[str, str]:
    """``--name value`` pairs of a redis-server command line."""
    flags = command[1:]
    assert len(flags) % 2 == 0, flags
    return {flags[i]: flags[i + 1] for i in range(0, len(flags), 2)}


def test_the_command_line_saves_nothing_by_default(tmp_path: Path) -> None:
    command = redis_command("/bin/redis-server", RedisSettings(port=6390), tmp_path / "redis")
    assert command[0] == "/bin/redis-server"
    flags = _pairs(command)
    assert flags["--bind"] == "127.0.0.1"  # loopback only
    assert flags["--protected-mode"] == "yes"
    assert flags["--port"] == "6390"
    assert flags["--dir"] == str(tmp_path / "redis")  # its files in a directory of ours
    assert flags["--pidfile"] == str(tmp_path / "redis" / "redis.pid")
    assert flags["--daemonize"] == "no"  # it stays our child, in its process group
    assert (flags["--save"], flags["--appendonly"]) == ("", "no")  # nothing on disk


def test_persist_keeps_an_append_only_file_in_its_directory(tmp_path: Path) -> None:
    flags = _pairs(redis_command("redis-server", RedisSettings(port=6390, persist=True), tmp_path))
    assert (flags["--save"], flags["--appendonly"]) == ("", "yes")
    assert flags["--dir"] == str(tmp_path)


def test_a_missing_binary_says_how_to_install(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as missing:
        find_redis(str(tmp_path / "no-redis"))
    assert (missing.value.source, missing.value.field, missing.value.reason) == (
        "redis.binary",
        str(tmp_path / "no-redis"),
        "no such file",
    )
    with pytest.raises(ConfigError) as unnamed:
        find_redis("no-such-redis-server-here")
    assert unnamed.value.source == "redis.binary"
    assert "no such command on PATH" in unnamed.value.reason


def test_the_binary_is_found_on_the_path() -> None:
    binary = redisd.redis_server_binary()  # skips without redis-server
    assert Path(find_redis(None)).name == "redis-server"
    assert find_redis(binary) == binary


def test_a_redis_that_answers_and_one_that_does_not() -> None:
    server = redisd.shared()
    assert redis_answers(server.url, timeout=2) is None
    dead = redisd.RedisServer()  # a free port: nothing listens there
    reason = redis_answers(dead.url, timeout=1)
    assert reason is not None
    assert "Connection refused" in reason or "connecting" in reason, reason


def test_a_password_in_the_url_is_never_in_the_reason() -> None:
    dead = redisd.RedisServer()
    reason = redis_answers(f"redis://:s3cret-pw@127.0.0.1:{dead.port}/0", timeout=1)
    assert reason is not None
    assert "s3cret-pw" not in reason
