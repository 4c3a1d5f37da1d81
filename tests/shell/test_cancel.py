"""Cancel through real sockets: queued, running, another client's job, after the end, twice."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import aiohttp
import pytest

from .conftest import Client, connected, probe_workflow, stubborn_job

VERSIONS = ("0.0.2", "0.3.44", "0.12.1")
FINAL = ("job.completed", "job.failed", "job.cancelled")


async def setup(sims: Any, sidecars: Any, client: Any, version: str, **sim_options: Any) -> tuple[Any, Any, Client]:
    sim = await sims(version, step_ms=None, **sim_options)
    running = await sidecars({"a": sim.url})
    c = await client(running)
    await connected(c, "a")
    return sim, running, c


async def http_json(method: str, url: str, body: Any = None) -> Any:
    async with aiohttp.ClientSession() as http:
        async with http.request(method, url, json=body) as resp:
            return await resp.json(content_type=None)


async def queue_ids(sim: Any) -> list[str]:
    queue = await http_json("GET", sim.url + "/queue")
    return [item[1] for item in queue["queue_running"] + queue["queue_pending"]]


def finals(c: Client, job_id: str) -> list[dict[str, Any]]:
    return [e for e in c.of_job(job_id) if e["type"] in FINAL]


@pytest.mark.parametrize("version", VERSIONS)
async def test_cancel_queued_job_removes_it_and_never_starts_it(sims, sidecars, client, version):
    """A job waiting behind another: removed from the queue, job.cancelled, the other runs on."""
    sim, running, c = await setup(sims, sidecars, client, version)
    await c.request("submit", job_id="first", workflow=probe_workflow(steps=12, step_ms=40))
    await c.wait_for(lambda e: e["type"] == "job.started" and e["job_id"] == "first")
    second = await c.request("submit", job_id="second", workflow=probe_workflow(steps=2, step_ms=10))
    prompt_id = second["result"]["job"]["prompt_id"]
    assert prompt_id in await queue_ids(sim)

    reply = await c.request("cancel", job_id="second")
    assert reply["ok"] is True
    assert reply["result"]["state"] == "queued" and reply["result"]["cancel_sent"] is True
    final = await c.job_final("second")
    assert final["type"] == "job.cancelled" and final["data"]["confirmed_by"] == "queue"
    assert final["data"]["outputs"] == {}
    assert prompt_id not in await queue_ids(sim)
    assert "job.started" not in [e["type"] for e in c.of_job("second")]

    first = await c.job_final("first", timeout_s=30)
    assert first["type"] == "job.completed"
    assert (await c.request("job", job_id="second"))["result"]["state"] == "cancelled"


@pytest.mark.parametrize("version", VERSIONS)
async def test_cancel_running_job_stops_it_with_partial_outputs_and_next_job_runs(sims, sidecars, client, version):
    """A running job stops at its next step; job.cancelled carries the outputs finished before."""
    sim, running, c = await setup(sims, sidecars, client, version)
    await c.request("submit", job_id="long", workflow=probe_workflow(steps=40, step_ms=50))
    await c.request("submit", job_id="next", workflow=probe_workflow(steps=2, step_ms=10))
    await c.wait_for(lambda e: e["type"] == "node.progress" and e["job_id"] == "long" and e["data"]["value"] >= 2)

    reply = await c.request("cancel", job_id="long")
    assert reply["ok"] and reply["result"]["state"] == "started" and reply["result"]["cancel_sent"]
    cancel_seq = c.events[-1]["seq"]
    final = await c.job_final("long")
    assert final["type"] == "job.cancelled"
    assert final["data"]["confirmed_by"] == "execution_interrupted"
    assert final["data"]["node"] == "2"
    assert set(final["data"]["outputs"]) == {"4"}  # the PreviewImage branch ran before the probe
    steps_after = [e for e in c.of_job("long") if e["type"] == "node.progress" and e["seq"] > cancel_seq]
    assert len(steps_after) <= 1, "the job did not stop at its next step"

    nxt = await c.job_final("next")
    assert nxt["type"] == "job.completed"
    history = await http_json("GET", f"{sim.url}/history/{final['data']['prompt_id']}")
    assert history[final["data"]["prompt_id"]]["status"]["status_str"] == "error"


@pytest.mark.parametrize("version", ("0.0.2", "0.3.44"))
async def test_cancel_of_our_queued_job_leaves_another_clients_running_job_alone(sims, sidecars, client, version):
    """Servers that ignore the interrupt's prompt id: our queued job is deleted, theirs runs on."""
    sim, running, c = await setup(sims, sidecars, client, version)
    other = await http_json(
        "POST",
        sim.url + "/prompt",
        {"prompt": probe_workflow(steps=10, step_ms=40), "client_id": "someone-else-" + uuid.uuid4().hex[:6]},
    )
    other_id = other["prompt_id"]
    ours = await c.request("submit", job_id="ours", workflow=probe_workflow(steps=2, step_ms=10))
    assert ours["ok"]
    reply = await c.request("cancel", job_id="ours")
    assert reply["ok"] and reply["result"]["method"] == "queue_delete"
    final = await c.job_final("ours")
    assert final["type"] == "job.cancelled"
    async with asyncio.timeout(20):
        while True:
            history = await http_json("GET", f"{sim.url}/history/{other_id}")
            if other_id in history:
                break
            await c.tick()
    assert history[other_id]["status"]["status_str"] == "success", "another client's job was interrupted"


