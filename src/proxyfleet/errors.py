"""The one exception hierarchy of proxyfleet.

::

    ProxyfleetError                      any error of ours
    ├── ConfigError                      bad config: file, field, reason (exit code 2)
    ├── StateError                       an object used outside its lifecycle (after close…)
    ├── ClientGone                       the client disconnected: nothing more is sent
    ├── ListenError                      the listening address cannot be bound (port busy…)
    ├── StoreConflict                    a shared pool store disagrees with this config (exit 2)
    ├── ProvisionerError                 a provisioner call failed (transport, refusal, bad answer)
    │   └── ProvisionerAuthError         the orchestrator refused our key (401/403): no retry helps
    ├── InvalidMessage                   not JSON-RPC 2.0 (an MCP body or line); knows its code
    ├── UpstreamGone                     an MCP session's upstream exited or is being stopped
    └── GatewayError                     an error a client sees as HTTP + OpenAI error body
        ├── BadRequest                   400 invalid_request_error
        │   ├── PayloadTooLarge          413
        │   └── UpgradeRequired          426 a WebSocket-only route asked for as plain HTTP
        ├── Unauthorized                 401 invalid_api_key
        ├── NotFound                     404
        ├── Overloaded                   503 too many concurrent client requests
        │   └── SessionLimit             503 MCP max_sessions / max_sessions_per_client
        ├── PoolError                    503, a lease could not be had
        │   ├── LeaseTimeout             waited longer than lease_timeout
        │   ├── QueueFull                the waiting queue is full
        │   ├── NoHealthyBackend         every backend is quarantined or draining
        │   ├── PoolClosed               the pool is shutting down
        │   ├── StoreUnavailable         the shared pool store (Redis) cannot be reached
        │   ├── ProvisioningBlocked      the orchestrator says it cannot provision now
        │   ├── ProvisioningFailed       provisioning failed (or its circuit breaker is open)
        │   └── ProvisioningUnauthorized 503 the orchestrator refuses the gateway's key
        └── UpstreamError                502 the upstream failed (connect, timeout, 5xx)
            ├── UpstreamTimeout          504 no answer, or silent too long mid-answer
            ├── UpstreamClosed           the upstream closed the connection mid-answer
            ├── UpstreamProtocolError    the upstream's answer is not valid HTTP/1.1
            ├── UpstreamRefused          the upstream refused a WebSocket (its HTTP status)
            └── SpawnFailed              502 an MCP server command could not be started

Foreign errors (aiohttp, OSError, pydantic, yaml) are translated where they enter our code,
with ``raise … from exc``: a transport (:mod:`proxyfleet.transports`) raises only
``UpstreamError`` and its subclasses, so the gateway catches only our errors. Each
``GatewayError`` knows its HTTP status, its OpenAI error type and code, and optionally a
``Retry-After`` in seconds.
"""

from __future__ import annotations

__all__ = [
    "BadRequest",
    "ClientGone",
    "ConfigError",
    "GatewayError",
    "InvalidMessage",
    "LeaseTimeout",
    "ListenError",
    "NoHealthyBackend",
    "NotFound",
    "Overloaded",
    "PayloadTooLarge",
    "PoolClosed",
    "PoolError",
    "ProvisionerAuthError",
    "ProvisionerError",
    "ProvisioningBlocked",
    "ProvisioningFailed",
    "ProvisioningUnauthorized",
    "ProxyfleetError",
    "QueueFull",
    "SessionLimit",
    "SpawnFailed",
    "StateError",
    "StoreConflict",
    "StoreUnavailable",
    "Unauthorized",
    "UpgradeRequired",
    "UpstreamClosed",
    "UpstreamError",
    "UpstreamGone",
    "UpstreamProtocolError",
    "UpstreamRefused",
    "UpstreamTimeout",
]


class ProxyfleetError(Exception):
    """Base of every error raised by proxyfleet."""


class ConfigError(ProxyfleetError):
    """Invalid configuration: ``source`` is the file, env var or flag; ``field`` the dotted path."""

    exit_code = 2

    def __init__(self, source: str, field: str, reason: str) -> None:
        self.source = source
        self.field = field
        self.reason = reason
        where = f"{source}: {field}" if field else source
        super().__init__(f"{where}: {reason}")


class StateError(ProxyfleetError):
    """An object was used outside of its lifecycle (before open or after close)."""


class StoreConflict(ProxyfleetError):
    """A shared pool store cannot take this process as configured (other processes serve it
    with other backends): a start-up error."""

    exit_code = 2


