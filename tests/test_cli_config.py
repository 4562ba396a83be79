"""The config flags shared by serve, config and start: each flag lands on its config field,
PROXYFLEET_* environment precedence (defaults < file < environment < flags), the serve flags
recorded for a restart round-trip; and ``proxyfleet config`` as a user runs it."""

from __future__ import annotations

import argparse
import json
import os
import re
from pathlib import Path
from typing import Any

import pytest

from proxyfleet._cli_config import SERVE_FIELDS, add_config_flags, load_from, serve_flags
from proxyfleet.config import Config
from proxyfleet.errors import ConfigError
from tests.conftest import run_cli

README = Path(__file__).resolve().parent.parent / "README.md"
UP = "http://127.0.0.1:9/v1"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """load_from reads os.environ: start every test from an environment of none of ours."""
    for name in list(os.environ):
        if name.startswith("PROXYFLEET_") or name in ("DEBUG_MODE", "DEBUG_LOG_DIR"):
            monkeypatch.delenv(name)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="proxyfleet serve", exit_on_error=False)
    add_config_flags(parser)
    return parser


def _load(*argv: str) -> Config:
    """The config of these flags (with one keyless backend: load_from wants a backend)."""
    config = load_from(_parser().parse_args([*argv, "--upstream", UP]))[0]
    assert UP in config.pool.upstreams
    return config


def _field(config: Config, dotted: str) -> Any:
    node: Any = config
    for part in dotted.split("."):
        node = getattr(node, part)
    return node


# -- flags --------------------------------------------------------------------------------


def test_every_flag_has_a_field_and_every_field_a_flag() -> None:
    dests = {a.dest for a in _parser()._actions if a.dest not in ("help", "config")}
    assert dests == set(SERVE_FIELDS)
    config = Config()
    for dotted in SERVE_FIELDS.values():
        _field(config, dotted)  # a real field of the model


def test_the_readme_names_the_same_flag_for_each_field() -> None:
    documented = {}
    for line in README.read_text().splitlines():
        row = re.match(r"\| `([a-z_.]+)` \| [^|]* \| `(--[a-z-]+)`", line)
        if row:
            documented[row[1]] = row[2]
    flags = {dotted: "--" + dest.replace("_", "-") for dest, dotted in SERVE_FIELDS.items()}
    assert documented == flags


@pytest.mark.parametrize(
    ("argv", "dotted", "value"),
    [
        (["--host", "::1"], "server.host", "::1"),
        (["--port", "0"], "server.port", 0),
        (["--credentials-dir", "keys"], "pool.credentials_dir", Path("keys")),
        (["--upstream", "http://a:1/v1/"], "pool.upstreams", ("http://a:1/v1", UP)),
        (
            ["--upstream", "http://a:1/v1", "--upstream", "http://b:2/v1"],
            "pool.upstreams",
            ("http://a:1/v1", "http://b:2/v1", UP),
        ),
        (["--selection", "least-busy"], "pool.selection", "least-busy"),
        (["--max-concurrency", "4"], "pool.max_concurrency", 4),
        (["--queue-limit", "0"], "pool.queue_limit", 0),
        (["--lease-timeout", "2.5"], "pool.lease_timeout", 2.5),
        (["--retries", "0"], "pool.retries", 0),
        (["--auth-keys-file", "/srv/clients"], "server.auth_keys_file", Path("/srv/clients")),
        (["--log-level", "debug"], "log.level", "debug"),
        (["--log-format", "text"], "log.format", "text"),
        (["--access-log"], "log.access", True),
        (["--debug"], "debug.enabled", True),
        (["--debug-dir", "/var/dbg"], "debug.dir", Path("/var/dbg")),
    ],
)
def test_a_flag_sets_its_field(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, argv: list[str], dotted: str, value: object
) -> None:
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "a.key").write_text("sk-a\n")
    monkeypatch.chdir(tmp_path)
    config = _load(*argv)
    assert _field(config, dotted) == value
    assert _field(config, dotted) != _field(Config(), dotted)  # a change from the default


def test_no_flags_is_the_defaults() -> None:
    assert _load() == Config(pool={"upstreams": (UP,)})  # type: ignore[arg-type]


def test_a_flag_not_given_leaves_file_and_environment_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    file = tmp_path / "pf.yaml"
    file.write_text("log: {access: true}\ndebug: {enabled: true}\n")
    monkeypatch.setenv("PROXYFLEET_POOL__RETRIES", "7")
    config = _load("--config", str(file))
    assert config.log.access is True  # --access-log absent is not "false"
    assert config.debug.enabled is True
    assert config.pool.retries == 7


def test_a_bad_flag_value_names_the_flag() -> None:
    with pytest.raises(ConfigError) as caught:
        _load("--max-concurrency", "0")
    assert caught.value.source == "flag --max-concurrency"
    assert caught.value.field == "pool.max_concurrency"


