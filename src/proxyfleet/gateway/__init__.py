"""The HTTP server: OpenAI routes proxied through the pool, WebSocket upgrades, the
operations endpoints, and the uvicorn server with proxyfleet's own signal handling.

:class:`Gateway` is the composition root (:mod:`.app`); the OpenAI routes live in
:mod:`.openai`, forwarding in :mod:`.forward`, the one failover routine in :mod:`.failover`,
what a response was in :mod:`.recording`, WebSockets in :mod:`.websocket` and
:mod:`.translate_ws`, the operations endpoints in :mod:`.ops`, pure request rules in
:mod:`.rules`.
"""

from proxyfleet.gateway.app import Gateway, GatewayState

__all__ = ["Gateway", "GatewayState"]
