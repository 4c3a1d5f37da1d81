"""Faults: ComfyUI killed and restarted, dropped or silent sockets, a wedged queue, slow subscribers.

Real sockets throughout; the ComfyUI that dies is a real process where the kill is the point.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import signal
from typing import Any

import aiohttp
import msgspec
import pytest
import zmq
from websockets.asyncio.client import connect as ws_connect

from .conftest import WAIT_S, Client, connected, paused_instance, probe_workflow, spawn_cli, spawn_sidecar, stop


async def spawn_simulator(version: str, port: int = 0, step_ms: float = 10) -> tuple[asyncio.subprocess.Process, int]:
    """``comfy-bridge simulate`` as a real process; returns it and its port."""
    proc, match = await spawn_cli(
        "simulate",
        "--port",
        str(port),
        "--version",
        version,
        "--step-ms",
        str(step_ms),
        until=r"http://127\.0\.0\.1:(\d+)",
    )
    return proc, int(match.group(1))


def types_of(c: Client, job_id: str) -> list[str]:
    return [e["type"] for e in c.of_job(job_id)]


@pytest.mark.parametrize("resubmit", [1, 0])
async def test_comfyui_killed_mid_job_and_restarted_resubmits_or_fails_lost(sidecars, client, resubmit):
    """SIGKILL of ComfyUI mid-job, restarted empty on the same port: resubmitted and completed,
    or with resubmission off, job.failed with code lost_on_restart."""
    proc, port = await spawn_simulator("0.12.1")
    try:
        running = await sidecars({"a": f"http://127.0.0.1:{port}"})
        running.sidecar.config.recovery.resubmit_lost = resubmit
        c = await client(running)
        await connected(c, "a")
        await c.request("submit", job_id="victim", workflow=probe_workflow(steps=40, step_ms=20))
        await c.wait_for(lambda e: e["type"] == "node.progress" and e["job_id"] == "victim" and e["data"]["value"] >= 3)
        await stop(proc)
        await c.wait_for(lambda e: e["type"] == "instance.status" and e["data"]["state"] == "disconnected")
        proc, _ = await spawn_simulator("0.12.1", port=port)
        final = await c.job_final("victim", timeout_s=30)
        types = types_of(c, "victim")
        if resubmit:
            assert final["type"] == "job.completed"
            assert types.count("job.resubmitted") == 1
            resub = next(e for e in c.of_job("victim") if e["type"] == "job.resubmitted")
            assert resub["data"]["attempt"] == 2 and resub["data"]["prompt_id"] != resub["data"]["previous_prompt_id"]
            assert final["data"]["prompt_id"] == resub["data"]["prompt_id"]
            percents = [e["data"]["percent"] for e in c.of_job("victim") if e["type"] == "job.progress"]
            assert percents == sorted(percents) and percents[-1] == 100.0
        else:
            assert final["type"] == "job.failed" and final["data"]["code"] == "lost_on_restart"
            assert "job.resubmitted" not in types
        seqs = [e["seq"] for e in c.events]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    finally:
        await stop(proc)


async def test_dropped_connection_mid_job_resumes_progress(sims, sidecars, client):
    """The socket dies without a close frame mid-job: the sidecar reconnects with the same clientId
    and the job's progress resumes on the new socket until it completes."""
    sim = await sims("0.12.1", step_ms=None)
    running = await sidecars({"a": sim.url})
    c = await client(running)
    await connected(c, "a")
    client_id = running.sidecar.instances["a"].client_id
    await c.request("submit", job_id="dropped", workflow=probe_workflow(steps=30, step_ms=30))
    await c.wait_for(lambda e: e["type"] == "node.progress" and e["job_id"] == "dropped" and e["data"]["value"] >= 3)
    await sim.drop_connections()
    down = await c.wait_for(lambda e: e["type"] == "instance.status" and e["data"]["state"] == "disconnected")
    up = await c.wait_for(
        lambda e: e["type"] == "instance.status" and e["data"]["state"] == "connected" and e["seq"] > down["seq"]
    )
    assert sim.clients() == [client_id]
    final = await c.job_final("dropped", timeout_s=20)
    assert final["type"] == "job.completed"
    after = [e for e in c.of_job("dropped") if e["type"] == "node.progress" and e["seq"] > up["seq"]]
    assert after, "no progress arrived on the new socket"


