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

Frames are cut from the received bytes here, not by ``websockets``' parser, for the
one case ComfyUI sends: a whole, unmasked, uncompressed text or binary frame (first
byte 0x81 or 0x82, mask bit clear). Its parser is a generator that builds a ``Frame``
per frame, which cost about 6 µs of the 25 a frame costs at 10,000 frames/s; cutting
costs about 1 (bench/README.md, issue 9). Every other frame (ping, pong, close, a
fragment, reserved bits, a mask, a frame over ``max_size``) is handed to
``websockets`` whole, so its parser only ever sees complete frames and keeps every
rule it enforces; from a fragment or an oversized frame on, it reads everything.
The HTTP response that ends the handshake is cut off first and goes to ``websockets``.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import Any

from websockets.asyncio.client import ClientConnection
from websockets.frames import Frame, Opcode
from websockets.protocol import State

__all__ = ["DirectConnection"]

_TEXT, _BINARY = Opcode.TEXT, Opcode.BINARY
_OPEN = State.OPEN
_END_OF_HEAD = b"\r\n\r\n"


class DirectConnection(ClientConnection):
    """Pass as ``create_connection`` to ``websockets.asyncio.client.connect``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._on_message: Callable[[bytes], None] | None = None
        self._early: collections.deque[bytes] | None = collections.deque()  # until start()
        self.assembled = False  # a fragmented message was seen: recv() reads from then on
        self.failure: Exception | None = None  # raised by the callback; the connection was aborted
        self._cutting = False  # the handshake is over: frames are cut in data_received
        self._head_tail = b""  # the last bytes of the handshake response so far (its end may straddle reads)
        self._partial = bytearray()  # the start of a frame whose rest has not arrived
        self._need = 0  # bytes the frame at the start of _partial needs in all (0: header incomplete)

    def start(self, on_message: Callable[[bytes], None]) -> None:
        """Call ``on_message`` for each whole message from now on, after those already received.

        An exception from ``on_message`` aborts the connection and is kept in :attr:`failure`
        (``recv()`` then raises ``ConnectionClosed``; the reader re-raises the failure).
        """
        early, self._early = self._early, None
        self._on_message = on_message
        while early and self.failure is None:
            self._deliver(on_message, early.popleft())

    def data_received(self, data: bytes) -> None:
        if self._cutting:
            self._cut(data)
        elif self.response is None and self.protocol.state is State.CONNECTING:
            self._handshake(data)
        else:
            super().data_received(data)

    def _handshake(self, data: bytes) -> None:
        """Give ``websockets`` the HTTP response; cut the frames that follow it in the same read."""
        seen = self._head_tail + data
        end = seen.find(_END_OF_HEAD)
        if end < 0:
            self._head_tail = seen[-3:]
            super().data_received(data)
            return
        split = end + 4 - len(self._head_tail)
        self._head_tail = b""
        super().data_received(data[:split])
        if self.protocol.state is _OPEN and not self.protocol.reader.buffer:
            self._cutting = True
            if len(data) > split:
                self._cut(data[split:])
        elif len(data) > split:
            super().data_received(data[split:])

    def _cut(self, data: bytes) -> None:
        """Deliver every whole data frame in ``data`` (after what an earlier read left)."""
        if self._partial:
            self._partial += data
            if len(self._partial) < self._need:
                return  # the frame's rest is still to come (a large preview arrives in many reads)
            buf, self._partial, self._need = bytes(self._partial), bytearray(), 0
        else:
            buf = data
        size = len(buf)
        pos = 0
        max_size = self.protocol.max_message_size
        while pos < size:
            if size - pos < 2:
                break
            first = buf[pos]
            length = buf[pos + 1]
            if length & 0x80 or (first != 0x81 and first != 0x82):
                if first in (0x88, 0x89, 0x8A) and length <= 0x7D:  # an unmasked close, ping or pong
                    end = pos + 2 + length
                    if end > size:
                        break
                    super().data_received(buf[pos:end])  # whole: websockets answers, acknowledges, closes
                    pos = end
                    if self.protocol.state is not _OPEN:
                        self._give_up(buf[pos:])
                        return
                    continue
                self._give_up(buf[pos:])  # a fragment, reserved bits, a mask: websockets reads from here on
                return
            start = pos + 2
            if length == 126:
                if size - pos < 4:
                    break
                length = (buf[pos + 2] << 8) | buf[pos + 3]
                start = pos + 4
            elif length == 127:
                if size - pos < 10:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                start = pos + 10
            if max_size is not None and length > max_size:
                self._give_up(buf[pos:])  # websockets closes with 1009, as before
                return
            end = start + length
            if end > size:
                self._need = end - pos
                break
            payload = buf[start:end]
            pos = end
            on_message = self._on_message
            if on_message is not None:
                self._deliver(on_message, payload)
                if self._on_message is None:  # the callback failed: the connection is aborted
                    return
            elif self._early is not None:
                self._early.append(payload)
        if pos < size:
            self._partial += buf[pos:] if pos else buf

    def _give_up(self, rest: bytes) -> None:
        """From here on ``websockets`` parses everything (``rest`` starts at a frame boundary)."""
        self._cutting = False
        self._partial, self._need = bytearray(), 0
        if rest:
            super().data_received(rest)

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
