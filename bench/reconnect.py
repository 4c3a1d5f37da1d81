"""Kill and restart cycles: reconnect time after a ComfyUI restart, and what is lost (goal: nothing).

Each cycle submits two jobs (one runs, one waits), then SIGKILLs either the simulated ComfyUI
(restarted on the same port, empty, as a real restart leaves it) or the sidecar (restarted on
the same state file), alternating. It measures, for ComfyUI restarts, the time from the new
server accepting connections (it printed its URL) to the sidecar's ``instance.status
connected`` event; and for every job, that exactly one final event arrives.

Usage: ``python bench/reconnect.py [--cycles 20] [--version 0.12.1]``.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import Client, _stop, free_ports, percentile, probe_workflow  # noqa: E402

FINAL = ("job.completed", "job.failed", "job.cancelled")
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


def start_simulator(port: int, version: str) -> tuple[subprocess.Popen[bytes], int]:
    """Start ``comfy-bridge simulate`` and return it with the Unix ns time it accepts connections."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "sidecar", "simulate", "--port", str(port), "--version", version, "--step-ms", "20"],
        stderr=subprocess.PIPE,
        env=ENV,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stderr.readline()  # type: ignore[union-attr]
        if b"listening on" in line:
            ready = time.time_ns()
            threading.Thread(target=proc.stderr.read, daemon=True).start()  # type: ignore[union-attr]
            return proc, ready
        if not line:
            break
    raise RuntimeError("simulator did not start")


def start_sidecar(comfy_port: int, router: str, pub: str, state: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sidecar",
            "run",
            "--instance",
            f"c=http://127.0.0.1:{comfy_port}",
            "--router",
            router,
            "--pub",
            pub,
            "--state",
            state,
        ],
        stderr=open(state + ".log", "ab"),
        env=ENV,  # noqa: SIM115 - the child owns it
    )


def measure(cycles: int = 20, version: str = "0.12.1", log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run ``cycles`` kill/restart cycles; ``reconnect_ms`` (one per ComfyUI restart), the job ids
    ``submitted``, ``lost`` (no final state), ``duplicated`` (job -> its final events) and ``asked``
    (final state learnt with ``job``)."""
    comfy_port, router_port, pub_port = free_ports(3)
    router, pub = f"tcp://127.0.0.1:{router_port}", f"tcp://127.0.0.1:{pub_port}"
    state = str(Path(tempfile.mkdtemp(prefix="bench-reconnect-")) / "state.sqlite3")
    comfy, _ = start_simulator(comfy_port, version)
    sidecar = start_sidecar(comfy_port, router, pub, state)
    client = Client(router, pub, topics=(b"job.", b"instance."))
    finals: dict[str, list[str]] = {}
    reconnect_ms: list[float] = []
    submitted: list[str] = []
    asked: set[str] = set()  # final state learnt from the `job` op, not from an event
    try:
        client.wait_connected()
        for cycle in range(cycles):
            ids = [f"c{cycle}-running", f"c{cycle}-waiting"]
            for n, job_id in enumerate(ids):
                assert client.request("submit", job_id=job_id, workflow=probe_workflow(cycle * 10 + n))["ok"]
                submitted.append(job_id)
            client.wait_event(lambda e, j=ids[0]: e["type"] == "job.started" and e["job_id"] == j)
            if cycle % 2 == 0:  # kill ComfyUI, restart it empty on the same port
                comfy.send_signal(signal.SIGKILL)
                comfy.wait()
                client.wait_event(lambda e: e["type"] == "instance.status" and e["data"]["state"] == "disconnected")
                comfy, ready_ns = start_simulator(comfy_port, version)
                _, at = client.wait_event(
                    lambda e: e["type"] == "instance.status" and e["data"]["state"] == "connected"
                )
                reconnect_ms.append((at - ready_ns) / 1e6)
            else:  # kill the sidecar, restart it on the same state file
                sidecar.send_signal(signal.SIGKILL)
                sidecar.wait()
                sidecar = start_sidecar(comfy_port, router, pub, state)
                client.wait_connected()
            pending = set(ids)
            deadline = time.monotonic() + 60
            while pending and time.monotonic() < deadline:
                try:
                    event, _ = client.next_event(timeout_s=0.5)
                except TimeoutError:
                    # A restarted sidecar may publish before the SUB socket has reconnected to it: a
                    # subscriber then asks (docs/PROTOCOL.md §7), as this one does after a quiet spell.
                    for job_id in list(pending):
                        reply = client.request("job", job_id=job_id)
                        if reply["ok"] and reply["result"]["state"] in ("completed", "failed", "cancelled"):
                            finals.setdefault(job_id, []).append("job." + reply["result"]["state"])
                            asked.add(job_id)
                            pending.discard(job_id)
                    continue
                if event["type"] in FINAL and event["job_id"] in pending:
                    finals.setdefault(event["job_id"], []).append(event["type"])
                    pending.discard(event["job_id"])
                elif event["type"] in FINAL and event["job_id"] in finals:
                    finals[event["job_id"]].append(event["type"])  # a second final event: counted
            log(
                f"cycle {cycle + 1:2d}: killed {'ComfyUI' if cycle % 2 == 0 else 'sidecar'}; "
                f"{len(ids) - len(pending)}/{len(ids)} jobs reached a final state"
            )
    finally:
        client.close()
        for proc in (sidecar, comfy):
            _stop(proc)

    lost = [j for j in submitted if j not in finals]
    duplicated = {j: f for j, f in finals.items() if len(f) > 1}
    outcome = statistics.multimode(f[0] for f in finals.values()) if finals else []
    return {
        "reconnect_ms": reconnect_ms,
        "submitted": submitted,
        "lost": lost,
        "duplicated": duplicated,
        "asked": sorted(asked),
        "outcome": outcome,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=20)
    parser.add_argument("--version", default="0.12.1")
    args = parser.parse_args()

    result = measure(args.cycles, args.version, log=lambda line: print(line, flush=True))
    reconnect_ms, lost, duplicated = result["reconnect_ms"], result["lost"], result["duplicated"]
    print()
    print(f"ComfyUI {args.version} (simulated), {args.cycles} cycles, {len(result['submitted'])} jobs")
    if reconnect_ms:
        print(
            f"reconnect after ComfyUI restart: median {statistics.median(reconnect_ms):.1f} ms over "
            f"{len(reconnect_ms)} restarts, p90 {percentile(reconnect_ms, 90):.1f} ms, max {max(reconnect_ms):.1f} ms"
        )
    print(f"jobs lost (no final state): {len(lost)} {lost if lost else ''}")
    print(
        f"final states learnt by asking `job` after a sidecar restart (event sent before the SUB reconnected): "
        f"{len(result['asked'])}"
    )
    print(f"jobs with more than one final event: {len(duplicated)} {duplicated if duplicated else ''}")
    print(f"most common outcome: {result['outcome']}")
    return 0 if not lost else 1


if __name__ == "__main__":
    sys.exit(main())
