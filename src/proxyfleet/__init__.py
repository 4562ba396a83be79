"""proxyfleet: one public port, many clients, a pool of upstream backends leased one request
at a time."""

__all__ = ["__version__"]

__version__ = "0.1.0"
