"""Issue 11, section 1: a job never waits forever on a dead instance; resubmitted jobs keep their order.

Real sockets throughout: simulated ComfyUI servers (in-process, or a ``comfy-bridge simulate``
process killed with SIGKILL), a sidecar with TCP ZeroMQ sockets, a client as the backend would be.
"""

from __future__ import annotations

import logging

from sidecar.comfy_http import ComfyHttp
from sidecar.simulator import SimServer

from .conftest import WAIT_S, Client, Running, connected, probe_workflow, stop
from .test_faults import spawn_simulator


def quick_failover(running: Running, after_s: float = 0.5) -> None:
    recovery = running.sidecar.config.recovery
    recovery.failover_after_s, recovery.check_s = after_s, 0.05


def job_events(c: Client, job_id: str, kind: str) -> list[dict]:
    return [e for e in c.of_job(job_id) if e["type"] == kind]


async def test_job_of_a_killed_instance_moves_to_another_and_completes(sims, sidecars, client):
    """SIGKILL of ComfyUI mid-job, left down: after recovery.failover_after_s the job is posted on
    the other instance (job.resubmitted naming both), completes there once, its percentage never
    goes back, and its row in the state file follows it."""
    proc, port = await spawn_simulator("0.12.1")
    b = await sims("0.12.1")
    try:
        running = await sidecars({"a": f"http://127.0.0.1:{port}", "b": b.url})
        quick_failover(running)
        c = await client(running)
        await connected(c, "a", "b")
        reply = await c.request("submit", job_id="mover", instance="a", workflow=probe_workflow(steps=40, step_ms=20))
        assert reply["ok"], reply
        await c.wait_for(lambda e: e["type"] == "node.progress" and e["job_id"] == "mover" and e["data"]["value"] >= 3)
        await stop(proc)
        moved = await c.wait_for(lambda e: e["type"] == "job.resubmitted" and e["job_id"] == "mover")
        assert moved["instance"] == "b"
        assert moved["data"]["previous_instance"] == "a" and moved["data"]["instance"] == "b"
        assert moved["data"]["attempt"] == 2 and moved["data"]["previous_prompt_id"]
        final = await c.job_final("mover", timeout_s=30)
        assert final["type"] == "job.completed" and final["instance"] == "b"
        assert final["data"]["prompt_id"] == moved["data"]["prompt_id"]
        assert len(job_events(c, "mover", "job.completed")) == 1
        percents = [e["data"]["percent"] for e in job_events(c, "mover", "job.progress")]
        assert percents == sorted(percents) and percents[-1] == 100.0
        row = running.sidecar.store.load_job("mover")
        assert row is not None and row.instance == "b"
        view = (await c.request("job", job_id="mover"))["result"]
        assert view["instance"] == "b" and view["state"] == "completed"
    finally:
        await stop(proc)


async def test_no_other_instance_fails_the_job_with_instance_down_and_logs_one_warning(sims, sidecars, client, caplog):
    """The only instance dies and stays down: its jobs fail with the clear code instance_down once
    the threshold passes; the log says so at WARNING once, and its retries are not INFO each."""
    caplog.set_level(logging.DEBUG, logger="sidecar")
    sim = await sims("0.12.1", step_ms=None)
    running = await sidecars({"a": sim.url})
    quick_failover(running, after_s=1.0)
    c = await client(running)
    await connected(c, "a")
    await c.request("submit", job_id="stranded", workflow=probe_workflow(steps=200, step_ms=20))
    await c.wait_for(lambda e: e["type"] == "node.progress" and e["job_id"] == "stranded")
    await sim.close()
    final = await c.job_final("stranded", timeout_s=WAIT_S)
    assert final["type"] == "job.failed" and final["data"]["code"] == "instance_down"
    assert "'a' unreachable" in final["data"]["message"] and "no other instance" in final["data"]["message"]
    assert final["data"]["details"]["instance"] == "a" and final["data"]["details"]["down_s"] >= 1.0
    first_wait = await c.wait_for(lambda e: e["type"] == "instance.status" and e["data"]["state"] == "waiting")
    # several more retries, each announced by its own status event
    await c.wait_for(
        lambda e: (
            e["type"] == "instance.status" and e["data"]["state"] == "waiting" and e["seq"] > first_wait["seq"] + 6
        )
    )
    unreachable = [r for r in caplog.records if "unreachable (" in r.getMessage()]
    assert [r.levelname for r in unreachable if r.levelno >= logging.INFO] == ["INFO"], unreachable
    assert len(unreachable) >= 3  # the others at DEBUG
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "unreachable for" in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]


