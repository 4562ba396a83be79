"""The Codex CLI as a test runs it: ``codex exec --json`` against a gateway, nothing leaving
loopback (its own calls go to a proxy address where nothing listens). Needs ``codex`` on PATH
(``npm install -g @openai/codex``); .ci/run installs it, so under CI its absence is a failure."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import cli_env

CODEX = shutil.which("codex")


def codex_exec(gateway_url: str, home: Path, workdir: Path, prompt: str) -> list[dict[str, Any]]:
    """``codex exec --json`` against the gateway; its JSONL events."""
    if CODEX is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI must provide the Codex CLI (npm install -g @openai/codex; .ci/run)")
        pytest.skip("needs the Codex CLI: npm install -g @openai/codex")
    provider = (
        f'{{name="proxyfleet",base_url="{gateway_url}",env_key="PROXYFLEET_TEST_KEY",'
        'wire_api="responses",supports_websockets=true}'
    )
    settings = {
        "model": "mock-model",
        "model_provider": "proxyfleet",
        "model_providers.proxyfleet": provider,
        "analytics.enabled": "false",
        "feedback.enabled": "false",
        "otel.metrics_exporter": "none",
        "features.plugins": "false",
        "features.apps": "false",
        "features.remote_plugin": "false",
        "web_search": "disabled",
    }
    config = [arg for key, value in settings.items() for arg in ("-c", f"{key}={value}")]
    nowhere = "http://127.0.0.1:9"  # discard port: refused, so nothing leaves loopback
    env = cli_env(
        {
            "CODEX_HOME": str(home),
            "PROXYFLEET_TEST_KEY": "sk-test-codex",
            "HTTP_PROXY": nowhere,
            "HTTPS_PROXY": nowhere,
            "ALL_PROXY": nowhere,
            "NO_PROXY": "127.0.0.1,localhost",
            "RUST_LOG": "warn",
        }
    )
    home.mkdir(exist_ok=True)
    workdir.mkdir(exist_ok=True)
    result = subprocess.run(
        [
            CODEX,
            "exec",
            "--skip-git-repo-check",
            "--ephemeral",
            "--dangerously-bypass-approvals-and-sandbox",
            "--json",
            *config,
            prompt,
        ],
        capture_output=True,
        text=True,
        timeout=180,
        stdin=subprocess.DEVNULL,
        cwd=workdir,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
