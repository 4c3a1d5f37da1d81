"""Connected WebSocket clients of the simulator and how frames reach them (PROTOCOL.md §3).

One socket is registered per ``clientId``, as in ComfyUI: a second connection with
the same id replaces the registration, and any socket of that id that closes removes
the registration of the id, whichever socket it holds. So a first socket displaced by
a second one that then closes stays open but receives nothing more, not even
broadcasts (upstream issue 16010). ``sid=None`` means broadcast.  Binary preview frames follow §3.4: type 1
``[u32 1][u32 format][jpeg]`` and type 4 ``[u32 4][u32 len][json][jpeg]``, all
big-endian; progress text is type 3 ``[u32 3][u32 len][node id][text]``, UTF-8.
"""

from __future__ import annotations

import json
import logging
import struct
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from .fuzz import FrameFuzzer

__all__ = [
    "ClientHub",
    "encode_preview",
    "encode_preview_with_metadata",
    "encode_text",
]

logger = logging.getLogger(__name__)

PREVIEW_IMAGE = 1
TEXT = 3
PREVIEW_IMAGE_WITH_METADATA = 4
JPEG_FORMAT = 1


def encode_preview(jpeg: bytes) -> bytes:
    """Legacy binary frame: event 1, image format 1 (JPEG), image bytes."""
    return struct.pack(">II", PREVIEW_IMAGE, JPEG_FORMAT) + jpeg


def encode_preview_with_metadata(jpeg: bytes, metadata: dict[str, Any]) -> bytes:
    """Binary frame with metadata: event 4, JSON length, JSON, image bytes."""
    meta = json.dumps(metadata).encode("utf-8")
    return struct.pack(">II", PREVIEW_IMAGE_WITH_METADATA, len(meta)) + meta + jpeg


def encode_text(node_id: str, text: str) -> bytes:
    """Progress text frame: event 3, node id length, node id, text (PROTOCOL.md §3.4)."""
    node = node_id.encode("utf-8")
    return struct.pack(">II", TEXT, len(node)) + node + text.encode("utf-8")


@dataclass(eq=False)
class _Client:
    sid: str
    ws: web.WebSocketResponse
    request: web.Request
    flags: dict[str, Any] = field(default_factory=dict)
    saw_first_text: bool = False
    muted: bool = False


class ClientHub:
    """Registry of sockets by sid, with best-effort sending (a dead socket never raises)."""

    def __init__(self, fuzzer: FrameFuzzer | None = None) -> None:
        #: fuzzing mode: harmless mutated copies of real frames follow them (sidecar/simulator/fuzz.py)
        self.fuzzer = fuzzer
        self._clients: dict[str, _Client] = {}
        self._all: set[_Client] = set()
        #: frames sent per clientId (fault tests compare them with what the bridge read)
        self.sent: Counter[str] = Counter()
        #: when True, WebSocket upgrades are refused with 503 (a server that is up but not accepting)
        self.refusing = False

    # Public

    def register(self, sid: str, ws: web.WebSocketResponse, request: web.Request) -> _Client:
        """Register ``ws`` under ``sid``, replacing a previous socket with that id."""
        client = _Client(sid, ws, request)
        self._clients[sid] = client
        self._all.add(client)
        return client

    def unregister(self, client: _Client) -> None:
        """``client`` closed: forget it and its sid's registration, even when that names a newer socket.

        ComfyUI's socket handler removes the clientId's entry when any socket of that id
        closes; a newer socket registered under the same id is then deaf (PROTOCOL.md §8).
        """
        self._all.discard(client)
        self._clients.pop(client.sid, None)

    def sids(self) -> list[str]:
        """Currently registered client ids."""
        return list(self._clients)

    def wants_metadata(self, sid: str | None) -> bool:
        """True if ``sid``'s socket negotiated ``supports_preview_metadata``."""
        client = self._clients.get(sid) if sid is not None else None
        return bool(client and client.flags.get("supports_preview_metadata"))

    async def send_json(self, kind: str, data: dict[str, Any], sid: str | None) -> None:
        """Send ``{"type": kind, "data": data}`` to ``sid``, or to everyone when ``sid`` is None."""
        text = json.dumps({"type": kind, "data": data})
        for client in self._targets(sid):
            await self._send(client, text)

    async def send_bytes(self, frame: bytes, sid: str | None) -> None:
        """Send one binary frame to ``sid`` or to everyone."""
        for client in self._targets(sid):
            await self._send(client, frame)

    async def send_raw(self, data: bytes | str, sid: str | None) -> None:
        """Send an arbitrary frame (fault injection)."""
        for client in self._targets(sid):
            await self._send(client, data)

    async def send_client(self, client: _Client, kind: str, data: dict[str, Any]) -> None:
        """Send a JSON message to one specific socket (connect-time status, handshake reply)."""
        await self._send(client, json.dumps({"type": kind, "data": data}))

    def mute(self, muted: bool) -> None:
        """Silence the sockets connected now (they stay open; later sockets are not muted), or unmute all."""
        for client in self._all:
            client.muted = muted

    def abort_all(self) -> None:
        """Drop every socket without a close frame (the peer sees code 1006)."""
        for client in list(self._all):
            transport = client.request.transport
            if transport is not None:
                transport.abort()

    # Private

    def _targets(self, sid: str | None) -> list[_Client]:
        if sid is None:
            return list(self._clients.values())
        client = self._clients.get(sid)
        return [client] if client is not None else []

    async def _send(self, client: _Client, data: bytes | str) -> None:
        if client.ws.closed or client.muted:
            return
        try:
            if isinstance(data, str):
                await client.ws.send_str(data)
            else:
                await client.ws.send_bytes(data)
            self.sent[client.sid] += 1
            if self.fuzzer is not None:
                for extra in self.fuzzer.after(data):
                    if isinstance(extra, str):
                        await client.ws.send_str(extra)
                    else:
                        await client.ws.send_bytes(extra)
        except (ConnectionError, RuntimeError) as exc:
            logger.debug("dropping frame for %s: %s", client.sid, exc)
