"""SHELL: ``comfy-bridge demo``: simulated ComfyUI instances, a sidecar, sample jobs, live progress.

Everything runs in this one process on free ports of 127.0.0.1, with its state in a
temporary folder: nothing to configure, nothing left behind. It submits one job per
instance (the probe workflow and ComfyUI's default text-to-image graph), cancels one
more while it waits in a queue, and follows them with the watcher until all end.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
from pathlib import Path
from typing import Any

import msgspec
import zmq
import zmq.asyncio

from .app import Sidecar
from .config import BridgeConfig, InstanceConfig, PreviewConfig, StateConfig, ZmqConfig
from .simulator import SimServer
from .watch import watch

__all__ = ["run_demo"]

EXAMPLES = Path(__file__).resolve().parent.parent / "docs" / "examples"


def _workflows() -> list[dict[str, Any]]:
    """The sample workflows: the repository's examples when present, else a built-in probe graph."""
    found = [json.loads(p.read_text(encoding="utf-8")) for p in sorted(EXAMPLES.glob("*.json"))]
    return found or [
        {
            "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 7}},
            "2": {
                "class_type": "BridgeProbe",
                "inputs": {"image": ["1", 0], "steps": 8, "step_ms": 150, "fail_at": -1, "seed": 7},
            },
            "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "demo"}},
        }
    ]


def _long_job() -> dict[str, Any]:
    """A job that cannot finish before the demo cancels it, however fast the simulated steps are."""
    return {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 9}},
        "2": {
            "class_type": "BridgeProbe",
            "inputs": {"image": ["1", 0], "steps": 10000, "step_ms": 100, "fail_at": -1, "seed": 9},
        },
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "demo"}},
    }


async def run_demo(versions: list[str], step_ms: float, out: Any = None) -> int:
    """Run the demo; returns 0 when every job reached the final state expected of it."""
    sims = [SimServer(v, step_ms=step_ms) for v in versions]
    for sim in sims:
        await sim.start()
    with tempfile.TemporaryDirectory(prefix="comfy-bridge-demo-") as tmp:
        config = BridgeConfig(
            instances={f"sim{n}-{s.version}": InstanceConfig(url=s.url) for n, s in enumerate(sims)},
            zmq=ZmqConfig(router="tcp://127.0.0.1:*", pub="tcp://127.0.0.1:*"),
            state=StateConfig(path=str(Path(tmp) / "state.sqlite3")),
            previews=PreviewConfig(store="files", dir=str(Path(tmp) / "previews")),
        )
        sidecar = Sidecar(config)
        stop = asyncio.Event()
        task = asyncio.create_task(sidecar.run(stop.wait))
        try:
            watcher = asyncio.create_task(
                watch(
                    sidecar.router.endpoint, sidecar.publisher.endpoint, until_idle=True, out=out, idle_after_jobs=True
                )
            )
            outcome = await _submit_samples(sidecar, list(config.instances))
            seen = await asyncio.wait_for(watcher, timeout=300)
        finally:
            stop.set()
            await task
            for sim in sims:
                await sim.close()
    states = {job_id: seen.jobs[job_id].state for job_id in outcome}
    print(f"\ndemo finished: {states}", file=out, flush=True)
    return 0 if states == outcome else 1


async def _submit_samples(sidecar: Sidecar, instances: list[str]) -> dict[str, str]:
    """Submit the samples (and one cancelled job); returns the final state each should reach."""
    ctx = zmq.asyncio.Context()
    dealer = ctx.socket(zmq.DEALER)
    dealer.connect(sidecar.router.endpoint)

    async def ask(**body: Any) -> dict[str, Any]:
        await dealer.send(msgspec.msgpack.encode({"id": body.get("job_id", body["op"]), **body}))
        reply: dict[str, Any] = msgspec.msgpack.decode(await dealer.recv())
        return reply

    try:
        for _ in range(600):  # at most 30 s for the simulated instances to connect
            if all(i["state"] == "connected" for i in (await ask(op="health"))["result"]["instances"]):
                break
            await asyncio.sleep(0.05)
        else:
            raise TimeoutError("the simulated instances did not connect within 30 s")
        expected: dict[str, str] = {}
        workflows = _workflows()
        for n, name in enumerate(instances):
            job_id = f"demo-{n + 1}"
            await ask(op="submit", job_id=job_id, instance=name, workflow=workflows[n % len(workflows)])
            expected[job_id] = "completed"
        await ask(op="submit", job_id="demo-cancelled", instance=instances[0], workflow=_long_job())
        await ask(op="cancel", job_id="demo-cancelled")  # queued or already running: it ends cancelled
        expected["demo-cancelled"] = "cancelled"
        return expected
    finally:
        dealer.close(0)
        ctx.term()
