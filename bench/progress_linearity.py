"""How evenly ``job.progress`` follows the time a job takes, on the simulated ComfyUI.

For each job: percent against elapsed time, t from the job's ``job.started`` to its final
``job.progress`` 100.0 (the events' own ``ts``, so the client's delivery delay does not
count), and the largest gap from the straight line 0 -> 100 over that time:

- ``gap@events``: max |percent - 100 t/T| over the published ``job.progress`` events;
- ``gap held``: the same, also counting the value a client shows just before each update
  (the previous percent held until the next event: a node that sends nothing, such as a
  checkpoint load, moves the bar only by the sidecar's ticks, every 0.25 s, once its class's
  duration was learned);
- ``1st step``: the percent shown at the sampler's first ``node.progress`` and that moment's
  share of the time; ``eta err``: the largest |eta_s - time really left| (where published).

Sequence (one state file throughout, the simulated ComfyUI on one fixed port):
  1. fresh state file, fresh ComfyUI: text-to-image cold, then warm (new seed: the loaders,
     prompts and latent cached) -- "first cold" / "first warm": nothing learned yet;
  2. the sidecar and ComfyUI restarted (ComfyUI empty again): text-to-image cold, then warm;
  3. both restarted again: text-to-image with 300 sampler steps, cold.
The figures of steps 2 and 3 use what the sidecar learned in step 1 and kept in its state file.

Usage: ``python bench/progress_linearity.py [--step-ms 20] [--sidecar-root DIR]``.
``--sidecar-root`` runs the sidecar of another checkout (e.g. one before this change) against
this checkout's simulator, for before/after figures.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import Client, _lines_until, _stop  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
WORKFLOW = json.loads((ROOT / "docs" / "examples" / "text-to-image.json").read_text())
SAMPLER = "3"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def simulator(port: int, step_ms: float) -> Iterator[None]:
    cmd = [sys.executable, "-m", "sidecar", "simulate", "--port", str(port), "--step-ms", str(step_ms)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    try:
        _lines_until(proc, r"http://127\.0\.0\.1:\d+", 30)
        yield
    finally:
        _stop(proc)


@contextmanager
def sidecar(root: Path, state: Path, url: str) -> Iterator[Client]:
    cmd = [sys.executable, "-m", "sidecar", "run", "--router", "tcp://127.0.0.1:*", "--pub", "tcp://127.0.0.1:*"]
    cmd += ["--state", str(state), "--instance", f"sim={url}"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(root)}
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=env, cwd=root)
    try:
        match = _lines_until(proc, r"ROUTER on (\S+), PUB on (\S+),", 30)
        client = Client(match.group(1), match.group(2))
        try:
            client.wait_connected()
            yield client
        finally:
            client.close()
    finally:
        _stop(proc)


def run_job(client: Client, job_id: str, seed: int, steps: int) -> list[dict[str, Any]]:
    """Submit text-to-image with ``seed`` and ``steps``; the job's events until it completed."""
    workflow = json.loads(json.dumps(WORKFLOW))
    workflow[SAMPLER]["inputs"].update(seed=seed, steps=steps)
    reply = client.request("submit", job_id=job_id, workflow=workflow)
    if not reply["ok"]:
        raise RuntimeError(reply)
    events = []
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        event, _ = client.next_event(max(0.1, deadline - time.monotonic()))
        if event.get("job_id") != job_id:
            continue
        events.append(event)
        if event["type"] in ("job.completed", "job.failed", "job.cancelled"):
            if event["type"] != "job.completed":
                raise RuntimeError(event)
            return events
    raise TimeoutError(job_id)


def figures(events: list[dict[str, Any]]) -> dict[str, Any]:
    t0 = next(e["ts"] for e in events if e["type"] == "job.started")
    points = [(e["ts"], e["data"]["percent"], e["data"].get("eta_s")) for e in events if e["type"] == "job.progress"]
    end = points[-1][0]
    assert points[-1][1] == 100.0, points[-1]
    span = end - t0

    def line(ts: int) -> float:
        return 100.0 * (ts - t0) / span

    percents = [p for _, p, _ in points]
    assert percents == sorted(percents), "percent went back"
    at_events = max(abs(p - line(ts)) for ts, p, _ in points)
    held = at_events
    previous = 0.0
    for ts, p, _ in points:
        held = max(held, abs(previous - line(ts)))
        previous = p
    first_step = next(e["ts"] for e in events if e["type"] == "node.progress" and e["data"]["node"] == SAMPLER)
    shown = max([p for ts, p, _ in points if ts <= first_step], default=0.0)
    eta_errors = [abs(eta - (end - ts) / 1e9) for ts, _, eta in points[:-1] if eta is not None]
    return {
        "T_s": span / 1e9,
        "gap_events": at_events,
        "gap_held": held,
        "first_step_percent": shown,
        "first_step_share": line(first_step),
        "eta_published": f"{len(eta_errors)}/{len(points) - 1}",
        "eta_err_s": max(eta_errors) if eta_errors else None,
    }


def report(name: str, f: dict[str, Any]) -> None:
    eta = "   -  " if f["eta_err_s"] is None else f"{f['eta_err_s']:6.2f}"
    print(
        f"{name:<14} T {f['T_s']:6.2f} s   gap@events {f['gap_events']:5.1f}   gap held {f['gap_held']:5.1f}   "
        f"1st step {f['first_step_percent']:5.1f} % at {f['first_step_share']:5.1f} % of T   "
        f"eta {f['eta_published']:>7} err {eta} s",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--step-ms", type=float, default=20.0, help="simulated sampler step (sets every node's time)")
    parser.add_argument("--steps", type=int, default=20, help="sampler steps of the text-to-image runs")
    parser.add_argument("--long-steps", type=int, default=300, help="sampler steps of the long job")
    parser.add_argument("--sidecar-root", type=Path, default=ROOT, help="checkout whose sidecar runs")
    args = parser.parse_args()
    root = args.sidecar_root.resolve()
    print(f"sidecar from {root}, simulator from {ROOT}, step {args.step_ms} ms")
    state = Path(tempfile.mkdtemp(prefix="bench-progress-")) / "state.sqlite3"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with simulator(port, args.step_ms), sidecar(root, state, url) as client:
        report("first cold", figures(run_job(client, "first-cold", 1, args.steps)))
        report("first warm", figures(run_job(client, "first-warm", 2, args.steps)))
    with simulator(port, args.step_ms), sidecar(root, state, url) as client:
        report("cold", figures(run_job(client, "cold", 3, args.steps)))
        report("warm", figures(run_job(client, "warm", 4, args.steps)))
    with simulator(port, args.step_ms), sidecar(root, state, url) as client:
        report(f"{args.long_steps} steps cold", figures(run_job(client, "long", 5, args.long_steps)))


if __name__ == "__main__":
    main()
