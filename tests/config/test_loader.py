"""Config loading: precedence, and every bad input refused with file, field and reason."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from proxyfleet.config import load_config, resolve_backends
from proxyfleet.errors import ConfigError
from tests.conftest import run_cli

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "proxyfleet.yaml"


def test_example_config_loads() -> None:
    config = load_config(EXAMPLE)
    assert config.server.port == 2048
    backends = resolve_backends(config)
    assert [b.id for b in backends] == ["team-key", "other-provider"]
    assert backends[1].max_concurrency == 2
    assert "sk-example" not in repr(config) + repr(backends)


def test_precedence_file_env_flag(tmp_path: Path) -> None:
    file = tmp_path / "c.yaml"
    file.write_text("server: {port: 3000}\npool: {selection: least-busy, retries: 5}\n")
    env = {"PROXYFLEET_SERVER__PORT": "4000", "PROXYFLEET_POOL__RETRIES": "1", "HOME": "/x"}
    config = load_config(file, env=env, overrides={"server.port": (5000, "flag --port")})
    assert config.server.port == 5000
    assert config.pool.retries == 1
    assert config.pool.selection == "least-busy"


def test_env_lists_parse_as_yaml() -> None:
    env = {"PROXYFLEET_POOL__UPSTREAMS": "[http://127.0.0.1:1/v1, http://127.0.0.1:2/v1]"}
    config = load_config(None, env=env)
    assert config.pool.upstreams == ("http://127.0.0.1:1/v1", "http://127.0.0.1:2/v1")


def test_paths_in_file_are_relative_to_it(tmp_path: Path) -> None:
    file = tmp_path / "sub" / "c.yaml"
    file.parent.mkdir()
    file.write_text("pool: {credentials_dir: accounts}\n")
    assert load_config(file).pool.credentials_dir == file.parent / "accounts"
    flagged = load_config(file, overrides={"pool.credentials_dir": (Path("x"), "flag")})
    assert flagged.pool.credentials_dir == Path("x")


@pytest.mark.parametrize(
    ("text", "field", "reason"),
    [
        ("server: {prot: 1}\n", "server.prot", "unknown key"),
        ("bogus: 1\n", "bogus", "unknown key"),
        ("server: {port: eighty}\n", "server.port", "valid integer"),
        ("server: {port: 70000}\n", "server.port", "less than or equal to 65535"),
        ("pool: {selection: random}\n", "pool.selection", "'lru', 'round-robin' or 'least-busy'"),
        ("pool: {upstreams: [ftp://x]}\n", "pool.upstreams[0]", "http:// or https://"),
        ("pool: {backends: [{id: a, api_key: 12345}]}\n", "pool.backends[0].api_key", "string"),
        ("pool: [1, 2]\n", "pool", "valid dictionary"),
        ("server: {port: 1\n", "line 2", "invalid YAML"),
        ("- a\n- b\n", "", "top level must be a mapping"),
        ("debug: {encoder_cpus: [4096]}\n", "debug.encoder_cpus", "CPU 4096 does not exist"),
        ("debug: {flush_interval: 0}\n", "debug.flush_interval", "greater than 0"),
        ("debug: {sample_above: -1}\n", "debug.sample_above", "greater than or equal to 0"),
    ],
)
def test_bad_file_names_file_field_reason(
    tmp_path: Path, text: str, field: str, reason: str
) -> None:
    file = tmp_path / "bad.yaml"
    file.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(file)
    assert info.value.source == str(file)
    assert info.value.field.startswith(field)
    assert reason in info.value.reason
    assert "12345" not in str(info.value)  # secret values are never echoed


def test_bad_env_names_the_variable() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, env={"PROXYFLEET_POOL__RETRIES": "many"})
    assert info.value.source == "environment variable PROXYFLEET_POOL__RETRIES"
    assert info.value.field == "pool.retries"
    with pytest.raises(ConfigError) as info:
        load_config(None, env={"PROXYFLEET_POOL__NOPE": "1"})
    assert info.value.field == "pool.nope"
    assert info.value.reason == "unknown key"


def test_bad_flag_names_the_flag() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, overrides={"pool.max_concurrency": (0, "flag --max-concurrency")})
    assert info.value.source == "flag --max-concurrency"


def test_unreadable_and_missing_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read file"):
        load_config(tmp_path / "nope.yaml")
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(ConfigError, match="UTF-8"):
        load_config(binary)


def test_debug_mode_variables() -> None:
    config = load_config(None, env={"DEBUG_MODE": "true", "DEBUG_LOG_DIR": "/tmp/dl"})
    assert config.debug.enabled
    assert str(config.debug.dir) == "/tmp/dl"
    wins = load_config(None, env={"DEBUG_MODE": "true", "PROXYFLEET_DEBUG__ENABLED": "false"})
    assert not wins.debug.enabled
    with pytest.raises(ConfigError) as info:
        load_config(None, env={"DEBUG_MODE": "maybe"})
    assert info.value.source == "environment variable DEBUG_MODE"


def test_elastic_example_loads_with_every_provisioner_field() -> None:
    example = EXAMPLE.with_name("elastic.yaml")
    config = load_config(example)
    provisioner = config.pool.provisioner
    assert provisioner is not None
    assert provisioner.url == "http://127.0.0.1:8000"
    written = yaml.safe_load(example.read_text())["pool"]["provisioner"]
    assert set(written) == set(type(provisioner).model_fields) - {"command", "release_command"}
    assert resolve_backends(config) == ()  # an elastic pool may start empty
    assert "demo-key" not in repr(config)


def test_mcp_example_loads() -> None:
    config = load_config(EXAMPLE.with_name("mcp.yaml"))
    assert [r.path for r in config.mcp] == ["/files", "/search"]
    assert config.mcp[0].upstream.command[0] == "npx"
    assert config.mcp[1].upstream.url == "http://127.0.0.1:8931/mcp"
    assert resolve_backends(config) == ()  # MCP routes alone need no /v1 backends
    assert "example-not-a-real-key" not in repr(config)


# -- secrets never echoed (issue: config errors showed the offending value) -----------------------


@pytest.mark.parametrize(
    ("text", "field"),
    [
        (
            "mcp:\n  - path: /x\n"
            "    upstream: {command: [echo], env: {TOKEN: 12345678901234567890}}\n",
            "mcp[0].upstream.env.TOKEN",
        ),
        ('upstream: {base_url: "sk-live-verysecretkey123456"}\n', "upstream.base_url"),
        ('pool: {upstreams: ["ftp://user:s3cretpw@host/v1"]}\n', "pool.upstreams[0]"),
        ('upstream: {base_url: "ghp1234567890abcdefghijklmnopqrst"}\n', "upstream.base_url"),
        ("pool: {backends: [{id: a, api_key: [sk-keyinalist-123456]}]}\n", "pool.backends[0]"),
    ],
)
def test_config_errors_name_the_field_never_a_secret_value(
    tmp_path: Path, text: str, field: str
) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    result = run_cli("config", "--config", str(path))
    assert result.returncode == 2
    assert field in result.stderr
    for secret in (
        "12345678901234567890",
        "verysecretkey",
        "s3cretpw",
        "ghp1234567890",
        "keyinalist",
    ):
        assert secret not in result.stderr + result.stdout
    assert result.stderr.count("(got") <= 1  # never the value twice


def test_proxyfleet_config_masks_url_passwords_and_keys(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        'upstream: {base_url: "https://user:hunter2pass@api.example.com/v1"}\n'
        "pool: {backends: [{id: a, api_key: sk-abcdefghijklmnop}]}\n"
    )
    result = run_cli("config", "--config", str(path))
    assert result.returncode == 0, result.stderr
    assert "hunter2pass" not in result.stdout
    assert "sk-abcdefghijklmnop" not in result.stdout
    assert "api.example.com" in result.stdout


# -- an MCP server command is checked at load, where it can be ------------------------------------


def _mcp(path: Path, command: list[str], **upstream: object) -> Path:
    config = {"mcp": [{"path": "/tools", "upstream": {"command": command, **upstream}}]}
    path.write_text(yaml.safe_dump(config))
    return path


def _programs(tmp_path: Path) -> Path:
    """A directory with a program (``fine-server``) and a file that is not one
    (``not-a-program``)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "fine-server").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "fine-server").chmod(0o755)
    (bin_dir / "not-a-program").write_text("just text\n")
    (bin_dir / "not-a-program").chmod(0o644)
    return bin_dir


