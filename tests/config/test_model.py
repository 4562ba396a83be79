"""The typed config model on its own: defaults (the pool's DEFAULTS, the README's table),
frozen models refusing unknown keys, ``Literal`` choices, ``provider: chat``, MCP route
paths, the provisioner's one-source rule, ``debug.encoder_cpus``, ``PoolConfig.settings()``."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from proxyfleet.config.model import (
    BackendConfig,
    Config,
    DebugConfig,
    LogConfig,
    McpRouteConfig,
    McpUpstreamConfig,
    PoolConfig,
    ProviderConfig,
    ProvisionerConfig,
    ServerConfig,
    StoreConfig,
    UpstreamConfig,
)
from proxyfleet.pool.pool import DEFAULTS, PoolSettings

README = Path(__file__).resolve().parents[2] / "README.md"


def _error(exc: pytest.ExceptionInfo[ValidationError]) -> tuple[str, str, str]:
    """(dotted location, pydantic's error type, message) of the first error."""
    first = exc.value.errors()[0]
    return ".".join(str(p) for p in first["loc"]), first["type"], first["msg"]


# -- defaults -------------------------------------------------------------------------------


def test_pool_defaults_are_the_pools_own() -> None:
    pool = PoolConfig()
    assert pool.selection == DEFAULTS.selection
    assert pool.queue_limit == DEFAULTS.queue_limit
    assert pool.lease_timeout == DEFAULTS.lease_timeout
    assert pool.unhealthy_after == DEFAULTS.unhealthy_after
    assert pool.cooldown == DEFAULTS.cooldown
    assert pool.settings() == DEFAULTS
    assert Config().pool.settings() == PoolSettings()


def test_settings_carry_each_field_to_its_place() -> None:
    pool = PoolConfig(
        selection="least-busy", queue_limit=7, lease_timeout=1.5, unhealthy_after=9, cooldown=4
    )
    assert pool.settings() == PoolSettings(
        selection="least-busy", queue_limit=7, lease_timeout=1.5, unhealthy_after=9, cooldown=4
    )


def _readme_defaults() -> list[tuple[str, str]]:
    """(dotted field, default as written) from the README's configuration table."""
    rows = []
    for line in README.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 4 or not re.fullmatch(r"`[a-z_.\[\]]+`( / `[a-z_]+`)*", cells[0]):
            continue
        fields = re.findall(r"`([a-z_.\[\]]+)`", cells[0])
        defaults = [d.strip().strip("`") for d in re.split(r" / |, ", cells[1]) if d.strip()]
        if not defaults:
            continue  # a row that explains, with no default
        assert len(defaults) == len(fields), line
        head = fields[0].rsplit(".", 1)[0]
        rows += [(fields[0], defaults[0])]
        rows += [
            (f"{head}.{name}", value) for name, value in zip(fields[1:], defaults[1:], strict=True)
        ]
    return rows


def _default_of(dotted: str) -> object:
    roots: dict[str, Any] = {
        "pool.provisioner": ProvisionerConfig(url="http://127.0.0.1:8000"),
        "mcp[]": McpRouteConfig(upstream=McpUpstreamConfig(command=("server",))),
    }
    for prefix, model in roots.items():
        if dotted.startswith(prefix + "."):
            node: Any = model
            rest = dotted.removeprefix(prefix + ".")
            break
    else:
        node, rest = Config(), dotted
    for part in rest.split("."):
        node = getattr(node, part)
    return node


def _as_written(value: object) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple | list):
        return "[]" if not value else repr(value)
    if isinstance(value, dict):
        return "{}" if not value else repr(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, StoreConfig):
        return value.kind  # written as its shorthand: memory
    if isinstance(value, BaseModel):
        return repr(value)
    return str(value)


def test_the_readme_table_states_the_models_defaults() -> None:
    rows = _readme_defaults()
    assert len(rows) > 50  # the table was read
    wrong = [
        (field, written, _as_written(_default_of(field)))
        for field, written in rows
        if field not in ("pool.provisioner", "mcp") and _as_written(_default_of(field)) != written
    ]
    assert not wrong, wrong


def _leaves(model: type[BaseModel], prefix: str) -> list[str]:
    out = []
    for name, info in model.model_fields.items():
        kind = info.annotation
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            out += _leaves(kind, f"{prefix}{name}.")
        else:
            out.append(prefix + name)
    return out


