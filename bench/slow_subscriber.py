"""A stalled subscriber against a reading one: latency, losses, recovery and the sidecar's memory.

Processes, all on 127.0.0.1: one or more minimal ComfyUI stand-ins (aiohttp, child processes)
that run every prompt as one node sending ``--job-frames`` ``progress`` frames at ``--rate``
frames/s (recording when each was sent), the sidecar (``comfy-bridge run``), and this process.

Two phases on one sidecar, each running jobs back to back for ``--stall-s`` seconds (plus
``--extra-s``, so jobs still run when the stall ends):

1. **absent**: one reading subscriber (an ordinary SUB to everything, reading as fast as it
   can): its latency from frame sent to ``node.progress`` received, p50/p99/max, and what it
   missed (gaps in ``seq``; progress values never received);
2. **present**: the same, with one more subscriber connected to everything that reads its first
   event and then nothing for ``--stall-s`` seconds. The sidecar's RSS is sampled meanwhile.
   Then the stalled one resumes and follows docs/PROTOCOL.md §7.2: it reads until it finds a
   gap in ``seq``, asks ``snapshot``, follows the listed jobs to their end, and its job views
   are compared with what ``job`` returns (equal field by field, or not).

Usage: ``python bench/slow_subscriber.py [--rate 10000] [--stall-s 30] [--extra-s 3]
[--job-frames 5000] [--instances 1] [--hwm N] [--stalled 1] [--skip-absent] [--reader-pause-s 0]``.
The sidecar runs as ``python -m sidecar`` from the current directory, so it is the ``sidecar``
package there or first on ``PYTHONPATH``: to measure another checkout, run from it (an older
sidecar works too: keys it lacks are read as their defaults).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import multiprocessing as mp
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import zmq
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import Running, percentile, sidecar_process, summary  # noqa: E402

from sidecar.mirror import FINAL, Mirror  # noqa: E402

MB = 1 << 20


# The ComfyUI stand-in ----------------------------------------------------------------------------


def _fake_comfy(port_q: mp.Queue, sends_q: mp.Queue, rate: float, frames: int) -> None:
    """A ComfyUI that runs prompts one after another, each as node "1" sending ``frames`` progress
    frames paced at ``rate`` per second; after each prompt it puts ``(prompt_id, [send ns])``."""

    async def main() -> None:
        sockets: dict[str, web.WebSocketResponse] = {}
        history: dict[str, dict] = {}
        queue: asyncio.Queue[tuple[str, str]] = asyncio.Queue()

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

        async def worker() -> None:
            period = 1.0 / rate
            while True:
                cid, pid = await queue.get()
                ws = sockets[cid]
                sends: list[int] = []
                await ws.send_str(json.dumps({"type": "execution_start", "data": {"prompt_id": pid}}))
                await ws.send_str(json.dumps({"type": "execution_cached", "data": {"nodes": [], "prompt_id": pid}}))
                await ws.send_str(json.dumps({"type": "executing", "data": {"node": "1", "prompt_id": pid}}))
                start = time.perf_counter()
                for i in range(1, frames + 1):
                    delay = start + i * period - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    data = f'"value": {i}, "max": {frames}, "prompt_id": "{pid}", "node": "1"'
                    sends.append(time.time_ns())
                    await ws.send_str(f'{{"type": "progress", "data": {{{data}}}}}')
                output = {"text": [f"done {pid}"]}
                history[pid] = {
                    "outputs": {"1": output},
                    "status": {"status_str": "success", "completed": True, "messages": []},
                }
                executed = {"node": "1", "display_node": "1", "output": output, "prompt_id": pid}
                await ws.send_str(json.dumps({"type": "executed", "data": executed}))
                await ws.send_str(json.dumps({"type": "execution_success", "data": {"prompt_id": pid}}))
                await ws.send_str(json.dumps({"type": "executing", "data": {"node": None, "prompt_id": pid}}))
                sends_q.put((pid, sends))

        async def prompt(request: web.Request) -> web.Response:
            body = await request.json()
            pid = str(uuid.uuid4())
            queue.put_nowait((body["client_id"], pid))
            return web.json_response({"prompt_id": pid, "number": 0, "node_errors": {}})

        async def hist(request: web.Request) -> web.Response:
            pid = request.match_info["pid"]
            return web.json_response({pid: history[pid]} if pid in history else {})

        async def queue_state(request: web.Request) -> web.Response:
            return web.json_response({"queue_running": [], "queue_pending": []})

        app = web.Application()
        app.router.add_get("/ws", ws_handler)
        app.router.add_post("/prompt", prompt)
        app.router.add_get("/history/{pid}", hist)
        app.router.add_get("/queue", queue_state)
        app.router.add_get(
            "/system_stats", lambda r: web.json_response({"system": {"comfyui_version": "0.3.44"}, "devices": []})
        )
        app.router.add_get("/object_info", lambda r: web.json_response({"Probe": {"output_node": True}}))
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port_q.put(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]
        asyncio.get_running_loop().create_task(worker())
        await asyncio.Future()

    asyncio.run(main())


def _request(dealer: zmq.Socket, op: str, timeout_s: float = 30, **fields: Any) -> dict[str, Any]:
    dealer.send(msgspec.msgpack.encode({"op": op, "id": op, **fields}))
    if not dealer.poll(int(timeout_s * 1000)):
        raise TimeoutError(op)
    reply: dict[str, Any] = msgspec.msgpack.decode(dealer.recv())
    return reply


@dataclass
class Recovery:
    """What the stalled subscriber did once resumed."""

    buffered: int = 0  # events it read before the first gap
    gap_at: int | None = None  # the seq it expected when it found the gap
    snapshots: int = 0  # snapshots taken (one per gap found)
    snapshot_seq: int | None = None  # the first snapshot's seq
    snapshot_jobs: int = 0  # jobs its views were rebuilt for (listed by a snapshot, followed to their end)
    ended_before: int = 0  # jobs it had seen that the snapshot no longer lists: `job` says they ended
    equal: int = 0  # rebuilt views equal to what `job` returns once the job ended
    rebuilt: int = 0  # views rebuilt from a snapshot and the events after it
    differing: list[str] = field(default_factory=list)
    error: str | None = None


def _stalled(pub: str, router: str, subscribed: Any, resume: Any, out: mp.Queue, deadline_s: float) -> None:
    """A SUB to everything that reads one event, then nothing until ``resume`` is set; then it
    follows docs/PROTOCOL.md §7.2 (gap -> snapshot -> follow) and puts a :class:`Recovery`."""
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)  # an ordinary SUB: default RCVHWM and kernel buffers
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(pub)
    dealer = ctx.socket(zmq.DEALER)
    dealer.connect(router)
    res = Recovery()

    def next_event() -> dict[str, Any]:
        if not sub.poll(int(deadline_s * 1000)):
            raise TimeoutError("no event")
        event: dict[str, Any] = msgspec.msgpack.decode(sub.recv_multipart()[1])
        return event

    try:
        first = next_event()
        subscribed.set()
        resume.wait()
        seen = {first["job_id"]}
        expected, run = first["seq"] + 1, first["run"]
        while True:  # what ZeroMQ kept for it, up to the first gap (or the live stream: no gap)
            event = next_event()
            seen.add(event["job_id"])
            if event["seq"] != expected or event["run"] != run:
                res.gap_at = expected
                break
            res.buffered += 1
            expected += 1
            if time.time_ns() - event["ts"] < 200_000_000:
                break  # caught up with no gap: the stall cost it nothing; snapshot all the same
        mirror = Mirror()
        rebuilt: dict[str, dict[str, Any]] = {}  # views of the jobs whose end it applied
        pending = [event]
        caught_up = False
        while not caught_up:
            snapshot = _request(dealer, "snapshot")["result"]
            res.snapshots += 1
            if res.snapshot_seq is None:
                res.snapshot_seq, res.snapshot_jobs = snapshot["seq"], len(snapshot["jobs"])
                listed = {view["job_id"] for view in snapshot["jobs"]}
                for job_id in sorted(j for j in seen if j and j not in listed):
                    if _request(dealer, "job", job_id=job_id)["result"]["state"] in FINAL.values():
                        res.ended_before += 1
            mirror.load(snapshot)
            caught_up = True
            while mirror.ended != set(mirror.jobs):
                if not pending:
                    pending.append(next_event())
                if not mirror.apply(pending.pop(0)):
                    caught_up = False  # lost events again: snapshot again (§7.2 step 6)
                    break
            rebuilt.update((j, mirror.jobs[j]) for j in mirror.ended)
        res.rebuilt = len(rebuilt)
        for job_id, view in rebuilt.items():
            truth = _request(dealer, "job", job_id=job_id)["result"]
            if view == truth:
                res.equal += 1
            else:
                res.differing.append(job_id)
    except Exception as exc:  # reported in the figures, not raised: a child process
        res.error = f"{type(exc).__name__}: {exc}"
    finally:
        out.put(res)
        sub.close(0)
        dealer.close(0)
        ctx.term()


# One phase -------------------------------------------------------------------------------------


@dataclass
class Phase:
    name: str
    latency_us: list[float]
    progress_sent: int
    progress_received: int
    seq_lost: int
    rss_mb: list[tuple[float, float]]  # (seconds since the phase started, RSS MB)
    recovery: Recovery | None
    duration_s: float
    health: dict[str, Any]  # health's `events` map at the end of the phase


def run_phase(
    name: str, sc: Running, instances: list[str], sends: Sends, args: argparse.Namespace, stalled_n: int
) -> Phase:
    ctx = zmq.Context()
    reader = ctx.socket(zmq.SUB)  # an ordinary SUB: default RCVHWM (1000) and kernel buffers
    reader.setsockopt(zmq.SUBSCRIBE, b"")
    reader.connect(sc.pub)
    dealer = ctx.socket(zmq.DEALER)
    dealer.connect(sc.router)
    resume, results = mp.Event(), mp.Queue()
    stalled = []
    for _ in range(stalled_n):
        subscribed = mp.Event()
        proc = mp.Process(
            target=_stalled, args=(sc.pub, sc.router, subscribed, resume, results, args.stall_s + 120), daemon=True
        )
        proc.start()
        stalled.append((proc, subscribed))
    try:
        if not reader.poll(10_000):
            raise TimeoutError("the reader received nothing")
        reader.recv_multipart()
        for _, subscribed in stalled:
            if not subscribed.wait(10):
                raise TimeoutError("a stalled subscriber received nothing")
        # Jobs for the stall and --extra-s more, so some still run when the stalled one resumes.
        per_instance = -(-int(args.rate * (args.stall_s + args.extra_s)) // args.job_frames)
        jobs = [f"{name}-{inst}-{n}" for n, inst in itertools.product(range(per_instance), instances)]
        rss: list[tuple[float, float]] = []
        done = threading.Event()
        start = time.monotonic()

        def sample() -> None:
            while not done.wait(0.25):
                rss.append((time.monotonic() - start, sc.rss_bytes() / MB))

        rss.append((0.0, sc.rss_bytes() / MB))
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        for job_id in jobs:
            reply = _request(dealer, "submit", job_id=job_id, instance=job_id.split("-")[1], workflow=PROBE)
            assert reply["ok"], reply
        arrivals: dict[tuple[str, int], int] = {}
        prompt_of: dict[str, str] = {}
        ended: set[str] = set()
        last_seq: int | None = None
        seq_lost = 0
        paused = args.reader_pause_s <= 0
        deadline = start + args.stall_s + 120
        while len(ended) < len(jobs) and time.monotonic() < deadline:
            now = time.monotonic()
            if stalled and not resume.is_set() and now - start >= args.stall_s:
                resume.set()
            if not paused and now - start >= args.stall_s / 2:
                time.sleep(args.reader_pause_s)  # sync-ok: the reader's hiccup under test
                paused = True
            if not reader.poll(100):
                continue
            frames = reader.recv_multipart()
            at = time.time_ns()
            event = msgspec.msgpack.decode(frames[1])
            if last_seq is not None and event["seq"] > last_seq + 1:
                seq_lost += event["seq"] - last_seq - 1
            last_seq = event["seq"]
            kind = event["type"]
            if kind == "node.progress":
                arrivals[(event["job_id"], int(event["data"]["value"]))] = at
            elif kind == "job.queued":
                prompt_of[event["job_id"]] = event["data"]["prompt_id"]
            elif kind in FINAL:
                ended.add(event["job_id"])
        duration_s = time.monotonic() - start
        health = _request(dealer, "health")["result"].get("events", {})
        resume.set()
        recovery = results.get(timeout=180) if stalled else None
        done.set()
        sampler.join()
        latency_us: list[float] = []
        sent = 0
        for job_id, pid in prompt_of.items():
            for i, t in enumerate(sends.of(pid)):
                sent += 1
                got = arrivals.get((job_id, i + 1))
                if got is not None:
                    latency_us.append((got - t) / 1000)
        return Phase(name, latency_us, sent, len(latency_us), seq_lost, rss, recovery, duration_s, health)
    finally:
        for proc, _ in stalled:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.terminate()
        reader.close(0)
        dealer.close(0)
        ctx.term()


class Sends:
    """The stand-ins' send times per prompt id, as they report them."""

    def __init__(self, queue: mp.Queue) -> None:
        self.queue = queue
        self.by_prompt: dict[str, list[int]] = {}

    def of(self, prompt_id: str, timeout_s: float = 30) -> list[int]:
        deadline = time.monotonic() + timeout_s
        while prompt_id not in self.by_prompt and time.monotonic() < deadline:
            pid, times = self.queue.get(timeout=max(0.01, deadline - time.monotonic()))
            self.by_prompt[pid] = times
        return self.by_prompt.pop(prompt_id, [])