async def test_returning_instance_does_not_run_a_moved_job_twice(sims, sidecars, client):
    """The instance becomes unreachable while ComfyUI keeps its queue (one prompt running, one
    waiting): both jobs move and complete on the other instance; when the first comes back, the
    prompts left there are removed (deleted, interrupted), and neither runs to success there."""
    a = await sims("0.12.1", step_ms=None)
    b = await sims("0.12.1")
    running = await sidecars({"a": a.url, "b": b.url})
    quick_failover(running)
    c = await client(running)
    await connected(c, "a", "b")
    for job_id in ("first", "second"):
        reply = await c.request("submit", job_id=job_id, instance="a", workflow=probe_workflow(steps=6, step_ms=20))
        assert reply["ok"], reply
    await c.wait_for(lambda e: e["type"] == "node.progress" and e["job_id"] == "first")
    a.hold_steps()  # "first" runs on, "second" waits, while the sidecar cannot reach ComfyUI
    old = {e["job_id"]: e["data"]["prompt_id"] for e in c.events if e["type"] == "job.queued"}
    a.refuse_websockets = True
    await a.drop_connections()
    for job_id in ("first", "second"):
        final = await c.job_final(job_id, timeout_s=WAIT_S)
        assert final["type"] == "job.completed" and final["instance"] == "b"
    a.refuse_websockets = False
    back = await c.wait_for(
        lambda e: (
            e["type"] == "instance.status"
            and e["instance"] == "a"
            and e["data"]["state"] == "connected"
            and e["seq"] > final["seq"]
        )
    )
    http = ComfyHttp(a.url)
    try:
        for _ in range(200):  # bounded: each round waits for a heartbeat
            queue = await http.queue()
            if not queue["queue_pending"]:
                break
            await c.tick()
        assert not queue["queue_pending"], queue
        a.release_steps()
        await a.wait_idle(timeout_s=WAIT_S)
        assert await http.history(old["second"]) is None  # deleted before it ran
        first = await http.history(old["first"])
        assert first is None or first["status"]["status_str"] != "success", first
    finally:
        await http.close()
    assert back["instance"] == "a"
    for job_id in ("first", "second"):
        assert len(job_events(c, job_id, "job.completed")) == 1
        assert len(job_events(c, job_id, "job.resubmitted")) == 1


def assert_posted_in_order(c: Client, ids: list[str], after_seq: int, answer_s: float) -> None:
    """The jobs' ``job.queued`` after ``after_seq`` came in submission order, ComfyUI numbered them
    so, and one after the other: each POST waited for the previous answer (``answer_s`` long)."""
    queued = [e for e in c.events if e["type"] == "job.queued" and e["seq"] > after_seq and e["job_id"] in ids]
    order = [e["job_id"] for e in queued]
    assert order == [j for j in ids if j in order], order
    numbers = [e["data"]["number"] for e in queued]
    assert numbers == sorted(numbers), numbers
    gaps = [(b["ts"] - a["ts"]) / 1e9 for a, b in zip(queued, queued[1:], strict=False)]
    assert min(gaps) >= 0.8 * answer_s, gaps  # concurrent POSTs would be answered all at once


async def test_jobs_lost_in_a_comfyui_restart_are_resubmitted_in_their_order(sims, sidecars, client):
    """ComfyUI dies with one job running and eleven waiting, and comes back empty: the twelve are
    posted again one after the other, so they run in the order they were submitted (before:
    concurrent POSTs, and a later job could run first)."""
    sim = await sims("0.12.1")
    port = sim.port
    running = await sidecars({"a": sim.url})
    running.sidecar.config.recovery.failover_after_s = 0  # the same instance comes back
    c = await client(running)
    await connected(c, "a")
    ids = [f"o{n}" for n in range(12)]
    for job_id in ids:  # o0 runs long enough to be running when ComfyUI dies, on a loaded machine too
        steps, step_ms = (40, 20) if job_id == "o0" else (3, 10)
        await c.request("submit", job_id=job_id, workflow=probe_workflow(steps=steps, step_ms=step_ms))
    await c.wait_for(lambda e: e["type"] == "node.progress" and e["job_id"] == "o0")
    await sim.close()
    down = await c.wait_for(lambda e: e["type"] == "instance.status" and e["data"]["state"] == "disconnected")
    again = SimServer("0.12.1", port=port, step_ms=5)
    await again.start()
    again.prompt_delay_s = 0.05  # before the sidecar can connect: no await since start
    try:
        finals = [await c.job_final(job_id, timeout_s=30) for job_id in ids]
        assert all(f["type"] == "job.completed" for f in finals), finals
        lost = [j for j in ids if job_events(c, j, "job.resubmitted")]
        assert len(lost) >= 11, lost  # o0 may have finished before the end; the others were lost
        assert_posted_in_order(c, lost, down["seq"], 0.05)
        started = [e["job_id"] for e in c.events if e["type"] == "job.started" and e["seq"] > down["seq"]]
        assert started == lost
    finally:
        await again.close()