@pytest.mark.parametrize(
    ("command", "reason"),
    [
        (["no-such-mcp-server"], "'no-such-mcp-server' is not found on PATH ({bin})"),
        (["/no/such/mcp-server", "--flag"], "'/no/such/mcp-server' does not exist"),
        (["{bin}/not-a-program"], "'{bin}/not-a-program' is not executable"),
        (["{bin}"], "'{bin}' is a directory, not a program"),
        (["not-a-program"], "'not-a-program' is not found on PATH ({bin})"),
    ],
)
def test_an_mcp_command_that_cannot_run_is_a_config_error(
    tmp_path: Path, command: list[str], reason: str
) -> None:
    bin_dir = _programs(tmp_path)
    file = _mcp(tmp_path / "c.yaml", [part.format(bin=bin_dir) for part in command])
    with pytest.raises(ConfigError) as caught:
        load_config(file, env={"PATH": str(bin_dir)})
    assert (caught.value.source, caught.value.field) == (str(file), "mcp[0].upstream.command")
    assert caught.value.reason == reason.format(bin=bin_dir)


def test_an_mcp_command_is_looked_up_as_its_child_will(tmp_path: Path) -> None:
    bin_dir = _programs(tmp_path)
    found = load_config(_mcp(tmp_path / "a.yaml", ["fine-server"]), env={"PATH": str(bin_dir)})
    assert found.mcp[0].upstream.command == ("fine-server",)
    # the route's own PATH is the one its children search
    own = _mcp(tmp_path / "b.yaml", ["fine-server"], env={"PATH": str(bin_dir)})
    assert load_config(own, env={"PATH": str(tmp_path)}).mcp[0].upstream.command[0] == "fine-server"
    # a relative path is the child's: from its cwd
    (tmp_path / "work").mkdir()
    relative = _mcp(tmp_path / "c.yaml", ["../bin/fine-server"], cwd=str(tmp_path / "work"))
    assert load_config(relative, env={"PATH": ""}).mcp[0].upstream.cwd == tmp_path / "work"
    # without an environment to search, a bare name cannot be checked: it is let through
    assert load_config(_mcp(tmp_path / "d.yaml", ["no-such-mcp-server"])).mcp


def test_proxyfleet_config_refuses_an_mcp_command_that_does_not_exist(tmp_path: Path) -> None:
    file = _mcp(tmp_path / "c.yaml", ["no-such-mcp-server-anywhere"])
    result = run_cli("config", "--config", str(file))
    assert result.returncode == 2
    where = f"{file}: mcp[0].upstream.command: "
    assert where + "'no-such-mcp-server-anywhere' is not found on PATH" in result.stderr
