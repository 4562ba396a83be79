"""The typed configuration model: frozen, unknown keys refused, every choice a ``Literal``.

Runtime state never lives here; see :mod:`proxyfleet.pool` and :mod:`proxyfleet.gateway`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)

from proxyfleet.pool.pool import DEFAULTS, PoolSettings
from proxyfleet.pool.selection import Strategy

__all__ = [
    "BackendConfig",
    "Config",
    "DebugConfig",
    "LogConfig",
    "McpRouteConfig",
    "McpUpstreamConfig",
    "PoolConfig",
    "ProbeConfig",
    "ProviderConfig",
    "ProvisionerConfig",
    "ProvisionerPaths",
    "RedisStoreConfig",
    "ServerConfig",
    "StoreConfig",
    "UpstreamConfig",
]

#: Choices and defaults of the pool come from the pool package itself (one source).
Selection = Strategy


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_http_url(value: str) -> str:
    if not value.startswith(("http://", "https://")):
        raise ValueError("must be an http:// or https:// URL")  # the loader shows the value
    return value.rstrip("/")


HttpUrl = Annotated[str, AfterValidator(_check_http_url)]


class ServerConfig(_Model):
    """Where the gateway listens and what it accepts from clients."""

    host: str = "127.0.0.1"
    port: int = Field(default=2048, ge=0, le=65535)
    max_body_bytes: int = Field(default=10 * 1024 * 1024, gt=0)
    max_header_bytes: int = Field(default=64 * 1024, ge=1024, description="request line + headers")
    max_headers: int = Field(default=100, gt=0)
    header_timeout: float = Field(default=30.0, gt=0, description="seconds for a request head")
    body_timeout: float = Field(default=30.0, gt=0, description="longest pause inside a body")
    max_json_depth: int = Field(default=128, gt=0, le=1000, description="nesting of a JSON body")
    max_sessions: int = Field(default=1024, gt=0, description="concurrent client requests")
    drain_grace: float = Field(default=30.0, ge=0, description="seconds to drain on SIGTERM")
    auth_keys_file: Path | None = None
    admin_allow_remote: bool = Field(
        default=False, description="serve /admin/* to non-loopback clients too"
    )
    models: tuple[str, ...] = ()
    models_cache_ttl: float = Field(default=60.0, ge=0)


class UpstreamConfig(_Model):
    """How the gateway talks to upstreams."""

    base_url: HttpUrl | None = None
    connect_timeout: float = Field(default=10.0, gt=0)
    read_timeout: float = Field(default=600.0, gt=0, description="max silence between bytes")


class ProbeConfig(_Model):
    """Optional active health probe: ``GET <upstream><path>`` every ``interval`` seconds."""

    enabled: bool = False
    path: str = "/models"
    interval: float = Field(default=10.0, gt=0)
    timeout: float = Field(default=5.0, gt=0)


class BackendConfig(_Model):
    """One backend written inline in YAML."""

    id: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.@-]+$")
    upstream: HttpUrl | None = None
    api_key: SecretStr | None = None
    headers: dict[str, SecretStr] = Field(default_factory=dict)
    max_concurrency: int | None = Field(default=None, gt=0)


class ProviderConfig(_Model):
    """How requests reach the upstream: as they are, or translated.

    ``chat`` speaks the Responses API to clients and Chat Completions to the upstream (Cerebras,
    Groq, vLLM, llama.cpp, Ollama…). ``model_map`` renames client models; a model not in it
    becomes ``default_model`` when set, else goes through unchanged.
    """

    mode: Literal["passthrough", "chat"] = "passthrough"
    profile: Literal["generic", "cerebras", "groq", "vllm", "ollama"] = "generic"
    model_map: dict[str, str] = Field(default_factory=dict)
    default_model: str | None = None
    drop_fields: tuple[str, ...] = ()
    reasoning: Literal["drop", "keep"] = "drop"
    ws_responses: int = Field(
        default=8, ge=0, description="responses a WebSocket remembers for previous_response_id"
    )
    ws_memory_bytes: int = Field(
        default=16 * 1024 * 1024, ge=1024, description="bytes of conversation it keeps for them"
    )


class ProvisionerPaths(_Model):
    """The orchestrator's API paths (defaults: the acestream-orchestrator API)."""

    provision: str = "/provision/acestream"
    engines: str = "/engines"
    status: str = "/orchestrator/status"
    stream_started: str = "/events/stream_started"
    stream_ended: str = "/events/stream_ended"
    release: str = Field(default="/containers/{id}", description="DELETE; {id} is the backend id")


