"""A sidecar restarted on the same state file keeps its word: clientIds, jobs, idempotent submits."""

from __future__ import annotations

import asyncio
import signal

import aiohttp
import pytest

from .conftest import Client, connected, paused_instance, probe_workflow, spawn_sidecar, stop
from .test_faults import spawn_simulator


async def test_restart_keeps_client_id_and_finished_jobs_stay_idempotent(tmp_path, sims, sidecars, client):
    """After a graceful restart: same clientId, a finished job is still found by `job`, with the 100.0
    it published (issue 8), and a submit reusing its id returns it instead of running it again."""
    sim = await sims("0.12.1")
    state = tmp_path / "bridge.sqlite3"
    first = await sidecars({"a": sim.url}, state=state)
    c = await client(first)
    await connected(c, "a")
    await c.request("submit", job_id="once", workflow=probe_workflow(steps=2), client_data={"n": 1})
    assert (await c.job_final("once"))["type"] == "job.completed"
    client_id = first.sidecar.instances["a"].client_id
    await first.close()

    second = await sidecars({"a": sim.url}, state=state)
    c2 = await client(second)
    await connected(c2, "a")
    assert second.sidecar.instances["a"].client_id == client_id
    assert second.sidecar.run_id != first.sidecar.run_id
    found = await c2.request("job", job_id="once")
    assert found["ok"] and found["result"]["state"] == "completed" and found["result"]["client_data"] == {"n": 1}
    assert found["result"]["percent"] == 100.0
    again = await c2.request("submit", job_id="once", workflow=probe_workflow(steps=2))
    assert again["ok"] and again["result"]["duplicate"] is True
    assert again["result"]["job"]["state"] == "completed" and again["result"]["job"]["percent"] == 100.0
    assert len(sim.submitted) == 1


async def test_queue_anyway_job_runs_when_a_degraded_instance_recovers(sims, sidecars, client):
    """A job held for a degraded instance is submitted as soon as the instance is connected again."""
    sim, running, c = await paused_instance(sims, sidecars, client, stalled_s=0.3)
    await c.request("submit", job_id="blocked", workflow=probe_workflow(steps=1))
    await c.wait_for(lambda e: e["type"] == "instance.status" and e["data"]["state"] == "degraded")
    held = await c.request("submit", job_id="held", instance="a", queue_anyway=True, workflow=probe_workflow(steps=1))
    assert held["ok"] and held["result"]["held"] is True
    sim.resume_worker()
    assert (await c.job_final("blocked"))["type"] == "job.completed"
    assert (await c.job_final("held"))["type"] == "job.completed"


STEPS = 60


def percents(c: Client, job_id: str) -> list[float]:
    return [e["data"]["percent"] for e in c.of_job(job_id) if e["type"] == "job.progress"]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
async def test_progress_never_goes_back_across_a_sidecar_restart(tmp_path, zctx, sig):
    """Issue 8: a sidecar stopped (SIGTERM or SIGKILL) mid-sampler, after nodes finished, and started
    again on the same state file: every job.progress of the job, across both runs, is >= the one
    before. The restored job's percent is the last one published after SIGTERM; after SIGKILL, the
    one at the sampler's start (PROTOCOL.md §6.5).

    Real processes: `comfy-bridge simulate` and `comfy-bridge run`. ComfyUI is frozen (SIGSTOP)
    from the old sidecar's exit until the new one's SUB is subscribed, so no event of the new run
    is missed; it ran on while the old sidecar was shutting down."""
    (tmp_path / "bridge.toml").write_text("[zmq]\nheartbeat_s = 0.05\n")  # read by `run` in its cwd
    sim, port = await spawn_simulator("0.12.1", step_ms=40)
    state = tmp_path / "bridge.sqlite3"
    proc, c = await spawn_sidecar(zctx, state, f"a=http://127.0.0.1:{port}")
    c2: Client | None = None
    try:
        await connected(c, "a")
        await c.request("submit", job_id="long", workflow=probe_workflow(steps=STEPS))
        await c.wait_for(
            lambda e: e["type"] == "node.progress" and e["job_id"] == "long" and e["data"]["value"] >= STEPS // 3
        )
        await stop(proc, sig)
        sim.send_signal(signal.SIGSTOP)  # ComfyUI holds still until the next run's SUB is subscribed
        try:
            proc, c2 = await spawn_sidecar(zctx, state, f"a=http://127.0.0.1:{port}")
            snap = (await c2.request("snapshot"))["result"]
        finally:
            sim.send_signal(signal.SIGCONT)
        final = await c2.job_final("long", timeout_s=30)
        assert final["type"] == "job.completed"
        before, after = percents(c, "long"), percents(c2, "long")
        started = [e["data"]["node"] for e in c.of_job("long") if e["type"] == "node.executing"]
        assert "1" in started and started[-1] == "2", f"the stop did not land mid-sampler: {started}"
        assert before and before[-1] < 100.0 and after[-1] == 100.0
        assert len(after) > 1, "the job ended before the new run published any progress"
        seen = before + after
        assert seen == sorted(seen), f"job.progress went back: run 1 {before}, run 2 {after}"
        (restored,) = [j for j in snap["jobs"] if j["job_id"] == "long"]
        assert restored["current_node"] == "2"
        if sig == signal.SIGTERM:
            assert restored["percent"] == before[-1]
        else:
            events = c.of_job("long")
            sampler = next(
                i for i, e in enumerate(events) if e["type"] == "node.executing" and e["data"]["node"] == "2"
            )
            sampler_start = [e["data"]["percent"] for e in events[:sampler] if e["type"] == "job.progress"][-1]
            assert sampler_start <= restored["percent"] < before[-1]
        assert (await c2.request("job", job_id="long"))["result"]["percent"] == 100.0
    finally:
        for client_ in (c, c2):
            if client_ is not None:
                await client_.close()
        await stop(proc, signal.SIGTERM)
        await stop(sim, signal.SIGTERM)


