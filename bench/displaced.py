"""A displaced socket (ComfyUI issue 16010): how late a job's end is published, and what the next job loses.

Each round submits a short job A, waits for its first ``node.progress``, then opens a second
WebSocket with the sidecar's clientId and closes it: ComfyUI forgets the id, and the sidecar's
socket, still open, receives nothing more. A ends in ComfyUI shortly after. The script measures
how long after ComfyUI's ``execution_success`` (the timestamp in A's history) ``job.completed``
arrives. Then it submits job B (``queue_anyway``, as the sidecar may be reconnecting just then) and
reports how many of B's 20 ``node.progress`` events were heard, and the first one's step (1 when
nothing was lost).

The sidecar runs with its defaults (``recovery.unseen_s`` 5 s, ``silent_s`` 30 s, ``check_s``
1 s). Usage: ``python bench/displaced.py [--rounds 5] [--version 0.12.1]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from websockets.sync.client import connect

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import Client, probe_workflow, sidecar_process, simulator_process  # noqa: E402

FINAL = ("job.completed", "job.failed", "job.cancelled")


def ended_ms(url: str, prompt_id: str) -> float:
    """ComfyUI's ``execution_success`` timestamp for ``prompt_id`` (Unix ms), from its history."""
    with urllib.request.urlopen(f"{url}/history/{prompt_id}", timeout=10) as resp:
        entry = json.load(resp)[prompt_id]
    for kind, data in entry["status"]["messages"]:
        if kind == "execution_success":
            return float(data["timestamp"])
    raise RuntimeError(f"no execution_success in the history of {prompt_id}")


def follow(c: Client, job_id: str, timeout_s: float = 60) -> tuple[list[dict[str, Any]], int]:
    """Events of ``job_id`` up to its final one, and the final one's arrival (Unix ns)."""
    events: list[dict[str, Any]] = []
    while True:
        event, at = c.wait_event(lambda e: e["job_id"] == job_id, timeout_s)
        events.append(event)
        if event["type"] in FINAL:
            return events, at


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--version", default="0.12.1")
    args = parser.parse_args()
    late_s: list[float] = []
    with simulator_process(args.version, step_ms=50) as url, sidecar_process(f"a={url}") as running:
        c = Client(running.router, running.pub)
        c.wait_connected()
        client_id = c.request("health")["result"]["instances"][0]["client_id"]
        ws_url = "ws" + url[4:] + f"/ws?clientId={client_id}"
        for n in range(args.rounds):
            a, b = f"a{n}-{uuid.uuid4().hex[:6]}", f"b{n}-{uuid.uuid4().hex[:6]}"
            c.request("submit", job_id=a, workflow=probe_workflow(uuid.uuid4().int % 100_000, 20, 50))
            c.wait_event(lambda e, a=a: e["type"] == "node.progress" and e["job_id"] == a)
            with connect(ws_url) as second:  # displaces the sidecar's socket; closing it forgets the id
                second.recv(timeout=10)
            events, at = follow(c, a)
            final = events[-1]
            late = at / 1e9 - ended_ms(url, final["data"]["prompt_id"]) / 1e3
            late_s.append(late)
            # queue_anyway: B waits in the sidecar if it is reconnecting just then
            reply = c.request(
                "submit",
                job_id=b,
                instance="a",
                queue_anyway=True,
                workflow=probe_workflow(uuid.uuid4().int % 100_000, 20, 50),
            )
            assert reply["ok"], reply
            events, _ = follow(c, b)
            steps = [e["data"]["value"] for e in events if e["type"] == "node.progress"]
            print(
                f"round {n}: A {final['type']} {late:6.2f} s after ComfyUI ended it; "
                f"B {events[-1]['type']}, {len(steps)} of 20 node.progress heard, the first at step "
                f"{steps[0] if steps else None}"
            )
        c.close()
    print(f"A published late: median {statistics.median(late_s):.2f} s, max {max(late_s):.2f} s")


if __name__ == "__main__":
    main()
