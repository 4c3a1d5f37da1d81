"""SHELL: ZeroMQ CURVE on the sidecar's two sockets and on the client commands' sockets.

Key files are the certificates pyzmq's ``zmq.auth.create_certificates`` writes (czmq's format, which
other ZeroMQ bindings read): ``NAME.key`` holds ``public-key = "<40 Z85 characters>"``, and
``NAME.key_secret`` both keys. ``comfy-bridge keys generate`` writes such a pair (the secret file
mode 0600).

The server side (:class:`ServerCurve`) sets the server keys on the ROUTER and the PUB before they
bind, and answers ZeroMQ's ZAP requests with pyzmq's :class:`~zmq.auth.asyncio.AsyncioAuthenticator`
on the event loop: a client's public key must be one of the ``NAME.key`` files of
``zmq.curve.clients_dir`` (read once, at start). ZAP runs once per connection, at its handshake;
an event sent afterwards costs nothing more in Python (libzmq's I/O thread encrypts it).
``ZAP_ENFORCE_DOMAIN`` is set, so a handshake while no ZAP handler answers is refused, never let in.

A secret key never appears in a log line, an error, ``health`` or a ``repr``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import zmq
from zmq.utils import z85

from .config import CurveConfig
from .errors import ConfigError

__all__ = [
    "ClientCurve",
    "KeyPair",
    "ServerCurve",
    "client_curve",
    "handshake_failure",
    "read_key_file",
    "watch_handshake",
    "write_key_pair",
]

logger = logging.getLogger(__name__)

#: The ZAP domain of both sockets; the authenticator answers for it.
ZAP_DOMAIN = "comfy-bridge"

#: How many refused client keys are remembered (each is logged once); a flood of keys stays bounded.
REFUSED_LOGGED = 1000

_BANNER = """#   ****  Generated on {when} by comfy-bridge  ****
#   ZeroMQ CURVE {kind} Certificate
#   {advice}

metadata
curve
"""


@dataclass(frozen=True)
class KeyPair:
    """Z85 keys (40 ASCII bytes each); ``secret`` is None for a public key file. Its repr hides the secret."""

    public: bytes
    secret: bytes | None = field(default=None, repr=False)


def _valid_z85(key: bytes | None) -> bool:
    if key is None or len(key) != 40:
        return False
    try:
        return len(z85.decode(key)) == 32
    except (ValueError, KeyError, TypeError):
        return False


def read_key_file(path: str | Path, what: str, secret: bool) -> KeyPair:
    """A certificate file's keys; a :class:`ConfigError` names ``what`` (the key or flag) and the file,
    never the file's contents. ``secret``: the file must hold the secret key too (a ``.key_secret``)."""
    import zmq.auth  # on first use: a client command without keys does not import it

    try:
        public, secret_key = zmq.auth.load_certificate(path)
    except OSError as exc:
        raise ConfigError(f"{what}: cannot read the key file {str(path)!r}: {exc.strerror or 'no such file'}") from None
    except ValueError:
        raise ConfigError(f"{what}: {str(path)!r} is not a CURVE key file (no public-key line)") from None
    if not _valid_z85(public):
        raise ConfigError(f"{what}: {str(path)!r}: its public-key is not a 40-character Z85 CURVE key")
    if secret:
        if secret_key is None:
            raise ConfigError(f"{what}: {str(path)!r} holds no secret key; give the NAME.key_secret file of the pair")
        if not _valid_z85(secret_key):
            raise ConfigError(f"{what}: {str(path)!r}: its secret-key is not a 40-character Z85 CURVE key")
        return KeyPair(public, secret_key)
    return KeyPair(public)


