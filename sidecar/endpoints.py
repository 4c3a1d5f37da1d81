"""Which ZeroMQ endpoints may be bound without CURVE (``zmq.allow_open_bind``, docs/PROTOCOL.md §12).

Loopback (127.0.0.0/8, ::1, ``localhost``), ``ipc://`` and ``inproc://`` are reachable from this host
only; anything else (``tcp://0.0.0.0``, ``tcp://*``, an interface or host name, another transport)
may be reached from other hosts, where anyone could submit, cancel and read every job.
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING

from .errors import ConfigError

if TYPE_CHECKING:
    from .config import BridgeConfig

__all__ = ["check_binds", "local_only"]


def local_only(endpoint: str) -> bool:
    """``ipc://``, ``inproc://``, or ``tcp://`` on a loopback host (127.0.0.0/8, ::1, localhost)."""
    scheme, sep, rest = endpoint.partition("://")
    if not sep:
        return False
    if scheme in ("ipc", "inproc"):
        return True
    if scheme != "tcp":
        return False
    host = rest.rpartition(":")[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # "*", an interface name, a host name: reachable from elsewhere
        return False


def check_binds(config: BridgeConfig) -> None:
    """Refuse a ROUTER or PUB bound beyond this host without CURVE, unless ``zmq.allow_open_bind``:
    anyone who reaches the ROUTER can submit and cancel, anyone who reaches the PUB reads every job."""
    if config.zmq.curve.server_secret_key or config.zmq.allow_open_bind:
        return
    for key, endpoint in (("zmq.router", config.zmq.router), ("zmq.pub", config.zmq.pub)):
        if not local_only(endpoint):
            raise ConfigError(
                f"key '{key}': {endpoint!r} can be reached from other hosts and CURVE is off; set"
                " zmq.curve.server_secret_key and zmq.curve.clients_dir (keys: `comfy-bridge keys generate`),"
                " bind to 127.0.0.1 or ipc://, or set zmq.allow_open_bind = true to serve it unauthenticated"
            )
