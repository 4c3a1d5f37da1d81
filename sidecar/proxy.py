"""SHELL: ``comfy-bridge proxy``: one address for the events of many sidecars (docs/deployment.md).

A thin wrapper around ``zmq.proxy``: an ``XSUB`` socket **connects** to each sidecar's ``PUB``
(sidecars always bind, so adding a sidecar means restarting the proxy with one more ``--xsub``,
never touching the sidecars), and an ``XPUB`` socket **binds** where subscribers connect.
Subscriptions flow up (each subscriber's topic prefixes reach every sidecar, so a sidecar still
filters at the source) and events flow down, byte for byte: every envelope keeps its ``sidecar``,
``run`` and ``seq``, so a subscriber follows each sidecar as it would directly
(docs/PROTOCOL.md §7.3).

With CURVE (the sidecars' ``[zmq.curve]``): the ``XPUB`` is a CURVE server with the key pair and
allowed client keys of ``[zmq.curve]`` in ``--config`` (subscribers connect to it as to a sidecar),
and the ``XSUB`` connects to each sidecar as a CURVE client with ``--curve-server-key`` (the fleet's
server key) and ``--curve-client-key`` (the proxy's own pair, listed by every sidecar). As a
sidecar's, an ``XPUB`` bound beyond this host without CURVE is refused unless ``zmq.allow_open_bind``.

Its one limit: the proxy keeps no state. A subscriber that joins late, or loses events, still
asks each sidecar's ``ROUTER`` for a ``snapshot``; requests never go through the proxy.

The ``XPUB`` has its own send queue per subscriber (``--hwm``, like ``zmq.pub_hwm``): a slow
subscriber of the proxy loses events on its own connection only, as with a sidecar's ``PUB``.
The ``XSUB``'s receive queue per sidecar is set the same, so the proxy itself falling behind
would drop whole events, which subscribers see as a gap in that sidecar's ``seq``.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from typing import Any

import zmq

from .curve import ClientCurve, ServerCurve

__all__ = ["Proxy", "serve"]

logger = logging.getLogger(__name__)


class Proxy:
    """The two sockets; :meth:`run` forwards until it is steered to stop."""

    def __init__(
        self,
        sources: list[str],
        xpub: str,
        hwm: int = 10_000,
        ctx: zmq.Context[Any] | None = None,
        server: ServerCurve | None = None,
        client: ClientCurve | None = None,
    ) -> None:
        if not sources:
            raise ValueError("the proxy needs at least one sidecar PUB endpoint (--xsub)")
        self.ctx: zmq.Context[Any] = ctx or zmq.Context()
        self.xsub: zmq.Socket[Any] = self.ctx.socket(zmq.XSUB)
        self.xpub: zmq.Socket[Any] = self.ctx.socket(zmq.XPUB)
        for sock in (self.xsub, self.xpub):
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.RCVHWM, hwm)
            sock.setsockopt(zmq.SNDHWM, hwm)
        # CURVE, before bind and connect: the XPUB a server towards subscribers, the XSUB a client of
        # each sidecar's PUB (the fleet's one server key; the proxy's pair listed by every sidecar).
        if server is not None:
            server.apply(self.xpub)
        if client is not None:
            client.apply(self.xsub)
        try:
            self.xpub.bind(xpub)
            for source in sources:
                self.xsub.connect(source)
        except zmq.ZMQError:
            self.close()
            raise
        self.endpoint: str = self.xpub.getsockopt_string(zmq.LAST_ENDPOINT)
        self.sources = sources

    def run(self, control: str) -> None:
        """Forward events down and subscriptions up until ``TERMINATE`` arrives on the ``PAIR``
        bound at ``control`` (``zmq.proxy_steerable``), or the context is terminated."""
        steer: zmq.Socket[Any] = self.ctx.socket(zmq.PAIR)
        try:
            steer.connect(control)
            zmq.proxy_steerable(self.xsub, self.xpub, None, steer)
        except zmq.ContextTerminated:
            pass
        finally:
            steer.close(0)

    def close(self) -> None:
        """Idempotent."""
        self.xsub.close(0)
        self.xpub.close(0)


def serve(
    sources: list[str],
    xpub: str,
    hwm: int,
    ready: Callable[[Proxy], None] | None = None,
    server: ServerCurve | None = None,
    client: ClientCurve | None = None,
) -> int:
    """``comfy-bridge proxy`` until SIGINT or SIGTERM; returns the exit code (0, or 1 if forwarding
    failed).

    A Python signal handler runs only between bytecodes: a signal that lands while ``zmq_proxy``
    is busy forwarding (not asleep in ``poll``, which it would interrupt) only sets CPython's flag,
    and ``zmq_proxy`` never returns to act on it. So both signals are blocked before the first
    thread starts (every thread inherits the mask: the signal stays pending until taken),
    forwarding runs in a thread of its own, and this thread takes the signal with
    ``sigtimedwait`` and steers the proxy to stop.
    """
    signals = {signal.SIGINT, signal.SIGTERM}
    previous_mask = signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    try:
        ctx: zmq.Context[Any] = zmq.Context()
        if server is not None:
            server.start_thread(ctx)  # ZAP answers before the XPUB takes a connection
        try:
            proxy = Proxy(sources, xpub, hwm, ctx, server, client)
        except BaseException:
            if server is not None:
                server.stop()
            ctx.term()
            raise
        return _forward(proxy, signals, ready, server)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous_mask)


def _forward(
    proxy: Proxy, signals: set[signal.Signals], ready: Callable[[Proxy], None] | None, server: ServerCurve | None
) -> int:
    """Run :meth:`Proxy.run` in a thread until a signal in ``signals`` (blocked) arrives."""
    control = f"inproc://proxy-control-{id(proxy):x}"
    steer: zmq.Socket[Any] = proxy.ctx.socket(zmq.PAIR)
    steer.setsockopt(zmq.LINGER, 0)
    steer.bind(control)
    failure: list[BaseException] = []

    def forward() -> None:
        try:
            proxy.run(control)
        except BaseException as exc:  # reported by the main thread, which then exits 1
            failure.append(exc)

    forwarder = threading.Thread(target=forward, name="zmq-proxy", daemon=True)
    forwarder.start()
    try:
        logger.info("proxy: XPUB on %s, XSUB connected to %s", proxy.endpoint, ", ".join(proxy.sources))
        if ready is not None:
            ready(proxy)
        while forwarder.is_alive():  # a second at a time, so a forwarder that died is noticed
            received = signal.sigtimedwait(signals, 1.0)
            if received is not None:
                logger.info("proxy: %s: stopping", signal.Signals(received.si_signo).name)
                break
    finally:
        if forwarder.is_alive():
            steer.send(b"TERMINATE")
            forwarder.join()
        steer.close(0)
        proxy.close()
        if server is not None:
            server.stop()
        proxy.ctx.term()
    if failure:
        logger.error("proxy: forwarding stopped: %s", failure[0])
        return 1
    return 0


def add_parser(sub: Any) -> None:
    """The ``proxy`` subcommand's flags (called by ``cli_args.parser``)."""
    parser = sub.add_parser(
        "proxy",
        help="one address for the events of several sidecars (zmq_proxy: XSUB to XPUB)",
        description="Forward the events of several sidecars to subscribers that connect to one address. "
        "Requests (and the snapshot a late joiner needs) still go to each sidecar's ROUTER.",
    )
    parser.add_argument(
        "--xsub",
        "--from",
        dest="xsub",
        action="append",
        metavar="ENDPOINT",
        help="a sidecar's PUB endpoint, which the XSUB connects to; repeatable (default: each [fleet] pub)",
    )
    parser.add_argument("--xpub", required=True, metavar="ENDPOINT", help="where the XPUB binds for subscribers")
    parser.add_argument("--hwm", type=int, default=10_000, metavar="N", help="each subscriber's queue, in events")
    parser.add_argument(
        "--config", metavar="FILE", help="config: its [fleet] tables name the sidecars, its [zmq.curve] is the XPUB's"
    )
    parser.add_argument("--curve-server-key", metavar="FILE", help="the sidecars' public NAME.key (XSUB with CURVE)")
    parser.add_argument("--curve-client-key", metavar="FILE", help="the proxy's NAME.key_secret (listed by sidecars)")


