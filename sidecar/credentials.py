"""An instance's credentials and TLS settings, resolved once at start-up, and the masking of secrets.

:func:`resolve` turns an ``[instances.NAME]`` table into :class:`Credentials`: the base URL
requests go to (userinfo and query moved out of it), the headers every HTTP request and the
WebSocket upgrade carry (``Authorization`` from ``token`` or ``username``/``password``, extra
``headers``), the query parameters every request carries (``query_token``, the URL's own
query), and the TLS context of an ``https://`` URL (``ca_file``; ``tls_verify = false``).
Secrets may be literal or named by an environment variable (``*_env`` keys); a variable that
is not set is a :class:`~sidecar.errors.ConfigError` naming the variable, never a value.

Secrets never leave this module unmasked except towards ComfyUI: :attr:`Credentials.url` is
the URL with its password and query values masked (logs, events, ``health``, the state file),
:meth:`Credentials.redact` masks every secret in a text (an error message), :class:`Secret`
and :class:`Credentials` have masked reprs, and :class:`RedactingLogger` masks what the
WebSocket library logs at DEBUG (it logs the upgrade request's headers).
"""

from __future__ import annotations

import base64
import logging
import os
import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, quote_plus, unquote, urlencode, urlsplit, urlunsplit

from .errors import ConfigError

if TYPE_CHECKING:
    from .config import InstanceConfig

__all__ = ["MASK", "Credentials", "RedactingLogger", "Secret", "auth_refused", "mask_url", "resolve"]

MASK = "***"
_USERINFO = re.compile(r"//[^/?#]*@")
_QUERY_VALUE = re.compile(r"([?&][^=&#]*=)[^&#]*")


