"""One-way latency of the hot path: a ComfyUI progress frame sent -> its event received on SUB.

Three processes, all on 127.0.0.1:
  1. a minimal ComfyUI stand-in (aiohttp, in a child process) that, once a prompt is
     submitted, sends ``progress`` frames at a fixed rate and records when it sent each;
  2. the sidecar, started as ``comfy-bridge run --instance bench=URL`` (a subprocess);
  3. this process: a DEALER that submits the job and a SUB that timestamps every
     ``node.progress`` event on arrival.
Latency = SUB arrival (CLOCK_REALTIME) - frame send time, matched by the progress value.
Usage: ``python bench/latency.py [--rate 1000] [--seconds 5]``. Prints p50/p90/p99/max.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import re
import statistics
import subprocess
import sys
import time
import uuid

import msgspec
import zmq

from aiohttp import web


def _fake_comfy(port_q: mp.Queue, result_q: mp.Queue, rate: float, count: int) -> None:
    """A ComfyUI that runs every prompt as one node sending ``count`` progress frames."""
    sends: list[int] = []

    async def main() -> None:
        sockets: dict[str, web.WebSocketResponse] = {}
        history: dict[str, dict] = {}
        done = asyncio.Event()

        async def ws_handler(request: web.Request) -> web.WebSocketResponse:
            ws = web.WebSocketResponse(max_msg_size=0)
            await ws.prepare(request)
            cid = request.query.get("clientId", uuid.uuid4().hex)
            sockets[cid] = ws
            await ws.send_str(json.dumps({"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 0}}, "sid": cid}}))
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
                frame = f'{{"type": "progress", "data": {{"value": {i}, "max": {count}, "prompt_id": "{pid}", "node": "1"}}}}'
                sends.append(time.time_ns())
                await ws.send_str(frame)
            history[pid] = {"outputs": {}, "status": {"status_str": "success", "completed": True, "messages": []}}
            await ws.send_str(json.dumps({"type": "execution_success", "data": {"prompt_id": pid}}))
            await ws.send_str(json.dumps({"type": "executing", "data": {"node": None, "prompt_id": pid}}))
            done.set()

        async def prompt(request: web.Request) -> web.Response:
            body = await request.json()
            pid = str(uuid.uuid4())
            asyncio.get_running_loop().call_later(0.2, lambda: asyncio.ensure_future(run_prompt(body["client_id"], pid)))
            return web.json_response({"prompt_id": pid, "number": 0, "node_errors": {}})

        async def hist(request: web.Request) -> web.Response:
            pid = request.match_info["pid"]
            return web.json_response({pid: history[pid]} if pid in history else {})

        app = web.Application()
        app.router.add_get("/ws", ws_handler)
        app.router.add_post("/prompt", prompt)
        app.router.add_get("/history/{pid}", hist)
        app.router.add_get("/system_stats", lambda r: web.json_response({"system": {"comfyui_version": "0.3.44"}, "devices": []}))
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


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=1000.0, help="progress frames per second")
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    count = int(args.rate * args.seconds)

    port_q: mp.Queue = mp.Queue()
    result_q: mp.Queue = mp.Queue()
    fake = mp.Process(target=_fake_comfy, args=(port_q, result_q, args.rate, count), daemon=True)
    fake.start()
    port = port_q.get(timeout=30)
    sidecar = subprocess.Popen(
        [sys.executable, "-m", "sidecar", "run", "--instance", f"bench=http://127.0.0.1:{port}",
         "--router", "tcp://127.0.0.1:*", "--pub", "tcp://127.0.0.1:*"],
        stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        router = pub = None
        deadline = time.monotonic() + 30
        while router is None and time.monotonic() < deadline:
            line = sidecar.stderr.readline()  # type: ignore[union-attr]
            match = re.search(r"ROUTER on (\S+), PUB on (\S+),", line)
            if match:
                router, pub = match.group(1), match.group(2)
        if router is None:
            print("sidecar did not start", file=sys.stderr)
            return 1
        ctx = zmq.Context()
        sub = ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.SUBSCRIBE, b"progress.")
        sub.setsockopt(zmq.SUBSCRIBE, b"job.")
        sub.setsockopt(zmq.RCVHWM, 0)
        sub.connect(pub)
        dealer = ctx.socket(zmq.DEALER)
        dealer.connect(router)
        # wait until the instance is connected (health), then submit
        while time.monotonic() < deadline:
            dealer.send(msgspec.msgpack.encode({"op": "health", "id": "h"}))
            health = msgspec.msgpack.decode(dealer.recv())
            if health["result"]["instances"][0]["state"] == "connected":
                break
            time.sleep(0.05)
        dealer.send(msgspec.msgpack.encode({"op": "submit", "id": "s", "workflow": {"1": {"class_type": "Probe", "inputs": {}}}}))
        reply = msgspec.msgpack.decode(dealer.recv())
        assert reply["ok"], reply
        arrivals: dict[int, int] = {}
        while True:
            if not sub.poll(int(args.seconds * 1000) + 10_000):
                break
            frames = sub.recv_multipart()
            now = time.time_ns()
            event = msgspec.msgpack.decode(frames[1])
            if event["type"] == "node.progress":
                arrivals[int(event["data"]["value"])] = now
            elif event["type"] in ("job.completed", "job.failed"):
                break
        sends = result_q.get(timeout=30)
        lat_us = [(arrivals[i + 1] - sent) / 1000 for i, sent in enumerate(sends) if i + 1 in arrivals]
        lost = len(sends) - len(lat_us)
        print(f"frames sent {len(sends)} at {args.rate:.0f}/s, events received {len(lat_us)}, lost {lost}")
        print(
            "one-way latency (us): "
            f"p50 {percentile(lat_us, 50):.0f}  p90 {percentile(lat_us, 90):.0f}  "
            f"p99 {percentile(lat_us, 99):.0f}  max {max(lat_us):.0f}  mean {statistics.fmean(lat_us):.0f}"
        )
        sub.close(0)
        dealer.close(0)
        ctx.term()
        return 0 if lost == 0 else 1
    finally:
        sidecar.terminate()
        try:
            sidecar.wait(timeout=10)
        except subprocess.TimeoutExpired:
            subprocess.run(["py-spy", "dump", "--pid", str(sidecar.pid)])
            sidecar.kill()
            raise
        fake.join(timeout=5)


if __name__ == "__main__":
    sys.exit(main())
