"""Preview stores through a running sidecar: files with references, inline bytes, capture interval."""

from __future__ import annotations

import asyncio
from pathlib import Path

from sidecar.config import PreviewConfig

from .conftest import connected, probe_workflow


async def wait_written(c, count: int) -> dict:
    """Wait (over the ROUTER) until the preview writer reports ``count`` files written."""
    stats: dict = {}
    try:
        async with asyncio.timeout(10):
            while True:
                stats = (await c.request("health"))["result"]["previews"]
                if stats["written"] >= count:
                    return stats
                await c.tick()
    except TimeoutError:
        raise AssertionError(f"previews not written in time: {stats}") from None


async def test_files_store_writes_each_preview_and_events_carry_its_path(tmp_path, sims, sidecars, client):
    """The default `files` store: no frame 2, `ref` is a file named by job, node and order, with the exact bytes."""
    sim = await sims("0.12.1")
    store_dir = tmp_path / "previews"
    running = await sidecars({"a": sim.url}, previews=PreviewConfig(store="files", dir=str(store_dir)))
    c = await client(running)
    await connected(c, "a")
    await c.request("submit", job_id="job-7", workflow=probe_workflow(steps=4))
    assert (await c.job_final("job-7"))["type"] == "job.completed"
    previews = [e for e in c.of_job("job-7") if e["type"] == "preview"]
    assert [p["data"]["index"] for p in previews] == [0, 1, 2, 3]
    stats = await wait_written(c, 4)
    assert stats["dropped"] == 0 and stats["failed"] == 0
    for event in previews:
        data = event["data"]
        assert data["inline"] is False and event["seq"] not in c.images
        path = Path(data["ref"])
        assert path.is_relative_to(store_dir) and path.parent.name == "job-7" and path.parent.parent.name == "a"
        assert path.name == f"{data['index']:05d}-node2.jpg"
        image = path.read_bytes()  # noqa: ASYNC240 - a test reading a few small files after the fact
        assert len(image) == data["size_bytes"] and image[:2] == b"\xff\xd8"


async def test_preview_interval_per_job_is_respected(sims, sidecars, client):
    """A job submitted with preview_interval_s gets at most one preview per interval; others get all."""
    sim = await sims("0.12.1", step_ms=None)
    running = await sidecars({"a": sim.url})
    c = await client(running)
    await connected(c, "a")
    await c.request("submit", job_id="every", workflow=probe_workflow(steps=10, step_ms=20))
    await c.request("submit", job_id="sparse", workflow=probe_workflow(steps=10, step_ms=20), preview_interval_s=0.07)
    await c.job_final("every")
    await c.job_final("sparse")
    every = [e for e in c.of_job("every") if e["type"] == "preview"]
    sparse = [e for e in c.of_job("sparse") if e["type"] == "preview"]
    assert len(every) == 10
    assert 1 <= len(sparse) < len(every)
    gaps = [(b["ts"] - a["ts"]) / 1e9 for a, b in zip(sparse, sparse[1:], strict=False)]
    assert all(gap >= 0.07 for gap in gaps), gaps
    assert [e["data"]["index"] for e in sparse] == list(range(len(sparse)))
    bad = await c.request("submit", job_id="neg", workflow=probe_workflow(), preview_interval_s=-1.0)
    assert bad["ok"] is False and bad["error"]["code"] == "invalid_request"