class Secret:
    """A secret string whose ``repr`` and ``str`` are masked; :meth:`reveal` gives the value."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"Secret({MASK!r})"

    __str__ = __repr__

    def __bool__(self) -> bool:
        return bool(self._value)


def mask_url(url: str) -> str:
    """``url`` with its userinfo and every query value masked; works on a URL that does not parse."""
    return _QUERY_VALUE.sub(rf"\1{MASK}", _USERINFO.sub(f"//{MASK}@", url))


def auth_refused(status: int, where: str) -> str:
    """The instance error for a 401/403 answer (``health``'s ``last_error``, ``instance.status``)."""
    return f"authentication refused by ComfyUI (HTTP {status}) on {where}; check the instance's credentials"


@dataclass(frozen=True, repr=False)
class Credentials:
    """What every request to one instance carries. Build with :func:`resolve` (or :meth:`plain`)."""

    base_url: str  #: where requests go: no userinfo, no query, no trailing slash
    url: str  #: the URL as shown in logs, events and ``health``: secrets masked
    headers: dict[str, str] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    ssl: ssl.SSLContext | None = None  #: None: plain http, or https with the system's CAs
    insecure: bool = False  #: https without certificate verification (``tls_verify = false``)
    secrets: tuple[str, ...] = ()

    @classmethod
    def plain(cls, url: str, headers: Mapping[str, str] | None = None) -> Credentials:
        """An instance URL with headers and nothing else (tests, tools)."""
        base = url.rstrip("/")
        values = tuple(v for v in (headers or {}).values() if v)
        return cls(base, mask_url(base), dict(headers or {}), secrets=values)

    def ws_url(self, client_id: str) -> str:
        """The WebSocket URL (``ws://`` or ``wss://``) with the clientId and the query parameters."""
        query = urlencode({"clientId": client_id, **self.params})
        return "ws" + self.base_url[4:] + "/ws?" + query

    def redact(self, text: str) -> str:
        """``text`` with every secret of this instance masked (error messages, library log lines)."""
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        return text

    def __repr__(self) -> str:
        return f"Credentials(url={self.url!r}, headers={sorted(self.headers)}, params={sorted(self.params)})"


class RedactingLogger(logging.LoggerAdapter):  # type: ignore[type-arg]
    """The WebSocket library's logger for one instance: each message formatted, then redacted."""

    def __init__(self, logger: logging.Logger, credentials: Credentials) -> None:
        super().__init__(logger, {})
        self._redact = credentials.redact

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:
        if self.isEnabledFor(level):
            try:
                text = str(msg) % args if args else str(msg)
            except (TypeError, ValueError):  # logging itself would report it at emit; keep the line
                text = f"{msg} {args}"
            self.logger.log(level, self._redact(text), **kwargs)


def _secret(name: str, key: str, literal: str, env: str, environ: Mapping[str, str]) -> str:
    """The value of a secret given literally (``key``) or by a variable (``key_env``), "" if neither."""
    if literal and env:
        raise ConfigError(f"key 'instances.{name}.{key}': set {key} or {key}_env, not both")
    if not env:
        return literal
    value = environ.get(env)
    if value is None:
        raise ConfigError(f"key 'instances.{name}.{key}_env': environment variable {env} is not set")
    if not value:
        raise ConfigError(f"key 'instances.{name}.{key}_env': environment variable {env} is empty")
    return value


def _tls(name: str, settings: InstanceConfig, https: bool) -> ssl.SSLContext | None:
    if not https:
        for key, given in (("ca_file", bool(settings.ca_file)), ("tls_verify", not settings.tls_verify)):
            if given:
                raise ConfigError(f"key 'instances.{name}.{key}': only for an https:// URL")
        return None
    if not settings.ca_file and settings.tls_verify:
        return None
    try:
        context = ssl.create_default_context(cafile=settings.ca_file or None)
    except (OSError, ssl.SSLError, ValueError) as exc:  # ValueError: a NUL in the path
        reason = getattr(exc, "strerror", None) or exc
        raise ConfigError(f"key 'instances.{name}.ca_file': cannot load {settings.ca_file!r}: {reason}") from None
    if not settings.tls_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def resolve(name: str, settings: InstanceConfig, environ: Mapping[str, str] | None = None) -> Credentials:
    """``[instances.NAME]`` -> :class:`Credentials`; a :class:`ConfigError` names the key or variable."""
    environ = os.environ if environ is None else environ
    parts = urlsplit(settings.url)
    base = settings.url
    if parts.username is not None or parts.query or parts.fragment:
        base = urlunsplit((parts.scheme, _netloc(parts), parts.path, "", ""))
    headers = dict(settings.headers)
    for header, env in settings.headers_env.items():
        if header in headers:
            raise ConfigError(f"key 'instances.{name}.headers_env': header {header!r} is also in headers")
        if not env:
            raise ConfigError(f"key 'instances.{name}.headers_env': header {header!r} names no variable")
        headers[header] = _secret(name, "headers", "", env, environ)
    token = _secret(name, "token", settings.token, settings.token_env, environ)
    password = _secret(name, "password", settings.password, settings.password_env, environ)
    username = settings.username
    if parts.username is not None:  # http://user:pass@host: basic auth, unless the keys say it
        if username or password:
            raise ConfigError(f"key 'instances.{name}.url': user and password in the URL and in username/password")
        username, password = unquote(parts.username), unquote(parts.password or "")
    if bool(username) != bool(password):
        missing = "password (or password_env)" if username else "username"
        raise ConfigError(f"key 'instances.{name}.{missing.split()[0]}': basic auth needs {missing} too")
    _check_headers(name, headers)
    secrets = [v for v in headers.values() if v]
    if token or username:
        if any(h.lower() == "authorization" for h in headers):
            raise ConfigError(f"key 'instances.{name}.headers': Authorization is also made by token or username")
        if token and username:
            raise ConfigError(f"key 'instances.{name}.token': set token or username/password, not both")
        if token:
            headers["Authorization"] = f"Bearer {token}"
            secrets += [token]
        else:
            pair = base64.b64encode(f"{username}:{password}".encode()).decode("ascii")
            headers["Authorization"] = f"Basic {pair}"
            secrets += [password, pair]
    params = dict(parse_qsl(parts.query, keep_blank_values=True))
    query_token = _secret(name, "query_token", settings.query_token, settings.query_token_env, environ)
    if query_token:
        if settings.query_param in params or settings.query_param == "clientId":
            raise ConfigError(f"key 'instances.{name}.query_param': {settings.query_param!r} is already used")
        params[settings.query_param] = query_token
    for value in params.values():  # as given, and as the WebSocket library logs the request line
        secrets += [value, quote_plus(value)] if value else []
    context = _tls(name, settings, parts.scheme == "https")
    base = base.rstrip("/")
    secrets.sort(key=len, reverse=True)  # a secret inside another is masked with it
    return Credentials(
        base_url=base,
        url=mask_url(base),
        headers=headers,
        params=params,
        ssl=context,
        insecure=not settings.tls_verify,
        secrets=tuple(secrets),
    )


_BAD_HEADER = re.compile(r"[\r\n\0]")


def _check_headers(name: str, headers: Mapping[str, str]) -> None:
    """A line break in a header would be refused by the HTTP client at the first request."""
    for header, value in headers.items():
        if not header or _BAD_HEADER.search(header) or _BAD_HEADER.search(value):
            raise ConfigError(f"key 'instances.{name}.headers': header {header!r}: empty, or a line break or NUL")


def _netloc(parts: Any) -> str:
    """``host[:port]`` of a split URL, without userinfo (IPv6 hosts keep their brackets)."""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    return f"{host}:{parts.port}" if parts.port is not None else host