async def test_terminal_event_missed_while_disconnected_is_recovered_from_history(sims, sidecars, client):
    """The job ends while the sidecar cannot reconnect: after it does, history gives the outcome."""
    sim = await sims("0.3.44", step_ms=None)
    running = await sidecars({"a": sim.url})
    c = await client(running)
    await connected(c, "a")
    await c.request("submit", job_id="unseen", workflow=probe_workflow(steps=6, step_ms=40))
    await c.wait_for(lambda e: e["type"] == "node.progress" and e["job_id"] == "unseen")
    sim.refuse_websockets = True
    await sim.drop_connections()
    await c.wait_for(lambda e: e["type"] == "instance.status" and e["data"]["state"] == "disconnected")
    await sim.wait_idle(timeout_s=10)  # the prompt finished in ComfyUI while nobody listened
    sim.refuse_websockets = False
    final = await c.job_final("unseen", timeout_s=20)
    assert final["type"] == "job.completed"
    assert set(final["data"]["outputs"]) == {"3", "4", "5"}


async def test_silent_socket_is_caught_by_the_watchdog(sims, sidecars, client):
    """The socket stays open but ComfyUI sends nothing more (upstream issue 16010): the watchdog
    notices, reads history, and the job still reaches its final state."""
    sim = await sims("0.12.1", step_ms=None)
    running = await sidecars({"a": sim.url})
    recovery = running.sidecar.config.recovery
    recovery.silent_s, recovery.check_s = 0.3, 0.05
    c = await client(running)
    await connected(c, "a")
    await c.request("submit", job_id="muted", workflow=probe_workflow(steps=40, step_ms=25))
    await c.wait_for(lambda e: e["type"] == "node.progress" and e["job_id"] == "muted")
    sim.mute_websockets = True  # frames for the sidecar vanish; the TCP connection stays up
    final = await c.job_final("muted", timeout_s=30)
    assert final["type"] == "job.completed"
    # the watchdog forced one reconnect while the job still ran; the new socket was not muted
    assert running.sidecar.instances["a"].recovery.forced == 1


async def test_wedged_queue_marks_the_instance_degraded_until_work_flows(sims, sidecars, client):
    """A queue that holds work but starts nothing: instance.status degraded, then back to connected."""
    sim, running, c = await paused_instance(sims, sidecars, client, stalled_s=0.4)
    await c.request("submit", job_id="stuck", workflow=probe_workflow(steps=2))
    degraded = await c.wait_for(lambda e: e["type"] == "instance.status" and e["data"]["state"] == "degraded")
    assert "queue holds 1" in degraded["data"]["error"]
    health = (await c.request("health"))["result"]["instances"][0]
    assert health["state"] == "degraded" and "queue holds 1" in health["last_error"]
    sim.resume_worker()
    assert (await c.job_final("stuck"))["type"] == "job.completed"
    await c.wait_for(
        lambda e: e["type"] == "instance.status" and e["data"]["state"] == "connected" and e["seq"] > degraded["seq"]
    )