def test_every_plain_field_is_in_the_readme_table() -> None:
    documented = {field for field, _ in _readme_defaults()}
    documented |= {"pool.provisioner", "mcp"}  # their fields live in the examples
    table = README.read_text()
    missing = [f for f in _leaves(Config, "") if f not in documented and f"`{f}`" not in table]
    assert not missing, missing


def _readme_mcp_fields() -> set[str]:
    """Every field a row of the README's table names under ``mcp[]``, defaults or not
    (```mcp[].upstream.command` / `env` / `cwd``` names three)."""
    named = set()
    for line in README.read_text().splitlines():
        first = line.strip().strip("|").split("|")[0].strip()
        fields = re.findall(r"`([a-z_.\[\]]+)`", first)
        if not fields or not fields[0].startswith("mcp[]."):
            continue
        head = fields[0].rsplit(".", 1)[0]
        named |= {fields[0], *(f"{head}.{name}" for name in fields[1:])}
    return named


def test_every_mcp_route_field_is_in_the_readme_table() -> None:
    missing = sorted(set(_leaves(McpRouteConfig, "mcp[].")) - _readme_mcp_fields())
    assert not missing, missing


# -- strictness -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "where"),
    [
        ({"bogus": 1}, "bogus"),
        ({"server": {"prot": 1}}, "server.prot"),
        ({"upstream": {"base": "http://x"}}, "upstream.base"),
        ({"pool": {"probe": {"every": 1}}}, "pool.probe.every"),
        ({"pool": {"provider": {"mode": "chat", "modle_map": {}}}}, "pool.provider.modle_map"),
        ({"pool": {"backends": [{"id": "a", "key": "k"}]}}, "pool.backends.0.key"),
        ({"log": {"colour": True}}, "log.colour"),
        ({"debug": {"enable": True}}, "debug.enable"),
        ({"mcp": [{"upstream": {"command": ["x"]}, "sessions": 1}]}, "mcp.0.sessions"),
    ],
)
def test_unknown_keys_are_refused_at_every_level(data: dict[str, Any], where: str) -> None:
    with pytest.raises(ValidationError) as caught:
        Config.model_validate(data)
    assert _error(caught)[:2] == (where, "extra_forbidden")


def test_models_are_frozen() -> None:
    config = Config()
    with pytest.raises(ValidationError):
        config.server.port = 1  # type: ignore[misc]
    with pytest.raises(ValidationError):
        config.pool = PoolConfig()  # type: ignore[misc]
    assert config.server.port == 2048


@pytest.mark.parametrize(
    ("model", "field", "good", "bad"),
    [
        (PoolConfig, "selection", ["lru", "round-robin", "least-busy"], ["fastest", "LRU"]),
        (ProviderConfig, "mode", ["passthrough", "chat"], ["responses", ""]),
        (
            ProviderConfig,
            "profile",
            ["generic", "cerebras", "groq", "vllm", "ollama"],
            ["openai"],
        ),
        (ProviderConfig, "reasoning", ["drop", "keep"], ["summarise"]),
        (LogConfig, "level", ["debug", "info", "warning", "error"], ["trace", "INFO"]),
        (LogConfig, "format", ["json", "text"], ["yaml"]),
    ],
)
def test_literal_choices(
    model: type[BaseModel], field: str, good: list[str], bad: list[str]
) -> None:
    for value in good:
        assert getattr(model.model_validate({field: value}), field) == value
    for value in bad:
        with pytest.raises(ValidationError) as caught:
            model.model_validate({field: value})
        assert _error(caught)[:2] == (field, "literal_error")


@pytest.mark.parametrize(
    ("model", "data", "where"),
    [
        (ServerConfig, {"port": -1}, "port"),
        (ServerConfig, {"port": 65536}, "port"),
        (ServerConfig, {"max_body_bytes": 0}, "max_body_bytes"),
        (PoolConfig, {"max_concurrency": 0}, "max_concurrency"),
        (PoolConfig, {"lease_timeout": 0}, "lease_timeout"),
        (PoolConfig, {"retries": -1}, "retries"),
        (UpstreamConfig, {"read_timeout": 0}, "read_timeout"),
        (DebugConfig, {"queue_saturation": 1.5}, "queue_saturation"),
        (DebugConfig, {"flush_interval": 61}, "flush_interval"),
        (BackendConfig, {"id": "has space"}, "id"),
        (BackendConfig, {"id": ""}, "id"),
        (McpRouteConfig, {"upstream": {"command": ["x"]}, "request_timeout": 0}, "request_timeout"),
    ],
)
def test_bounds(model: type[BaseModel], data: dict[str, Any], where: str) -> None:
    with pytest.raises(ValidationError) as caught:
        model.model_validate(data)
    assert _error(caught)[0] == where