def write_key_pair(directory: str | Path, name: str, force: bool = False) -> tuple[Path, Path]:
    """Write ``NAME.key`` (public) and ``NAME.key_secret`` (mode 0600) in ``directory`` (made 0700 if
    absent); returns both paths. An existing file is kept unless ``force``."""
    directory = Path(directory)
    public_path, secret_path = directory / f"{name}.key", directory / f"{name}.key_secret"
    if not force:
        for path in (public_path, secret_path):
            if path.exists():
                raise ConfigError(f"{path} exists; use --force to overwrite")
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot make {directory}: {exc.strerror or exc}") from None
    public, secret = zmq.curve_keypair()
    when = datetime.now(UTC).isoformat(timespec="seconds")
    public_text = (
        _BANNER.format(
            when=when,
            kind="Public",
            advice="Give it to whoever must know this key: clients, or the server's clients_dir.",
        )
        + f'    public-key = "{public.decode()}"\n'
    )
    secret_text = (
        _BANNER.format(when=when, kind="**Secret**", advice="DO NOT PROVIDE THIS FILE TO OTHER USERS.")
        + f'    public-key = "{public.decode()}"\n    secret-key = "{secret.decode()}"\n'
    )
    _write(public_path, public_text, 0o644)
    _write(secret_path, secret_text, 0o600)
    return public_path, secret_path


def _write(path: Path, text: str, mode: int) -> None:
    """Created with its final mode (a secret is never readable by others, not even for a moment)."""
    try:
        if path.exists():
            path.unlink()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        with os.fdopen(fd, "w", encoding="ascii") as out:
            out.write(text)
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror or exc}") from None


class ServerCurve:
    """The server's keys and the allowed client keys of ``[zmq.curve]``; read at construction."""

    def __init__(self, config: CurveConfig) -> None:
        self.keys = read_key_file(config.server_secret_key, "key 'zmq.curve.server_secret_key'", secret=True)
        directory = Path(config.clients_dir)
        if not directory.is_dir():
            raise ConfigError(f"key 'zmq.curve.clients_dir': {config.clients_dir!r} is not a directory")
        allowed = set()
        for path in sorted(directory.glob("*.key")):
            allowed.add(read_key_file(path, "key 'zmq.curve.clients_dir'", secret=False).public)
        if not allowed:
            raise ConfigError(
                f"key 'zmq.curve.clients_dir': {config.clients_dir!r} holds no NAME.key file: no client could connect"
            )
        self.allowed = frozenset(allowed)
        self.accepted = 0
        self.refused = 0
        self._refused_keys: set[bytes] = set()
        self._auth: Any = None  # zmq.auth.asyncio.AsyncioAuthenticator once started

    def apply(self, socket: zmq.Socket[Any]) -> None:
        """Make ``socket`` a CURVE server; call before it binds (connections copy the options)."""
        assert self.keys.secret is not None
        socket.setsockopt(zmq.CURVE_SERVER, 1)
        socket.setsockopt(zmq.CURVE_SECRETKEY, self.keys.secret)
        socket.setsockopt(zmq.CURVE_PUBLICKEY, self.keys.public)
        socket.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)  # no ZAP handler answering: refused, not let in
        socket.setsockopt(zmq.ZAP_DOMAIN, ZAP_DOMAIN.encode())

    def start(self, context: zmq.Context[Any]) -> None:
        """Answer ZAP requests on the running event loop (``inproc://zeromq.zap.01`` of ``context``)."""
        from zmq.auth.asyncio import AsyncioAuthenticator  # the server's alone: client commands start faster

        auth = AsyncioAuthenticator(context, log=logging.getLogger("sidecar.curve.zap"))
        auth.start()
        auth.configure_curve_callback(domain=ZAP_DOMAIN, credentials_provider=self)
        self._auth = auth

    def start_thread(self, context: zmq.Context[Any]) -> None:
        """As :meth:`start`, for a process without an event loop (``comfy-bridge proxy``)."""
        from zmq.auth.thread import ThreadAuthenticator

        auth = ThreadAuthenticator(context, log=logging.getLogger("sidecar.curve.zap"))
        auth.start()
        auth.configure_curve_callback(domain=ZAP_DOMAIN, credentials_provider=self)
        self._auth = auth

    def callback(self, domain: str, key: bytes) -> bool:
        """pyzmq's credentials-provider hook: is this Z85 client key allowed? Each refused key is logged
        once (a public key is no secret; the client's address is not known here)."""
        if key in self.allowed:
            self.accepted += 1
            return True
        self.refused += 1
        if key not in self._refused_keys and len(self._refused_keys) < REFUSED_LOGGED:
            self._refused_keys.add(key)
            logger.warning("CURVE: refused a client whose public key %s is not in zmq.curve.clients_dir", key.decode())
        return False

    def stats(self) -> dict[str, Any]:
        """health's ``curve`` map (docs/PROTOCOL.md §5.8)."""
        return {"enabled": True, "clients": len(self.allowed), "accepted": self.accepted, "refused": self.refused}

    def stop(self) -> None:
        """Idempotent; before the context is terminated (the ZAP socket belongs to it)."""
        if self._auth is not None:
            self._auth.stop()
            self._auth = None


