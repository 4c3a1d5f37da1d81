"""Limits (``[limits]`` in bridge.toml): each refusal names the limit and its value, has no effect,
and the sidecar keeps serving everyone else. Through a real ROUTER (a DEALER over TCP) and a real
simulated ComfyUI over HTTP and WebSocket."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest

from sidecar.app import Sidecar
from sidecar.config import LimitsConfig
from sidecar.simulator.images import solid_png

from .conftest import Running, connected, make_config, probe_workflow


@pytest.fixture
async def limited(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    """Factory: ``await limited({"a": url}, jobs_total=2)`` -> a :class:`Running` sidecar with those limits."""
    running: list[Running] = []

    async def start(instances: dict[str, str], **limits: Any) -> Running:
        config = make_config(instances, tmp_path / f"state-{len(running)}.sqlite3")
        sidecar = Sidecar(msgspec.structs.replace(config, limits=LimitsConfig(**limits)))
        stop = asyncio.Event()
        handle = Running(sidecar, asyncio.create_task(sidecar.run(stop.wait)), stop)
        running.append(handle)
        return handle

    yield start
    for handle in running:
        await handle.close()


async def test_a_request_over_request_bytes_is_refused_naming_the_limit(sims, limited, client):
    """A body larger than limits.request_bytes: ``limit_exceeded`` with the limit, its value and the
    size, not decoded; the same client and another one are served after it."""
    sim = await sims("0.12.1")
    running = await limited({"a": sim.url}, request_bytes=4096)
    c, other = await client(running), await client(running)
    body = msgspec.msgpack.encode({"op": "ping", "id": "big", "pad": "x" * 5000})
    reply = await c.raw(body)
    assert reply["ok"] is False and reply["id"] is None
    error = reply["error"]
    assert error["code"] == "limit_exceeded"
    assert error["details"] == {"limit": "limits.request_bytes", "value": 4096, "size": len(body)}
    assert "limits.request_bytes is 4096" in error["message"] and str(len(body)) in error["message"]
    assert (await c.request("ping"))["ok"] and (await other.request("ping"))["ok"]
    assert (await c.request("ping", pad="x" * 4000))["ok"]  # under the limit: served
    health = (await other.request("health"))["result"]
    assert health["bad_requests"] == 1


async def test_a_workflow_over_workflow_nodes_is_refused_and_makes_no_job(sims, limited, client):
    sim = await sims("0.12.1")
    running = await limited({"a": sim.url}, workflow_nodes=2)
    c = await client(running)
    await connected(c, "a")
    workflow = probe_workflow(steps=2)
    reply = await c.request("submit", job_id="wide", workflow=workflow)
    assert reply["ok"] is False
    error = reply["error"]
    assert error["code"] == "limit_exceeded"
    assert error["details"] == {"limit": "limits.workflow_nodes", "value": 2}
    assert f"the workflow has {len(workflow)} nodes; limits.workflow_nodes is 2" == error["message"]
    assert (await c.request("job", job_id="wide"))["error"]["code"] == "job_not_found"
    assert c.of_job("wide") == []
    small = {"1": workflow["1"], "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}}
    small_reply = await c.request("submit", job_id="narrow", workflow=small)
    assert small_reply["ok"], small_reply
    assert (await c.job_final("narrow"))["type"] == "job.completed"


async def test_unfinished_jobs_per_instance_and_in_total_are_bounded(sims, limited, client):
    """jobs_per_instance = 1, jobs_total = 2 over two instances: a second job on a busy instance and a
    third job anywhere are refused naming the limit; once a job ends, a submit is taken again."""
    sim_a, sim_b = await sims("0.12.1"), await sims("0.12.1")
    running = await limited({"a": sim_a.url, "b": sim_b.url}, jobs_per_instance=1, jobs_total=2)
    c = await client(running)
    await connected(c, "a")
    await connected(c, "b")
    long = probe_workflow(steps=200, step_ms=20)
    assert (await c.request("submit", job_id="a1", instance="a", workflow=long))["ok"]
    refused = await c.request("submit", job_id="a2", instance="a", workflow=long)
    assert refused["error"]["code"] == "limit_exceeded"
    assert refused["error"]["details"] == {"limit": "limits.jobs_per_instance", "value": 1, "instance": "a"}
    assert "limits.jobs_per_instance is 1" in refused["error"]["message"]
    assert (await c.request("submit", job_id="b1", instance="b", workflow=long))["ok"]
    total = await c.request("submit", job_id="x", workflow=long)
    assert total["error"]["code"] == "limit_exceeded"
    assert total["error"]["details"] == {"limit": "limits.jobs_total", "value": 2}
    assert "2 jobs are unfinished already; limits.jobs_total is 2" == total["error"]["message"]
    for job_id in ("a2", "x"):
        assert (await c.request("job", job_id=job_id))["error"]["code"] == "job_not_found"
    assert (await c.request("cancel", job_id="a1"))["ok"]
    assert (await c.job_final("a1"))["type"] == "job.cancelled"
    again = await c.request("submit", job_id="a3", instance="a", workflow=probe_workflow(steps=2))
    assert again["ok"], again
    assert (await c.job_final("a3"))["type"] == "job.completed"
    await c.request("cancel", job_id="b1")
    await c.job_final("b1")


async def test_a_websocket_message_over_ws_frame_bytes_closes_that_socket_and_the_sidecar_reconnects(
    sims, limited, client
):
    """ComfyUI sends a message larger than limits.ws_frame_bytes mid-job: websockets closes the socket
    with 1009 (message too big), the sidecar reconnects (counted), resyncs, and the job still completes;
    another instance is not touched."""
    sim, other = await sims("0.12.1"), await sims("0.12.1")
    running = await limited({"a": sim.url, "b": other.url}, ws_frame_bytes=2048)
    c = await client(running)
    await connected(c, "a", "b")
    inst = running.sidecar.instances["a"]
    before = inst.reconnects
    assert (await c.request("submit", job_id="big", instance="a", workflow=probe_workflow(steps=20)))["ok"]
    await c.wait_for(lambda e: e["job_id"] == "big" and e["type"] == "job.started")
    mark = c.events[-1]["seq"]
    await sim.send_raw(b"\x00" * 4096)
    down = await c.wait_for(
        lambda e: (
            e["seq"] > mark
            and e["type"] == "instance.status"
            and e["instance"] == "a"
            and e["data"]["state"] != "connected"
        )
    )
    assert "1009 (message too big)" in down["data"]["error"] and "limit of 2048 bytes" in down["data"]["error"]
    await c.wait_for(
        lambda e: (
            e["type"] == "instance.status"
            and e["instance"] == "a"
            and e["data"]["state"] == "connected"
            and e["seq"] > down["seq"]
        )
    )
    assert inst.reconnects == before + 1
    assert (await c.job_final("big"))["type"] == "job.completed"
    assert running.sidecar.instances["b"].reconnects == 0
    assert (await c.request("submit", job_id="after", instance="a", workflow=probe_workflow(steps=2)))["ok"]
    assert (await c.job_final("after"))["type"] == "job.completed"


def _jpeg_frame(size: int) -> bytes:
    """A ComfyUI binary preview frame (type 1 PREVIEW_IMAGE, image type 1 JPEG) of ``size`` image bytes."""
    return (1).to_bytes(4, "big") + (1).to_bytes(4, "big") + b"\xff\xd8" + b"\x00" * (size - 2)


async def test_a_preview_over_preview_bytes_is_dropped_counted_and_not_published(sims, limited, client):
    """ComfyUI sends a preview larger than limits.preview_bytes during a job: no preview event, counted in
    health's previews.too_big; a preview under the limit is published; the job completes."""
    sim = await sims("0.12.1")
    running = await limited({"a": sim.url}, preview_bytes=2048)
    c = await client(running)
    await connected(c, "a")
    sim.hold_steps()
    assert (await c.request("submit", job_id="p", instance="a", workflow=probe_workflow(steps=4)))["ok"]
    await c.wait_for(lambda e: e["job_id"] == "p" and e["type"] == "node.executing" and e["data"]["node"] == "2")
    before = len([e for e in c.of_job("p") if e["type"] == "preview"])
    await sim.send_raw(_jpeg_frame(4096))
    await sim.send_raw(_jpeg_frame(1000))
    small = await c.wait_for(
        lambda e: e["job_id"] == "p" and e["type"] == "preview" and len(c.images.get(e["seq"], b"")) == 1000
    )
    assert small["data"]["inline"] is True
    previews = [e for e in c.of_job("p") if e["type"] == "preview"]
    assert len(previews) == before + 1, "the 4096-byte preview was published"
    assert all(len(c.images.get(e["seq"], b"")) <= 2048 for e in previews)
    health = (await c.request("health"))["result"]
    assert health["previews"]["too_big"] == 1
    sim.release_steps()
    assert (await c.job_final("p"))["type"] == "job.completed"


