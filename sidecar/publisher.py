"""SHELL: the PUB socket. Publishing never blocks the event loop.

A plain (not ``zmq.asyncio``) PUB socket, sent from the loop with ``NOBLOCK``:
PUB never blocks, and past ``SNDHWM`` ZeroMQ drops messages for that slow
subscriber (DESIGN.md performance notes: 25-30 % less CPU than zmq.asyncio).
"""

from __future__ import annotations

import logging

import msgspec
import zmq

from .protocol.wire import Event, encode_event

__all__ = ["Publisher"]

logger = logging.getLogger(__name__)


class Publisher:
    def __init__(self, context: zmq.Context, endpoint: str, hwm: int) -> None:  # type: ignore[type-arg]
        self._socket = context.socket(zmq.PUB)
        self._socket.setsockopt(zmq.SNDHWM, hwm)
        self._socket.setsockopt(zmq.LINGER, 500)
        self._socket.bind(endpoint)
        self.endpoint: str = self._socket.getsockopt_string(zmq.LAST_ENDPOINT)
        self._encoder = msgspec.msgpack.Encoder()
        self.published = 0
        self.last_seq = 0
        self._closed = False

    def publish(self, event: Event) -> None:
        """Send one event now (in ``seq`` order: call it right after the event is made)."""
        if self._closed:
            return
        self._socket.send_multipart(encode_event(event, self._encoder), flags=zmq.NOBLOCK)
        self.published += 1
        self.last_seq = event.seq

    def close(self, linger_ms: int = 500) -> None:
        """Idempotent."""
        if not self._closed:
            self._closed = True
            self._socket.close(linger=linger_ms)