def test_load_from_returns_the_backends_too() -> None:
    config, backends = load_from(_parser().parse_args(["--upstream", UP]))
    assert [b.base_url for b in backends] == [UP]
    assert config.pool.upstreams == (UP,)


# -- environment precedence -----------------------------------------------------------------


def test_defaults_then_file_then_environment_then_flags(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    file = tmp_path / "pf.yaml"
    file.write_text("pool: {selection: least-busy, retries: 5, queue_limit: 9}\n")
    monkeypatch.setenv("PROXYFLEET_POOL__RETRIES", "1")
    monkeypatch.setenv("PROXYFLEET_POOL__QUEUE_LIMIT", "3")
    config = _load("--config", str(file), "--queue-limit", "4")
    assert config.pool.selection == "least-busy"  # file over default
    assert config.pool.retries == 1  # environment over file
    assert config.pool.queue_limit == 4  # flag over environment
    assert config.pool.lease_timeout == Config().pool.lease_timeout  # untouched: default


def test_proxyfleet_config_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    file = tmp_path / "pf.yaml"
    file.write_text("server: {port: 3001}\n")
    monkeypatch.setenv("PROXYFLEET_CONFIG", str(file))
    assert _load().server.port == 3001
    flagged = tmp_path / "flag.yaml"
    flagged.write_text("server: {port: 3002}\n")
    assert _load("--config", str(flagged)).server.port == 3002  # the flag wins


def test_an_empty_proxyfleet_config_is_no_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROXYFLEET_CONFIG", "")
    assert _load() == Config(pool={"upstreams": (UP,)})  # type: ignore[arg-type]


def test_debug_mode_aliases_and_their_precedence(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DEBUG_MODE", "true")
    monkeypatch.setenv("DEBUG_LOG_DIR", str(tmp_path / "alias"))
    config = _load()
    assert config.debug.enabled is True
    assert config.debug.dir == tmp_path / "alias"
    monkeypatch.setenv("PROXYFLEET_DEBUG__DIR", str(tmp_path / "ours"))
    assert _load().debug.dir == tmp_path / "ours"  # PROXYFLEET_DEBUG__* over the alias
    assert _load("--debug-dir", str(tmp_path / "flag")).debug.dir == tmp_path / "flag"


def test_a_bad_environment_value_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROXYFLEET_POOL__SELECTION", "fastest")
    with pytest.raises(ConfigError) as caught:
        _load()
    assert caught.value.source == "environment variable PROXYFLEET_POOL__SELECTION"
    assert _load("--selection", "lru").pool.selection == "lru"  # a flag over it is fine


# -- serve_flags round trip -----------------------------------------------------------------

FULL = [
    "--host",
    "::1",
    "--port",
    "4000",
    "--credentials-dir",
    "keys",
    "--upstream",
    "http://a:1/v1",
    "--upstream",
    "http://b:2/v1",
    "--selection",
    "round-robin",
    "--max-concurrency",
    "2",
    "--queue-limit",
    "5",
    "--lease-timeout",
    "1.5",
    "--retries",
    "0",
    "--auth-keys-file",
    "clients.txt",
    "--log-level",
    "warning",
    "--log-format",
    "text",
    "--access-log",
    "--debug",
    "--debug-dir",
    "dbg",
]


def test_serve_flags_round_trip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pf.yaml").write_text("pool: {cooldown: 7}\n")
    args = _parser().parse_args(["--config", "pf.yaml", *FULL])
    flags = serve_flags(args)
    again = _parser().parse_args(flags)
    assert again.config == tmp_path / "pf.yaml"
    for dest in SERVE_FIELDS:
        if dest not in ("host", "port"):
            assert getattr(again, dest) == (
                getattr(args, dest).resolve()
                if isinstance(getattr(args, dest), Path)
                else getattr(args, dest)
            ), dest
    assert serve_flags(again) == flags  # a fixed point: restart after restart


def test_serve_flags_leave_host_and_port_to_start() -> None:
    flags = serve_flags(_parser().parse_args(["--host", "0.0.0.0", "--port", "1", "--debug"]))
    assert flags == ["--debug"]


def test_serve_flags_make_paths_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    flags = serve_flags(_parser().parse_args(["--credentials-dir", "keys", "-c", "pf.yaml"]))
    assert flags == [
        "--config",
        str(tmp_path / "pf.yaml"),
        "--credentials-dir",
        str(tmp_path / "keys"),
    ]


def test_serve_flags_load_the_same_config_from_elsewhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "a.key").write_text("sk-a\n")
    (tmp_path / "pf.yaml").write_text("pool: {cooldown: 7}\n")
    monkeypatch.chdir(tmp_path)
    argv = ["-c", "pf.yaml", "--credentials-dir", "keys", "--upstream", UP, "--retries", "4"]
    first, backends = load_from(_parser().parse_args(argv))
    flags = serve_flags(_parser().parse_args(argv))
    monkeypatch.chdir("/")  # 'restart' runs from wherever the user is
    second, again = load_from(_parser().parse_args(flags))
    assert first.pool.credentials_dir == Path("keys")  # relative to where start ran
    assert second.pool.credentials_dir == tmp_path / "keys"  # the same directory
    moved = first.pool.model_copy(update={"credentials_dir": tmp_path / "keys"})
    assert second == first.model_copy(update={"pool": moved})
    same = [(b.id, b.base_url, b.headers) for b in again]
    assert same == [(b.id, b.base_url, b.headers) for b in backends]
    assert [b.id for b in again] == ["a"]


def test_debug_log_dir_that_is_not_yaml_is_a_plain_string(tmp_path: Path) -> None:
    env = {"DEBUG_LOG_DIR": "@logs"}
    result = run_cli("config", "--upstream", UP, env=env, cwd=tmp_path)
    assert "Traceback" not in result.stderr
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["config"]["debug"]["dir"] == "@logs"


def test_proxyfleet_debug_dir_that_is_not_yaml_is_a_plain_string(tmp_path: Path) -> None:
    env = {"PROXYFLEET_DEBUG__DIR": "@logs"}
    out = _config_cli("--upstream", UP, env=env, cwd=tmp_path)
    assert out["config"]["debug"]["dir"] == "@logs"


def test_serve_flags_of_nothing() -> None:
    assert serve_flags(_parser().parse_args([])) == []


# -- 'proxyfleet config' for real ------------------------------------------------------------


def _config_cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> Any:
    result = run_cli("config", *args, env=env, cwd=cwd)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_config_prints_the_effective_config(tmp_path: Path) -> None:
    out = _config_cli("--upstream", UP, "--selection", "round-robin", "--port", "0")
    assert out["config"]["pool"]["selection"] == "round-robin"
    assert out["config"]["server"]["port"] == 0
    assert out["config"]["pool"]["upstreams"] == [UP]
    assert [b["upstream"] for b in out["backends"]] == [UP]
    defaults = json.loads(Config().model_dump_json())
    assert out["config"]["log"] == defaults["log"]  # the rest: the defaults
    assert out["config"]["debug"] == defaults["debug"]


def test_config_environment_and_flags_for_real(tmp_path: Path) -> None:
    file = tmp_path / "pf.yaml"
    file.write_text(f"pool: {{upstreams: ['{UP}'], selection: least-busy, retries: 5}}\n")
    env = {"PROXYFLEET_CONFIG": str(file), "PROXYFLEET_POOL__RETRIES": "1"}
    out = _config_cli(env=env)
    assert (out["config"]["pool"]["selection"], out["config"]["pool"]["retries"]) == (
        "least-busy",
        1,
    )
    out = _config_cli("--retries", "3", "--selection", "lru", env=env)
    assert (out["config"]["pool"]["selection"], out["config"]["pool"]["retries"]) == ("lru", 3)


@pytest.mark.parametrize(
    ("args", "env", "needle"),
    [
        ([], {}, "proxyfleet: config error: pool: no backends"),
        (
            ["--upstream", UP],
            {"PROXYFLEET_POOL__NOPE": "1"},
            "environment variable PROXYFLEET_POOL__NOPE: pool.nope: unknown key",
        ),
        (
            ["--upstream", UP],
            {"PROXYFLEET_SERVER__PORT": "99999"},
            "environment variable PROXYFLEET_SERVER__PORT: server.port",
        ),
        (["--upstream", "ftp://x"], {}, "flag --upstream: pool.upstreams[0]"),
        (["--upstream", UP, "--port", "70000"], {}, "flag --port: server.port"),
        (["--config", "missing.yaml"], {}, "missing.yaml: cannot read file"),
        ([], {"PROXYFLEET_CONFIG": "gone.yaml"}, "gone.yaml: cannot read file"),
        (
            ["--upstream", UP],
            {"DEBUG_MODE": "maybe"},
            "environment variable DEBUG_MODE: debug.enabled",
        ),
    ],
)
def test_config_errors_exit_2_naming_the_source(
    tmp_path: Path, args: list[str], env: dict[str, str], needle: str
) -> None:
    result = run_cli("config", *args, env=env, cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert needle in result.stderr
    assert result.stdout == ""
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--port", "eighty"], "argument --port: invalid int value: 'eighty'"),
        (["--selection", "fastest"], "argument --selection: invalid choice: 'fastest'"),
        (["--log-level", "trace"], "argument --log-level: invalid choice: 'trace'"),
        (["--lease-timeout"], "argument --lease-timeout: expected one argument"),
        (["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
    ],
)
def test_config_bad_flags_exit_2_with_usage(args: list[str], needle: str) -> None:
    result = run_cli("config", *args)
    assert result.returncode == 2
    assert result.stderr.startswith("usage: proxyfleet")
    assert needle in result.stderr
    assert result.stdout == ""
