"""The CLI as a user meets it: exit codes and messages for bad input, help that explains."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tests.conftest import run_cli


@pytest.mark.parametrize(
    ("args", "env", "needle"),
    [
        (["serve", "--config", "missing.yaml"], {}, "missing.yaml: cannot read file"),
        (["serve", "--config", "bad.yaml"], {}, "bad.yaml: pool.selection"),
        (
            ["serve", "--credentials-dir", "nowhere", "--upstream", "http://127.0.0.1:1/v1"],
            {},
            "pool.credentials_dir: nowhere: directory does not exist",
        ),
        (
            ["serve", "--credentials-dir", "empty", "--upstream", "http://127.0.0.1:1/v1"],
            {},
            "is empty",
        ),
        (
            ["serve", "--credentials-dir", "broken", "--upstream", "http://127.0.0.1:1/v1"],
            {},
            "broken/x.json: line 1: invalid JSON",
        ),
        (["serve"], {}, "no backends"),
        (
            ["serve", "--upstream", "http://127.0.0.1:1/v1"],
            {"PROXYFLEET_SERVER__PORT": "x"},
            "environment variable PROXYFLEET_SERVER__PORT: server.port",
        ),
        (
            ["serve", "--upstream", "http://127.0.0.1:1/v1", "--max-concurrency", "0"],
            {},
            "flag --max-concurrency: pool.max_concurrency",
        ),
        (
            ["serve", "--upstream", "http://127.0.0.1:1/v1", "--auth-keys-file", "nokeys"],
            {},
            "server.auth_keys_file: nokeys: cannot read",
        ),
        (["config", "--config", "bad.yaml"], {}, "bad.yaml: pool.selection"),
    ],
)
def test_bad_config_exits_2_naming_the_field(
    tmp_path: Path, args: list[str], env: dict[str, str], needle: str
) -> None:
    (tmp_path / "bad.yaml").write_text("pool:\n  selection: fastest\n")
    (tmp_path / "empty").mkdir()
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "x.json").write_text("{oops")
    result = run_cli(*args, env=env, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert needle in result.stderr
    assert "Traceback" not in result.stderr


def test_busy_port_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = run_cli("serve", "--upstream", "http://127.0.0.1:1/v1", "--port", str(port))
        assert result.returncode == 1
        assert f"port {port} on 127.0.0.1 is already in use" in result.stderr
        mock = run_cli("mock", "--port", str(port))
        assert mock.returncode == 1
        assert "already in use" in mock.stderr


def test_config_command_prints_backends_without_secrets(tmp_path: Path) -> None:
    (tmp_path / "a.key").write_text("sk-very-secret-1234")
    result = run_cli(
        "config",
        "--credentials-dir",
        str(tmp_path),
        "--upstream",
        "https://user:pw@api.example.com/v1",
    )
    assert result.returncode == 0, result.stderr
    assert "sk-very-secret" not in result.stdout
    assert "pw@" not in result.stdout.split('"backends"')[1]
    assert '"credential_headers": [\n        "authorization"' in result.stdout


def test_help_explains_commands() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    for word in ("serve", "mock", "demo", "config", "PROXYFLEET_"):
        assert word in result.stdout
    serve = run_cli("serve", "--help")
    assert "--credentials-dir" in serve.stdout
    assert "single-flight" in serve.stdout


def test_help_shows_the_json_forms_of_status_and_ps() -> None:
    top = run_cli("--help").stdout
    assert "proxyfleet status --json" in top
    assert "proxyfleet ps -f deploy.yaml --json" in top
    for command in (["status"], ["ps"]):
        text = run_cli(*command, "--help").stdout
        assert "--json" in text
        assert "stable keys" in text
