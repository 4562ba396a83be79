"""Running proxies: instances side by side keyed by port (:mod:`.instances`, :mod:`.records`,
:mod:`.lifecycle`, :mod:`.portguard`), and deployments behind nginx (:mod:`.deploy`,
:mod:`.nginx`, :mod:`.manager`, :mod:`.watch`)."""

from proxyfleet.fleet.deploy import Deployment, load_deployment
from proxyfleet.fleet.instances import Fleet

__all__ = ["Deployment", "Fleet", "load_deployment"]
