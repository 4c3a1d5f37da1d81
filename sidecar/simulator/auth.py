"""Optional authentication in front of the simulated ComfyUI, as a reverse proxy or a hosted service adds it.

ComfyUI itself checks no credentials; deployments put them in front of it: a bearer token, basic
auth, or a token in the query string (hosted services do this for the WebSocket, which a browser
cannot give headers). :class:`SimAuth` is an aiohttp middleware that requires every configured
credential on every request, the WebSocket upgrade included, and answers 401 otherwise, with a
``WWW-Authenticate`` header and a body that never echoes what was offered.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import web

__all__ = ["SimAuth"]

logger = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _same(offered: str | None, expected: str) -> bool:
    return offered is not None and hmac.compare_digest(offered.encode(), expected.encode())


@dataclass
class SimAuth:
    """What the simulator requires; each field left None is not required."""

    token: str | None = None  #: ``Authorization: Bearer <token>``
    basic: tuple[str, str] | None = None  #: ``Authorization: Basic`` with this user and password
    query_token: str | None = None  #: ``?<query_param>=<query_token>`` on every request
    query_param: str = "token"
    #: require the credentials on the WebSocket upgrade only (a service that guards the socket by query token)
    websocket_only: bool = False
    #: requests refused, by the reason (``bearer``, ``basic``, ``query``), for tests
    refused: dict[str, int] = field(default_factory=dict)

    @property
    def required(self) -> bool:
        return self.token is not None or self.basic is not None or self.query_token is not None

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if self.websocket_only and not request.path.endswith("/ws"):
            return await handler(request)
        failed = self.check(request.headers.get("Authorization"), request.query.get(self.query_param))
        if failed is None:
            return await handler(request)
        self.refused[failed] = self.refused.get(failed, 0) + 1
        logger.info("refused %s %s: %s credentials missing or wrong", request.method, request.path, failed)
        challenge = 'Basic realm="ComfyUI"' if failed == "basic" else "Bearer"
        return web.Response(status=401, text="401: Unauthorized", headers={"WWW-Authenticate": challenge})

    def check(self, authorization: str | None, query_value: str | None) -> str | None:
        """None when the request may pass, else which credential is missing or wrong."""
        scheme, _, value = (authorization or "").partition(" ")
        if self.token is not None and not (scheme.lower() == "bearer" and _same(value.strip(), self.token)):
            return "bearer"
        if self.basic is not None:
            try:
                user, sep, password = base64.b64decode(value.strip(), validate=True).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                return "basic"
            expected_user, expected_password = self.basic
            if not (scheme.lower() == "basic" and sep and _same(user, expected_user)):
                return "basic"
            if not _same(password, expected_password):
                return "basic"
        if self.query_token is not None and not _same(query_value, self.query_token):
            return "query"
        return None
