"""Transports: how a request reaches a backend of a given kind.

The gateway depends only on the interface in :mod:`.base` (:class:`Transport`,
:class:`Exchange`, :class:`Channel`, :class:`Request`); :class:`Transports` maps a backend's
``kind`` to its transport. Implementations: ``http`` (:class:`HttpTransport`, the lean
HTTP/1.1 client of the hot path) and ``memory`` (:class:`MemoryTransport`, scripted answers and
faults in the process, for tests).
"""

from proxyfleet.transports.base import Channel, Exchange, Request, Transport, Transports
from proxyfleet.transports.http import HttpTransport
from proxyfleet.transports.memory import Answer, MemoryTransport

__all__ = [
    "Answer",
    "Channel",
    "Exchange",
    "HttpTransport",
    "MemoryTransport",
    "Request",
    "Transport",
    "Transports",
]
