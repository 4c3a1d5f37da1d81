"""Several instances behind one sidecar: routing by load, health, one instance dying."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from .conftest import connected, probe_workflow


@pytest.mark.parametrize("count", [2, 8])
async def test_jobs_spread_by_load_across_instances(sims, sidecars, client, count):
    """Submits without an instance go to the least-loaded one: an even spread when all are idle."""
    servers = [await sims("0.12.1") for _ in range(count)]
    names = [f"i{n}" for n in range(count)]
    running = await sidecars(dict(zip(names, (s.url for s in servers), strict=True)))
    c = await client(running)
    await connected(c, *names)
    per_instance = 2
    placed = Counter()  # long jobs (all cancelled below): still in flight when health is asked, however slow the box
    for n in range(count * per_instance):
        reply = await c.request("submit", job_id=f"j{n}", workflow=probe_workflow(steps=500, step_ms=30))
        assert reply["ok"], reply
        placed[reply["result"]["job"]["instance"]] += 1
    assert placed == Counter({name: per_instance for name in names})
    health = (await c.request("health"))["result"]["instances"]
    assert {i["name"]: i["in_flight"] for i in health} == {name: per_instance for name in names}
    for n in range(count * per_instance):
        await c.request("cancel", job_id=f"j{n}")
    for n in range(count * per_instance):
        assert (await c.job_final(f"j{n}", timeout_s=30))["type"] == "job.cancelled"


async def test_a_killed_instance_leaves_the_others_serving(sims, sidecars, client):
    """One simulator dies: its instance is reported down, new jobs go to the others and complete."""
    a, b, d = await sims("0.12.1"), await sims("0.3.44"), await sims("0.0.2")
    running = await sidecars({"a": a.url, "b": b.url, "d": d.url})
    c = await client(running)
    await connected(c, "a", "b", "d")
    await b.close()
    down = await c.wait_for(
        lambda e: (
            e["type"] == "instance.status"
            and e["instance"] == "b"
            and e["data"]["state"] in ("disconnected", "waiting")
        )
    )
    assert down["data"]["error"]
    health = {i["name"]: i for i in (await c.request("health"))["result"]["instances"]}
    assert health["b"]["state"] in ("disconnected", "waiting", "connecting")
    assert health["b"]["last_error"]
    replies = [await c.request("submit", job_id=f"k{n}", workflow=probe_workflow(steps=2)) for n in range(4)]
    assert all(r["ok"] for r in replies)
    assert {r["result"]["job"]["instance"] for r in replies} == {"a", "d"}
    finals = await asyncio.gather(*(c.job_final(f"k{n}") for n in range(4)))
    assert all(f["type"] == "job.completed" for f in finals)

    refused = await c.request("submit", instance="b", workflow=probe_workflow())
    assert refused["ok"] is False and refused["error"]["code"] == "instance_unavailable"
    held = await c.request("submit", job_id="held", instance="b", queue_anyway=True, workflow=probe_workflow())
    assert held["ok"] and held["result"]["held"] is True and held["result"]["job"]["state"] == "accepted"
    cancelled = await c.request("cancel", job_id="held")
    assert cancelled["ok"] and cancelled["result"]["method"] == "held"
    final = await c.job_final("held")
    assert final["type"] == "job.cancelled" and final["data"]["confirmed_by"] == "sidecar"


async def test_held_job_is_submitted_when_its_instance_comes_back(sims, sidecars, client):
    """queue_anyway on an instance that is down: the job waits, then runs once it connects."""
    sim = await sims("0.12.1")
    port = sim.port
    running = await sidecars({"a": sim.url})
    c = await client(running)
    await connected(c, "a")
    await sim.close()
    await c.wait_for(lambda e: e["type"] == "instance.status" and e["data"]["state"] == "waiting")
    reply = await c.request("submit", job_id="later", instance="a", queue_anyway=True, workflow=probe_workflow(steps=2))
    assert reply["ok"] and reply["result"]["held"] is True
    from sidecar.simulator import SimServer

    again = SimServer("0.12.1", port=port, step_ms=10)
    await again.start()
    try:
        final = await c.job_final("later", timeout_s=20)
        assert final["type"] == "job.completed"
        types = [e["type"] for e in c.of_job("later")]
        assert types[:3] == ["job.accepted", "job.queued", "job.started"]
    finally:
        await again.close()


async def test_health_reports_every_instance_and_status_events_follow_changes(sims, sidecars, client):
    """health lists state, url, version, last_connected, last_error, queue and in-flight per instance."""
    a = await sims("0.3.44")
    running = await sidecars({"a": a.url, "nowhere": "http://127.0.0.1:9"})
    c = await client(running)
    await connected(c, "a")
    health = {i["name"]: i for i in (await c.request("health"))["result"]["instances"]}
    assert health["a"]["version"] == "0.3.44" and health["a"]["state"] == "connected"
    assert health["a"]["queue_remaining"] == 0 and health["a"]["in_flight"] == 0
    assert (
        health["nowhere"]["state"] != "connected" and "9" in health["nowhere"]["last_error"] + health["nowhere"]["url"]
    )
    assert health["nowhere"]["last_connected_ns"] is None
    states = [e["data"]["state"] for e in c.events if e["type"] == "instance.status" and e["instance"] == "nowhere"]
    assert "connected" not in states
