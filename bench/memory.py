"""Memory with history: the sidecar's RSS along a long stream of frames and along many finished jobs.

:func:`frames_run`: one job of ``count`` progress frames at ``rate`` (``streamer.py``), the
sidecar's RSS when the frame of each mark arrives. :func:`jobs_run`: ``count`` jobs of a tiny
workflow (a 1x1 ``EmptyImage`` into ``BridgeText``) through the simulated ComfyUI with 0 ms
steps, submitted ``INFLIGHT`` at a time; RSS at each mark; then the first job is asked for with
``job`` (the sidecar keeps only the last finished jobs in memory: older ones are read back from
the state file). Used by ``report.py``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import msgspec
import render
import zmq
from harness import simulator_process
from rig import Sidecar, Streamer, cpu_s, rss_mb
from streamer import stream_workflow

__all__ = ["frames_run", "jobs_run"]

INFLIGHT = 200
FINAL = ("job.completed", "job.failed", "job.cancelled")


def frames_run(
    count: int, rate: float, marks: tuple[int, ...], startup: list[dict[str, Any]], log: Callable[[str], None]
) -> dict[str, Any]:
    streamer = Streamer(1)
    sidecar = None
    try:
        sidecar = Sidecar(streamer.urls)
        startup.append(render.startup_row("memory: frames", 1, sidecar))
        out: dict[str, Any] = {"count": count, "rate": rate, "rss_start": rss_mb(sidecar.pid), "marks": []}
        arrivals = [0] * count
        pending = sorted(marks)
        began, cpu_before = time.monotonic(), cpu_s(sidecar.pid)
        [job_id] = sidecar.start(streamer, [stream_workflow("mem-frames", rate, count)])
        sub, now_ns, decode = sidecar.sub, time.time_ns, msgspec.msgpack.decode
        deadline = time.monotonic() + count / rate + 120
        ended = False
        while not ended and time.monotonic() < deadline:
            if not sub.poll(200):
                continue
            frames = sub.recv_multipart()
            at = now_ns()
            event = decode(frames[1])
            if event["type"] == "node.progress":
                value = int(event["data"]["value"])
                arrivals[value - 1] = at
                while pending and value >= pending[0]:
                    mark = pending.pop(0)
                    rss = rss_mb(sidecar.pid)
                    out["marks"].append({"frames": mark, "rss_mb": rss, "at_s": time.monotonic() - began})
                    log(f"memory: {mark:,} frames, RSS {out['marks'][-1]['rss_mb']:.1f} MB")
            elif event["type"] in FINAL and event["job_id"] == job_id:
                ended = True
        out["cpu_us_per_frame"] = 1e6 * (cpu_s(sidecar.pid) - cpu_before) / count
        out["took_s"] = time.monotonic() - began
        out["rss_end"] = rss_mb(sidecar.pid)
        sends = streamer.sends(streamer.urls[0], "mem-frames", wait_s=60)["sends"]
        lat = [(at - sent) / 1000 for at, sent in zip(arrivals, sends, strict=True) if at]
        out["lost"] = count - len(lat)
        out["stats"] = render.stats(lat)
        out["achieved"] = (len(sends) - 1) / max(1e-9, (sends[-1] - sends[0]) / 1e9)
        return out
    finally:
        if sidecar is not None:
            sidecar.close()
        streamer.close()


def _workflow(n: int) -> dict[str, Any]:
    return {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 1, "height": 1, "batch_size": 1, "color": n % 0xFFFFFF}},
        "2": {"class_type": "BridgeText", "inputs": {"text": f"job {n}", "image": ["1", 0]}},
    }


def jobs_run(
    count: int, marks: tuple[int, ...], startup: list[dict[str, Any]], log: Callable[[str], None]
) -> dict[str, Any]:
    with simulator_process("0.12.1", 0) as url:
        sidecar = Sidecar([url], names=["sim"])
        try:
            startup.append(render.startup_row("memory: jobs", 1, sidecar))
            return _jobs(sidecar, count, marks, log)
        finally:
            sidecar.close()


def _jobs(sidecar: Sidecar, count: int, marks: tuple[int, ...], log: Callable[[str], None]) -> dict[str, Any]:
    out: dict[str, Any] = {"count": count, "rss_start": rss_mb(sidecar.pid), "marks": [], "outcomes": {}}
    dealer, sub, decode = sidecar.client.dealer, sidecar.sub, msgspec.msgpack.decode
    poller = zmq.Poller()
    poller.register(dealer, zmq.POLLIN)
    poller.register(sub, zmq.POLLIN)
    pending = sorted(marks)
    submitted = replied = finished = refused = 0
    began = time.monotonic()
    deadline = began + count / 50 + 120  # 50 jobs/s at the very least
    while finished + refused < count and time.monotonic() < deadline:
        while submitted < count and submitted - finished - refused < INFLIGHT:
            job = {"job_id": f"job-{submitted}", "workflow": _workflow(submitted)}
            dealer.send(msgspec.msgpack.encode({"op": "submit", "id": str(submitted), **job}))
            submitted += 1
        ready = dict(poller.poll(200))
        if dealer in ready:
            while True:
                try:
                    reply = decode(dealer.recv(zmq.NOBLOCK))
                except zmq.Again:
                    break
                replied += 1
                if not reply["ok"]:
                    refused += 1
                    key = "refused: " + reply["error"]["code"]
                    out["outcomes"][key] = out["outcomes"].get(key, 0) + 1
        if sub in ready:
            while True:
                try:
                    frames = sub.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                if not frames[0].startswith(b"job."):
                    continue
                event = decode(frames[1])
                if event["type"] in FINAL:
                    finished += 1
                    out["outcomes"][event["type"]] = out["outcomes"].get(event["type"], 0) + 1
                    while pending and finished >= pending[0]:
                        mark = pending.pop(0)
                        rss = rss_mb(sidecar.pid)
                        out["marks"].append({"jobs": mark, "rss_mb": rss, "at_s": time.monotonic() - began})
                        log(f"memory: {mark:,} jobs finished, RSS {out['marks'][-1]['rss_mb']:.1f} MB")
    out["took_s"] = time.monotonic() - began
    out["finished"] = finished
    out["rss_end"] = rss_mb(sidecar.pid)
    while replied < submitted and dealer.poll(5000):  # every submit answered before the next request
        dealer.recv()
        replied += 1
    asked = time.monotonic()
    reply = sidecar.client.request("job", job_id="job-0")
    out["readback"] = {
        "ok": bool(reply["ok"]),
        "state": reply["result"]["state"] if reply["ok"] else reply["error"]["code"],
        "ms": (time.monotonic() - asked) * 1000,
    }
    return out
