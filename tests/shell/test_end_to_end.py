"""End to end: a DEALER and a SUB client against a running sidecar and simulated ComfyUI."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import msgspec
import pytest

from .conftest import Client, connected, probe_workflow

VERSIONS = ("0.0.2", "0.3.44", "0.12.1")
FINAL = ("job.completed", "job.failed")


def assert_contiguous(events: list[dict[str, Any]]) -> None:
    seqs = [e["seq"] for e in events]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "seq has a gap or repeats"
    assert len({e["run"] for e in events}) == 1


async def start(sims: Any, sidecars: Any, client: Any, version: str, **options: Any) -> tuple[Any, Any, Client]:
    sim = await sims(version)
    running = await sidecars({"a": sim.url}, **options)
    c = await client(running)
    await connected(c, "a")
    return sim, running, c


@pytest.mark.parametrize("version", VERSIONS)
async def test_workflow_runs_to_completion_with_every_event(sims, sidecars, client, version):
    """accepted, queued, started, node events, monotonic progress to 100, previews, completed with outputs."""
    sim, running, c = await start(sims, sidecars, client, version)
    reply = await c.request("submit", job_id="job-1", workflow=probe_workflow(steps=4), client_data={"user": 7})
    assert reply["ok"] is True, reply
    assert reply["result"]["job"]["job_id"] == "job-1"
    prompt_id = reply["result"]["job"]["prompt_id"]
    assert prompt_id

    final = await c.job_final("job-1")
    assert final["type"] == "job.completed", final
    events = c.of_job("job-1")
    types = [e["type"] for e in events]
    assert types[:3] == ["job.accepted", "job.queued", "job.started"]
    assert types[-1] == "job.completed"
    assert events[1]["data"]["prompt_id"] == prompt_id
    assert events[0]["data"]["client_data"] == {"user": 7}

    executing = [e["data"] for e in events if e["type"] == "node.executing"]
    assert {"1", "2", "3", "4", "5"} == {d["node"] for d in executing}
    probe = next(d for d in executing if d["node"] == "2")
    assert probe["class_type"] == "BridgeProbe" and probe["title"] == "Probe"

    progress = [e["data"] for e in events if e["type"] == "node.progress"]
    assert [p["value"] for p in progress] == [1, 2, 3, 4] and all(p["max"] == 4 for p in progress)
    percents = [e["data"]["percent"] for e in events if e["type"] == "job.progress"]
    assert percents == sorted(percents) and len(set(percents)) == len(percents)
    assert percents[-1] == 100.0 and all(p < 100.0 for p in percents[:-1])

    previews = [e for e in events if e["type"] == "preview"]
    assert len(previews) == 4
    for step, e in enumerate(previews, start=1):
        image = c.images[e["seq"]]
        assert image[:2] == b"\xff\xd8" and image[-2:] == b"\xff\xd9", "preview is not a JPEG"
        # the simulator writes prompt, node and step into a JPEG comment: the exact bytes of that frame
        assert f"prompt={prompt_id} node=2 step={step}".encode() in image
        assert e["data"]["size_bytes"] == len(image) and e["data"]["node"] == "2"
        assert c.topics[e["seq"]] == b"preview.a"
    assert [e["data"]["index"] for e in previews] == [0, 1, 2, 3]

    outputs = final["data"]["outputs"]
    assert set(outputs) == {"3", "4", "5"}
    assert outputs["5"]["text"][0] == "bridge text output"
    assert outputs["3"]["images"][0]["type"] == "output"
    assert_contiguous(c.events)

    job = await c.request("job", job_id="job-1")
    assert job["result"]["state"] == "completed" and job["result"]["percent"] == 100.0
    adapter = (await c.request("health"))["result"]["instances"][0]["adapter"]
    assert adapter == {"0.0.2": "comfyui-0.0", "0.3.44": "comfyui-0.0.3", "0.12.1": "comfyui-0.7"}[version]


@pytest.mark.parametrize("version", VERSIONS)
async def test_failing_workflow_publishes_failure_with_node_and_traceback(sims, sidecars, client, version):
    """A node that raises ends the job in job.failed naming the node, with traceback and partial outputs."""
    sim, running, c = await start(sims, sidecars, client, version)
    reply = await c.request("submit", job_id="bad", workflow=probe_workflow(steps=6, fail_at=2))
    assert reply["ok"] is True
    final = await c.job_final("bad")
    assert final["type"] == "job.failed"
    data = final["data"]
    assert data["code"] == "execution_error"
    assert data["node"] == "2" and data["node_type"] == "BridgeProbe"
    assert data["exception_type"] and "deliberate failure" in data["message"]
    assert data["traceback"] and all(isinstance(line, str) for line in data["traceback"])
    assert "4" in data["outputs"]  # the PreviewImage branch finished before the error
    assert "3" not in data["outputs"]
    assert_contiguous(c.events)


@pytest.mark.parametrize("version", VERSIONS)
async def test_rejected_workflow_gets_error_reply_and_final_event(sims, sidecars, client, version):
    """An unknown node class: ok false with a stable code and ComfyUI's reason; the job ends failed."""
    sim, running, c = await start(sims, sidecars, client, version)
    workflow = probe_workflow()
    workflow["6"] = {"class_type": "NoSuchNodeClass", "inputs": {}}
    reply = await c.request("submit", job_id="rej", workflow=workflow)
    assert reply["ok"] is False
    assert reply["error"]["code"] == "workflow_rejected"
    assert "NoSuchNodeClass" in reply["error"]["message"]
    final = await c.job_final("rej")
    assert final["type"] == "job.failed" and final["data"]["code"] == "workflow_rejected"