def test_port_zero_is_any_free_port() -> None:
    assert ServerConfig(port=0).port == 0


def test_urls_must_be_http_and_lose_their_trailing_slash() -> None:
    assert UpstreamConfig(base_url="https://api.example.com/v1/").base_url == (
        "https://api.example.com/v1"
    )
    assert PoolConfig(upstreams=("http://127.0.0.1:9/v1/",)).upstreams == ("http://127.0.0.1:9/v1",)
    with pytest.raises(ValidationError, match="must be an http:// or https:// URL"):
        PoolConfig(upstreams=("ftp://x",))


def test_secrets_are_hidden_in_repr() -> None:
    backend = BackendConfig(id="a", api_key="sk-secret-1", headers={"Cookie": "c=secret-2"})  # type: ignore[arg-type]
    assert "secret" not in repr(backend)
    assert backend.api_key is not None
    assert backend.api_key.get_secret_value() == "sk-secret-1"


# -- provider shorthand ---------------------------------------------------------------------


def test_provider_chat_is_short_for_mode_chat() -> None:
    assert PoolConfig.model_validate({"provider": "chat"}).provider == ProviderConfig(mode="chat")
    assert PoolConfig.model_validate({"provider": "passthrough"}).provider == ProviderConfig()
    full = PoolConfig.model_validate({"provider": {"mode": "chat", "profile": "groq"}})
    assert (full.provider.mode, full.provider.profile) == ("chat", "groq")


def test_provider_shorthand_still_checks_the_mode() -> None:
    with pytest.raises(ValidationError) as caught:
        PoolConfig.model_validate({"provider": "cerebras"})  # a profile is not a mode
    assert _error(caught)[:2] == ("provider.mode", "literal_error")


# -- MCP routes ------------------------------------------------------------------------------


def _route(path: str) -> McpRouteConfig:
    return McpRouteConfig.model_validate({"path": path, "upstream": {"command": ["srv"]}})


@pytest.mark.parametrize("path", ["/mcp", "/files", "/tools/search", "/v1x", "/livestock"])
def test_mcp_paths_accepted(path: str) -> None:
    assert _route(path).path == path


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("files", "must start with '/'"),
        ("/", "must start with '/'"),
        ("/files/", "not end with one"),
        ("/v1", "taken by the gateway's own routes"),
        ("/v1/mcp", "taken by the gateway's own routes"),
        ("/admin", "taken by the gateway's own routes"),
        ("/admin/mcp", "taken by the gateway's own routes"),
        ("/live", "taken by the gateway's own routes"),
        ("/ready", "taken by the gateway's own routes"),
        ("/health", "taken by the gateway's own routes"),
        ("/metrics", "taken by the gateway's own routes"),
    ],
)
def test_mcp_paths_refused(path: str, reason: str) -> None:
    with pytest.raises(ValidationError) as caught:
        _route(path)
    where, _, message = _error(caught)
    assert where == "path"
    assert reason in message


def test_mcp_default_path() -> None:
    route = McpRouteConfig(upstream=McpUpstreamConfig(url="http://127.0.0.1:8931/mcp"))
    assert route.path == "/mcp"


def test_mcp_requests_are_bounded_in_time_by_default() -> None:
    route = McpRouteConfig(upstream=McpUpstreamConfig(command=("srv",)))
    assert route.request_timeout == 300
    field = McpRouteConfig.model_fields["request_timeout"]
    assert field.description  # what it does is said where it is defined


@pytest.mark.parametrize(
    ("paths", "claimed"),
    [
        (["/a", "/a"], "/a"),
        (["/a", "/a/sse"], "/a/sse"),  # /a serves /a/sse itself
        (["/b/messages", "/b"], "/b/messages"),
    ],
)
def test_two_mcp_routes_cannot_claim_one_path(paths: list[str], claimed: str) -> None:
    routes = [{"path": p, "upstream": {"command": ["srv"]}} for p in paths]
    with pytest.raises(ValidationError) as caught:
        Config.model_validate({"mcp": routes})
    assert f"two MCP routes claim {claimed!r}" in _error(caught)[2]


def test_distinct_mcp_routes() -> None:
    config = Config.model_validate(
        {
            "mcp": [
                {"path": "/files", "upstream": {"command": ["fs"]}},
                {"path": "/search", "upstream": {"url": "http://127.0.0.1:8931/mcp"}},
            ]
        }
    )
    assert [r.path for r in config.mcp] == ["/files", "/search"]