async def test_held_jobs_are_posted_in_their_order_when_the_instance_comes_back(sims, sidecars, client):
    """Eight jobs held (queue_anyway) while the instance is down are posted one after the other
    once it is back: ComfyUI numbers them in the order they were submitted."""
    sim = await sims("0.12.1")
    port = sim.port
    running = await sidecars({"a": sim.url})
    running.sidecar.config.recovery.failover_after_s = 0
    c = await client(running)
    await connected(c, "a")
    await sim.close()
    await c.wait_for(lambda e: e["type"] == "instance.status" and e["data"]["state"] == "waiting")
    ids = [f"h{n}" for n in range(8)]
    for job_id in ids:
        reply = await c.request(
            "submit", job_id=job_id, instance="a", queue_anyway=True, workflow=probe_workflow(steps=1, step_ms=5)
        )
        assert reply["ok"] and reply["result"]["held"], reply
    again = SimServer("0.12.1", port=port, step_ms=5)
    await again.start()
    again.prompt_delay_s = 0.05  # before the sidecar can connect: no await since start
    try:
        finals = [await c.job_final(job_id, timeout_s=30) for job_id in ids]
        assert all(f["type"] == "job.completed" for f in finals), finals
        assert_posted_in_order(c, ids, 0, 0.05)
    finally:
        await again.close()


async def test_queue_anyway_jobs_wait_for_their_instance_past_the_failover_threshold(sims, sidecars, client):
    """A job held with queue_anyway is not moved or failed: the client asked to wait for that instance."""
    a, b = await sims("0.12.1"), await sims("0.12.1")
    port = a.port
    running = await sidecars({"a": a.url, "b": b.url})
    quick_failover(running, after_s=0.2)
    c = await client(running)
    await connected(c, "a", "b")
    await a.close()
    first_wait = await c.wait_for(lambda e: e["type"] == "instance.status" and e["data"]["state"] == "waiting")
    reply = await c.request(
        "submit", job_id="patient", instance="a", queue_anyway=True, workflow=probe_workflow(steps=1)
    )
    assert reply["ok"] and reply["result"]["held"], reply
    # well past the threshold: many retries later, still held on "a"
    await c.wait_for(
        lambda e: (
            e["type"] == "instance.status" and e["data"]["state"] == "waiting" and e["seq"] > first_wait["seq"] + 6
        )
    )
    view = (await c.request("job", job_id="patient"))["result"]
    assert view["state"] == "accepted" and view["instance"] == "a"
    again = SimServer("0.12.1", port=port, step_ms=5)
    await again.start()
    try:
        final = await c.job_final("patient", timeout_s=20)
        assert final["type"] == "job.completed" and final["instance"] == "a"
        assert not job_events(c, "patient", "job.resubmitted")
    finally:
        await again.close()


async def test_a_job_being_cancelled_on_a_dead_instance_ends_cancelled_at_the_threshold(sims, sidecars, client):
    """A cancel accepted while the job's instance is down cannot be confirmed there: at the failover
    threshold the job ends cancelled (confirmed_by sidecar), it is not moved."""
    a, b = await sims("0.12.1", step_ms=None), await sims("0.12.1")
    running = await sidecars({"a": a.url, "b": b.url})
    quick_failover(running, after_s=1.0)
    c = await client(running)
    await connected(c, "a", "b")
    await c.request("submit", job_id="doomed", instance="a", workflow=probe_workflow(steps=200, step_ms=20))
    await c.wait_for(lambda e: e["type"] == "node.progress" and e["job_id"] == "doomed")
    await a.close()
    await c.wait_for(lambda e: e["type"] == "instance.status" and e["data"]["state"] == "waiting")
    reply = await c.request("cancel", job_id="doomed")
    assert reply["ok"], reply
    final = await c.job_final("doomed")
    assert final["type"] == "job.cancelled" and final["data"]["confirmed_by"] == "sidecar"
    assert final["instance"] == "a" and not job_events(c, "doomed", "job.resubmitted")


async def test_a_sidecar_restarted_after_a_failover_follows_the_job_on_its_new_instance(
    sims, sidecars, client, tmp_path
):
    """The job moved to b; the sidecar stops while it runs there and starts again on the same state
    file: the job is restored on b (not on a, still down) and completes there, once."""
    a, b = await sims("0.12.1", step_ms=None), await sims("0.12.1", step_ms=None)
    state = tmp_path / "moved.sqlite3"
    first = await sidecars({"a": a.url, "b": b.url}, state=state)
    quick_failover(first)
    c = await client(first)
    await connected(c, "a", "b")
    await c.request("submit", job_id="follow", instance="a", workflow=probe_workflow(steps=60, step_ms=20))
    await c.wait_for(lambda e: e["type"] == "node.progress" and e["job_id"] == "follow")
    a.refuse_websockets = True
    await a.drop_connections()
    await c.wait_for(lambda e: e["type"] == "job.resubmitted" and e["job_id"] == "follow")
    await c.wait_for(lambda e: e["type"] == "node.progress" and e["job_id"] == "follow" and e["instance"] == "b")
    await first.close()
    second = await sidecars({"a": a.url, "b": b.url}, state=state)
    second.sidecar.config.recovery.failover_after_s = 0
    assert second.sidecar.book.get("follow").instance == "b"
    c2 = await client(second)
    final = await c2.job_final("follow", timeout_s=30)
    assert final["type"] == "job.completed" and final["instance"] == "b"
    assert len(job_events(c2, "follow", "job.completed")) == 1
