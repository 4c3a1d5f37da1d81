"""Failover: ComfyUI killed (SIGKILL) mid-job and left down -> the job on another instance.

Processes, all on 127.0.0.1: two ``comfy-bridge simulate`` servers (A, killed and restarted on
the same port each round; B), the sidecar (``comfy-bridge run --instance a=A --instance b=B``
with ``recovery.failover_after_s`` set), and this process (DEALER + SUB). Each round submits a
job to A, waits until it has made a few sampler steps, SIGKILLs A, and times, from the kill:
the job's ``job.resubmitted`` on B arriving on SUB, and its ``job.completed`` (the job starts over
on B, so completion adds the job's own run time, printed too). Medians over the rounds.
Usage: ``python bench/failover.py [--rounds 5] [--after 2] [--check 1] [--steps 50] [--step-ms 20]``.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import Client, _lines_until, probe_workflow, sidecar_process, simulator_process  # noqa: E402


def spawn_simulator(port: int, step_ms: float) -> tuple[subprocess.Popen[str], int]:
    cmd = [sys.executable, "-m", "sidecar", "simulate", "--port", str(port), "--version", "0.12.1"]
    cmd += ["--step-ms", str(step_ms)]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    return proc, int(_lines_until(proc, r"http://127\.0\.0\.1:(\d+)", 30).group(1))


def of(event: dict, job_id: str, kind: str) -> bool:
    return bool(event["type"] == kind and event["job_id"] == job_id)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--after", type=float, default=2.0, help="recovery.failover_after_s")
    parser.add_argument("--check", type=float, default=1.0, help="recovery.check_s (the default)")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--step-ms", type=float, default=20.0)
    args = parser.parse_args()
    config = f"[recovery]\nfailover_after_s = {args.after}\ncheck_s = {args.check}\n"
    to_resubmitted, to_completed, on_b = [], [], []
    proc, port = spawn_simulator(0, 10)
    try:
        with (
            simulator_process("0.12.1", step_ms=10) as url_b,
            sidecar_process(f"a=http://127.0.0.1:{port}", f"b={url_b}", config_toml=config) as sc,
        ):
            client = Client(sc.router, sc.pub, topics=(b"job.", b"progress.", b"instance."))
            client.wait_connected()
            for n in range(args.rounds):
                job_id = f"failover-{n}"
                reply = client.request(
                    "submit", job_id=job_id, instance="a", workflow=probe_workflow(n, args.steps, args.step_ms)
                )
                assert reply["ok"], reply
                client.wait_event(
                    lambda e, j=job_id: e["type"] == "node.progress" and e["job_id"] == j and e["data"]["value"] >= 5
                )
                killed = time.time_ns()
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                moved, moved_at = client.wait_event(lambda e, j=job_id: of(e, j, "job.resubmitted"))
                assert moved["instance"] == "b" and moved["data"]["previous_instance"] == "a", moved
                started, started_at = client.wait_event(lambda e, j=job_id: of(e, j, "job.started"))
                final, done_at = client.wait_event(
                    lambda e, j=job_id: e["type"] in ("job.completed", "job.failed") and e["job_id"] == j
                )
                assert final["type"] == "job.completed" and final["instance"] == "b", final
                to_resubmitted.append((moved_at - killed) / 1e9)
                to_completed.append((done_at - killed) / 1e9)
                on_b.append((done_at - started_at) / 1e9)
                print(
                    f"round {n + 1}: job.resubmitted on b {to_resubmitted[-1]:.3f} s after the kill, "
                    f"job.completed {to_completed[-1]:.3f} s (its run on b {on_b[-1]:.3f} s)",
                    flush=True,
                )
                proc, _ = spawn_simulator(port, 10)  # A back, empty, on the same port
                client.wait_event(lambda e: e["type"] == "instance.status" and e["data"]["state"] == "connected")
            client.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    print(
        f"recovery.failover_after_s = {args.after}, check_s = {args.check}, {args.rounds} rounds, "
        f"job of {args.steps} steps x {args.step_ms:.0f} ms"
    )
    print(
        f"kill -> job.resubmitted on the other instance: median {statistics.median(to_resubmitted):.3f} s "
        f"(min {min(to_resubmitted):.3f}, max {max(to_resubmitted):.3f}); "
        f"beyond the threshold: {statistics.median(to_resubmitted) - args.after:.3f} s"
    )
    print(
        f"kill -> job.completed: median {statistics.median(to_completed):.3f} s "
        f"(min {min(to_completed):.3f}, max {max(to_completed):.3f}); the run on b itself: "
        f"median {statistics.median(on_b):.3f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
