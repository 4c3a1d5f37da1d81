"""Pause and resume through real sockets (issue 10, section 3): queued and running jobs on every
simulated version, resume on another instance, a sidecar restart while paused, cancel of a
paused job, and a percentage that never goes back."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from .conftest import Client, connected, probe_workflow, stubborn_job

VERSIONS = ("0.0.2", "0.3.44", "0.12.1")


def percents(c: Client, job_id: str) -> list[float]:
    return [e["data"]["percent"] for e in c.of_job(job_id) if e["type"] == "job.progress"]


def steps_of(c: Client, job_id: str, after_seq: int = 0) -> list[int]:
    """The probe node's steps reported for ``job_id`` after ``after_seq``."""
    return [
        e["data"]["value"]
        for e in c.of_job(job_id)
        if e["type"] == "node.progress" and e["data"]["node"] == "2" and e["seq"] > after_seq
    ]


async def pause_running(c: Client, job_id: str, at_step: int) -> dict[str, Any]:
    """Pause ``job_id`` once its probe reported ``at_step``; returns the ``job.paused`` event."""
    await c.wait_for(lambda e: e["type"] == "node.progress" and e["job_id"] == job_id and e["data"]["value"] >= at_step)
    reply = await c.request("pause", job_id=job_id)
    assert reply["ok"], reply
    assert reply["result"]["state"] == "started" and reply["result"]["pause_sent"] is True
    return await c.wait_for(lambda e: e["type"] == "job.paused" and e["job_id"] == job_id)


@pytest.mark.parametrize("version", VERSIONS)
async def test_pause_and_resume_a_queued_and_a_running_job(sims, sidecars, client, version):
    """The running job is interrupted and held, the queued one leaves the queue; on resume the
    same instance serves the finished nodes from its cache and both complete."""
    sim = await sims(version, step_ms=None)
    running = await sidecars({"a": sim.url})
    c = await client(running)
    await connected(c, "a")
    long_flow = probe_workflow(steps=8, step_ms=25)
    await c.request("submit", job_id="long", workflow=long_flow)
    queued = await c.request("submit", job_id="waiting", workflow=probe_workflow(steps=2, step_ms=5))
    assert queued["result"]["job"]["state"] == "queued"

    reply = await c.request("pause", job_id="waiting")
    assert reply["ok"] and reply["result"]["method"] in ("queue_delete", "jobs_cancel"), reply
    paused_q = await c.wait_for(lambda e: e["type"] == "job.paused" and e["job_id"] == "waiting")
    assert paused_q["data"]["confirmed_by"] == "queue"

    paused = await pause_running(c, "long", at_step=4)
    assert paused["data"]["confirmed_by"] == "execution_interrupted" and paused["data"]["node"] == "2"
    assert set(paused["data"]["outputs"]) == {"4"}  # the PreviewImage finished before the probe
    view = (await c.request("job", job_id="long"))["result"]
    assert view["state"] == "paused" and view["prompt_id"] == paused["data"]["prompt_id"]
    assert view["percent"] == paused["data"]["percent"] > 0
    again = await c.request("pause", job_id="long")
    assert again["ok"] and again["result"]["already_requested"] is True

    mark = c.events[-1]["seq"]
    resumed = await c.request("resume", job_id="long")
    assert resumed["ok"] and resumed["result"]["held"] is False, resumed
    assert resumed["result"]["job"]["prompt_id"] != paused["data"]["prompt_id"]
    final = await c.job_final("long")
    assert final["type"] == "job.completed"
    kinds = [e["type"] for e in c.of_job("long") if e["seq"] > mark]
    assert kinds[:2] == ["job.resumed", "job.queued"]
    cached = [e["data"]["nodes"] for e in c.of_job("long") if e["type"] == "node.cached" and e["seq"] > mark]
    assert cached and {"1", "4"} <= set(cached[0])  # finished before the pause: not run again
    assert steps_of(c, "long", mark)[0] == 1  # the interrupted node restarts from its first step
    assert set(final["data"]["outputs"]) == {"3", "4", "5"}
    seen = percents(c, "long")
    assert seen == sorted(seen) and seen[-1] == 100.0

    assert (await c.request("resume", job_id="waiting"))["ok"]
    assert (await c.job_final("waiting"))["type"] == "job.completed"


