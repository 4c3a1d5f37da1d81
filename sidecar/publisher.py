"""SHELL: the event socket. Publishing never blocks, and a slow subscriber costs only itself.

A plain ZeroMQ PUB socket, as the ZeroMQ guide's Clone pattern has it. ZeroMQ gives
each subscriber connection its own pipe with its own send high-water mark
(``zmq.pub_hwm``, ``SNDHWM``): when a subscriber stops reading, its pipe fills
and ZeroMQ drops further messages **for that subscriber only**, whole messages,
until it has read about half of its queue again. Every other subscriber receives every
event at once. The sidecar keeps no queue of its own, so its memory is bounded
whatever a subscriber does: at most ``pub_hwm`` messages per connected
subscriber, held by ZeroMQ (plus the kernel's socket buffers).

A subscriber that lost messages sees a gap in ``seq`` (``job_seq`` for a
``job.``-filtered one) and recovers with ``snapshot`` (docs/PROTOCOL.md §7).
ZeroMQ does not tell the sender about these per-subscriber drops, so the sidecar
cannot count them; ``dropped`` counts only events the sidecar itself could not
hand to ZeroMQ (none while the socket is open: a PUB send never refuses).

Sending is a plain (not ``zmq.asyncio``) socket call with ``NOBLOCK`` from the
event loop (DESIGN.md: 25-30 % less CPU than zmq.asyncio). The two frames go
straight to the compiled ``send`` with plain-int flags: ``send_multipart`` type-checks
every part and builds ``SNDMORE | flags`` as ``enum.Flag`` objects per call, which
cost a third of ``publish()`` (bench/README.md, hot path).
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable
from typing import Any

import msgspec
import zmq

from .protocol.wire import Event, encode_event, topic_for

__all__ = ["Publisher"]

logger = logging.getLogger(__name__)

_LAST = int(zmq.NOBLOCK)
_MORE = int(zmq.NOBLOCK | zmq.SNDMORE)


class Publisher:
    def __init__(
        self,
        context: zmq.Context,  # type: ignore[type-arg]
        endpoint: str,
        hwm: int,
        sndbuf_bytes: int = 0,
        secure: Callable[[zmq.Socket[Any]], None] | None = None,
    ) -> None:
        """``secure``: sets the socket's security options (CURVE, sidecar/curve.py) before it binds."""
        self._socket = context.socket(zmq.PUB)
        self._socket.setsockopt(zmq.SNDHWM, hwm)  # options must precede bind: connections copy them
        if sndbuf_bytes > 0:
            self._socket.setsockopt(zmq.SNDBUF, sndbuf_bytes)
        if secure is not None:
            secure(self._socket)
        self._socket.setsockopt(zmq.LINGER, 500)
        self._socket.bind(endpoint)
        self.endpoint: str = self._socket.getsockopt_string(zmq.LAST_ENDPOINT)
        self.hwm = hwm
        self._encoder = msgspec.msgpack.Encoder()
        self._send = super(zmq.Socket, self._socket).send  # type: ignore[misc]  # compiled send, no sugar layer
        self.published = 0
        self.dropped: collections.Counter[str] = collections.Counter()
        self._closed = False

    # Public

    def publish(self, event: Event) -> None:
        """Hand one event to every matching subscriber's pipe now; never blocks, never queues."""
        if self._closed:
            self.dropped[event.type] += 1
            return
        try:
            if event.image is None:  # encoded before the first frame goes: a message is sent whole or not at all
                envelope = self._encoder.encode(event)
                self._send(topic_for(event.type, event.instance), _MORE)
                self._send(envelope, _LAST)
            else:
                *head, last = encode_event(event, self._encoder)
                for frame in head:
                    self._send(frame, _MORE)
                self._send(last, _LAST)
        except zmq.ZMQError as exc:  # not zmq.Again (a PUB drops instead); a context being terminated
            self.dropped[event.type] += 1
            logger.warning("event %s (seq %d) not published: %s", event.type, event.seq, exc)
            return
        self.published += 1

    def stats(self) -> dict[str, Any]:
        """health's ``events`` map (docs/PROTOCOL.md §5.8); ``backlog`` keys are kept, always 0."""
        return {
            "published": self.published,
            "dropped": dict(self.dropped),
            "backlog": 0,
            "backlog_peak": 0,
            "hwm": self.hwm,
        }

    def close(self, linger_ms: int = 500) -> None:
        """Idempotent. ZeroMQ keeps sending what the pipes hold for up to ``linger_ms``."""
        if not self._closed:
            self._closed = True
            self._socket.close(linger=linger_ms)
