"""A ComfyUI stand-in that streams ``progress`` frames at a fixed rate and records when it sent each.

The frame source of the latency benchmarks (``latency.py``, ``report.py``). It serves one
or more "instances", each on its own port of 127.0.0.1, each an aiohttp app like ComfyUI
(``/ws``, ``POST /prompt``, ``/queue``, ``/history/<id>``, ``/system_stats``,
``/object_info``) that reports itself as ComfyUI 0.3.44 (``--version`` to change it; use
0.12.1 with ``state_nodes``). Prompts run one at a time per instance, in order, as in
ComfyUI. A prompt is a single node ``{"class_type": "BenchStream", "inputs": {...}}``:

- ``tag`` (str): the name its send times are kept under;
- ``rate`` (frames/s) and ``count``: ``count`` progress frames, frame ``i`` (1-based, its
  ``value``) due at ``start + i / rate`` (an asyncio sleep when early, sent at once when late:
  every frame due by then, with its previews, in one write of ready-made WebSocket frames, so
  that the stand-in itself can send over 100,000 frames/s on a 2-core machine; through
  aiohttp's ``send_str`` one frame at a time it stopped near 28,000, below what the sustained
  rate test must reach);
- ``preview_every``, ``preview_bytes``: a binary preview (type 1, JPEG) of that size after
  every ``preview_every``-th progress frame (0: none);
- ``state_nodes``: a ``progress_state`` of that many nodes before each progress frame, as
  0.12.1 sends (0: none);
- ``delay_ms``: wait before ``execution_start`` (default 200: the client has read the
  ``POST /prompt`` answer before frames come).

The send time of frame ``i`` (Unix ns, ``time.time_ns()`` just before the send) is read back
with ``GET /bench/sends/<tag>`` (it waits for the stream's end, then forgets it):
``{"sends": [ns, ...], "previews": n, "prompt_id": id}``.

Usage: ``python bench/streamer.py [--instances N] [--version 0.3.44]``; prints ``streaming on URL [URL...]`` on
stderr once every port listens, and serves until SIGINT or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, cast

from aiohttp import web

__all__ = ["Stream", "progress_state", "stream_workflow"]

JPEG_HEADER = b"\x00\x00\x00\x01\x00\x00\x00\x01\xff\xd8\xff\xe0"  # [u32 1][u32 1 = JPEG] + JPEG's first bytes


def ws_frame(payload: bytes, opcode: int) -> bytes:
    """One whole, unmasked server frame (RFC 6455 §5.2): what aiohttp writes for a message."""
    n = len(payload)
    if n < 126:
        return bytes((0x80 | opcode, n)) + payload
    if n < 65536:
        return bytes((0x80 | opcode, 126)) + n.to_bytes(2, "big") + payload
    return bytes((0x80 | opcode, 127)) + n.to_bytes(8, "big") + payload


def stream_workflow(
    tag: str,
    rate: float,
    count: int,
    preview_every: int = 0,
    preview_bytes: int = 20_000,
    state_nodes: int = 0,
    delay_ms: float = 200,
) -> dict[str, Any]:
    """The one-node workflow that makes this server stream (see the module docstring)."""
    inputs = {
        "tag": tag,
        "rate": rate,
        "count": count,
        "preview_every": preview_every,
        "preview_bytes": preview_bytes,
        "state_nodes": state_nodes,
        "delay_ms": delay_ms,
    }
    return {"1": {"class_type": "BenchStream", "inputs": inputs}}


def progress_state(pid: str, nodes: int, value: int, count: int) -> str:
    """A 0.12.1 ``progress_state``: ``nodes - 1`` finished nodes and node "1" running at ``value``."""
    state = {
        str(n): {
            "value": value if n == 1 else 1.0,
            "max": count if n == 1 else 1.0,
            "state": "running" if n == 1 else "finished",
            "node_id": str(n),
            "prompt_id": pid,
            "display_node_id": str(n),
            "parent_node_id": None,
            "real_node_id": str(n),
        }
        for n in range(1, nodes + 1)
    }
    return json.dumps({"type": "progress_state", "data": {"prompt_id": pid, "nodes": state}})


@dataclass
class Stream:
    """One prompt's stream and what it sent."""

    tag: str
    prompt_id: str
    client_id: str
    number: int
    inputs: dict[str, Any]
    sends: list[int] = field(default_factory=list)
    previews: int = 0
    done: asyncio.Event = field(default_factory=asyncio.Event)


