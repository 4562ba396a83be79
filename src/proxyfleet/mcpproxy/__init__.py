"""The multi-session MCP proxy: routes on the gateway's port, one upstream per client session.

JSON-RPC framing (:mod:`.jsonrpc`), stdio children (:mod:`.child`), streamable-HTTP upstreams
(:mod:`.remote`), sessions and their registry (:mod:`.session`, :mod:`.registry`), where a
route's upstreams come from and whether its server starts (:mod:`.supply`, :mod:`.health`), the
streamable-HTTP and legacy SSE client side (:mod:`.http`), the gateway's mount
(:mod:`.mount`) and the stdio bridge of ``proxyfleet mcp stdio`` (:mod:`.bridge`). It does not
depend on the gateway: the gateway mounts it.
"""

from proxyfleet.mcpproxy.mount import McpMount

__all__ = ["McpMount"]
