"""One-way latency of the hot path: a ComfyUI progress frame sent -> its event received on SUB.

Three processes, all on 127.0.0.1:
  1. a minimal ComfyUI stand-in (``streamer.py``, a subprocess) that, once a prompt is
     submitted, sends ``progress`` frames at a fixed rate and records when it sent each;
  2. the sidecar, started as ``comfy-bridge run --instance bench=URL`` (a subprocess);
  3. this process: a DEALER that submits the job and a SUB that timestamps every
     ``node.progress`` event on arrival.
Latency = SUB arrival (CLOCK_REALTIME) - frame send time, matched by the progress value.
Usage: ``python bench/latency.py [--rate 1000] [--seconds 5] [--progress-state NODES] [--metrics]``. Prints
p50/p99/max. ``--progress-state NODES`` makes the stand-in a 0.12.1 server that sends, as 0.12.1
does, a ``progress_state`` listing NODES nodes before each ``progress`` frame. ``--metrics`` turns
the Prometheus endpoint on (``[metrics] listen``), to measure what counting costs per frame.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import Client, sidecar_process, summary  # noqa: E402
from rig import Streamer  # noqa: E402
from streamer import stream_workflow  # noqa: E402


def measure(
    streamer: Streamer, rate: float, count: int, state_nodes: int, seconds: float, config_toml: str | None = None
) -> tuple[list[int], dict[int, int], float, float]:
    """One job of ``count`` frames through a sidecar: send times, arrival time per value, CPU (process, loop)."""
    url = streamer.urls[0]
    with sidecar_process(f"bench={url}", config_toml=config_toml) as sc:
        client = Client(sc.router, sc.pub, topics=(b"progress.", b"job."))
        client.wait_connected()
        cpu_before, loop_before = sc.cpu_s(), sc.cpu_s(main_thread_only=True)
        workflow = stream_workflow("latency", rate, count, state_nodes=state_nodes)
        reply = client.request("submit", workflow=workflow)
        assert reply["ok"], reply
        arrivals: dict[int, int] = {}
        while True:
            event, now = client.next_event(seconds + 10)
            if event["type"] == "node.progress":
                arrivals[int(event["data"]["value"])] = now
                if len(arrivals) == count:  # all heard: a sidecar far behind may find the stand-in gone at the end
                    break
            elif event["type"] in ("job.completed", "job.failed"):
                break
        cpu_s, loop_s = sc.cpu_s() - cpu_before, sc.cpu_s(main_thread_only=True) - loop_before
        client.close()
    sends: list[int] = streamer.sends(url, "latency", wait_s=30)["sends"]
    return sends, arrivals, cpu_s, loop_s


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=1000.0, help="progress frames per second")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument(
        "--progress-state", type=int, default=0, metavar="NODES", help="send a progress_state before each frame"
    )
    parser.add_argument("--metrics", action="store_true", help="turn the Prometheus endpoint on")
    args = parser.parse_args()
    count = int(args.rate * args.seconds)
    config = '[metrics]\nlisten = "127.0.0.1:0"\n' if args.metrics else None

    streamer = Streamer(1, version="0.12.1" if args.progress_state else "0.3.44")
    try:
        sends, arrivals, cpu_s, loop_s = measure(streamer, args.rate, count, args.progress_state, args.seconds, config)
    finally:
        streamer.close()
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
