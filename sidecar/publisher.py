"""SHELL: the event socket. Publishing never blocks the event loop, and job events are never dropped.

An XPUB socket (a PUB to subscribers) with ``XPUB_NODROP``: when a subscriber's
send high-water mark (``zmq.pub_hwm``) is reached, ZeroMQ refuses the message
instead of silently dropping it. The publisher then decides, by event type:

- ``preview`` and ``heartbeat`` events are dropped (and counted);
- every other event goes to an internal ordered backlog that a flusher task
  drains as the subscriber catches up; while the backlog is not empty, new
  events join it (order is kept), except previews and heartbeats, which are
  dropped, and progress events past ``BACKLOG_SOFT_LIMIT``, which are dropped too.

Terminal job events are never dropped. A dropped event leaves a gap in ``seq``:
a subscriber that sees one asks for ``snapshot`` (docs/PROTOCOL.md). Sending is
a plain (not ``zmq.asyncio``) socket call with ``NOBLOCK`` from the event loop
(DESIGN.md: 25-30 % less CPU than zmq.asyncio).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from typing import Any

import msgspec
import zmq

from .protocol.wire import Event, encode_event

__all__ = ["Publisher"]

logger = logging.getLogger(__name__)

DROP_FIRST = frozenset({"preview", "heartbeat"})
DROP_UNDER_BACKLOG = frozenset({"node.progress", "job.progress"})
BACKLOG_SOFT_LIMIT = 10_000
FLUSH_RETRY_S = 0.002


class Publisher:
    def __init__(self, context: zmq.Context, endpoint: str, hwm: int, sndbuf_bytes: int = 0) -> None:  # type: ignore[type-arg]
        self._socket = context.socket(zmq.XPUB)
        self._socket.setsockopt(zmq.SNDHWM, hwm)  # options must precede bind: connections copy them
        if sndbuf_bytes > 0:
            self._socket.setsockopt(zmq.SNDBUF, sndbuf_bytes)
        self._socket.setsockopt(zmq.RCVHWM, 1000)
        self._socket.setsockopt(zmq.XPUB_NODROP, 1)
        self._socket.setsockopt(zmq.LINGER, 500)
        self._socket.bind(endpoint)
        self.endpoint: str = self._socket.getsockopt_string(zmq.LAST_ENDPOINT)
        self._encoder = msgspec.msgpack.Encoder()
        self._backlog: collections.deque[list[Any]] = collections.deque()
        self._flusher: asyncio.Task[None] | None = None
        self._drained = asyncio.Event()  # set whenever the backlog becomes empty
        self.published = 0
        self.dropped: collections.Counter[str] = collections.Counter()
        self.backlog_peak = 0
        self._closed = False

    # Public

    def publish(self, event: Event) -> None:
        """Send one event now, or queue it in order; call it right after the event is made."""
        if self._closed:
            return
        kind = event.type
        if self._backlog:
            self._queue(kind, encode_event(event, self._encoder))
            return
        frames = encode_event(event, self._encoder)
        try:
            self._socket.send_multipart(frames, flags=zmq.NOBLOCK)
        except zmq.Again:
            self._queue(kind, frames)
            return
        self.published += 1

    @property
    def backlog(self) -> int:
        return len(self._backlog)

    def stats(self) -> dict[str, Any]:
        return {
            "published": self.published,
            "dropped": dict(self.dropped),
            "backlog": len(self._backlog),
            "backlog_peak": self.backlog_peak,
        }

    async def flush(self, timeout_s: float) -> bool:
        """Wait (bounded) until the backlog is sent; True if it was."""
        if not self._backlog:
            return True
        try:
            async with asyncio.timeout(timeout_s):
                await self._drained.wait()
        except TimeoutError:
            return False
        return True

    def drain_subscriptions(self) -> None:
        """Read (and discard) XPUB subscription messages so they never pile up."""
        with contextlib.suppress(zmq.ZMQError):
            while self._socket.poll(0, zmq.POLLIN):
                self._socket.recv(zmq.NOBLOCK)

    def close(self, linger_ms: int = 500) -> None:
        """Idempotent."""
        if not self._closed:
            self._closed = True
            if self._flusher is not None:
                self._flusher.cancel()
            if self._backlog:
                logger.warning("closing with %d events not delivered to a slow subscriber", len(self._backlog))
            self._socket.close(linger=linger_ms)

    # Private

    def _queue(self, kind: str, frames: list[Any]) -> None:
        if kind in DROP_FIRST or (kind in DROP_UNDER_BACKLOG and len(self._backlog) >= BACKLOG_SOFT_LIMIT):
            self.dropped[kind] += 1
            return
        self._backlog.append(frames)
        self._drained.clear()
        self.backlog_peak = max(self.backlog_peak, len(self._backlog))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(self._flush())

    async def _flush(self) -> None:
        backlog = self._backlog
        while backlog:
            try:
                self._socket.send_multipart(backlog[0], flags=zmq.NOBLOCK)
            except zmq.Again:
                await asyncio.sleep(FLUSH_RETRY_S)
                continue
            backlog.popleft()
            self.published += 1
        self._drained.set()
