"""The nginx renderer: golden files, each checked by the real ``nginx -t``."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import yaml

from proxyfleet.errors import ConfigError
from proxyfleet.fleet.deploy import load_deployment
from proxyfleet.fleet.nginx import find_nginx, render_nginx, validate_nginx

GOLDEN = Path(__file__).parent / "golden"
LAYOUTS = {
    "path": {
        "nginx": {"port": 18000, "worker_processes": 2, "worker_connections": 512},
        "servers": {
            "core": {"port": 18003, "config": "core.yaml", "routes": ["/"], "health": "/ready"},
            "broker": {
                "port": 18001,
                "instances": 2,
                "command": ["app", "{port}"],
                "routes": ["/api/v1/broker", "/api/v1/broker/orders"],
                "websocket_routes": ["/api/v1/broker/ws"],
            },
        },
        "routing": {"core": "core"},
    },
    "query": {
        "nginx": {"port": 18100},
        "servers": {
            "core": {
                "port": 18103,
                "command": ["core", "{port}"],
                "routes": ["/"],
                "websocket_routes": ["/api/v1/ws"],
            },
            "datafeed": {
                "port": 18101,
                "command": ["feed", "{port}"],
                "routes": ["/api/v1/datafeed"],
            },
        },
        "routing": {"strategy": "query", "query_param": "type", "core": "core"},
    },
}


def _nginx() -> str:
    if shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists():
        if os.environ.get("CI") == "true":
            pytest.fail("CI must provide nginx (see .ci/run)")
        pytest.skip("needs nginx: apt-get install nginx-light")
    return find_nginx(None)


def _layout(tmp_path: Path, layout: str) -> Path:
    path = tmp_path / "deploy.yaml"
    path.write_text(yaml.safe_dump(LAYOUTS[layout], sort_keys=False))
    return path


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_render_matches_golden_and_passes_nginx_t(tmp_path: Path, layout: str) -> None:
    path = _layout(tmp_path, layout)
    text = render_nginx(load_deployment(path), Path("/PREFIX"))
    golden = GOLDEN / f"{layout}.conf"
    if os.environ.get("PROXYFLEET_UPDATE_GOLDEN") == "1":
        golden.write_text(text)
    assert text == golden.read_text()
    prefix = tmp_path / "prefix"
    conf = tmp_path / "nginx.conf"
    conf.write_text(render_nginx(load_deployment(path), prefix))
    validate_nginx(_nginx(), conf, prefix)


def test_nginx_t_refusal_is_a_config_error(tmp_path: Path) -> None:
    conf = tmp_path / "nginx.conf"
    conf.write_text("events {}\nhttp { server { listen 127.0.0.1:1; bogus_directive on; } }\n")
    with pytest.raises(ConfigError, match="bogus_directive"):
        validate_nginx(_nginx(), conf, tmp_path / "prefix")


def test_missing_binary_says_how_to_install(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        find_nginx(str(tmp_path / "no-nginx"))


def test_a_binary_given_by_name_is_looked_up_on_the_path() -> None:
    assert find_nginx("sh") == shutil.which("sh")  # a name, not a file in this directory
    with pytest.raises(ConfigError, match="no such command on PATH"):
        find_nginx("no-such-nginx-anywhere")


def test_nginx_is_only_given_absolute_paths(tmp_path: Path) -> None:
    deployment = load_deployment(_layout(tmp_path, "path"))
    with pytest.raises(ValueError, match="absolute"):
        render_nginx(deployment, Path("relative/prefix"))
    with pytest.raises(ValueError, match="absolute"):
        validate_nginx("nginx", Path("nginx.conf"), tmp_path)