@pytest.mark.parametrize("version", VERSIONS)
async def test_partially_valid_workflow_is_refused_and_removed_from_queue(sims, sidecars, client, version):
    """200 with node_errors: refused by default with per-node details, and nothing of it runs."""
    sim, running, c = await start(sims, sidecars, client, version)
    workflow = probe_workflow(steps=3)
    del workflow["2"]["inputs"]["steps"]
    reply = await c.request("submit", job_id="part", workflow=workflow)
    assert reply["ok"] is False
    err = reply["error"]
    assert err["code"] == "workflow_partially_invalid"
    node = err["details"]["node_errors"]["2"]
    assert node["class_type"] == "BridgeProbe"
    assert node["errors"][0]["type"] == "required_input_missing"
    assert "steps" in (node["errors"][0]["input"], node["errors"][0]["details"])
    final = await c.job_final("part")
    assert final["type"] == "job.failed" and final["data"]["code"] == "workflow_partially_invalid"
    # ComfyUI no longer holds it: neither pending nor running once the withdrawal went through.
    prompt_id = final["data"]["prompt_id"]
    async with aiohttp.ClientSession() as http:
        async with asyncio.timeout(10):
            while True:
                async with http.get(sim.url + "/queue") as resp:
                    queue = await resp.json()
                ids = [item[1] for item in queue["queue_pending"] + queue["queue_running"]]
                if prompt_id not in ids:
                    break
                await c.tick()


async def test_partially_valid_workflow_runs_its_valid_outputs_when_allowed(sims, sidecars, client):
    """With accept_partial, the valid branch runs and the job completes with its outputs only."""
    sim, running, c = await start(sims, sidecars, client, "0.12.1", accept_partial=True)
    workflow = probe_workflow(steps=3)
    del workflow["2"]["inputs"]["steps"]
    reply = await c.request("submit", job_id="part-ok", workflow=workflow)
    assert reply["ok"] is True
    final = await c.job_final("part-ok")
    assert final["type"] == "job.completed"
    assert set(final["data"]["outputs"]) == {"4"}
    percents = [e["data"]["percent"] for e in c.of_job("part-ok") if e["type"] == "job.progress"]
    assert percents[-1] == 100.0 and percents == sorted(percents)


