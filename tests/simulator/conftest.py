"""Shared helpers for the simulator tests: server fixtures, a recording WS client, trace loading."""

from __future__ import annotations

import asyncio
import json
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from sidecar.simulator import SimServer

TRACES = Path(__file__).resolve().parents[1] / "traces"
WAIT_S = 5.0


#: EmptyImage → BridgeProbe → SaveImage, + PreviewImage branch + BridgeText (the recorder's graph).
def probe_graph(*, steps: int = 4, fail_at: int = -1, seed: int = 1, color: int = 0) -> dict[str, Any]:
    return {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": color},
        },
        "2": {
            "class_type": "BridgeProbe",
            "inputs": {"image": ["1", 0], "steps": steps, "step_ms": 250, "fail_at": fail_at, "seed": seed},
        },
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "bridge"}},
        "4": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
        "5": {"class_type": "BridgeText", "inputs": {"text": "bridge text output", "image": ["2", 0]}},
    }


def load_trace(version: str, scenario: str) -> list[dict[str, Any]]:
    """Records of ``tests/traces/<version>/<scenario>*.jsonl``."""
    (path,) = sorted((TRACES / version).glob(f"{scenario}*.jsonl"))
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class Frame:
    """One received WS frame: ``kind`` is ``"text"`` (with ``type``/``data``) or ``"binary"``."""

    def __init__(self, raw: str | bytes) -> None:
        self.raw = raw
        if isinstance(raw, str):
            self.kind = "text"
            msg = json.loads(raw)
            self.type: str = msg["type"]
            self.data: Any = msg["data"]
            self.event = 0
            self.metadata: dict[str, Any] | None = None
        else:
            self.kind = "binary"
            self.type = "binary"
            self.data = None
            self.event = struct.unpack(">I", raw[:4])[0]
            self.metadata = None
            if self.event == 4:
                (length,) = struct.unpack(">I", raw[4:8])
                self.metadata = json.loads(raw[8 : 8 + length])

    @property
    def image(self) -> bytes:
        assert isinstance(self.raw, bytes)
        if self.event == 4:
            (length,) = struct.unpack(">I", self.raw[4:8])
            return self.raw[8 + length :]
        return self.raw[8:]

    def __repr__(self) -> str:
        if self.kind == "binary":
            return f"<BIN{self.event}>"
        return f"<{self.type} {json.dumps(self.data)[:80]}>"


class WsRecorder:
    """A WS client that records every frame; tests wait on frames, never sleep."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.frames: list[Frame] = []
        self.closed = asyncio.Event()
        self.close_code: int | None = None
        self._changed = asyncio.Condition()
        self._task = asyncio.create_task(self._read())

    @classmethod
    async def connect(cls, session: aiohttp.ClientSession, url: str) -> WsRecorder:
        return cls(await session.ws_connect(url, autoping=True))

    async def _read(self) -> None:
        try:
            async for msg in self.ws:
                if msg.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                    try:
                        frame = Frame(msg.data)
                    except (ValueError, KeyError, struct.error):
                        frame = Frame.__new__(Frame)
                        frame.raw, frame.kind, frame.type, frame.data, frame.event = (
                            msg.data,
                            "garbage",
                            "?",
                            None,
                            0,
                        )
                        frame.metadata = None
                    async with self._changed:
                        self.frames.append(frame)
                        self._changed.notify_all()
        finally:
            self.close_code = self.ws.close_code
            self.closed.set()
            async with self._changed:
                self._changed.notify_all()

    async def send_json(self, obj: Any) -> None:
        await self.ws.send_str(json.dumps(obj))

    async def wait_for(self, predicate: Callable[[Frame], bool], within_s: float = WAIT_S) -> Frame:
        """First recorded frame (old or new) matching ``predicate``."""
        async with asyncio.timeout(within_s), self._changed:
            while True:
                for frame in self.frames:
                    if predicate(frame):
                        return frame
                if self.closed.is_set():
                    raise AssertionError(f"socket closed before a matching frame; got {self.frames}")
                await self._changed.wait()

    async def wait_count(self, count: int, within_s: float = WAIT_S) -> None:
        """Until at least ``count`` frames were received."""
        await self.wait_until(lambda frames: len(frames) >= count, within_s)

    async def wait_until(self, condition: Callable[[list[Frame]], bool], within_s: float = WAIT_S) -> None:
        """Until ``condition(frames)`` holds; fails if the socket closes first."""
        async with asyncio.timeout(within_s), self._changed:
            while not condition(self.frames):
                if self.closed.is_set():
                    raise AssertionError(f"socket closed; condition unmet with frames {self.frames}")
                await self._changed.wait()

    async def wait_terminal(self, prompt_id: str, within_s: float = WAIT_S) -> Frame:
        """``executing`` with ``node: null`` for ``prompt_id`` (terminal on every version)."""
        return await self.wait_for(
            lambda f: f.type == "executing" and f.data.get("node") is None and f.data.get("prompt_id") == prompt_id,
            within_s,
        )

    async def close(self) -> None:
        await self.ws.close()
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass


ServerFactory = Callable[..., Awaitable[SimServer]]


@pytest.fixture
def sim_factory(sims: ServerFactory) -> ServerFactory:
    """Start ``SimServer``s on 127.0.0.1:0 (5 ms steps unless told); all are closed after the test."""

    async def make(version: str = "0.12.1", **kwargs: Any) -> SimServer:
        kwargs.setdefault("step_ms", 5)
        return await sims(version, **kwargs)

    return make


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def recorders() -> AsyncIterator[list[WsRecorder]]:
    """Collects recorders to close after the test."""
    opened: list[WsRecorder] = []
    yield opened
    for rec in opened:
        await rec.close()