async def test_a_status_broadcast_does_not_end_degraded(sims, sidecars, client):
    """Another client's submission makes ComfyUI broadcast ``status`` to every socket: that is not
    progress on the wedged queue, so the instance stays degraded and takes no new job; the first
    prompt that starts ends it."""
    sim, running, c = await paused_instance(sims, sidecars, client, stalled_s=0.4)
    await c.request("submit", job_id="stuck", workflow=probe_workflow(steps=2))
    degraded = await c.wait_for(lambda e: e["type"] == "instance.status" and e["data"]["state"] == "degraded")
    frames = (await c.request("health"))["result"]["instances"][0]["frames"]
    async with aiohttp.ClientSession() as http:  # another client of the same ComfyUI queues a prompt
        body = {"prompt": probe_workflow(steps=1), "client_id": "someone-else"}
        async with http.post(sim.url + "/prompt", json=body) as resp:
            assert resp.status == 200
    async with asyncio.timeout(WAIT_S):  # until the sidecar has read the status broadcast
        while (await c.request("health"))["result"]["instances"][0]["frames"] == frames:
            await c.tick()
    await c.tick(heartbeats=10)  # ten heartbeats: ten looks of the watchdog (check_s 0.05)
    changes = [e["data"]["state"] for e in c.events if e["type"] == "instance.status" and e["seq"] > degraded["seq"]]
    assert changes == [], changes
    refused = await c.request("submit", job_id="routed", instance="a", workflow=probe_workflow(steps=1))
    assert not refused["ok"] and refused["error"]["code"] == "instance_unavailable"
    sim.resume_worker()
    await c.wait_for(
        lambda e: e["type"] == "instance.status" and e["data"]["state"] == "connected" and e["seq"] > degraded["seq"]
    )
    assert (await c.job_final("stuck"))["type"] == "job.completed"


async def displace(c: Client, sim: Any, client_id: str) -> None:
    """A second WebSocket with our clientId, then closed: ComfyUI forgets the id, so the sidecar's
    socket stays open but hears nothing more (ComfyUI issue 16010)."""
    async with ws_connect(f"{sim.ws_url}?clientId={client_id}") as ws:
        await ws.recv()  # the connect-time status: the socket is registered
    async with asyncio.timeout(WAIT_S):
        while client_id in sim.clients():
            await c.tick()


def steps_of(c: Client, job_id: str) -> list[int]:
    return [e["data"]["value"] for e in c.of_job(job_id) if e["type"] == "node.progress" and e["data"]["node"] == "2"]


async def test_a_displaced_socket_is_replaced_once_a_job_ended_unseen(sims, sidecars, client):
    """The socket is displaced while job A runs; A ends before ``silent_s`` and is settled from
    history. The open socket missed that end, so the sidecar reconnects at once, and job B is heard
    from its first frame."""
    sim = await sims("0.12.1", step_ms=None)
    running = await sidecars({"a": sim.url})
    recovery = running.sidecar.config.recovery
    recovery.silent_s, recovery.check_s = 0.5, 0.05
    c = await client(running)
    await connected(c, "a")
    client_id = running.sidecar.instances["a"].client_id
    await c.request("submit", job_id="A", workflow=probe_workflow(steps=10, step_ms=30))
    await c.wait_for(lambda e: e["type"] == "node.progress" and e["job_id"] == "A")
    await displace(c, sim, client_id)
    final = await c.job_final("A")
    assert final["type"] == "job.completed" and set(final["data"]["outputs"]) == {"3", "4", "5"}
    await c.wait_for(
        lambda e: e["type"] == "instance.status" and e["data"]["state"] == "connected" and e["seq"] > final["seq"],
        timeout_s=5,
    )
    assert sim.clients() == [client_id]
    await c.request("submit", job_id="B", workflow=probe_workflow(steps=8, step_ms=30))
    assert (await c.job_final("B"))["type"] == "job.completed"
    assert types_of(c, "B")[:3] == ["job.accepted", "job.queued", "job.started"]
    assert steps_of(c, "B") == list(range(1, 9))