async def test_resume_on_another_instance_runs_it_all_there(sims, sidecars, client):
    """``resume`` with ``instance``: posted there (nothing cached), completes, percentage never back."""
    a, b = await sims("0.12.1", step_ms=None), await sims("0.3.44", step_ms=None)
    running = await sidecars({"a": a.url, "b": b.url})
    c = await client(running)
    await connected(c, "a", "b")
    await c.request("submit", job_id="moving", instance="a", workflow=probe_workflow(steps=8, step_ms=25))
    paused = await pause_running(c, "moving", at_step=4)
    mark = c.events[-1]["seq"]
    reply = await c.request("resume", job_id="moving", instance="b")
    assert reply["ok"] and reply["result"]["job"]["instance"] == "b"
    final = await c.job_final("moving")
    assert final["type"] == "job.completed" and final["instance"] == "b"
    resumed = next(e for e in c.of_job("moving") if e["type"] == "job.resumed")
    assert resumed["data"]["previous_instance"] == "a" and resumed["data"]["instance"] == "b"
    assert resumed["data"]["previous_prompt_id"] == paused["data"]["prompt_id"]
    assert not [e for e in c.of_job("moving") if e["type"] == "node.cached" and e["seq"] > mark]
    assert steps_of(c, "moving", mark) == list(range(1, 9))  # all of it again
    seen = percents(c, "moving")
    after = [e["data"]["percent"] for e in c.of_job("moving") if e["type"] == "job.progress" and e["seq"] > mark]
    assert seen == sorted(seen) and after[-1] == 100.0
    assert resumed["data"]["percent"] == paused["data"]["percent"] <= after[0]  # goes on from where it was


async def test_a_paused_job_stays_paused_across_a_sidecar_restart_then_resumes(sims, sidecars, client, tmp_path):
    """The state file keeps ``paused`` and the percentage; the next run resumes it to its end."""
    sim = await sims("0.12.1", step_ms=None)
    state: Path = tmp_path / "bridge.sqlite3"
    first = await sidecars({"a": sim.url}, state=state)
    c = await client(first)
    await connected(c, "a")
    await c.request("submit", job_id="kept", workflow=probe_workflow(steps=8, step_ms=25), client_data={"k": 1})
    paused = await pause_running(c, "kept", at_step=4)
    await first.close()

    second = await sidecars({"a": sim.url}, state=state)
    c2 = await client(second)
    await connected(c2, "a")
    view = (await c2.request("job", job_id="kept"))["result"]
    assert view["state"] == "paused" and view["percent"] == paused["data"]["percent"]
    snap = (await c2.request("snapshot"))["result"]
    assert [j["state"] for j in snap["jobs"] if j["job_id"] == "kept"] == ["paused"]
    assert (await c2.request("resume", job_id="kept"))["ok"]
    final = await c2.job_final("kept")
    assert final["type"] == "job.completed" and final["data"]["client_data"] == {"k": 1}
    cached = [e["data"]["nodes"] for e in c2.of_job("kept") if e["type"] == "node.cached"]
    assert cached and {"1", "4"} <= set(cached[0])
    seen = percents(c2, "kept")
    assert seen == sorted(seen) and seen[0] >= paused["data"]["percent"]


async def test_cancel_of_a_paused_job_ends_it_and_wrong_requests_get_clear_codes(sims, sidecars, client):
    """cancel ends a paused job at once; pause of a finished job, resume of one not paused: errors."""
    sim = await sims("0.12.1", step_ms=None)
    running = await sidecars({"a": sim.url})
    c = await client(running)
    await connected(c, "a")
    await c.request("submit", job_id="p", workflow=probe_workflow(steps=8, step_ms=25))
    not_paused = await c.request("resume", job_id="p")
    assert not_paused["error"]["code"] == "job_not_paused" and not_paused["error"]["details"]["state"] in (
        "queued",
        "started",
    )
    paused = await pause_running(c, "p", at_step=2)
    reply = await c.request("cancel", job_id="p")
    assert reply["ok"] and reply["result"]["method"] == "paused"
    final = await c.job_final("p")
    assert final["type"] == "job.cancelled" and final["data"]["confirmed_by"] == "sidecar"
    assert final["data"]["outputs"] == paused["data"]["outputs"]
    finished = await c.request("pause", job_id="p")
    assert finished["error"]["code"] == "job_finished" and finished["error"]["details"]["state"] == "cancelled"
    assert (await c.request("resume", job_id="p"))["error"]["code"] == "job_not_paused"
    assert (await c.request("pause", job_id="nope"))["error"]["code"] == "job_not_found"