PROBE = {"1": {"class_type": "Probe", "inputs": {}}}


def report(phase: Phase, stall_s: float) -> None:
    print(f"--- {phase.name}: {phase.duration_s:.1f} s")
    if phase.latency_us:
        print(summary("frame sent -> node.progress on SUB", phase.latency_us, unit="us"))
    lost = phase.progress_sent - phase.progress_received
    print(
        f"reading subscriber: node.progress {phase.progress_received} of {phase.progress_sent} received "
        f"(lost {lost}); events lost by seq gaps: {phase.seq_lost}"
    )
    during = [mb for t, mb in phase.rss_mb if t <= stall_s]
    print(
        f"sidecar RSS: {phase.rss_mb[0][1]:.1f} MB at start, max {max(during):.1f} MB during the first "
        f"{stall_s:.0f} s, {during[-1]:.1f} MB at {stall_s:.0f} s, max {max(mb for _, mb in phase.rss_mb):.1f} MB"
    )
    marks = [f"{t:.0f}s {mb:.1f}" for t, mb in phase.rss_mb[:: max(1, len(phase.rss_mb) // 10)]]
    print("RSS timeline (MB): " + ", ".join(marks))
    print(f"health events: {phase.health}")
    rec = phase.recovery
    if rec is not None:
        if rec.error:
            print(f"stalled subscriber: FAILED to recover: {rec.error}")
        else:
            print(
                f"stalled subscriber, resumed: read {rec.buffered} buffered events, "
                + (f"gap at seq {rec.gap_at}; " if rec.gap_at is not None else "no gap; ")
                + f"snapshot seq {rec.snapshot_seq} with {rec.snapshot_jobs} unfinished jobs; {rec.ended_before} "
                f"jobs it had seen ended meanwhile (per `job`); rebuilt views equal to `job`: "
                f"{rec.equal} of {rec.rebuilt} ({rec.snapshots} snapshot(s))"
                + (f", differing {rec.differing}" if rec.differing else "")
            )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=10_000.0, help="progress frames per second per instance")
    parser.add_argument("--stall-s", type=float, default=30.0, help="how long the stalled subscriber reads nothing")
    parser.add_argument("--job-frames", type=int, default=5000, help="progress frames per job")
    parser.add_argument("--extra-s", type=float, default=3.0, help="jobs go on this long after the stall")
    parser.add_argument("--instances", type=int, default=1, help="ComfyUI stand-ins, each at --rate")
    parser.add_argument("--hwm", type=int, default=None, help="zmq.pub_hwm (default: the sidecar's default)")
    parser.add_argument("--stalled", type=int, default=1, help="stalled subscribers in the second phase")
    parser.add_argument("--skip-absent", action="store_true", help="run only the phase with a stalled subscriber")
    parser.add_argument("--reader-pause-s", type=float, default=0.0, help="the reader stops once, mid-phase")
    args = parser.parse_args()

    fakes, ports = [], []
    sends_q: mp.Queue = mp.Queue()
    for _ in range(args.instances):
        port_q: mp.Queue = mp.Queue()
        fake = mp.Process(target=_fake_comfy, args=(port_q, sends_q, args.rate, args.job_frames), daemon=True)
        fake.start()
        fakes.append(fake)
        ports.append(port_q.get(timeout=30))
    names = [f"c{n}" for n in range(args.instances)]
    sends = Sends(sends_q)
    config = f"[zmq]\npub_hwm = {args.hwm}\n" if args.hwm is not None else None
    try:
        with sidecar_process(
            *(f"{n}=http://127.0.0.1:{p}" for n, p in zip(names, ports, strict=True)), config_toml=config
        ) as sc:
            _wait_connected(sc, len(names))
            print(
                f"{args.instances} instance(s) x {args.rate:.0f} progress frames/s, jobs of {args.job_frames} frames, "
                f"stall {args.stall_s:.0f} s, pub_hwm {args.hwm or 'default'}"
            )
            phases = []
            if not args.skip_absent:
                phases.append(run_phase("absent", sc, names, sends, args, 0))
                report(phases[-1], args.stall_s)
            phases.append(run_phase("present", sc, names, sends, args, args.stalled))
            report(phases[-1], args.stall_s)
            if len(phases) == 2:
                a, b = phases
                print(
                    f"p99 absent {percentile(a.latency_us, 99):.0f} us, present {percentile(b.latency_us, 99):.0f} us; "
                    f"p50 absent {percentile(a.latency_us, 50):.0f} us, present {percentile(b.latency_us, 50):.0f} us"
                )
    finally:
        for fake in fakes:
            fake.terminate()
    return 0


def _wait_connected(sc: Running, count: int, timeout_s: float = 30) -> None:
    ctx = zmq.Context()
    dealer = ctx.socket(zmq.DEALER)
    dealer.connect(sc.router)
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            instances = _request(dealer, "health")["result"]["instances"]
            if sum(i["state"] == "connected" for i in instances) == count:
                return
            time.sleep(0.05)  # sync-ok: polling a separate process's state, bounded by the deadline
        raise TimeoutError("instances not connected")
    finally:
        dealer.close(0)
        ctx.term()


if __name__ == "__main__":
    sys.exit(main())