async def test_a_short_displaced_job_ends_within_unseen_s_not_silent_s(sims, sidecars, client):
    """With the default ``silent_s`` (30 s), a displaced job that ends is still published within
    about ``recovery.unseen_s``: the queue is read after that much quiet, not only after 30 s."""
    sim = await sims("0.12.1", step_ms=None)
    running = await sidecars({"a": sim.url})
    recovery = running.sidecar.config.recovery
    recovery.unseen_s, recovery.check_s = 0.3, 0.05
    assert recovery.silent_s == 30.0
    c = await client(running)
    await connected(c, "a")
    await c.request("submit", job_id="short", workflow=probe_workflow(steps=10, step_ms=30))
    await c.wait_for(lambda e: e["type"] == "node.progress" and e["job_id"] == "short")
    await displace(c, sim, running.sidecar.instances["a"].client_id)
    loop = asyncio.get_running_loop()
    await sim.wait_idle()
    ended = loop.time()
    final = await c.job_final("short", timeout_s=10)
    late_s = loop.time() - ended
    assert final["type"] == "job.completed"
    assert late_s < 0.3 + 2.0, f"published {late_s:.2f} s after ComfyUI finished it"


async def test_last_error_is_nil_once_connected_again(sims, sidecars, client):
    """health's ``last_error`` says why an instance is not connected: after the reconnect it is nil."""
    sim = await sims("0.12.1")
    running = await sidecars({"a": sim.url})
    c = await client(running)
    await connected(c, "a")
    sim.refuse_websockets = True
    await sim.drop_connections()
    down = await c.wait_for(lambda e: e["type"] == "instance.status" and e["data"]["state"] == "waiting")
    assert down["data"]["error"]
    health = (await c.request("health"))["result"]["instances"][0]
    assert health["state"] != "connected" and health["last_error"]
    sim.refuse_websockets = False
    up = await c.wait_for(
        lambda e: e["type"] == "instance.status" and e["data"]["state"] == "connected" and e["seq"] > down["seq"]
    )
    assert up["data"]["error"] is None
    health = (await c.request("health"))["result"]["instances"][0]
    assert health["state"] == "connected" and health["last_error"] is None, health


@pytest.mark.parametrize("comfyui", ["restarted", "back"])
async def test_a_job_that_ended_as_comfyui_went_away_is_settled_after_the_reconnect(sims, sidecars, client, comfyui):
    """The socket reports the end, but ComfyUI goes away before the history is read: no final event
    while it is away. After the reconnect the history is read (ComfyUI back as it was), or, when a
    restarted ComfyUI lost it, the job ends as the socket said, with its ``node.output`` outputs."""
    sim = await sims("0.12.1", step_ms=None)
    running = await sidecars({"a": sim.url}, http_timeout_s=0.5, history_attempts=1)
    c = await client(running)
    await connected(c, "a")
    client_id = running.sidecar.instances["a"].client_id
    sim.history_delay_s = 2.0  # ComfyUI is slow to answer /history: it goes away meanwhile
    await c.request("submit", job_id="edge", workflow=probe_workflow(steps=3))
    await sim.wait_idle()
    async with asyncio.timeout(WAIT_S):  # until the sidecar has read every frame, the end included
        while (await c.request("health"))["result"]["instances"][0]["frames"] != sim.frames_sent_to(client_id):
            await c.tick()
    if comfyui == "restarted":
        await sim.close()  # killed: the history read fails, the socket drops
    else:
        sim.refuse_websockets = True
        await sim.drop_connections()  # the socket drops; the history read times out
    down = await c.wait_for(lambda e: e["type"] == "instance.status" and e["data"]["state"] == "waiting")
    await c.tick(heartbeats=20)  # a second: longer than the history read's timeout
    assert not [e for e in c.of_job("edge") if e["type"] in ("job.completed", "job.failed", "job.cancelled")]
    if comfyui == "restarted":
        await sim.start()  # the same port, empty: the history is gone
    else:
        sim.history_delay_s = 0.0
        sim.refuse_websockets = False
    up = await c.wait_for(
        lambda e: e["type"] == "instance.status" and e["data"]["state"] == "connected" and e["seq"] > down["seq"]
    )
    final = await c.job_final("edge")
    assert final["type"] == "job.completed" and final["seq"] > up["seq"]
    seen = {e["data"]["node"] for e in c.of_job("edge") if e["type"] == "node.output"}
    assert set(final["data"]["outputs"]) == seen == {"3", "4", "5"}


