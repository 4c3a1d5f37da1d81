"""What ZeroMQ CURVE costs the hot path: ``Publisher.publish()`` with and without ``[zmq.curve]``.

The sidecar's own Publisher on ``tcp://127.0.0.1``, one SUB in another process (with an allowed key
when CURVE is on, its handshake checked by the sidecar's ZAP authenticator on the event loop, as in
``comfy-bridge run``). Per round and mode: ``publish()`` of a ``node.progress`` event back to back
(``--n`` events) and paced at 10,000/s for one second, as thread CPU per call (the measure of
bench/README.md "Hot path"); then how long until the subscriber has every event (libzmq's I/O thread
encrypts under CURVE, off the Python thread). Modes alternate; medians over ``--rounds``.

Usage: ``python bench/curve_cost.py [--rounds 5] [--n 50000]``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import zmq

from sidecar.config import CurveConfig
from sidecar.core.sequence import Sequencer
from sidecar.curve import ServerCurve, client_curve, write_key_pair
from sidecar.protocol.events import NodeProgress
from sidecar.publisher import Publisher

STOP = b"bench-stop"


def subscriber(endpoint: str, server_key: str, client_key: str) -> None:
    """The SUB process: prints ``ready`` at its first event, then the count at the stop event."""
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.RCVHWM, 0)
    curve = client_curve(server_key, client_key) if server_key else None
    if curve is not None:
        curve.apply(sub)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(endpoint)
    count = 0
    sub.recv_multipart()
    print("ready", flush=True)
    while True:
        frames = sub.recv_multipart()
        if frames[0] == STOP:
            print(count, flush=True)
            count = 0
            continue
        count += 1


def _events(n: int) -> list[Any]:
    seq = Sequencer("bench")
    data = NodeProgress(node="3", value=1, max=20)
    return [seq.event("node.progress", "a", "job-1", data, time.time_ns()) for _ in range(n)]


def _round(publisher: Publisher, proc: subprocess.Popen[str], events: list[Any]) -> dict[str, float]:
    publish = publisher.publish
    started, cpu = time.perf_counter(), time.thread_time_ns()
    for event in events:
        publish(event)
    back_to_back = (time.thread_time_ns() - cpu) / len(events) / 1000
    publisher._send(STOP, int(zmq.SNDMORE))  # noqa: SLF001 - the bench's own sentinel
    publisher._send(b"", 0)  # noqa: SLF001
    assert proc.stdout is not None
    received = int(proc.stdout.readline())
    delivered_s = time.perf_counter() - started
    paced, cpu_total, interval = events[:10_000], 0, 1e-4
    next_at = time.perf_counter()
    for event in paced:
        while time.perf_counter() < next_at:
            pass
        cpu = time.thread_time_ns()
        publish(event)
        cpu_total += time.thread_time_ns() - cpu
        next_at += interval
    publisher._send(STOP, int(zmq.SNDMORE))  # noqa: SLF001
    publisher._send(b"", 0)  # noqa: SLF001
    proc.stdout.readline()
    return {
        "back_to_back_us": back_to_back,
        "paced_us": cpu_total / len(paced) / 1000,
        "delivered_per_s": received / delivered_s,
        "lost": len(events) - received,
    }


def _start_subscriber(endpoint: str, server_key: str, client_key: str) -> subprocess.Popen[str]:
    argv = [sys.executable, __file__, "--sub", endpoint, server_key, client_key]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parent.parent)


async def _mode(curve: bool, keys: Path, events: list[Any]) -> dict[str, float]:
    ctx: zmq.Context[Any] = zmq.Context()
    server = ServerCurve(CurveConfig(str(keys / "server.key_secret"), str(keys / "clients"))) if curve else None
    if server is not None:
        server.start(ctx)
    publisher = Publisher(ctx, "tcp://127.0.0.1:*", 10_000_000, 0, server.apply if server else None)
    keyfiles = (str(keys / "server.key"), str(keys / "client.key_secret")) if curve else ("", "")
    proc = _start_subscriber(publisher.endpoint, *keyfiles)
    try:
        assert proc.stdout is not None
        ready = asyncio.create_task(asyncio.to_thread(proc.stdout.readline))
        while not ready.done():  # the slow joiner (and the handshake, ZAP on this loop): until one arrives
            publisher.publish(events[0])
            await asyncio.sleep(0.01)
        return _round(publisher, proc, events)
    finally:
        proc.kill()
        proc.wait()
        publisher.close(0)
        if server is not None:
            server.stop()
        ctx.term()


async def main(rounds: int, n: int) -> None:
    events = _events(n)
    with tempfile.TemporaryDirectory() as tmp:
        keys = Path(tmp)
        write_key_pair(keys, "server")
        write_key_pair(keys, "client")
        (keys / "clients").mkdir()
        (keys / "clients" / "client.key").write_bytes((keys / "client.key").read_bytes())
        results: dict[str, list[dict[str, float]]] = {"plain": [], "curve": []}
        for _ in range(rounds):
            for mode in ("plain", "curve"):
                results[mode].append(await _mode(mode == "curve", keys, events))
    for mode, runs in results.items():
        med = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
        print(
            f"{mode:5}  publish() back to back {med['back_to_back_us']:.2f} µs  paced 10k/s {med['paced_us']:.2f} µs"
            f"  delivered {med['delivered_per_s']:,.0f} events/s  lost {max(run['lost'] for run in runs):.0f}"
            f"  (range b2b {min(r['back_to_back_us'] for r in runs):.2f}-{max(r['back_to_back_us'] for r in runs):.2f})"
        )


if __name__ == "__main__":
    if sys.argv[1:2] == ["--sub"]:
        subscriber(*sys.argv[2:5])
    else:
        parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
        parser.add_argument("--rounds", type=int, default=5)
        parser.add_argument("--n", type=int, default=50_000)
        opts = parser.parse_args()
        asyncio.run(main(opts.rounds, opts.n))