async def test_cancel_after_completion_and_of_unknown_job_are_errors(sims, sidecars, client):
    """Cancelling an ended job gives job_finished; an unknown id gives job_not_found."""
    sim, running, c = await setup(sims, sidecars, client, "0.12.1")
    await c.request("submit", job_id="done", workflow=probe_workflow(steps=1, step_ms=5))
    assert (await c.job_final("done"))["type"] == "job.completed"
    reply = await c.request("cancel", job_id="done")
    assert reply["ok"] is False and reply["error"]["code"] == "job_finished"
    assert reply["error"]["details"]["state"] == "completed"
    unknown = await c.request("cancel", job_id="no-such-job")
    assert unknown["ok"] is False and unknown["error"]["code"] == "job_not_found"


@pytest.mark.parametrize("version", VERSIONS)
async def test_double_cancel_yields_one_final_event(sims, sidecars, client, version):
    """Two cancels of one running job: both answered, exactly one job.cancelled."""
    sim, running, c = await setup(sims, sidecars, client, version)
    await c.request("submit", job_id="twice", workflow=probe_workflow(steps=30, step_ms=40))
    await c.wait_for(lambda e: e["type"] == "node.progress" and e["job_id"] == "twice")
    first, second = await asyncio.gather(c.request("cancel", job_id="twice"), c.request("cancel", job_id="twice"))
    assert first["ok"] and second["ok"]
    assert sorted([first["result"]["already_requested"], second["result"]["already_requested"]]) == [False, True]
    await c.job_final("twice")
    late = await c.request("cancel", job_id="twice")
    assert late["ok"] is False and late["error"]["code"] == "job_finished"
    await c.tick(5)
    assert [e["type"] for e in finals(c, "twice")] == ["job.cancelled"]


async def test_cancel_of_job_whose_submit_is_in_flight_cancels_it_once_queued(sims, sidecars, client):
    """A cancel that arrives before ComfyUI answered POST /prompt still ends the job cancelled."""
    sim, running, c = await setup(sims, sidecars, client, "0.3.44")
    await c.request("submit", job_id="blocker", workflow=probe_workflow(steps=10, step_ms=40))
    submit = asyncio.create_task(c.request("submit", job_id="racy", workflow=probe_workflow(steps=2, step_ms=10)))
    await c.wait_for(lambda e: e["type"] == "job.accepted" and e["job_id"] == "racy")
    reply = await c.request("cancel", job_id="racy")
    assert reply["ok"]
    assert (await submit)["ok"]
    final = await c.job_final("racy")
    assert final["type"] == "job.cancelled"
    await c.tick(5)
    assert len(finals(c, "racy")) == 1


async def test_unconfirmed_cancel_is_reported_and_the_job_still_reaches_its_end(sims, sidecars, client):
    """ComfyUI ignores the interrupt: job.cancel_unconfirmed, then the job's real final event."""
    c = await stubborn_job(sims, sidecars, client)
    await c.wait_for(lambda e: e["type"] == "node.progress" and e["job_id"] == "stubborn")
    reply = await c.request("cancel", job_id="stubborn")
    assert reply["ok"] and reply["result"]["cancel_sent"]
    unconfirmed = await c.wait_for(lambda e: e["type"] == "job.cancel_unconfirmed" and e["job_id"] == "stubborn")
    assert unconfirmed["data"]["waited_s"] >= 0.3 and unconfirmed["data"]["method"] == "interrupt"
    final = await c.job_final("stubborn", timeout_s=30)
    assert final["type"] == "job.completed"
    await c.tick(5)
    assert len(finals(c, "stubborn")) == 1


@pytest.mark.parametrize("state", ["queued", "started"])
async def test_per_job_cancel_endpoint_is_detected_and_used(sims, sidecars, client, state):
    """A server offering POST /api/jobs/{id}/cancel: the sidecar finds it by probing and uses it."""
    sim, running, c = await setup(sims, sidecars, client, "0.12.1", jobs_cancel_endpoint=True)
    assert running.sidecar.instances["a"].caps.jobs_cancel is True
    await c.request("submit", job_id="runner", workflow=probe_workflow(steps=20, step_ms=40))
    await c.request("submit", job_id="waiter", workflow=probe_workflow(steps=2, step_ms=10))
    target = "runner" if state == "started" else "waiter"
    await c.wait_for(lambda e: e["type"] == "node.progress" and e["job_id"] == "runner")
    reply = await c.request("cancel", job_id=target)
    assert reply["ok"] and reply["result"]["method"] == "jobs_cancel"
    final = await c.job_final(target)
    assert final["type"] == "job.cancelled"
    expected = "execution_interrupted" if state == "started" else "queue"
    assert final["data"]["confirmed_by"] == expected


async def test_cancel_on_a_server_without_the_endpoint_does_not_probe_it_as_present(sims, sidecars, client):
    """0.12.1 as recorded has no per-job cancel: the probe finds none and targeted interrupt is used."""
    sim, running, c = await setup(sims, sidecars, client, "0.12.1")
    caps = running.sidecar.instances["a"].caps
    assert caps.jobs_cancel is False and caps.targeted_interrupt is True