@pytest.mark.parametrize(
    ("upstream", "reason"),
    [
        ({}, "exactly one of 'command'"),
        ({"command": ["x"], "url": "http://127.0.0.1:1/mcp"}, "exactly one of 'command'"),
        ({"url": "http://127.0.0.1:1/mcp", "env": {"A": "1"}}, "'env' and 'cwd' apply"),
        ({"url": "http://127.0.0.1:1/mcp", "cwd": "/tmp"}, "'env' and 'cwd' apply"),
        ({"command": ["x"], "headers": {"Authorization": "k"}}, "'headers' apply"),
    ],
)
def test_mcp_upstream_is_one_kind(upstream: dict[str, Any], reason: str) -> None:
    with pytest.raises(ValidationError) as caught:
        McpUpstreamConfig.model_validate(upstream)
    assert reason in _error(caught)[2]


# -- provisioner ----------------------------------------------------------------------------


def test_provisioner_from_a_url_or_a_command() -> None:
    by_url = ProvisionerConfig(url="http://127.0.0.1:8000/")
    assert by_url.url == "http://127.0.0.1:8000"
    assert by_url.command == ()
    by_command = ProvisionerConfig(command=("provision.sh",))
    assert by_command.url is None
    pool = PoolConfig.model_validate({"provisioner": {"command": ["provision.sh"]}})
    assert pool.provisioner == by_command


@pytest.mark.parametrize(
    "data",
    [
        {},
        {"command": []},
        {"url": "http://127.0.0.1:8000", "command": ["provision.sh"]},
    ],
)
def test_provisioner_needs_exactly_one_source(data: dict[str, Any]) -> None:
    with pytest.raises(ValidationError) as caught:
        ProvisionerConfig.model_validate(data)
    assert "give exactly one of 'url' (an orchestrator) or 'command'" in _error(caught)[2]


def test_provisioner_bounds() -> None:
    with pytest.raises(ValidationError) as caught:
        ProvisionerConfig(url="http://127.0.0.1:8000", min_backends=3, max_backends=2)
    assert "min_backends (3) exceeds max_backends (2)" in _error(caught)[2]
    same = ProvisionerConfig(url="http://127.0.0.1:8000", min_backends=2, max_backends=2)
    assert same.min_backends == same.max_backends == 2
    with pytest.raises(ValidationError, match="http:// or https://"):
        ProvisionerConfig(url="127.0.0.1:8000")


def test_provisioner_api_key_is_secret() -> None:
    provisioner = ProvisionerConfig(url="http://127.0.0.1:8000", api_key="orch-secret")  # type: ignore[arg-type]
    assert "orch-secret" not in repr(provisioner)
    assert "orch-secret" not in provisioner.model_dump_json()


# -- debug ----------------------------------------------------------------------------------


def test_encoder_cpus_that_exist() -> None:
    count = os.cpu_count() or 1
    assert DebugConfig(encoder_cpus=(0,)).encoder_cpus == (0,)
    every = tuple(range(count))
    assert DebugConfig(encoder_cpus=every).encoder_cpus == every
    assert DebugConfig().encoder_cpus == ()


@pytest.mark.parametrize("offset", [0, 5])
def test_encoder_cpus_beyond_the_machine_are_refused(offset: int) -> None:
    count = os.cpu_count() or 1
    cpu = count + offset
    with pytest.raises(ValidationError) as caught:
        DebugConfig(encoder_cpus=(0, cpu))
    where, _, message = _error(caught)
    assert where == "encoder_cpus"
    assert f"CPU {cpu} does not exist here (this machine has 0-{count - 1})" in message


def test_a_negative_encoder_cpu_is_refused() -> None:
    with pytest.raises(ValidationError, match="CPU -1 does not exist here"):
        DebugConfig(encoder_cpus=(-1,))


def test_the_pool_store_is_memory_or_redis() -> None:
    assert PoolConfig().store.kind == "memory"
    assert PoolConfig(store="memory").store.kind == "memory"  # type: ignore[arg-type]
    shared = PoolConfig(store={"redis": {"url": "redis://127.0.0.1:6379/0"}})  # type: ignore[arg-type]
    assert shared.store.kind == "redis"
    assert shared.store.redis is not None
    assert (shared.store.redis.key_prefix, shared.store.redis.lease_ttl) == ("proxyfleet", 15.0)
    with pytest.raises(ValidationError, match="'memory' or"):
        PoolConfig(store="redis")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="url"):
        PoolConfig(store={"redis": {"url": "http://127.0.0.1:6379"}})  # type: ignore[arg-type]
