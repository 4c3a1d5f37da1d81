"""SHELL: the ROUTER socket. Each request is served in its own task.

The reply is ``[*envelope, body]``: the envelope is echoed verbatim, so DEALER and
REQ clients both work. A request that cannot be decoded still gets an ``ok:
false`` reply (``id`` null), and an exception inside a handler becomes an
``internal_error`` reply: the router keeps serving everyone else. A request read
after its ``deadline_ns`` is answered ``expired`` and never reaches the handler.

A body larger than ``limits.request_bytes`` is answered ``limit_exceeded``, its ``submit`` input
files (``files``) not counted: a body larger than that plus ``limits.upload_request_bytes`` is not
decoded (``id`` null), a smaller one is, and refused (``id`` null too) when it is still too big
without its files. ZeroMQ's own ``MAXMSGSIZE`` is not used: it drops the client's connection without
a word (its other requests in flight lost too, and a DEALER reconnects and may send it again),
where a reply tells the client which limit it hit. The cost is that the message is read whole.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import zmq
import zmq.asyncio

from .errors import RequestError
from .protocol.wire import BadRequest, Reply, Request, Submit, decode_request, encode_reply, error_reply, expired

__all__ = ["Router"]

logger = logging.getLogger(__name__)

Handler = Callable[[Request], Awaitable[Reply]]


class Router:
    def __init__(
        self,
        context: zmq.asyncio.Context,
        endpoint: str,
        handler: Handler,
        max_request_bytes: int = 16 * 1024 * 1024,
        max_files_bytes: int = 0,
        secure: Callable[[zmq.Socket[Any]], None] | None = None,
    ) -> None:
        """``secure``: sets the socket's security options (CURVE, sidecar/curve.py) before it binds."""
        self._socket = context.socket(zmq.ROUTER)
        self._socket.setsockopt(zmq.LINGER, 500)
        self._socket.setsockopt(zmq.ROUTER_MANDATORY, 0)
        if secure is not None:
            secure(self._socket)
        self._socket.bind(endpoint)
        self.endpoint: str = self._socket.getsockopt_string(zmq.LAST_ENDPOINT)
        self._handler = handler
        self._max_bytes = max_request_bytes
        self._max_files_bytes = max_files_bytes  # a submit's input files, allowed on top
        self._encoder = msgspec.msgpack.Encoder()
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        self.served = 0
        self.bad = 0

    async def serve(self) -> None:
        """Read requests until cancelled."""
        while True:
            frames = await self._socket.recv_multipart()
            size = len(frames[-1])
            if size > self._max_bytes + self._max_files_bytes:
                await self._refuse(frames[:-1], self._too_big(size))
                continue
            try:
                envelope, request = decode_request(frames)
            except Exception:  # the boundary: a decoder bug must not stop the router
                logger.exception("request could not be decoded")
                envelope, request = frames[:-1], BadRequest(None, "malformed_request", "request could not be decoded")
            if size > self._max_bytes and not isinstance(request, BadRequest):
                files = request.files if isinstance(request, Submit) else None
                without = size - sum(len(data) for data in files.values()) if files else size
                if without > self._max_bytes:
                    request = self._too_big(size, without if files else None)
            if isinstance(request, BadRequest):
                await self._refuse(envelope, request)
                continue
            late = expired(request, time.time_ns())
            if late is not None:  # the client gave up on it (queued while no sidecar was up): no effect
                self.served += 1
                logger.info("expired request: %s", late.error.message if late.error else "")
                await self._send(envelope, late)
                continue
            task = asyncio.create_task(self._serve_one(envelope, request))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def drain(self, timeout_s: float) -> None:
        """Let the requests in flight finish (bounded)."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout_s)

    def close(self, linger_ms: int = 200) -> None:
        """Idempotent."""
        if not self._closed:
            self._closed = True
            for task in self._tasks:
                task.cancel()
            self._socket.close(linger=linger_ms)

    # Private

    def _too_big(self, size: int, without: int | None = None) -> BadRequest:
        """``limit_exceeded`` for limits.request_bytes (``id`` nil, as for a body that is not read)."""
        limit = self._max_bytes
        if without is None:
            message = f"the request has {size} bytes; limits.request_bytes is {limit} (not read)"
            details: dict[str, Any] = {"limit": "limits.request_bytes", "value": limit, "size": size}
        else:
            message = f"the request has {without} bytes besides its input files; limits.request_bytes is {limit}"
            details = {"limit": "limits.request_bytes", "value": limit, "size": without}
        return BadRequest(None, "limit_exceeded", message, details)

    async def _refuse(self, envelope: list[bytes], request: BadRequest) -> None:
        self.bad += 1
        logger.info("bad request: %s", request.message)
        await self._send(envelope, error_reply(request.id, request.code, request.message, request.details))

    async def _serve_one(self, envelope: list[bytes], request: Request) -> None:
        try:
            reply = await self._handler(request)
        except RequestError as exc:
            reply = error_reply(request.id, exc.code, exc.message, exc.details)
        except asyncio.CancelledError:
            raise
        except Exception:
            # op and id only: the whole request may be huge or nested past repr's recursion limit
            logger.exception("request %s (id %r) failed", type(request).__name__, request.id)
            reply = error_reply(request.id, "internal_error", "the sidecar failed to serve this request")
        self.served += 1
        await self._send(envelope, reply)

    async def _send(self, envelope: list[bytes], reply: Reply) -> None:
        if self._closed:
            return
        try:
            await self._socket.send_multipart(encode_reply(envelope, reply, self._encoder))
        except zmq.ZMQError as exc:
            logger.warning("could not send reply: %s", exc)