class Instance:
    """One simulated server: its sockets, queue, history and worker."""

    def __init__(self, streams: dict[str, Stream], version: str) -> None:
        self.streams = streams  # shared by all instances: tags are unique per run
        self.sockets: dict[str, web.WebSocketResponse] = {}
        self.transports: dict[str, asyncio.BaseTransport] = {}
        self.queue: asyncio.Queue[Stream] = asyncio.Queue()
        self.pending: list[Stream] = []
        self.running: Stream | None = None
        self.history: dict[str, dict[str, Any]] = {}
        self.number = 0
        self.version = version

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_get("/ws", self.ws)
        app.router.add_post("/prompt", self.prompt)
        app.router.add_get("/queue", self.get_queue)
        app.router.add_post("/queue", lambda r: web.json_response({}))
        app.router.add_post("/interrupt", lambda r: web.json_response({}))
        app.router.add_get("/history/{pid}", self.get_history)
        app.router.add_get("/system_stats", self.system_stats)
        app.router.add_get("/object_info", lambda r: web.json_response({"BenchStream": {"output_node": True}}))
        app.router.add_get("/bench/sends/{tag}", self.sends)
        return app

    # HTTP and WebSocket handlers

    async def ws(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)
        cid = request.query.get("clientId") or uuid.uuid4().hex
        self.sockets[cid] = ws
        assert request.transport is not None
        self.transports[cid] = request.transport
        await ws.send_str(self._status(cid))
        try:
            async for _ in ws:
                pass
        finally:
            if self.sockets.get(cid) is ws:
                del self.sockets[cid]
                del self.transports[cid]
        return ws

    async def prompt(self, request: web.Request) -> web.Response:
        body = await request.json()
        try:
            node = body["prompt"]["1"]
            assert node["class_type"] == "BenchStream"
            inputs = dict(node["inputs"])
            tag = str(inputs["tag"])
        except (KeyError, TypeError, AssertionError):
            return web.json_response({"error": {"type": "invalid_prompt", "message": "not a BenchStream"}}, status=400)
        if tag in self.streams:
            return web.json_response({"error": {"type": "invalid_prompt", "message": f"tag {tag} used"}}, status=400)
        pid = str(body.get("prompt_id") or uuid.uuid4())
        stream = Stream(tag, pid, str(body.get("client_id") or ""), self.number, inputs)
        self.number += 1
        self.streams[tag] = stream
        self.pending.append(stream)
        self.queue.put_nowait(stream)
        self._broadcast(self._status(None))
        return web.json_response({"prompt_id": pid, "number": stream.number, "node_errors": {}})

    async def get_queue(self, request: web.Request) -> web.Response:
        def item(s: Stream) -> list[Any]:
            return [s.number, s.prompt_id, {}, {"client_id": s.client_id}, ["1"]]

        running = [item(self.running)] if self.running is not None else []
        return web.json_response({"queue_running": running, "queue_pending": [item(s) for s in self.pending]})

    async def get_history(self, request: web.Request) -> web.Response:
        pid = request.match_info["pid"]
        return web.json_response({pid: self.history[pid]} if pid in self.history else {})

    async def system_stats(self, request: web.Request) -> web.Response:
        return web.json_response({"system": {"comfyui_version": self.version, "os": "posix"}, "devices": []})

    async def sends(self, request: web.Request) -> web.Response:
        tag = request.match_info["tag"]
        stream = self.streams.get(tag)
        if stream is None:
            return web.json_response({"error": f"no stream {tag}"}, status=404)
        try:
            async with asyncio.timeout(float(request.query.get("wait", "60"))):
                await stream.done.wait()
        except TimeoutError:
            return web.json_response({"error": f"stream {tag} still running"}, status=504)
        del self.streams[tag]
        return web.json_response({"sends": stream.sends, "previews": stream.previews, "prompt_id": stream.prompt_id})

    # The worker: one prompt at a time

    async def worker(self) -> None:
        while True:
            stream = await self.queue.get()
            self.pending.remove(stream)
            self.running = stream
            try:
                await self._run(stream)
            except (ConnectionError, RuntimeError):  # the client went away: its stream ends here
                pass
            finally:
                self.running = None
                stream.done.set()
                self._broadcast(self._status(None))

    async def _run(self, s: Stream) -> None:
        inputs = s.inputs
        rate, count = float(inputs["rate"]), int(inputs["count"])
        every, state_nodes = int(inputs.get("preview_every", 0)), int(inputs.get("state_nodes", 0))
        preview = JPEG_HEADER + os.urandom(max(0, int(inputs.get("preview_bytes", 20_000)) - len(JPEG_HEADER) + 8))
        await asyncio.sleep(float(inputs.get("delay_ms", 200)) / 1000)
        ws = self.sockets[s.client_id]
        pid = s.prompt_id
        for frame in (
            {"type": "execution_start", "data": {"prompt_id": pid, "timestamp": int(time.time() * 1000)}},
            {"type": "execution_cached", "data": {"nodes": [], "prompt_id": pid, "timestamp": 0}},
            {"type": "executing", "data": {"node": "1", "display_node": "1", "prompt_id": pid}},
        ):
            await ws.send_str(json.dumps(frame))
        sends = s.sends = [0] * count
        tail = f'"prompt_id": "{pid}", "node": "1"}}}}'
        period = 1.0 / rate
        preview_frame = ws_frame(preview, 2)
        write = cast(asyncio.WriteTransport, self.transports[s.client_id]).write
        clock, now_ns = time.perf_counter, time.time_ns
        start = clock()
        i = 1
        while i <= count:
            now = clock()
            due = min(count, int((now - start) / period))  # frames 1..due are due by now
            if due < i:
                await asyncio.sleep(start + i * period - now)
                continue
            out = []
            for k in range(i, due + 1):
                if state_nodes:
                    out.append(ws_frame(progress_state(pid, state_nodes, k, count).encode(), 1))
                text = f'{{"type": "progress", "data": {{"value": {k}, "max": {count}, {tail}'
                out.append(ws_frame(text.encode(), 1))
                if every and k % every == 0:
                    out.append(preview_frame)
                    s.previews += 1
            sent = now_ns()
            write(b"".join(out))
            for k in range(i, due + 1):
                sends[k - 1] = sent
            i = due + 1
            await asyncio.sleep(0)  # others' streams and requests run between bursts
        self.history[pid] = {
            "prompt": [s.number, pid, {}, {"client_id": s.client_id}, ["1"]],
            "outputs": {},
            "status": {"status_str": "success", "completed": True, "messages": []},
            "meta": {},
        }
        if len(self.history) > 1000:  # bounded, like ComfyUI's MAXIMUM_HISTORY_SIZE (10,000)
            del self.history[next(iter(self.history))]
        await ws.send_str(json.dumps({"type": "execution_success", "data": {"prompt_id": pid, "timestamp": 0}}))
        await ws.send_str(json.dumps({"type": "executing", "data": {"node": None, "prompt_id": pid}}))

    # Private

    def _status(self, sid: str | None) -> str:
        remaining = len(self.pending) + (self.running is not None)
        data: dict[str, Any] = {"status": {"exec_info": {"queue_remaining": remaining}}}
        if sid is not None:
            data["sid"] = sid
        return json.dumps({"type": "status", "data": data})

    def _broadcast(self, text: str) -> None:
        for ws in list(self.sockets.values()):
            if not ws.closed:
                asyncio.ensure_future(ws.send_str(text))


async def serve(instances: int, version: str) -> None:
    streams: dict[str, Stream] = {}
    runners: list[web.AppRunner] = []
    workers: list[asyncio.Task[None]] = []
    urls = []
    for _ in range(instances):
        inst = Instance(streams, version)
        runner = web.AppRunner(inst.app(), access_log=None, handle_signals=False)
        await runner.setup()
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        await web.SockSite(runner, sock).start()
        urls.append(f"http://127.0.0.1:{sock.getsockname()[1]}")
        runners.append(runner)
        workers.append(asyncio.create_task(inst.worker()))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print("streaming on " + " ".join(urls), file=sys.stderr, flush=True)
    await stop.wait()
    for task in workers:
        task.cancel()
    for runner in runners:
        await runner.cleanup()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=1, help="servers, one port each")
    parser.add_argument("--version", default="0.3.44", help="the ComfyUI version /system_stats reports")
    args = parser.parse_args()
    asyncio.run(serve(args.instances, args.version))
    return 0


if __name__ == "__main__":
    sys.exit(main())
