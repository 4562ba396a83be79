"""``python -m proxyfleet``: the version, a help that lists every command (each with its own
help), exit 2 with the usage when no command or an unknown one is given, and the command's
own exit code passed through."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

import proxyfleet
from tests.conftest import cli_env, run_cli

COMMANDS = [
    "serve",
    "config",
    "mock",
    "mock-orchestrator",
    "mcp",
    "start",
    "stop",
    "status",
    "restart",
    "logs",
    "up",
    "ps",
    "down",
    "nginx",
    "debug",
    "demo",
]


def _listed(help_text: str) -> dict[str, str]:
    """The command list of the help: each name with its help line (argparse wraps a long name's
    help onto the next line)."""
    block = help_text.split("positional arguments:", 1)[1].split("options:", 1)[0]
    commands: dict[str, str] = {}
    name = ""
    for line in block.splitlines():
        entry = re.match(r"^ {4}(\S+)(?:\s+(.*))?$", line)
        if entry:
            name = entry[1]
            commands[name] = entry[2] or ""
        elif name and re.match(r"^ {5,}\S", line) and not commands[name]:
            commands[name] = line.strip()
    return commands


def test_version() -> None:
    result = run_cli("--version")
    assert result.returncode == 0
    assert result.stdout == f"proxyfleet {proxyfleet.__version__}\n"
    assert re.fullmatch(r"\d+\.\d+\.\d+.*", proxyfleet.__version__)


def test_help_lists_every_command_with_what_it_does() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    assert result.stdout.startswith("usage: proxyfleet [-h] [--version] COMMAND ...")
    listed = _listed(result.stdout)
    assert sorted(listed) == sorted(COMMANDS)
    assert all(listed.values()), f"a command without a help line: {listed}"
    assert listed["mock-orchestrator"] == "run a mock orchestrator that provisions mock upstreams"
    assert "examples:" in result.stdout
    assert "PROXYFLEET_<SECTION>__<FIELD>" in result.stdout


@pytest.mark.parametrize("command", COMMANDS)
def test_each_command_has_its_own_help(command: str) -> None:
    result = run_cli(command, "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: proxyfleet {command}")
    assert result.stderr == ""


def test_no_command_exits_2_with_the_usage() -> None:
    result = run_cli()
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith("usage: proxyfleet [-h] [--version] COMMAND ...")
    assert "the following arguments are required: COMMAND" in result.stderr


def test_an_unknown_command_exits_2_naming_the_choices() -> None:
    result = run_cli("launch")
    assert result.returncode == 2
    assert "invalid choice: 'launch'" in result.stderr
    for command in ("serve", "start", "up", "debug"):
        assert f"'{command}'" in result.stderr


def test_the_commands_exit_code_is_the_process_exit_code() -> None:
    assert run_cli("config").returncode == 2  # a config error: no backends
    assert run_cli("config", "--upstream", "http://127.0.0.1:9/v1").returncode == 0


def test_the_module_and_the_console_script_are_one_cli() -> None:
    script = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from proxyfleet.cli import main; sys.exit(main())",
            "--version",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        env=cli_env(),
    )
    assert script.returncode == 0
    assert script.stdout == run_cli("--version").stdout