async def test_two_instances_run_jobs_at_the_same_time(sims, sidecars, client):
    """Jobs on two instances overlap in time and both complete."""
    sim_a, sim_b = await sims("0.12.1"), await sims("0.3.44")
    running = await sidecars({"a": sim_a.url, "b": sim_b.url})
    c = await client(running)
    await connected(c, "a", "b")
    replies = await asyncio.gather(
        c.request("submit", job_id="on-a", instance="a", workflow=probe_workflow(steps=8, step_ms=30)),
        c.request("submit", job_id="on-b", instance="b", workflow=probe_workflow(steps=8, step_ms=30)),
    )
    assert all(r["ok"] for r in replies)
    finals = await asyncio.gather(c.job_final("on-a"), c.job_final("on-b"))
    assert [f["type"] for f in finals] == ["job.completed", "job.completed"]
    assert finals[0]["instance"] == "a" and finals[1]["instance"] == "b"
    started = {e["job_id"]: e["seq"] for e in c.events if e["type"] == "job.started"}
    first_end = min(f["seq"] for f in finals)
    assert started["on-a"] < first_end and started["on-b"] < first_end, "the jobs did not overlap"
    assert len(sim_a.submitted) == 1 and len(sim_b.submitted) == 1


async def test_submit_without_instance_picks_a_connected_one(sims, sidecars, client):
    """No instance named: the least-loaded connected instance takes the job."""
    sim, running, c = await start(sims, sidecars, client, "0.12.1")
    reply = await c.request("submit", workflow=probe_workflow(steps=2))
    assert reply["ok"] and reply["result"]["job"]["instance"] == "a"
    job_id = reply["result"]["job"]["job_id"]
    assert (await c.job_final(job_id))["type"] == "job.completed"


async def test_submit_is_idempotent_on_job_id(sims, sidecars, client):
    """The same job_id twice, at once and after: one prompt in ComfyUI, the same job back."""
    sim, running, c = await start(sims, sidecars, client, "0.12.1")
    workflow = probe_workflow(steps=2)
    first, second = await asyncio.gather(
        c.request("submit", job_id="same", workflow=workflow),
        c.request("submit", job_id="same", workflow=workflow),
    )
    assert first["ok"] and second["ok"]
    assert first["result"]["job"]["prompt_id"] == second["result"]["job"]["prompt_id"]
    await c.job_final("same")
    third = await c.request("submit", job_id="same", workflow=workflow)
    assert third["ok"] and third["result"]["duplicate"] is True
    assert third["result"]["job"]["state"] == "completed"
    assert len(sim.submitted) == 1


async def test_prompt_id_is_ours_where_the_version_accepts_it(sims, sidecars, client):
    """0.12.1 gets a fresh UUID as prompt_id; 0.3.44 ignores it and the response's id is used."""
    for version, sends in (("0.12.1", True), ("0.3.44", False)):
        sim = await sims(version)
        running = await sidecars({"a": sim.url})
        c = await client(running)
        await connected(c, "a")
        reply = await c.request("submit", job_id=f"pid-{version}", workflow=probe_workflow(steps=1))
        body = sim.submitted[-1]
        assert body["client_id"] == running.sidecar.instances["a"].client_id
        assert ("prompt_id" in body) is sends
        if sends:
            assert reply["result"]["job"]["prompt_id"] == body["prompt_id"]
        await c.job_final(f"pid-{version}")


