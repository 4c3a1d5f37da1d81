"""SHELL: a ``websockets`` client connection that hands whole messages to a callback.

``await ws.recv()`` costs each frame a trip through ``websockets``' message
assembler and a second event-loop iteration (the reading task is woken by a
future). :class:`DirectConnection` instead calls the reader's callback from
``data_received``, in the iteration that read the bytes, for every unfragmented
text or binary message: about 2 µs less per frame at 10,000 frames/s and 2–4 µs
at 60,000/s (bench/README.md, hot path). Everything else is ``websockets``' own:
the handshake, ``max_size``, ping/pong, close handling, flow control of the
fragmented path.

Order is kept: messages that arrive before :meth:`DirectConnection.start` wait in
arrival order and go to the callback first; once a fragmented message is seen,
that message and every later one go through the assembler, read with
``recv()`` as before (ComfyUI never fragments; a proxy could).
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import Any

from websockets.asyncio.client import ClientConnection
from websockets.frames import Frame, Opcode

__all__ = ["DirectConnection"]

_TEXT, _BINARY = Opcode.TEXT, Opcode.BINARY


class DirectConnection(ClientConnection):
    """Pass as ``create_connection`` to ``websockets.asyncio.client.connect``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._on_message: Callable[[bytes], None] | None = None
        self._early: collections.deque[bytes] | None = collections.deque()  # until start()
        self.assembled = False  # a fragmented message was seen: recv() reads from then on
        self.failure: Exception | None = None  # raised by the callback; the connection was aborted

    def start(self, on_message: Callable[[bytes], None]) -> None:
        """Call ``on_message`` for each whole message from now on, after those already received.

        An exception from ``on_message`` aborts the connection and is kept in :attr:`failure`
        (``recv()`` then raises ``ConnectionClosed``; the reader re-raises the failure).
        """
        early, self._early = self._early, None
        self._on_message = on_message
        while early and self.failure is None:
            self._deliver(on_message, early.popleft())

    def process_event(self, event: Any) -> None:
        if (
            self.response is not None
            and not self.assembled
            and type(event) is Frame
            and (event.opcode is _TEXT or event.opcode is _BINARY)
        ):
            if event.fin:
                data = bytes(event.data)
                if self._on_message is not None:
                    self._deliver(self._on_message, data)
                elif self._early is not None:
                    self._early.append(data)
                return
            self.assembled = True  # the first fragment: to the assembler, with everything after it
        super().process_event(event)

    def _deliver(self, on_message: Callable[[bytes], None], data: bytes) -> None:
        try:
            on_message(data)
        except Exception as exc:  # kept, not raised into data_received (asyncio would log it as fatal)
            self.failure = exc
            self._on_message, self.assembled = None, True  # what follows is read by nobody
            self.transport.abort()