async def test_pause_while_posting_or_held_and_resume_elsewhere(sims, sidecars, client):
    """A pause during ``POST /prompt`` takes effect once ComfyUI has queued the job (``after_submit``);
    a job held for an instance that is down is paused at once, and resumed on a connected one."""
    sim = await sims("0.12.1", step_ms=None)
    running = await sidecars({"a": sim.url, "down": "http://127.0.0.1:9"})
    c = await client(running)
    await connected(c, "a")
    sim.pause_worker()  # nothing starts: the posted job stays queued
    sim.prompt_delay_s = 0.2
    submit = asyncio.create_task(c.request("submit", job_id="posting", workflow=probe_workflow(steps=2, step_ms=5)))
    await c.wait_for(lambda e: e["type"] == "job.accepted" and e["job_id"] == "posting")
    reply = await c.request("pause", job_id="posting")
    assert reply["ok"] and reply["result"]["method"] == "after_submit", reply
    assert (await submit)["ok"]
    paused = await c.wait_for(lambda e: e["type"] == "job.paused" and e["job_id"] == "posting")
    assert paused["data"]["confirmed_by"] == "queue"
    sim.prompt_delay_s = 0.0
    sim.resume_worker()

    held = await c.request("submit", job_id="held", instance="down", queue_anyway=True, workflow=probe_workflow())
    assert held["result"]["held"] is True
    reply = await c.request("pause", job_id="held")
    assert reply["result"]["method"] == "held"
    assert (await c.wait_for(lambda e: e["type"] == "job.paused" and e["job_id"] == "held"))["data"][
        "confirmed_by"
    ] == "sidecar"
    resumed = await c.request("resume", job_id="held")  # its own instance is down: the connected one
    assert resumed["ok"] and resumed["result"]["job"]["instance"] == "a"
    assert (await c.job_final("held"))["type"] == "job.completed"
    assert (await c.request("resume", job_id="posting"))["ok"]
    assert (await c.job_final("posting"))["type"] == "job.completed"


async def test_an_unconfirmed_pause_is_published_and_the_job_still_reaches_its_end(sims, sidecars, client):
    """ComfyUI ignores the interrupt: ``job.pause_unconfirmed`` (as for a cancel), the job is not
    ``paused`` and its real final event follows, once."""
    c = await stubborn_job(sims, sidecars, client)
    await pause_started(c, "stubborn")
    unconfirmed = await c.wait_for(lambda e: e["type"] == "job.pause_unconfirmed" and e["job_id"] == "stubborn")
    assert unconfirmed["data"]["waited_s"] >= 0.3 and unconfirmed["data"]["method"] == "interrupt", unconfirmed
    assert unconfirmed["data"]["prompt_id"] == (await c.request("job", job_id="stubborn"))["result"]["prompt_id"]
    final = await c.job_final("stubborn", timeout_s=30)
    assert final["type"] == "job.completed"
    await c.tick(5)
    types = [e["type"] for e in c.of_job("stubborn")]
    assert "job.paused" not in types and types.count("job.completed") == 1, types
    assert percents(c, "stubborn") == sorted(percents(c, "stubborn"))


async def pause_started(c: Client, job_id: str) -> None:
    await c.wait_for(lambda e: e["type"] == "node.progress" and e["job_id"] == job_id)
    reply = await c.request("pause", job_id=job_id)
    assert reply["ok"] and reply["result"]["pause_sent"] is True, reply
