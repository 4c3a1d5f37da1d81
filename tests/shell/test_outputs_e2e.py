"""The output store through a running sidecar: file outputs copied from /view as their node ends.

Real sockets throughout: the simulated ComfyUI over HTTP and WebSocket, the sidecar over TCP
ZeroMQ, and ``/view`` read by the test itself with aiohttp.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import aiohttp

from sidecar.config import OutputsConfig

from .conftest import connected, probe_workflow

FINALS = ("job.completed", "job.failed", "job.cancelled")


def preview_then_long_probe(steps: int = 400) -> dict[str, Any]:
    """EmptyImage -> PreviewImage (runs first, into ComfyUI's temp folder), then a long BridgeProbe -> SaveImage."""
    return {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 16, "height": 16, "batch_size": 1, "color": 77}},
        "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
        "3": {
            "class_type": "BridgeProbe",
            "inputs": {"image": ["1", 0], "steps": steps, "step_ms": 20, "fail_at": -1, "seed": 5},
        },
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "kept"}},
    }


async def view(url: str, entry: dict[str, Any]) -> tuple[int, bytes]:
    params = {"filename": entry["filename"], "subfolder": entry["subfolder"], "type": entry["type"]}
    async with aiohttp.ClientSession() as session, session.get(url + "/view", params=params) as resp:
        return resp.status, await resp.read()


def read(ref: str) -> bytes:
    return Path(ref).read_bytes()


async def test_cancelled_jobs_preview_output_outlives_a_comfyui_restart(tmp_path, sims, sidecars, client):
    """PreviewImage's temp file is copied as soon as its node ends; the job is cancelled, ComfyUI
    restarts (temp emptied: /view answers 404 now), and the stored copy is still there, same SHA-256."""
    sim = await sims("0.12.1", step_ms=None)
    store = tmp_path / "outputs"
    running = await sidecars({"a": sim.url}, outputs=OutputsConfig(dir=str(store), retry_s=0.05))
    c = await client(running)
    await connected(c, "a")
    await c.request("submit", job_id="cut", workflow=preview_then_long_probe())
    stored = await c.wait_for(lambda e: e["job_id"] == "cut" and e["type"] == "output.stored")
    node_output = next(e for e in c.of_job("cut") if e["type"] == "node.output")
    assert node_output["seq"] < stored["seq"] and stored["data"]["node"] == node_output["data"]["node"] == "2"
    entry = stored["data"]
    assert entry["type"] == "temp" and entry["state"] == "stored" and entry["error"] is None
    assert entry == {**entry, **node_output["data"]["output"]["images"][0]}  # ComfyUI's own entry, beside the ref
    status, served = await view(sim.url, entry)  # what ComfyUI serves now
    assert status == 200 and hashlib.sha256(served).hexdigest() == entry["sha256"]

    assert (await c.request("cancel", job_id="cut"))["ok"]
    final = await c.job_final("cut")
    assert final["type"] == "job.cancelled"
    assert final["data"]["stored"] == [entry]  # the final event carries the stored copy

    await sim.close()  # ComfyUI restarts on the same port: its temp folder is emptied
    await sim.start()
    assert (await view(sim.url, entry))[0] == 404
    kept = read(entry["ref"])
    assert Path(entry["ref"]).is_relative_to(store) and Path(entry["ref"]).parent.name == "cut"
    assert len(kept) == entry["size_bytes"] and hashlib.sha256(kept).hexdigest() == entry["sha256"]
    assert kept == served


