"""Issue 13, identity: a sidecar's name is in ``health``, ``snapshot`` and every envelope, and a
subscriber of several sidecars keeps ``seq`` per (sidecar, run) (docs/PROTOCOL.md §7.3)."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import msgspec

from sidecar.app import Sidecar
from sidecar.config import SidecarConfig, loads, sidecar_name
from sidecar.mirror import FleetMirror

from .conftest import Client, connected, make_config, probe_workflow


def test_the_name_defaults_to_the_host_name_and_is_taken_from_the_config() -> None:
    assert sidecar_name(loads("")) == socket.gethostname()
    assert sidecar_name(loads('[sidecar]\nname = "gpu-host-a"\n')) == "gpu-host-a"


async def test_health_snapshot_and_every_event_carry_the_sidecar_s_name(tmp_path: Path, sims, zctx) -> None:
    sim = await sims()
    config = make_config({"a": sim.url}, tmp_path / "s.sqlite3")
    sidecar = Sidecar(msgspec.structs.replace(config, sidecar=SidecarConfig(name="gpu-host-a")))
    stop = asyncio.Event()
    task = asyncio.create_task(sidecar.run(stop.wait))
    c = Client(zctx, sidecar.router.endpoint, sidecar.publisher.endpoint)
    try:
        await c.wait_for(lambda e: True)
        await connected(c, "a")
        assert (await c.request("health"))["result"]["sidecar"] == "gpu-host-a"
        assert (await c.request("snapshot"))["result"]["sidecar"] == "gpu-host-a"
        reply = await c.request("submit", workflow=probe_workflow(steps=2, step_ms=1), job_id="j1")
        assert reply["ok"], reply
        await c.job_final("j1")
        assert {e["sidecar"] for e in c.events} == {"gpu-host-a"}
        assert len(c.of_job("j1")) > 3
    finally:
        await c.close()
        stop.set()
        async with asyncio.timeout(10):
            await task


def _event(sidecar: str, run: str, seq: int, job_id: str | None = None) -> dict[str, object]:
    return {"sidecar": sidecar, "run": run, "seq": seq, "type": "heartbeat", "job_id": job_id, "data": {}, "ts": 0}


def test_a_fleet_mirror_keeps_seq_per_sidecar_and_run() -> None:
    """Two sidecars number their events alike; a new run of one asks a snapshot of that one only."""
    fleet = FleetMirror()
    for name in ("a", "b"):
        assert fleet.load({"sidecar": name, "run": f"run-{name}", "seq": 10, "jobs": [], "instances": []}) == name
    for seq in (11, 12):  # the same seq from both: no gap, no duplicate
        assert fleet.apply(_event("a", "run-a", seq)) and fleet.apply(_event("b", "run-b", seq))
    assert not fleet.apply(_event("a", "run-a2", 1))  # a restarted: snapshot a
    assert fleet.apply(_event("b", "run-b", 13))  # b goes on
    assert not fleet.apply(_event("b", "run-b", 15))  # a gap in b's own seq
    assert not fleet.apply(_event("c", "run-c", 1))  # a sidecar not loaded yet
    fleet.load({"sidecar": "a", "run": "run-a2", "seq": 1, "jobs": [], "instances": []})
    assert fleet.apply(_event("a", "run-a2", 2))