class ProvisionerConfig(_Model):
    """Elastic pool: where new backends come from when every backend is busy.

    Either ``url`` (an HTTP orchestrator) or ``command`` (run once per new backend; prints
    ``{"id": ..., "url": ...}`` on stdout). Provisioned backends idle for ``idle_ttl`` seconds
    are released while more than ``min_backends`` remain.
    """

    url: HttpUrl | None = None
    command: tuple[str, ...] = ()
    release_command: tuple[str, ...] = Field(
        default=(), description="run with the backend id appended, when one is released"
    )
    api_key: SecretStr | None = None
    paths: ProvisionerPaths = ProvisionerPaths()
    backend_host: str | None = Field(
        default=None, description="host of provisioned backends (default: the orchestrator's)"
    )
    backend_path: str = "/v1"
    allowed_hosts: tuple[str, ...] = Field(
        default=("127.0.0.1", "::1", "localhost"),
        description="hosts a command provisioner may hand out",
    )
    adopt: bool = Field(default=True, description="take the orchestrator's engines at start")
    min_backends: int = Field(default=0, ge=0)
    max_backends: int = Field(default=10, gt=0)
    idle_ttl: float = Field(default=300.0, gt=0)
    timeout: float = Field(default=30.0, gt=0, description="seconds per orchestrator call")
    attempts: int = Field(default=5, gt=0, description="provisioning attempts per burst")
    backoff: float = Field(default=1.0, gt=0, description="first retry delay without an ETA")
    backoff_cap: float = Field(default=30.0, gt=0)
    breaker_failures: int = Field(default=5, gt=0, description="failures in a row to open")
    breaker_cooldown: float = Field(default=30.0, gt=0)
    status_interval: float = Field(default=5.0, gt=0)
    events: bool = Field(default=True, description="report stream started/ended")
    event_timeout: float = Field(default=2.0, gt=0)

    @model_validator(mode="after")
    def _one_source(self) -> ProvisionerConfig:
        if (self.url is None) == (not self.command):
            raise ValueError("give exactly one of 'url' (an orchestrator) or 'command'")
        if self.min_backends > self.max_backends:
            raise ValueError(
                f"min_backends ({self.min_backends}) exceeds max_backends ({self.max_backends})"
            )
        return self


class RedisStoreConfig(_Model):
    """A pool shared through Redis by every process and host given the same ``url`` and
    ``key_prefix``; Redis holds ids, counters, health and leases, never a credential."""

    url: str = Field(pattern=r"^(redis|rediss|unix)://", description="redis://host:port/db")
    key_prefix: str = Field(default="proxyfleet", min_length=1, pattern=r"^[A-Za-z0-9_.:-]+$")
    lease_ttl: float = Field(default=15.0, ge=1, description="a dead holder's leases end after")
    timeout: float = Field(default=2.0, gt=0, description="seconds for one Redis answer")


class StoreConfig(_Model):
    """Where pool state lives: this process (``memory``, the default) or Redis."""

    redis: RedisStoreConfig | None = None

    @property
    def kind(self) -> str:
        return "memory" if self.redis is None else "redis"


class PoolConfig(_Model):
    """The backend pool: where backends come from and how they are leased."""

    selection: Selection = DEFAULTS.selection
    max_concurrency: int = Field(default=1, gt=0, description="1 = strict single-flight")
    queue_limit: int = Field(default=DEFAULTS.queue_limit, ge=0)
    lease_timeout: float = Field(default=DEFAULTS.lease_timeout, gt=0)
    retries: int = Field(default=2, ge=0)
    unhealthy_after: int = Field(default=DEFAULTS.unhealthy_after, gt=0)
    cooldown: float = Field(default=DEFAULTS.cooldown, ge=0)
    # When a client leaves mid-answer: read the rest of the answer and discard it ("drain",
    # for at most abandon_grace seconds) or close the upstream connection ("close"). A
    # connection the gateway cuts mid-exchange (close, a drain that ran out, a read timeout)
    # keeps its backend leased settle_grace seconds more (see "How the pool behaves").
    abandon: Literal["drain", "close"] = "drain"
    abandon_grace: float = Field(default=30.0, gt=0)
    settle_grace: float = Field(default=DEFAULTS.settle_grace, ge=0)
    probe: ProbeConfig = ProbeConfig()
    provider: ProviderConfig = ProviderConfig()
    credentials_dir: Path | None = None
    upstreams: tuple[HttpUrl, ...] = ()
    backends: tuple[BackendConfig, ...] = ()
    provisioner: ProvisionerConfig | None = None
    store: StoreConfig = StoreConfig()

    def settings(self) -> PoolSettings:
        """How the pool hands out leases, as the pool itself takes it."""
        return PoolSettings(
            self.selection,
            self.queue_limit,
            self.lease_timeout,
            self.unhealthy_after,
            self.cooldown,
            self.settle_grace,
        )

    @field_validator("provider", mode="before")
    @classmethod
    def _provider_shorthand(cls, value: object) -> object:
        """``provider: chat`` is short for ``provider: {mode: chat}``."""
        return {"mode": value} if isinstance(value, str) else value

    @field_validator("store", mode="before")
    @classmethod
    def _store_shorthand(cls, value: object) -> object:
        """``store: memory`` is the default spelled out."""
        if value == "memory":
            return {}
        if isinstance(value, str):
            raise ValueError("must be 'memory' or {redis: {url: redis://host:port/db, ...}}")
        return value