def command(args: Any) -> int:
    """``comfy-bridge proxy``: a :class:`~sidecar.errors.ConfigError` or SidecarError names what is wrong."""
    from .errors import ConfigError, SidecarError
    from .fleet import _fleet_config

    sources = list(args.xsub or [member.pub for member in _fleet_config(args.config).values()])
    if not sources:
        raise ConfigError("proxy: give the sidecars' PUB endpoints with --xsub (repeatable), or [fleet] tables")
    if args.hwm < 1:
        raise ConfigError(f"--hwm {args.hwm}: must be at least 1")
    from .config import load
    from .curve import client_curve
    from .endpoints import local_only

    zmq_config = load(args.config).zmq if args.config else None
    server = ServerCurve(zmq_config.curve) if zmq_config is not None and zmq_config.curve.server_secret_key else None
    open_bind = "://" in args.xpub and not local_only(args.xpub)  # not an endpoint at all: the bind says so
    if server is None and open_bind and not (zmq_config is not None and zmq_config.allow_open_bind):
        raise ConfigError(
            f"--xpub {args.xpub!r} can be reached from other hosts and CURVE is off; give --config with"
            " [zmq.curve] (keys: `comfy-bridge keys generate`), bind to 127.0.0.1 or ipc://, or set"
            " zmq.allow_open_bind = true in that config to serve it unauthenticated"
        )
    client = client_curve(args.curve_server_key, args.curve_client_key)
    try:
        return serve(sources, args.xpub, args.hwm, server=server, client=client)
    except zmq.ZMQError as exc:
        raise SidecarError(f"proxy: cannot bind {args.xpub} or connect to {', '.join(sources)}: {exc}") from None
