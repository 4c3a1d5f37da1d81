"""Subscribers, as docs/PROTOCOL.md §2 and §7 promise them: a stalled one costs only itself,
recovers through ``snapshot``, and a ``job.``-filtered one detects its gaps with ``job_seq``.

Real TCP ZeroMQ sockets to a sidecar and a simulated ComfyUI on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import Any

import msgspec
import zmq
import zmq.asyncio

from sidecar.mirror import Mirror
from sidecar.protocol.wire import FAMILIES

from .conftest import WAIT_S, Client, connected, probe_workflow


def assert_gapless(events: list[dict[str, Any]]) -> None:
    """One run, and every ``seq`` from the first received to the last: nothing was lost."""
    seqs = [e["seq"] for e in events]
    assert {e["run"] for e in events} == {events[0]["run"]}
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "the reading subscriber lost events"


async def stalled_subscriber(zctx: zmq.asyncio.Context, pub: str) -> tuple[zmq.asyncio.Socket, dict[str, Any]]:
    """A SUB to everything, with tiny buffers, that has received one event (so it is subscribed)
    and then reads no more until the test says so."""
    sub = zctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.RCVHWM, 5)
    sub.setsockopt(zmq.RCVBUF, 4096)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(pub)
    async with asyncio.timeout(WAIT_S):
        first = msgspec.msgpack.decode((await sub.recv_multipart())[1])
    return sub, first


async def test_a_stalled_subscriber_costs_only_itself_and_rebuilds_the_exact_state_through_snapshot(
    sims, sidecars, client, zctx
):
    """One subscriber stops reading while jobs run: the reading subscriber still receives every
    event, in seq order, with no gap; the sidecar keeps no backlog. The stalled one, resumed,
    finds a gap in seq, snapshots, and its job views then equal what ``job`` returns, both right
    after the snapshot and after following the jobs' events to their end."""
    sim = await sims("0.12.1", step_ms=1)
    # small per-subscriber queues, so the stalled subscriber overflows within the burst (over 1,000
    # events) while the reading one, in this same event loop, has room for its pauses
    running = await sidecars({"a": sim.url}, zmq_options={"pub_hwm": 300, "pub_sndbuf_bytes": 4096})
    reader = await client(running)
    await connected(reader, "a")
    stalled, first = await stalled_subscriber(zctx, running.pub)
    try:
        # The burst: three jobs, about 1,500 events, while the stalled subscriber reads nothing.
        burst = [f"burst-{n}" for n in range(3)]
        for job_id in burst:
            assert (await reader.request("submit", job_id=job_id, workflow=probe_workflow(steps=150, step_ms=1)))["ok"]
        for job_id in burst:
            assert (await reader.job_final(job_id, timeout_s=30))["type"] == "job.completed"
        # Two more jobs stay queued (the worker is paused): a state that holds still.
        sim.pause_worker()
        held = ["held-0", "held-1"]
        for job_id in held:
            assert (await reader.request("submit", job_id=job_id, workflow=probe_workflow(steps=20, step_ms=5)))["ok"]
        await reader.wait_for(lambda e: e["type"] == "job.queued" and e["job_id"] == held[-1])
        burst_events = sum(1 for e in reader.events if e["job_id"] in burst)
        assert burst_events > 1000, burst_events
        health = (await reader.request("health"))["result"]["events"]
        assert health["backlog"] == 0 and health["backlog_peak"] == 0 and health["dropped"] == {}, health

        # The stalled subscriber resumes: its old buffer, then a gap in seq.
        mirror = Mirror()
        received = [first]
        expected = first["seq"] + 1
        async with asyncio.timeout(WAIT_S):
            while True:
                event = msgspec.msgpack.decode((await stalled.recv_multipart())[1])
                received.append(event)
                if event["seq"] != expected:
                    break
                expected += 1
        assert event["seq"] > expected, "a gap, not a step back"
        assert len(received) < burst_events, "the stalled subscriber received everything: it was not stalled"
        seen_jobs = {e["job_id"] for e in received if e["job_id"]}

        # §7.2 steps 3-5: snapshot (events keep arriving meanwhile: buffered), then reconcile.
        snapshot = (await reader.request("snapshot"))["result"]
        mirror.load(snapshot)
        assert sorted(mirror.jobs) == held
        for job_id in held:
            assert mirror.jobs[job_id] == (await reader.request("job", job_id=job_id))["result"]
            assert mirror.jobs[job_id]["job_seq"] == 2  # job.accepted, job.queued
        for job_id in seen_jobs - set(mirror.jobs):  # jobs it was following that ended meanwhile
            assert (await reader.request("job", job_id=job_id))["result"]["state"] == "completed"

        # §7.2 step 6: follow the held jobs to their end, event by event, with no gap.
        pending = [event]
        sim.resume_worker()
        async with asyncio.timeout(30):
            while mirror.ended != set(held):
                if not pending:
                    pending.append(msgspec.msgpack.decode((await stalled.recv_multipart())[1]))
                assert mirror.apply(pending.pop(0)), "a gap while the subscriber was reading"
        for job_id in held:
            truth = (await reader.request("job", job_id=job_id))["result"]
            assert truth["state"] == "completed" and truth["job_seq"] > 3
            assert mirror.jobs[job_id] == truth
    finally:
        stalled.close(linger=0)
    # The reading subscriber lost nothing, from its first event to its last.
    await reader.job_final(held[-1])
    assert_gapless(reader.events)