async def test_completed_jobs_final_event_carries_every_stored_file(tmp_path, sims, sidecars, client):
    """Every {filename, subfolder, type} entry of every node output is stored (text stays inline),
    each announced by output.stored, all listed in job.completed's `stored`, and counted in health."""
    sim = await sims("0.12.1")
    running = await sidecars({"a": sim.url}, outputs=OutputsConfig(dir=str(tmp_path / "out"), retry_s=0.05))
    c = await client(running)
    await connected(c, "a")
    await c.request("submit", job_id="whole", workflow=probe_workflow(steps=3))
    final = await c.job_final("whole")
    assert final["type"] == "job.completed"
    files = [
        (node, item["filename"], item["subfolder"], item["type"])
        for node, output in final["data"]["outputs"].items()
        for item in output.get("images", [])
    ]
    assert {f[3] for f in files} == {"temp", "output"}  # PreviewImage and SaveImage
    assert final["data"]["outputs"]["5"]["text"][0] == "bridge text output"  # text: inline, not a file
    stored = final["data"]["stored"]
    assert sorted((s["node"], s["filename"], s["subfolder"], s["type"]) for s in stored) == sorted(files)
    announced = [e["data"] for e in c.of_job("whole") if e["type"] == "output.stored"]
    assert sorted(announced, key=lambda s: s["node"]) == sorted(stored, key=lambda s: s["node"])
    for entry in stored:
        assert entry["state"] == "stored" and entry["prompt_id"] == final["data"]["prompt_id"]
        data = read(entry["ref"])
        assert len(data) == entry["size_bytes"] and hashlib.sha256(data).hexdigest() == entry["sha256"]
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and entry["content_type"] == "image/png"
    view = (await c.request("job", job_id="whole"))["result"]
    assert view["stored"] == stored
    health = (await c.request("health"))["result"]["outputs"]
    assert health == {
        "store": "files",
        "fetched": 2,
        "failed": 0,
        "pending": 0,
        "bytes": sum(s["size_bytes"] for s in stored),
        "retries": 0,
    }


async def test_a_failing_fetch_is_reported_on_the_job_and_counted(tmp_path, sims, sidecars, client):
    """/view answers 503 (retried, then given up): output.failed per file, the job still completes,
    its final event lists each file as failed with the reason, and health counts them."""
    sim = await sims("0.12.1")
    sim.view_fault = 503
    outputs = OutputsConfig(dir=str(tmp_path / "out"), attempts=2, retry_s=0.01)
    running = await sidecars({"a": sim.url}, outputs=outputs)
    c = await client(running)
    await connected(c, "a")
    await c.request("submit", job_id="nofile", workflow=probe_workflow(steps=2))
    final = await c.job_final("nofile")
    assert final["type"] == "job.completed"
    failed = [e for e in c.of_job("nofile") if e["type"] == "output.failed"]
    assert len(failed) == 2 and all(e["seq"] < final["seq"] for e in failed)
    for entry in final["data"]["stored"]:
        assert entry["state"] == "failed" and entry["ref"] is None and entry["attempts"] == 2
        assert "HTTP 503" in entry["error"]
    assert sim.view_requests == 4  # two files, two attempts each
    health = (await c.request("health"))["result"]["outputs"]
    assert health["failed"] == 2 and health["fetched"] == 0 and health["retries"] == 2 and health["pending"] == 0
    assert not any((tmp_path / "out").rglob("*.png"))


async def test_the_none_store_stores_nothing(tmp_path, sims, sidecars, client):
    """outputs.store = "none": /view is never asked, no output.* events, `stored` empty, nothing on disk."""
    sim = await sims("0.12.1")
    running = await sidecars({"a": sim.url}, outputs=OutputsConfig(store="none", dir=str(tmp_path / "out")))
    c = await client(running)
    await connected(c, "a")
    await c.request("submit", job_id="bare", workflow=probe_workflow(steps=2))
    final = await c.job_final("bare")
    assert final["type"] == "job.completed" and final["data"]["outputs"]["3"]["images"]
    assert final["data"]["stored"] == []
    assert not [e for e in c.of_job("bare") if e["type"].startswith("output.")]
    assert sim.view_requests == 0 and not (tmp_path / "out").exists()
    health = (await c.request("health"))["result"]["outputs"]
    assert health == {"store": "none", "fetched": 0, "failed": 0, "pending": 0, "bytes": 0, "retries": 0}
