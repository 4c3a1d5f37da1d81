"""A sidecar restarted on the same state file keeps its word: clientIds, jobs, idempotent submits."""

from __future__ import annotations

from .conftest import connected, paused_instance, probe_workflow


async def test_restart_keeps_client_id_and_finished_jobs_stay_idempotent(tmp_path, sims, sidecars, client):
    """After a graceful restart: same clientId, a finished job is still found by `job`, and a submit
    reusing its id returns it instead of running it again."""
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
    again = await c2.request("submit", job_id="once", workflow=probe_workflow(steps=2))
    assert again["ok"] and again["result"]["duplicate"] is True
    assert again["result"]["job"]["state"] == "completed"
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
