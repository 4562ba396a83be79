"""``deploy.yaml``: the multi-process layout, one typed model validated as a whole.

::

    nginx: {port: 8000, worker_processes: 1, worker_connections: 1024}
    redis: {port: 6390}     # or {url: redis://host:6379/0}: the servers' shared pool store
    servers:
      core:   {port: 8003, config: core.yaml, routes: [/], health: /health}
      broker: {port: 8001, instances: 2, command: [python, -m, app, --port, "{port}"],
               routes: [/api/v1/broker], websocket_routes: [/api/v1/broker/ws]}
    routing: {strategy: path, core: core}

Errors name the field: a port used twice names both users, a route claimed twice names both
servers, ``routing.core`` must name a server. Relative paths in the file (a server's
``config``, ``nginx.binary`` and ``redis.binary`` when they hold a ``/``) are relative to
the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    model_validator,
)

from proxyfleet.config.loader import read_yaml
from proxyfleet.errors import ConfigError

__all__ = [
    "Deployment",
    "NginxSettings",
    "RedisSettings",
    "Routing",
    "ServerSpec",
    "load_deployment",
]

Name = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_-]{0,31}$")]
Route = Annotated[str, StringConstraints(pattern=r"^/[A-Za-z0-9._~/-]*$")]
Port = Annotated[int, Field(ge=1, le=65535)]
#: An IP address or a host name: nothing nginx would read as more than one word.
Host = Annotated[str, StringConstraints(pattern=r"^(\[?[0-9A-Fa-f:.]+\]?|[A-Za-z0-9.-]+)$")]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NginxSettings(_Model):
    host: Host = "127.0.0.1"
    port: Port = 8000
    worker_processes: int = Field(default=1, ge=1, le=64)
    worker_connections: int = Field(default=1024, ge=16)
    binary: str | None = None  # a path, or a command name looked up on PATH; default: nginx


class RedisSettings(_Model):
    """``redis:``: the pool store every proxyfleet server of the deployment shares. Either
    ``port`` (``up`` runs ``redis-server`` on 127.0.0.1 there, its files under the runtime
    directory, nothing saved unless ``persist``) or ``url`` (a Redis that exists: checked to
    answer at ``up``, never started or stopped)."""

    port: Port | None = None
    url: str | None = Field(default=None, pattern=r"^(redis|rediss|unix)://")
    persist: bool = False  # append-only file in its directory, kept across down and up
    binary: str | None = None  # a path, or a command name looked up on PATH: redis-server

    @model_validator(mode="after")
    def _one_redis(self) -> RedisSettings:
        if (self.port is None) == (self.url is None):
            raise ValueError(
                "give exactly one of 'port' (up starts redis-server there) or 'url' "
                "(a Redis that runs already)"
            )
        if self.url is not None and (self.persist or self.binary is not None):
            raise ValueError("'persist' and 'binary' are for a Redis that up starts (a 'port')")
        return self

    @property
    def store_url(self) -> str:
        """What every proxyfleet server of the deployment is given as pool.store.redis.url."""
        if self.url is not None:
            return self.url
        return f"redis://127.0.0.1:{self.port}/0"


class ServerSpec(_Model):
    port: Port
    instances: int = Field(default=1, ge=1, le=64)
    config: Path | None = None  # a proxyfleet config: runs 'proxyfleet serve'
    command: tuple[str, ...] | None = None  # any command; "{port}" is replaced
    routes: tuple[Route, ...] = ()
    websocket_routes: tuple[Route, ...] = ()
    health: Route = "/health"

    @model_validator(mode="after")
    def _one_way_to_run(self) -> ServerSpec:
        if (self.config is None) == (self.command is None):
            raise ValueError("give exactly one of 'config' (a proxyfleet config) or 'command'")
        if self.command is not None and not self.command:
            raise ValueError("'command' is empty")
        if self.port + self.instances - 1 > 65535:
            raise ValueError(f"instances {self.instances} from port {self.port} pass 65535")
        return self

    def ports(self) -> list[int]:
        return [self.port + i for i in range(self.instances)]


class Routing(_Model):
    strategy: Literal["path", "query"] = "path"
    query_param: str = Field(default="module", pattern=r"^[a-z_][a-z0-9_]*$")
    core: Name


class Deployment(_Model):
    nginx: NginxSettings = NginxSettings()
    redis: RedisSettings | None = None
    servers: dict[Name, ServerSpec] = Field(min_length=1)
    routing: Routing

    @model_validator(mode="after")
    def _consistent(self) -> Deployment:
        problem = first_problem(self)
        if problem is not None:
            raise ValueError(f"{problem[0]}: {problem[1]}")
        return self

    def stop_order(self) -> list[str]:
        """Functional servers first, the core last."""
        return [n for n in self.servers if n != self.routing.core] + [self.routing.core]


def first_problem(d: Deployment) -> tuple[str, str] | None:
    """The first inconsistency across fields, as (field, reason): pure, for the validator."""
    if d.routing.core not in d.servers:
        return "routing.core", (
            f"{d.routing.core!r} is not one of the servers ({', '.join(sorted(d.servers))})"
        )
    users: dict[int, str] = {d.nginx.port: "nginx.port"}
    if d.redis is not None and d.redis.port is not None:
        if d.redis.port in users:
            return "redis.port", f"port {d.redis.port} is used by both nginx.port and redis.port"
        users[d.redis.port] = "redis.port"
    for name, server in d.servers.items():
        for i, port in enumerate(server.ports()):
            who = f"servers.{name}" + (f" (instance {i + 1})" if server.instances > 1 else "")
            if port in users:
                return (
                    f"servers.{name}.port",
                    f"port {port} is used by both {users[port]} and {who}",
                )
            users[port] = who
    claimed: dict[str, str] = {}
    for name, server in d.servers.items():
        for route in (*server.routes, *server.websocket_routes):
            if route == "/admin/":
                return f"servers.{name}.routes", "/admin/ is reserved (loopback-only admin)"
            if route in claimed and claimed[route] != name:
                return (
                    f"servers.{name}.routes",
                    f"route {route} is claimed by both servers.{claimed[route]} and servers.{name}",
                )
            claimed[route] = name
    return None


def _where(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(p) for p in loc) or "(deployment)"


def load_deployment(path: Path) -> Deployment:
    """Read and validate; ConfigError names the file, the field and the reason (exit 2)."""
    data = read_yaml(path)
    try:
        deployment = Deployment.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        reason = "unknown key" if first["type"] == "extra_forbidden" else first["msg"]
        reason = reason.removeprefix("Value error, ")
        where = _where(tuple(first["loc"]))
        if not first["loc"] and ": " in reason:  # a cross-field problem names its own field
            where, reason = reason.split(": ", 1)
        raise ConfigError(str(path), where, reason) from exc
    base = path.parent
    servers = {
        name: spec.model_copy(update={"config": base / spec.config})
        if spec.config is not None and not spec.config.is_absolute()
        else spec
        for name, spec in deployment.servers.items()
    }
    nginx = deployment.nginx.model_copy(update={"binary": _binary(base, deployment.nginx.binary)})
    redis = deployment.redis
    if redis is not None:
        redis = redis.model_copy(update={"binary": _binary(base, redis.binary)})
    return deployment.model_copy(update={"servers": servers, "nginx": nginx, "redis": redis})


def _binary(base: Path, binary: str | None) -> str | None:
    """A binary given as a path is relative to the deployment file; a bare name stays a name."""
    if binary is not None and "/" in binary and not Path(binary).is_absolute():
        return str(base / binary)
    return binary