async def test_sidecar_killed_mid_job_comes_back_and_finishes_it(tmp_path, sims, zctx):
    """SIGKILL of the sidecar mid-job; restarted on the same state file: the same job completes,
    its events are published by the new run, and snapshot shows it meanwhile."""
    sim = await sims("0.12.1", step_ms=None)
    state = tmp_path / "bridge.sqlite3"

    async def start_sidecar() -> tuple[asyncio.subprocess.Process, Client]:
        return await spawn_sidecar(zctx, state, f"a={sim.url}")

    proc, c = await start_sidecar()
    try:
        await connected(c, "a")
        await c.request(
            "submit", job_id="survivor", workflow=probe_workflow(steps=40, step_ms=30), client_data={"k": 1}
        )
        await c.wait_for(lambda e: e["type"] == "node.progress" and e["job_id"] == "survivor")
        first_run = c.events[-1]["run"]
        await stop(proc)
        await c.close()

        proc, c = await start_sidecar()
        snap = (await c.request("snapshot"))["result"]
        assert snap["run"] != first_run
        jobs = {j["job_id"]: j for j in snap["jobs"]}
        assert jobs["survivor"]["state"] in ("queued", "started") and jobs["survivor"]["client_data"] == {"k": 1}
        final = await c.job_final("survivor", timeout_s=30)
        assert final["type"] == "job.completed" and final["run"] == snap["run"]
        assert set(final["data"]["outputs"]) == {"3", "4", "5"}
        assert len(sim.submitted) == 1, "the job was submitted twice"
    finally:
        await c.close()
        assert await stop(proc, signal.SIGTERM) == 0


async def test_slow_subscriber_never_slows_the_read_loops_and_loses_events_on_its_own_pipe_only(
    sims, sidecars, client, zctx
):
    """A subscriber reading 100x slower than events arrive: every ComfyUI frame is still read as it
    comes and jobs finish in the sidecar on time (seen over the ROUTER, which PUB pressure does not
    touch); the fast subscriber receives every event; the slow one loses events on its own pipe
    only, receives the rest in seq order, sees the gap, and learns each job's end through
    ``snapshot`` and ``job`` (docs/PROTOCOL.md §7.2)."""
    sim = await sims("0.12.1", step_ms=1)
    # a small per-subscriber queue and kernel buffer, so the slow one overflows within the burst
    # (about 1,500 events) while the fast one, in this same event loop, has room for its pauses
    running = await sidecars({"a": sim.url}, zmq_options={"pub_hwm": 200, "pub_sndbuf_bytes": 4096})
    fast = await client(running)
    await connected(fast, "a")
    loop = asyncio.get_running_loop()
    client_id = running.sidecar.instances["a"].client_id

    # Baseline: one job with nobody slow listening; its event rate sets the slow reader's pace.
    start, before = loop.time(), len(fast.events)
    await fast.request("submit", job_id="warm-up", workflow=probe_workflow(steps=150, step_ms=1))
    await fast.job_final("warm-up")
    baseline_s = loop.time() - start
    pace_s = 100 * baseline_s / (len(fast.events) - before)

    slow = zctx.socket(zmq.SUB)
    slow.setsockopt(zmq.RCVHWM, 5)
    slow.setsockopt(zmq.RCVBUF, 4096)
    slow.setsockopt(zmq.SUBSCRIBE, b"")
    slow.connect(running.pub)
    received: list[dict[str, Any]] = []
    first = asyncio.Event()
    hurry = asyncio.Event()
    arrived = asyncio.Event()

    async def read_slowly() -> None:
        while True:
            received.append(msgspec.msgpack.decode((await slow.recv_multipart())[1]))
            first.set()
            arrived.set()
            if not hurry.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(pace_s):  # the slowness under test, cut short by hurry
                        await hurry.wait()

    reader = asyncio.create_task(read_slowly())
    jobs = [f"burst-{n}" for n in range(3)]
    try:
        async with asyncio.timeout(10):
            await first.wait()  # subscribed: the slow joiner is past
        start = loop.time()
        for job_id in jobs:
            assert (await fast.request("submit", job_id=job_id, workflow=probe_workflow(steps=150, step_ms=1)))["ok"]
        await sim.wait_idle(timeout_s=30)
        # The sidecar's view, over the ROUTER: every frame read and every job completed, promptly.
        async with asyncio.timeout(3 * len(jobs) * baseline_s + 5):
            while True:
                states = [(await fast.request("job", job_id=j))["result"]["state"] for j in jobs]
                health = (await fast.request("health"))["result"]
                if states == ["completed"] * len(jobs) and health["instances"][0]["frames"] == sim.frames_sent_to(
                    client_id
                ):
                    break
                await fast.request("ping")
        burst_s = loop.time() - start
        assert burst_s < 3 * len(jobs) * baseline_s + 5, "the slow subscriber slowed the sidecar down"
        events = health["events"]
        assert events["backlog_peak"] == 0 and events["dropped"] == {}, events  # the sidecar kept nothing
        assert len(received) < len(fast.events), "the slow subscriber was not slow"
        hurry.set()
        last = fast.events[-1]["seq"]
        async with asyncio.timeout(60):  # caught up: it receives an event made after the burst
            while received[-1]["seq"] <= last:
                arrived.clear()
                await arrived.wait()
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
        slow.close(linger=0)
    fast_seqs = [e["seq"] for e in fast.events]
    assert fast_seqs == list(range(fast_seqs[0], fast_seqs[0] + len(fast_seqs))), "the fast subscriber lost events"
    seqs = [e["seq"] for e in received]
    assert seqs == sorted(seqs)
    assert any(b - a > 1 for a, b in itertools.pairwise(seqs)), "the slow subscriber saw no gap"
    full = ["job.accepted", "job.queued", "job.started", "job.completed"]
    snapshot = (await fast.request("snapshot"))["result"]
    for job_id in jobs:
        assert [e["type"] for e in fast.of_job(job_id) if e["type"] in full] == full
        lifecycle = [e["type"] for e in received if e["job_id"] == job_id and e["type"] in full]
        assert lifecycle == [t for t in full if t in lifecycle], "what it received is in order"
        # step 5 of the procedure: a job it followed that the snapshot no longer lists has ended
        assert job_id not in {j["job_id"] for j in snapshot["jobs"]}
        assert (await fast.request("job", job_id=job_id))["result"]["state"] == "completed"


