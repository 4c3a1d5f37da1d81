"""One-way latency of the hot path: a ComfyUI progress frame sent -> its event received on SUB.

Three processes, all on 127.0.0.1:
  1. a minimal ComfyUI stand-in (aiohttp, in a child process) that, once a prompt is
     submitted, sends ``progress`` frames at a fixed rate and records when it sent each;
  2. the sidecar, started as ``comfy-bridge run --instance bench=URL`` (a subprocess);
  3. this process: a DEALER that submits the job and a SUB that timestamps every
     ``node.progress`` event on arrival.
Latency = SUB arrival (CLOCK_REALTIME) - frame send time, matched by the progress value.
Usage: ``python bench/latency.py [--rate 1000] [--seconds 5] [--progress-state NODES]``. Prints
p50/p99/max. ``--progress-state NODES`` makes the stand-in a 0.12.1 server that sends, as 0.12.1
does, a ``progress_state`` listing NODES nodes before each ``progress`` frame.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import statistics
import sys
import time
import uuid
from pathlib import Path

from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import Client, sidecar_process, summary  # noqa: E402


def _progress_state(pid: str, nodes: int, value: int, count: int) -> str:
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


def _fake_comfy(port_q: mp.Queue, result_q: mp.Queue, rate: float, count: int, state_nodes: int) -> None:
    """A ComfyUI that runs every prompt as one node sending ``count`` progress frames."""
    sends: list[int] = []
    version = "0.12.1" if state_nodes else "0.3.44"

    async def main() -> None:
        sockets: dict[str, web.WebSocketResponse] = {}
        history: dict[str, dict] = {}
        done = asyncio.Event()

        async def ws_handler(request: web.Request) -> web.WebSocketResponse:
            ws = web.WebSocketResponse(max_msg_size=0)
            await ws.prepare(request)
            cid = request.query.get("clientId", uuid.uuid4().hex)
            sockets[cid] = ws
            await ws.send_str(
                json.dumps({"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 0}}, "sid": cid}})
            )
            async for _ in ws:
                pass
            return ws

        async def run_prompt(cid: str, pid: str) -> None:
            ws = sockets[cid]
            await ws.send_str(json.dumps({"type": "execution_start", "data": {"prompt_id": pid}}))
            await ws.send_str(json.dumps({"type": "execution_cached", "data": {"nodes": [], "prompt_id": pid}}))
            await ws.send_str(json.dumps({"type": "executing", "data": {"node": "1", "prompt_id": pid}}))
            period = 1.0 / rate
            start = time.perf_counter()
            for i in range(1, count + 1):
                target = start + i * period
                delay = target - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                data = f'"value": {i}, "max": {count}, "prompt_id": "{pid}", "node": "1"'
                frame = f'{{"type": "progress", "data": {{{data}}}}}'
                if state_nodes:
                    await ws.send_str(_progress_state(pid, state_nodes, i, count))
                sends.append(time.time_ns())
                await ws.send_str(frame)
            history[pid] = {"outputs": {}, "status": {"status_str": "success", "completed": True, "messages": []}}
            await ws.send_str(json.dumps({"type": "execution_success", "data": {"prompt_id": pid}}))
            await ws.send_str(json.dumps({"type": "executing", "data": {"node": None, "prompt_id": pid}}))
            done.set()

        async def prompt(request: web.Request) -> web.Response:
            body = await request.json()
            pid = str(uuid.uuid4())
            asyncio.get_running_loop().call_later(
                0.2, lambda: asyncio.ensure_future(run_prompt(body["client_id"], pid))
            )
            return web.json_response({"prompt_id": pid, "number": 0, "node_errors": {}})

        async def hist(request: web.Request) -> web.Response:
            pid = request.match_info["pid"]
            return web.json_response({pid: history[pid]} if pid in history else {})

        app = web.Application()
        app.router.add_get("/ws", ws_handler)
        app.router.add_post("/prompt", prompt)
        app.router.add_get("/history/{pid}", hist)
        app.router.add_get(
            "/system_stats", lambda r: web.json_response({"system": {"comfyui_version": version}, "devices": []})
        )
        app.router.add_get("/object_info", lambda r: web.json_response({"Probe": {"output_node": True}}))
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port_q.put(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]
        await done.wait()
        await asyncio.sleep(0.5)
        result_q.put(sends)
        await runner.cleanup()

    asyncio.run(main())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=1000.0, help="progress frames per second")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument(
        "--progress-state", type=int, default=0, metavar="NODES", help="send a progress_state before each frame"
    )
    args = parser.parse_args()
    count = int(args.rate * args.seconds)

    port_q: mp.Queue = mp.Queue()
    result_q: mp.Queue = mp.Queue()
    fake = mp.Process(target=_fake_comfy, args=(port_q, result_q, args.rate, count, args.progress_state), daemon=True)
    fake.start()
    port = port_q.get(timeout=30)
    with sidecar_process(f"bench=http://127.0.0.1:{port}") as sc:
        client = Client(sc.router, sc.pub, topics=(b"progress.", b"job."))
        client.wait_connected()
        cpu_before, loop_before = sc.cpu_s(), sc.cpu_s(main_thread_only=True)
        reply = client.request("submit", workflow={"1": {"class_type": "Probe", "inputs": {}}})
        assert reply["ok"], reply
        arrivals: dict[int, int] = {}
        while True:
            event, now = client.next_event(args.seconds + 10)
            if event["type"] == "node.progress":
                arrivals[int(event["data"]["value"])] = now
                if len(arrivals) == count:  # all heard: a sidecar far behind may find the stand-in gone at the end
                    break
            elif event["type"] in ("job.completed", "job.failed"):
                break
        cpu_s, loop_s = sc.cpu_s() - cpu_before, sc.cpu_s(main_thread_only=True) - loop_before
        sends = result_q.get(timeout=30)
        client.close()
    fake.join(timeout=5)
    lat_us = [(arrivals[i + 1] - sent) / 1000 for i, sent in enumerate(sends) if i + 1 in arrivals]
    lost = len(sends) - len(lat_us)
    print(f"frames sent {len(sends)} at {args.rate:.0f}/s, events received {len(lat_us)}, lost {lost}")
    print(summary("frame sent -> event on SUB", lat_us, unit="us"))
    print(f"mean {statistics.fmean(lat_us):.0f} us")
    # each progress frame makes two events (node.progress and, when the percentage moves, job.progress)
    frames = len(sends)
    if args.progress_state:
        print(f"(each progress frame followed a {args.progress_state}-node progress_state: CPU per pair)")
    print(
        f"sidecar CPU per frame: {1e6 * cpu_s / frames:.1f} us for the process (ZeroMQ I/O threads included), "
        f"{1e6 * loop_s / frames:.1f} us on the event loop thread (WebSocket read, decode, tracker, encode, "
        f"publish, and the loop's own wake-ups at {args.rate:.0f} frames/s)"
    )
    return 0 if lost == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