async def test_cancel_of_a_restored_job_that_may_have_been_posted_deletes_it_from_comfyuis_queue(tmp_path, sims, zctx):
    """The sidecar is killed while ComfyUI answers ``POST /prompt`` (0.3.44 takes no prompt id from
    the client, so none was saved) and comes back while the instance refuses WebSockets: the job is
    held, and the last run may have posted it. A cancel then looks in ComfyUI once connected and
    deletes the queued prompt, which never runs; the sidecar does not just drop the job."""
    sim = await sims("0.3.44", step_ms=None)
    state = tmp_path / "bridge.sqlite3"
    proc, c = await spawn_sidecar(zctx, state, f"a={sim.url}")
    try:
        await connected(c, "a")
        sim.pause_worker()  # the prompt stays in ComfyUI's queue
        sim.prompt_delay_s = 30.0  # ComfyUI queues it at once but answers late
        posting = asyncio.create_task(c.request("submit", job_id="ghost", workflow=probe_workflow(steps=2)))
        async with asyncio.timeout(10):
            while not sim.submitted:  # the POST has reached ComfyUI (polled on its own state, bounded)
                await c.tick()
        await stop(proc)
        posting.cancel()
        await c.close()
        sim.prompt_delay_s = 0.0
        sim.refuse_websockets = True
        proc, c = await spawn_sidecar(zctx, state, f"a={sim.url}")
        reply = await c.request("cancel", job_id="ghost")
        assert reply["ok"] and reply["result"]["method"] == "after_lookup", reply
        assert reply["result"]["state"] == "accepted" and not reply["result"]["cancel_sent"]
        sim.refuse_websockets = False
        final = await c.job_final("ghost")
        assert final["type"] == "job.cancelled" and final["data"]["confirmed_by"] == "queue", final
        prompt_id = final["data"]["prompt_id"]
        assert prompt_id is not None
        sim.resume_worker()
        await sim.wait_idle()
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{sim.url}/history/{prompt_id}") as resp:
                assert await resp.json() == {}, "the cancelled prompt ran in ComfyUI"
        assert len(sim.submitted) == 1
    finally:
        await c.close()
        await stop(proc, signal.SIGTERM)


async def test_cancel_of_a_restored_held_job_comfyui_never_had_posts_nothing(tmp_path, sims, sidecars, client):
    """A held job restored after a restart is looked for in ComfyUI before a cancel drops it: once
    connected, ComfyUI has no such prompt, so it is cancelled by the sidecar and never posted."""
    sim = await sims("0.3.44")
    sim.refuse_websockets = True
    state = tmp_path / "bridge.sqlite3"
    first = await sidecars({"a": sim.url}, state=state)
    c = await client(first)
    held = await c.request("submit", job_id="never", instance="a", queue_anyway=True, workflow=probe_workflow())
    assert held["ok"] and held["result"]["held"] is True
    await first.close()
    second = await sidecars({"a": sim.url}, state=state)
    c2 = await client(second)
    reply = await c2.request("cancel", job_id="never")
    assert reply["ok"] and reply["result"]["method"] == "after_lookup", reply
    sim.refuse_websockets = False
    up = await c2.wait_for(lambda e: e["type"] == "instance.status" and e["data"]["state"] == "connected")
    final = await c2.job_final("never")
    assert final["type"] == "job.cancelled" and final["data"]["confirmed_by"] == "sidecar"
    assert final["seq"] > up["seq"]
    assert sim.submitted == []