async def test_snapshot_and_health_answer(sims, sidecars, client):
    """snapshot returns instances, unfinished jobs and the seq it reflects; health per instance."""
    sim, running, c = await start(sims, sidecars, client, "0.12.1")
    await c.request("submit", job_id="long", workflow=probe_workflow(steps=30, step_ms=40))
    await c.wait_for(lambda e: e["type"] == "job.started" and e["job_id"] == "long")
    seen = c.events[-1]  # events that arrive while the request is out may be newer than its answer
    snap = (await c.request("snapshot"))["result"]
    assert snap["run"] == seen["run"]
    assert snap["seq"] >= seen["seq"]  # the snapshot is at least as new as what we saw before asking
    assert [i["name"] for i in snap["instances"]] == ["a"]
    jobs = {j["job_id"]: j for j in snap["jobs"]}
    assert jobs["long"]["state"] == "started"
    health = (await c.request("health"))["result"]
    inst = health["instances"][0]
    assert inst["state"] == "connected" and inst["url"] == sim.url
    assert inst["version"] == "0.12.1" and inst["in_flight"] == 1
    assert inst["last_connected_ns"] > 0 and inst["frames"] > 0
    pong = await c.request("ping")
    assert pong["ok"] and pong["result"]["pong"] is True
    listed = (await c.request("jobs", active=True))["result"]["jobs"]
    assert [j["job_id"] for j in listed] == ["long"]
    await c.job_final("long", timeout_s=20)


async def test_bad_requests_get_clear_errors_and_the_sidecar_keeps_serving(sims, sidecars, client):
    """Garbage, non-maps, unknown ops, bad fields and non-API workflows: ok false naming the problem."""
    sim, running, c = await start(sims, sidecars, client, "0.12.1")
    not_msgpack = await c.raw(b"\xc1\xc1 not msgpack")
    assert not_msgpack["ok"] is False and not_msgpack["id"] is None
    assert not_msgpack["error"]["code"] == "malformed_request"
    not_map = await c.raw(msgspec.msgpack.encode([1, 2, 3]))
    assert not_map["error"]["code"] == "malformed_request" and "map" in not_map["error"]["message"]

    unknown = await c.request("explode")
    assert unknown["error"]["code"] == "unknown_op" and "explode" in unknown["error"]["message"]
    missing = await c.request("job")
    assert missing["error"]["code"] == "invalid_request" and missing["error"]["details"]["field"] == "job_id"
    mistyped = await c.request("job", job_id=42)
    assert mistyped["error"]["code"] == "invalid_request" and "job_id" in mistyped["error"]["message"]
    ui_format = await c.request("submit", workflow={"nodes": [], "links": [], "version": 0.4})
    assert ui_format["error"]["code"] == "invalid_workflow" and "API" in ui_format["error"]["message"]
    no_class = await c.request("submit", workflow={"1": {"inputs": {}}})
    assert no_class["error"]["code"] == "invalid_workflow" and "class_type" in no_class["error"]["message"]
    nowhere = await c.request("submit", instance="nope", workflow=probe_workflow())
    assert nowhere["error"]["code"] == "unknown_instance"
    unknown_job = await c.request("job", job_id="never")
    assert unknown_job["error"]["code"] == "job_not_found"

    reply = await c.request("submit", job_id="after", workflow=probe_workflow(steps=1))
    assert reply["ok"]
    assert (await c.job_final("after"))["type"] == "job.completed"
    health = (await c.request("health"))["result"]
    assert health["bad_requests"] == 5  # the five the decoder refused; the rest failed in their handler


async def test_garbage_frames_from_comfyui_are_counted_and_ignored(sims, sidecars, client):
    """Unknown and malformed frames from ComfyUI are counted; jobs still complete."""
    sim, running, c = await start(sims, sidecars, client, "0.12.1")
    client_id = running.sidecar.instances["a"].client_id
    await sim.send_raw("this is not json", client_id)
    await sim.send_raw(b"\x00\x00\x00\x04\x00\x00\xff\xffxx", client_id)
    await sim.send_raw('{"type": "brand_new_type", "data": {}}', client_id)
    await sim.send_raw('{"type": "progress", "data": {"value": "x"}}', client_id)
    reply = await c.request("submit", job_id="ok", workflow=probe_workflow(steps=2))
    assert reply["ok"]
    assert (await c.job_final("ok"))["type"] == "job.completed"
    inst = (await c.request("health"))["result"]["instances"][0]
    assert inst["malformed"] == 3 and inst["unknown"] == 1