async def test_input_files_over_their_limits_are_refused_naming_the_limit(sims, limited, client):
    """One file over limits.upload_file_bytes, all together over limits.upload_request_bytes, or the
    rest of the request over limits.request_bytes (files not counted): each ``limit_exceeded`` naming
    its limit and value, no job made; files that fit are taken although the body is larger than
    limits.request_bytes."""
    sim = await sims("0.12.1")
    running = await limited({"a": sim.url}, request_bytes=4096, upload_file_bytes=3000, upload_request_bytes=5000)
    c = await client(running)
    await connected(c, "a")
    workflow = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "a.png"}},
        "2": {"class_type": "LoadImage", "inputs": {"image": "b.png"}},
        "3": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
        "4": {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}},
    }
    reply = await c.request("submit", job_id="one", workflow=workflow, files={"a.png": b"x" * 3001, "b.png": b"y"})
    error = reply["error"]
    assert error["code"] == "limit_exceeded"
    assert error["details"] == {"limit": "limits.upload_file_bytes", "value": 3000, "file": "a.png", "size": 3001}
    assert error["message"] == "input file 'a.png' has 3001 bytes; limits.upload_file_bytes is 3000"
    reply = await c.request(
        "submit", job_id="all", workflow=workflow, files={"a.png": b"x" * 3000, "b.png": b"y" * 2001}
    )
    error = reply["error"]
    assert error["details"] == {"limit": "limits.upload_request_bytes", "value": 5000, "size": 5001}
    assert error["message"] == "the input files have 5001 bytes together; limits.upload_request_bytes is 5000"
    padded = {**workflow, "1": {**workflow["1"], "_meta": {"title": "x" * 4100}}}
    body = {"op": "submit", "id": "rest", "job_id": "rest", "workflow": padded, "files": {"a.png": b"x", "b.png": b"y"}}
    reply = await c.raw(msgspec.msgpack.encode(body))  # id nil, as for any body over limits.request_bytes
    error = reply["error"]
    assert error["code"] == "limit_exceeded" and error["details"]["limit"] == "limits.request_bytes"
    assert "besides its input files; limits.request_bytes is 4096" in error["message"]
    for job_id in ("one", "all", "rest"):
        assert (await c.request("job", job_id=job_id))["error"]["code"] == "job_not_found"
    png = solid_png((1, 2, 3), 4, 4)
    files = {"a.png": png + b"\0" * (3000 - len(png)), "b.png": png + b"\0" * (1900 - len(png))}
    reply = await c.request("submit", job_id="fits", workflow=workflow, files=files)  # 4.9 KB of files
    assert reply["ok"], reply
    assert (await c.job_final("fits"))["type"] == "job.completed"