@dataclass(frozen=True)
class ClientCurve:
    """What a client socket needs: the server's public key and the client's own pair."""

    server_public: bytes
    client: KeyPair

    def apply(self, socket: zmq.Socket[Any]) -> None:
        """Call before ``connect``."""
        assert self.client.secret is not None
        socket.setsockopt(zmq.CURVE_SERVERKEY, self.server_public)
        socket.setsockopt(zmq.CURVE_PUBLICKEY, self.client.public)
        socket.setsockopt(zmq.CURVE_SECRETKEY, self.client.secret)


SERVER_KEY_ENV = "COMFY_BRIDGE_CURVE_SERVER_KEY"
CLIENT_KEY_ENV = "COMFY_BRIDGE_CURVE_CLIENT_KEY"


def client_curve(
    server_key: str | None, client_key: str | None, env: Callable[[str], str | None] = os.environ.get
) -> ClientCurve | None:
    """The client commands' keys, from ``--curve-server-key`` / ``--curve-client-key`` or else the
    environment variables; None when neither is given (CURVE off)."""
    server_key = server_key or env(SERVER_KEY_ENV) or None
    client_key = client_key or env(CLIENT_KEY_ENV) or None
    if server_key is None and client_key is None:
        return None
    if server_key is None or client_key is None:
        given, missing = ("--curve-server-key", "--curve-client-key")[:: 1 if server_key else -1]
        raise ConfigError(f"{given} needs {missing} too (or ${SERVER_KEY_ENV} and ${CLIENT_KEY_ENV})")
    server = read_key_file(server_key, "--curve-server-key", secret=False)
    return ClientCurve(server.public, read_key_file(client_key, "--curve-client-key", secret=True))


_HANDSHAKE_FAILED = zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
_HANDSHAKE_FAILED |= zmq.EVENT_HANDSHAKE_FAILED_AUTH


def watch_handshake(socket: zmq.Socket[Any]) -> zmq.Socket[Any]:
    """A monitor of ``socket``'s failed handshakes (call before ``connect``), for :func:`handshake_failure`."""
    return socket.get_monitor_socket(_HANDSHAKE_FAILED)


def handshake_failure(monitor: zmq.Socket[Any], curve: bool) -> str | None:
    """Why the handshakes reported on ``monitor`` failed, in words; None when none did. Closes it.

    ``curve``: the client used keys. ZeroMQ retries a failed connection, so several events may
    be there; the most telling one speaks (a refused key, then a mechanism mismatch)."""
    from zmq.utils.monitor import recv_monitor_message

    seen = set()
    try:
        while monitor.poll(0):
            seen.add(recv_monitor_message(monitor, zmq.NOBLOCK)["event"])
    finally:
        monitor.close(linger=0)
    if zmq.EVENT_HANDSHAKE_FAILED_AUTH in seen:
        return "the sidecar refused this client's CURVE key (it is not in its zmq.curve.clients_dir)"
    if not seen:
        return None
    if not curve:
        return "the sidecar uses CURVE and this client gave no keys (--curve-server-key, --curve-client-key)"
    if zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL in seen:
        return "the sidecar does not use CURVE (try without the keys)"
    return "the CURVE handshake failed: is --curve-server-key the sidecar's public key?"