async def test_a_job_filtered_subscriber_sees_contiguous_job_seq_and_views_agree(sims, sidecars, client, zctx):
    """A subscriber to ``job.`` only: each job's events carry job_seq 1, 2, 3 ... with no hole,
    while its seq values have holes by design; a snapshot taken mid-job reports, per job, exactly
    the job_seq of the last job event with seq <= the snapshot's seq; ``job`` reports the last."""
    sim = await sims("0.12.1", step_ms=5)
    running = await sidecars({"a": sim.url})
    c = await client(running)
    await connected(c, "a")
    only_jobs = Client(zctx, running.router, running.pub, topics=(b"job.",))
    try:
        # subscribed once a job event arrives: a throwaway job proves it
        await c.request("submit", job_id="warm-up", workflow=probe_workflow(steps=2, step_ms=1))
        await only_jobs.wait_for(lambda e: e["job_id"] == "warm-up" and e["type"] == "job.completed")
        jobs = ["filtered-0", "filtered-1"]
        for job_id in jobs:
            assert (await c.request("submit", job_id=job_id, workflow=probe_workflow(steps=30, step_ms=5)))["ok"]
        await c.wait_for(lambda e: e["type"] == "node.progress" and e["job_id"] == jobs[0])
        snapshot = (await c.request("snapshot"))["result"]
        finals = [await only_jobs.job_final(job_id) for job_id in jobs]
    finally:
        await only_jobs.close()
    assert {f["type"] for f in finals} == {"job.completed"}
    by_job: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for event in only_jobs.events:
        assert FAMILIES[event["type"]] == "job", event
        by_job[event["job_id"]].append(event)
    seqs = [e["seq"] for e in only_jobs.events]
    assert seqs == sorted(seqs) and seqs != list(range(seqs[0], seqs[0] + len(seqs))), "seq has holes by design"
    in_snapshot = {view["job_id"]: view for view in snapshot["jobs"]}
    assert jobs[0] in in_snapshot
    for job_id in jobs:
        mine = by_job[job_id]
        assert [e["job_seq"] for e in mine] == list(range(1, len(mine) + 1)), job_id
        assert sum(e["type"] == "node.output" for e in mine) >= 2
        assert (await c.request("job", job_id=job_id))["result"]["job_seq"] == len(mine)
        if job_id in in_snapshot:
            reflected = [e["job_seq"] for e in mine if e["seq"] <= snapshot["seq"]]
            assert in_snapshot[job_id]["job_seq"] == reflected[-1]
    # the full subscriber agrees, and sees job_seq nil on every other event
    for event in c.events:
        if FAMILIES[event["type"]] == "job":
            assert isinstance(event["job_seq"], int), event
        else:
            assert event["job_seq"] is None, event