class ClientGone(ProxyfleetError):
    """The client disconnected; the request is abandoned and its lease released."""


class ListenError(ProxyfleetError):
    """The gateway (or the mock) cannot listen where it was told to (exit code 1)."""

    exit_code = 1


class ProvisionerError(ProxyfleetError):
    """A provisioner call failed. ``retryable`` says whether trying again may help; ``eta`` is
    the orchestrator's own estimate (seconds) of when it will, if it gave one."""

    def __init__(
        self,
        message: str,
        *,
        code: str = "provisioner_error",
        retryable: bool = True,
        eta: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.retryable = retryable
        self.eta = eta


class ProvisionerAuthError(ProvisionerError):
    """The orchestrator refused the provisioner's key: 401 (none sent, or not as a bearer) or
    403 (a wrong one), as ``status``. Never retryable: only a fixed config helps."""

    def __init__(self, message: str, *, status: int) -> None:
        super().__init__(message, code="unauthorized", retryable=False)
        self.status = status


class InvalidMessage(ProxyfleetError):
    """Not JSON-RPC 2.0 (the text says why); ``code`` is the JSON-RPC error code for it."""

    def __init__(self, message: str, code: int = -32600) -> None:
        super().__init__(message)
        self.code = code


class UpstreamGone(ProxyfleetError):
    """An MCP session's upstream cannot take messages: it exited or is being stopped."""


class GatewayError(ProxyfleetError):
    """An error that reaches the client as an HTTP response in the OpenAI error shape."""

    status = 500
    error_type = "server_error"
    code = "internal_error"

    def __init__(
        self, message: str, *, code: str | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.retry_after = retry_after

    def body(self) -> dict[str, dict[str, str | None]]:
        return {"error": {"message": self.message, "type": self.error_type, "code": self.code}}


class BadRequest(GatewayError):
    status = 400
    error_type = "invalid_request_error"
    code = "invalid_request"


class PayloadTooLarge(BadRequest):
    status = 413
    code = "payload_too_large"


class UpgradeRequired(BadRequest):
    """A WebSocket-only route (``GET /v1/responses``) asked for without the Upgrade headers;
    a proxy in front may have dropped them. Never forwarded as plain HTTP."""

    status = 426
    code = "websocket_required"


class Unauthorized(GatewayError):
    status = 401
    error_type = "invalid_request_error"
    code = "invalid_api_key"


class NotFound(GatewayError):
    status = 404
    error_type = "invalid_request_error"
    code = "not_found"


class Overloaded(GatewayError):
    status = 503
    error_type = "server_error"
    code = "too_many_sessions"


class SessionLimit(Overloaded):
    pass


class PoolError(GatewayError):
    status = 503
    error_type = "server_error"
    code = "pool_unavailable"


class LeaseTimeout(PoolError):
    code = "lease_timeout"


class QueueFull(PoolError):
    code = "queue_full"


class NoHealthyBackend(PoolError):
    code = "no_healthy_backend"


class PoolClosed(PoolError):
    code = "shutting_down"


class ProvisioningBlocked(PoolError):
    code = "provisioning_blocked"


class StoreUnavailable(PoolError):
    """The shared pool store (Redis) does not answer: no lease can be had or settled now (at
    start, the gateway exits 2)."""

    code = "store_unavailable"
    exit_code = 2


class ProvisioningFailed(PoolError):
    code = "provisioning_failed"


class ProvisioningUnauthorized(PoolError):
    """Backends cannot be provisioned: the orchestrator refuses the gateway's key. Sent without
    ``Retry-After``: retrying will not help until the config is fixed."""

    code = "provisioning_unauthorized"


class UpstreamError(GatewayError):
    status = 502
    error_type = "server_error"
    code = "upstream_error"


class UpstreamTimeout(UpstreamError):
    status = 504
    code = "upstream_timeout"


class UpstreamClosed(UpstreamError):
    """The upstream closed the connection before its answer was complete."""


class UpstreamProtocolError(UpstreamError):
    """The upstream sent something that is not HTTP/1.1."""


class UpstreamRefused(UpstreamError):
    """The upstream answered a WebSocket handshake with ``upstream_status`` instead of 101."""

    def __init__(self, message: str, upstream_status: int) -> None:
        super().__init__(message)
        self.upstream_status = upstream_status


class SpawnFailed(UpstreamError):
    code = "upstream_unavailable"
