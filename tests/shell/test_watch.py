"""`watch` and `demo`: the live view a person uses, as real processes."""

from __future__ import annotations

import asyncio
import signal
import sys

from sidecar.watch import Watcher

from .conftest import connected, probe_workflow, stop


def event(seq: int, type_: str, job_id: str | None, data: dict, run: str = "r1") -> dict:
    return {"seq": seq, "run": run, "ts": 0, "type": type_, "instance": "a", "job_id": job_id, "data": data}


def test_watcher_follows_events_and_asks_for_a_snapshot_when_the_run_changes():
    """Events after the snapshot update the job's line; older ones are dropped; a new run raises."""
    w = Watcher()
    w.load_snapshot(
        {
            "run": "r1",
            "seq": 10,
            "jobs": [{"job_id": "j", "instance": "a", "state": "queued", "percent": 0.0, "current_node": None}],
        }
    )
    assert w.feed(event(9, "job.started", "j", {"prompt_id": "p"})) is None  # already in the snapshot
    assert w.feed(event(11, "job.started", "j", {"prompt_id": "p"})).state == "started"
    assert w.feed(event(13, "node.executing", "j", {"node": "2", "class_type": "KSampler", "title": None})).node == (
        "KSampler"
    )
    assert w.feed(event(14, "job.progress", "j", {"percent": 42.5})).percent == 42.5
    line = w.feed(event(15, "job.completed", "j", {"prompt_id": "p", "outputs": {}}))
    assert line.state == "completed" and w.active == 0 and w.finished == 1
    assert line.text().split() == ["j", "[a]", "completed", "42.5%"]
    try:
        w.feed(event(1, "heartbeat", None, {}, run="r2"))
    except LookupError:
        pass
    else:
        raise AssertionError("a new run must ask for a snapshot")


def test_watcher_asks_for_a_snapshot_on_a_gap_in_a_jobs_job_seq():
    """The watcher skips previews, so seq has holes; a hole in a job's job_seq is a loss: it raises,
    and after the new snapshot a job the snapshot no longer lists is one to ask ``job`` about."""
    w = Watcher()
    snap = {"run": "r1", "seq": 10, "jobs": [{**VIEW, "job_seq": 2}]}
    w.load_snapshot(snap)
    started = {**event(14, "job.started", "j", {"prompt_id": "p"}), "job_seq": 3}
    assert w.feed(started).state == "started"  # seq 11-13 skipped (previews): no loss
    assert w.feed({**event(16, "job.progress", "j", {"percent": 5.0}), "job_seq": None}).percent == 5.0
    try:
        w.feed({**event(19, "job.completed", "j", {"prompt_id": "p", "outputs": {}}), "job_seq": 5})
    except LookupError as exc:
        assert "job_seq 5 after 3" in str(exc)
    else:
        raise AssertionError("a gap in job_seq must ask for a snapshot")
    assert w.unlisted({"run": "r1", "seq": 20, "jobs": []}) == ["j"]
    line = w.update({**VIEW, "state": "completed", "percent": 100.0, "job_seq": 5})
    assert (line.state, line.job_seq) == ("completed", 5) and w.active == 0


VIEW = {"job_id": "j", "instance": "a", "state": "queued", "percent": 0.0, "current_node": None}


async def test_watch_process_shows_a_job_to_its_end(sims, sidecars, client):
    """`comfy-bridge watch --until-idle` prints the job's progress and exits once it ended."""
    sim = await sims("0.12.1")
    running = await sidecars({"a": sim.url})
    c = await client(running)
    await connected(c, "a")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "sidecar",
        "watch",
        "--router",
        running.router,
        "--pub",
        running.pub,
        "--until-idle",
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(20):
            first = (await proc.stdout.readline()).decode()  # type: ignore[union-attr]
            assert first.startswith("watching "), first  # subscribed and snapshot taken: nothing is missed now
            await c.request("submit", job_id="watched", workflow=probe_workflow(steps=3))
            output = (await proc.stdout.read()).decode()  # type: ignore[union-attr]
            assert await proc.wait() == 0
    finally:
        await stop(proc)
    lines = [line for line in output.splitlines() if line.startswith("watched")]
    assert "queued" in lines[0] or "started" in lines[0]
    assert lines[-1].split()[2:4] == ["completed", "100.0%"]


async def test_demo_runs_sample_jobs_to_their_expected_end():
    """`comfy-bridge demo`: simulated instances, a sidecar and sample jobs, all in one command."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sidecar", "demo", "--step-ms", "5", stdout=asyncio.subprocess.PIPE
    )
    try:
        async with asyncio.timeout(60):
            output = (await proc.stdout.read()).decode()  # type: ignore[union-attr]
            assert await proc.wait() == 0, output
    finally:
        await stop(proc, signal.SIGKILL)
    assert "demo finished" in output
    assert "'demo-cancelled': 'cancelled'" in output and "'demo-1': 'completed'" in output


def test_a_watcher_started_after_a_restore_names_the_running_node_by_its_class():
    """Issue 11 (3): a job restored after a sidecar restart is first seen through a snapshot, whose
    JobView names the running node; ``current_class`` lets the line show its class, not ``#2``."""
    w = Watcher()
    w.load_snapshot({"run": "r1", "seq": 3, "jobs": [{**VIEW, "state": "started", "current_node": "2"}]})
    assert w.jobs["j"].node == "#2"  # an older sidecar's view: the id is all there is
    w.load_snapshot(
        {
            "run": "r1",
            "seq": 3,
            "jobs": [{**VIEW, "state": "started", "current_node": "2", "current_class": "KSampler"}],
        }
    )
    assert w.jobs["j"].node == "KSampler"


def test_a_jobview_names_the_class_of_its_running_node():
    """``current_class`` comes from the submitted workflow; nil when no node runs."""
    from sidecar.core.jobs import JobBook
    from sidecar.core.sequence import Sequencer

    book = JobBook(Sequencer("r"))
    job, _ = book.accept("j", "a", {"2": {"class_type": "KSampler", "inputs": {}}}, None, 0)
    assert job.view().current_class is None
    job.current_node = "2"
    assert job.view().current_class == "KSampler"


def test_watcher_shows_a_paused_job_and_follows_its_resume_to_another_instance():
    """job.paused shows the job ``paused`` (unfinished, its percentage kept); job.resumed moves its
    line to the instance it runs on now."""
    w = Watcher()
    w.load_snapshot({"run": "r1", "seq": 10, "instances": [{"name": "a", "state": "connected"}], "jobs": [VIEW]})
    w.feed(event(11, "job.progress", "j", {"percent": 40.0}))
    line = w.feed(event(12, "job.paused", "j", {"confirmed_by": "execution_interrupted", "percent": 40.0}))
    assert line.text().split() == ["j", "[a]", "paused", "40.0%"] and w.active == 1
    line = w.feed(event(13, "job.resumed", "j", {"instance": "b", "previous_instance": "a", "percent": 40.0}))
    assert (line.state, line.instance, line.percent) == ("accepted", "b", 40.0)