class McpUpstreamConfig(_Model):
    """Where an MCP route's sessions go: a stdio server (``command``, one child process per
    session) or a streamable-HTTP server (``url``, one upstream session per client session)."""

    command: tuple[str, ...] = ()
    env: dict[str, SecretStr] = Field(default_factory=dict, description="added to the child's")
    cwd: Path | None = None
    url: HttpUrl | None = None
    headers: dict[str, SecretStr] = Field(
        default_factory=dict, description="sent to a 'url' upstream (e.g. its Authorization)"
    )

    @model_validator(mode="after")
    def _one_kind(self) -> McpUpstreamConfig:
        if (self.url is None) == (not self.command):
            raise ValueError("give exactly one of 'command' (a stdio server) or 'url'")
        if self.url is not None and (self.env or self.cwd is not None):
            raise ValueError("'env' and 'cwd' apply to a 'command' upstream only")
        if self.command and self.headers:
            raise ValueError("'headers' apply to a 'url' upstream only")
        return self


def _check_mcp_path(value: str) -> str:
    if not value.startswith("/") or value == "/" or value.endswith("/"):
        raise ValueError("must start with '/' and not end with one")
    if value in ("/v1", "/admin") or value.startswith(("/v1/", "/admin/")) or value in _OPS_PATHS:
        raise ValueError(f"{value!r} is taken by the gateway's own routes")
    return value


_OPS_PATHS = frozenset({"/live", "/ready", "/health", "/metrics"})


class McpRouteConfig(_Model):
    """One MCP route: streamable HTTP at ``path`` (POST/GET/DELETE), the legacy SSE transport at
    ``path + "/sse"`` and ``path + "/messages"``."""

    path: Annotated[str, AfterValidator(_check_mcp_path)] = "/mcp"
    upstream: McpUpstreamConfig
    max_sessions: int = Field(default=1000, gt=0)
    max_sessions_per_client: int | None = Field(default=None, gt=0)
    session_idle_timeout: float = Field(default=300.0, gt=0)
    prestart: int = Field(default=0, ge=0, description="stdio children kept started, ready")
    stop_timeout: float = Field(default=5.0, gt=0, description="SIGTERM to SIGKILL, seconds")
    request_timeout: float = Field(
        default=300.0,
        gt=0,
        description="seconds a request waits for its answer; then a JSON-RPC error (-32001) "
        "and notifications/cancelled to the server",
    )


class LogConfig(_Model):
    level: Literal["debug", "info", "warning", "error"] = "info"
    access: bool = False
    format: Literal["json", "text"] = "json"


class DebugConfig(_Model):
    """Debug mode: per-category JSONL timing logs and stress detection (see docs in README)."""

    enabled: bool = False
    dir: Path = Path("debug_logs")
    queue_limit: int = Field(default=10_000, gt=0)
    secret_fields: tuple[str, ...] = ()
    slow_request: float = Field(default=5.0, gt=0)
    slow_selection: float = Field(default=2.0, gt=0)
    slow_requests_per_window: int = Field(default=10, ge=0)
    provisioning_failures_per_window: int = Field(default=5, ge=0)
    queue_saturation: float = Field(default=0.8, gt=0, le=1)
    stress_window: float = Field(default=60.0, gt=0)
    flush_interval: float = Field(default=0.5, gt=0, le=60)
    # Requests per second above which only a share of the ordinary ones (successful, quick,
    # first attempt) get rows, about this many a second; 0 records every one. See "Debug a
    # slow night" in the README.
    sample_above: float = Field(default=100.0, ge=0)
    encoder_cpus: tuple[int, ...] = ()

    @field_validator("encoder_cpus")
    @classmethod
    def _known_cpus(cls, cpus: tuple[int, ...]) -> tuple[int, ...]:
        count = os.cpu_count() or 1
        for cpu in cpus:
            if not 0 <= cpu < count:
                raise ValueError(f"CPU {cpu} does not exist here (this machine has 0-{count - 1})")
        return cpus


class Config(_Model):
    """The whole proxyfleet configuration."""

    server: ServerConfig = ServerConfig()
    upstream: UpstreamConfig = UpstreamConfig()
    pool: PoolConfig = PoolConfig()
    log: LogConfig = LogConfig()
    debug: DebugConfig = DebugConfig()
    mcp: tuple[McpRouteConfig, ...] = ()

    @field_validator("mcp")
    @classmethod
    def _distinct_paths(cls, routes: tuple[McpRouteConfig, ...]) -> tuple[McpRouteConfig, ...]:
        seen: set[str] = set()
        for route in routes:  # each route also serves <path>/sse and <path>/messages
            for path in (route.path, route.path + "/sse", route.path + "/messages"):
                if path in seen:
                    raise ValueError(f"two MCP routes claim {path!r}")
                seen.add(path)
        return routes