@pytest.mark.parametrize("version", ["0.12.1", "0.3.44"])
async def test_sidecar_killed_before_comfyui_answered_the_post_does_not_run_the_job_twice(
    tmp_path, sims, zctx, version
):
    """SIGKILL after ComfyUI queued the prompt but before its answer arrived: the restarted sidecar
    finds the prompt (by the id it saved before posting on 0.12.1; by the job id in the prompt's
    extra_data on older servers), and the job runs once."""
    sim = await sims(version, step_ms=None)
    state = tmp_path / "bridge.sqlite3"
    proc, c = await spawn_sidecar(zctx, state, f"a={sim.url}")
    try:
        await connected(c, "a")
        sim.prompt_delay_s = 30.0  # ComfyUI queues it at once but answers late
        pending = asyncio.create_task(c.request("submit", job_id="once", workflow=probe_workflow(steps=4, step_ms=30)))
        async with asyncio.timeout(10):
            while not sim.submitted:  # the POST has reached ComfyUI (polled on its own state, bounded)
                await c.tick()
        await stop(proc)
        pending.cancel()
        await c.close()
        sim.prompt_delay_s = 0.0
        proc, c = await spawn_sidecar(zctx, state, f"a={sim.url}")
        final = await c.job_final("once", timeout_s=30)
        assert final["type"] == "job.completed"
        assert len(sim.submitted) == 1, "the job was posted twice"
        queue = (await c.request("job", job_id="once"))["result"]
        assert queue["prompt_id"] == final["data"]["prompt_id"]
    finally:
        await c.close()
        await stop(proc, signal.SIGTERM)
