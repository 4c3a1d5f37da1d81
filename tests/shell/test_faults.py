"""Faults: ComfyUI killed and restarted, dropped or silent sockets, a wedged queue, slow subscribers.

Real sockets throughout; the ComfyUI that dies is a real process where the kill is the point.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from typing import Any

import msgspec
import pytest
import zmq
import zmq.asyncio

from sidecar.simulator import SimServer

from .conftest import Client, connected, probe_workflow

ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


async def spawn_simulator(version: str, port: int = 0, step_ms: float = 10) -> tuple[asyncio.subprocess.Process, int]:
    """``comfy-bridge simulate`` as a real process; returns it and its port."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sidecar", "simulate", "--port", str(port), "--version", version,
        "--step-ms", str(step_ms), env=ENV, stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(20):
        while True:
            line = (await proc.stderr.readline()).decode()  # type: ignore[union-attr]
            assert line, "simulator exited"
            match = re.search(r"http://127\.0\.0\.1:(\d+)", line)
            if match:
                asyncio.create_task(proc.stderr.read())  # type: ignore[union-attr]  # keep the pipe drained
                return proc, int(match.group(1))


async def kill(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.send_signal(signal.SIGKILL)
        await proc.wait()


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
        await kill(proc)
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
        await kill(proc)


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
    up = await c.wait_for(lambda e: e["type"] == "instance.status" and e["data"]["state"] == "connected"
                          and e["seq"] > down["seq"])
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
    sim = await sims("0.0.2")
    running = await sidecars({"a": sim.url})
    recovery = running.sidecar.config.recovery
    recovery.silent_s, recovery.stalled_s, recovery.check_s = 0.2, 0.4, 0.05
    c = await client(running)
    await connected(c, "a")
    sim.pause_worker()
    await c.request("submit", job_id="stuck", workflow=probe_workflow(steps=2))
    degraded = await c.wait_for(lambda e: e["type"] == "instance.status" and e["data"]["state"] == "degraded")
    assert "queue holds 1" in degraded["data"]["error"]
    health = (await c.request("health"))["result"]["instances"][0]
    assert health["state"] == "degraded"
    sim.resume_worker()
    assert (await c.job_final("stuck"))["type"] == "job.completed"
    await c.wait_for(lambda e: e["type"] == "instance.status" and e["data"]["state"] == "connected"
                     and e["seq"] > degraded["seq"])


async def test_sidecar_killed_mid_job_comes_back_and_finishes_it(tmp_path, sims, zctx):
    """SIGKILL of the sidecar mid-job; restarted on the same state file: the same job completes,
    its events are published by the new run, and snapshot shows it meanwhile."""
    sim = await sims("0.12.1", step_ms=None)
    state = tmp_path / "bridge.sqlite3"

    async def start_sidecar() -> tuple[asyncio.subprocess.Process, Client]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "sidecar", "run", "--instance", f"a={sim.url}", "--router", "tcp://127.0.0.1:*",
            "--pub", "tcp://127.0.0.1:*", "--state", str(state), env=ENV, stderr=asyncio.subprocess.PIPE,
        )
        async with asyncio.timeout(20):
            while True:
                line = (await proc.stderr.readline()).decode()  # type: ignore[union-attr]
                assert line, "sidecar exited"
                match = re.search(r"ROUTER on (\S+), PUB on (\S+),", line)
                if match:
                    break
        asyncio.create_task(proc.stderr.read())  # type: ignore[union-attr]
        c = Client(zctx, match.group(1), match.group(2))
        await c.wait_for(lambda e: True)
        return proc, c

    proc, c = await start_sidecar()
    try:
        await connected(c, "a")
        await c.request("submit", job_id="survivor", workflow=probe_workflow(steps=40, step_ms=30), client_data={"k": 1})
        await c.wait_for(lambda e: e["type"] == "node.progress" and e["job_id"] == "survivor")
        first_run = c.events[-1]["run"]
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
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
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            async with asyncio.timeout(15):
                await proc.wait()


async def test_slow_subscriber_never_slows_the_read_loops_and_gets_every_job_event(sims, sidecars, client, zctx):
    """A subscriber reading 100x slower than events arrive: ComfyUI frames are still read as fast
    as they come, and every job-family event reaches the slow subscriber in order."""
    sim = await sims("0.12.1", step_ms=1)
    running = await sidecars({"a": sim.url})
    running.sidecar.publisher._socket.setsockopt(zmq.SNDHWM, 20)  # tiny queue: pressure sooner
    fast = await client(running)
    await connected(fast, "a")
    slow = zctx.socket(zmq.SUB)
    slow.setsockopt(zmq.RCVHWM, 5)
    slow.setsockopt(zmq.SUBSCRIBE, b"")
    slow.connect(running.pub)
    async with asyncio.timeout(10):
        await slow.recv_multipart()  # subscribed (the slow joiner is past)

    jobs = [f"burst-{n}" for n in range(3)]
    started = asyncio.get_running_loop().time()
    for job_id in jobs:
        await fast.request("submit", job_id=job_id, workflow=probe_workflow(steps=150, step_ms=1))
    received: list[dict[str, Any]] = []
    done = asyncio.Event()

    async def read_slowly() -> None:
        while not done.is_set() or await slow.poll(0):
            event = msgspec.msgpack.decode((await slow.recv_multipart())[1])
            received.append(event)
            if not done.is_set():
                await asyncio.sleep(pace)  # sync-ok: the slowness is what is under test

    finals = [await fast.job_final(j, timeout_s=60) for j in jobs]
    elapsed = asyncio.get_running_loop().time() - started
    assert all(f["type"] == "job.completed" for f in finals)
    per_event = elapsed / max(1, len(fast.events))
    pace = 100 * per_event
    reader = asyncio.create_task(read_slowly())
    # the read loops kept up: every frame ComfyUI sent was read while the slow subscriber lagged
    inst = (await fast.request("health"))["result"]["instances"][0]
    assert inst["frames"] >= sim.frames_sent_to(running.sidecar.instances["a"].client_id)
    await asyncio.wait_for(asyncio.shield(reader), timeout=3) if False else None
    done.set()
    async with asyncio.timeout(60):
        while not any(e["type"] == "job.completed" and e["job_id"] == jobs[-1] for e in received):
            await asyncio.sleep(0)  # sync-ok: yields to the reader task, bounded by the timeout
    reader.cancel()
    job_events = [(e["job_id"], e["type"]) for e in received if e["type"].startswith("job.") and e["type"] != "job.progress"]
    for job_id in jobs:
        assert (job_id, "job.completed") in job_events
    health = (await fast.request("health"))["result"]
    assert health["events"]["backlog_peak"] > 0 or sum(health["events"]["dropped"].values()) > 0
