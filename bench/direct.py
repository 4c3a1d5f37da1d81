"""The floor of the latency benchmark: a client reading ComfyUI's WebSocket directly, no hop.

One process, one WebSocket per URL (``websockets``' asyncio client, as the sidecar uses,
without compression, as the sidecar asks), all with the clientId ``--client-id``. Every text
frame is timestamped (``time.time_ns()``) as soon as it is read, then parsed with ``json``, as
any client does; a ``progress`` frame's arrival is kept under its prompt id and ``value``.
Binary frames (previews) are counted.

Driven by ``report.py`` over stdin/stdout, one JSON object per line: it prints
``{"ready": true}`` once every socket is open; ``{"op": "wait", "pids": [...], "timeout_s": T}``
answers, once ``execution_success`` came for each prompt (or after T seconds),
``{"arrivals": {pid: [[value, ns], ...]}, "ended": [...], "previews": n}`` and forgets them;
``{"op": "quit"}`` (or the end of stdin) exits.

Usage: ``python bench/direct.py --client-id ID URL [URL...]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import threading
import time
from typing import Any

from websockets.asyncio.client import connect

__all__ = ["Floor"]


class Floor:
    def __init__(self, urls: list[str], client_id: str) -> None:
        self.urls = urls
        self.client_id = client_id
        self.arrivals: dict[str, list[list[int]]] = {}
        self.ended: set[str] = set()
        self.previews = 0
        self.changed = asyncio.Event()
        self.opened = 0

    async def follow(self, url: str, ready: asyncio.Event) -> None:
        ws_url = "ws" + url[4:] + f"/ws?clientId={self.client_id}"
        async with connect(ws_url, compression=None, max_size=None, ping_interval=None) as ws:
            self.opened += 1
            if self.opened == len(self.urls):
                ready.set()
            arrivals, now_ns, loads = self.arrivals, time.time_ns, json.loads
            while True:
                frame = await ws.recv(decode=False)
                now = now_ns()
                if frame[:1] != b"{":
                    self.previews += 1
                    continue
                msg = loads(frame)
                kind = msg["type"]
                if kind == "progress":
                    data = msg["data"]
                    arrivals.setdefault(data["prompt_id"], []).append([data["value"], now])
                elif kind == "execution_success":
                    self.ended.add(msg["data"]["prompt_id"])
                    self.changed.set()

    async def wait(self, pids: list[str], timeout_s: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while not self.ended.issuperset(pids) and time.monotonic() < deadline:
            self.changed.clear()
            try:
                async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                    await self.changed.wait()
            except TimeoutError:
                break
        answer = {
            "arrivals": {pid: self.arrivals.pop(pid, []) for pid in pids},
            "ended": [pid for pid in pids if pid in self.ended],
            "previews": self.previews,
        }
        self.ended.difference_update(pids)
        self.previews = 0
        return answer


async def run(urls: list[str], client_id: str) -> None:
    floor = Floor(urls, client_id)
    ready = asyncio.Event()
    tasks = [asyncio.create_task(floor.follow(url, ready)) for url in urls]
    loop = asyncio.get_running_loop()
    commands: asyncio.Queue[str] = asyncio.Queue()

    def read_stdin() -> None:
        for line in sys.stdin:
            loop.call_soon_threadsafe(commands.put_nowait, line)
        loop.call_soon_threadsafe(commands.put_nowait, '{"op": "quit"}')

    threading.Thread(target=read_stdin, daemon=True).start()
    waiting = asyncio.create_task(ready.wait())
    await asyncio.wait([waiting, *tasks], return_when=asyncio.FIRST_COMPLETED)
    if not ready.is_set():
        for task in tasks:
            if task.done() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
    print(json.dumps({"ready": True}), flush=True)
    while True:
        command = json.loads(await commands.get())
        if command["op"] == "quit":
            break
        if command["op"] == "wait":
            answer = await floor.wait(command["pids"], float(command["timeout_s"]))
            sys.stdout.write(json.dumps(answer) + "\n")
            sys.stdout.flush()
    for task in tasks:
        task.cancel()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--client-id", required=True)
    parser.add_argument("urls", nargs="+", help="ComfyUI HTTP base URLs")
    args = parser.parse_args()
    asyncio.run(run(args.urls, args.client_id))
    return 0


if __name__ == "__main__":
    sys.exit(main())
