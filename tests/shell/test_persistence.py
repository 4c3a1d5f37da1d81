"""Live jobs to stored rows and back: what a restart must not lose."""

from __future__ import annotations

import msgspec

from sidecar.core.jobs import JobBook
from sidecar.core.sequence import Sequencer
from sidecar.core.tracker import InstanceTracker
from sidecar.persistence import job_from_row, job_row, progress_of, stored_position
from sidecar.protocol import comfy
from sidecar.protocol.events import JobFailed, StoredOutput
from sidecar.store import Store


def test_a_job_survives_the_round_trip_through_the_store(tmp_path):
    """State, prompt, outputs, error, attempts, the cancel request and the published percentage come back."""
    book = JobBook(Sequencer("r"))
    tracker = InstanceTracker("a", book)
    workflow = {
        "1": {"class_type": "KSampler", "inputs": {}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0]}},
    }
    job, _ = book.accept("j", "a", workflow, {"user": 1}, 1)
    job.attempts = 2
    tracker.submitted(job, "p", 4, {}, 2)
    tracker.feed(comfy.ExecutionStart("p"), 3)
    tracker.feed(comfy.Executing("1", "p"), 4)
    tracker.feed(comfy.Progress(5, 10, "p", "1"), 5)
    job.cancel_requested_ns = 6
    job.error = JobFailed(code="x", message="kept")
    store = Store(tmp_path / "s.sqlite3")
    store.open()
    try:
        store.save_job(job_row(job))
        assert store.flush()
        (row,) = store.load_jobs()
    finally:
        store.close()
    back = job_from_row(row)
    assert (back.state, back.prompt_id, back.number, back.attempts) == ("started", "p", 4, 2)
    assert back.client_data == {"user": 1} and back.workflow == workflow
    assert back.cancel_requested_ns == 6 and back.error == job.error
    fresh = InstanceTracker("a", JobBook(Sequencer("r2")))
    fresh.restore(back)
    assert back.plan.percent == job.plan.percent > 0  # job.progress never goes back after a restart
    # the cancel asked before the restart still counts: ComfyUI's interrupt ends the job cancelled
    fresh.feed(comfy.ExecutionInterrupted("p", node_id="1", node_type="KSampler"), 7)
    (ended,) = fresh.history_wanted()
    assert [e.type for e in fresh.finalize(ended, None, 8)] == ["job.cancelled"]


WORKFLOW = {
    "1": {"class_type": "EmptyImage", "inputs": {}},
    "2": {"class_type": "KSampler", "inputs": {"image": ["1", 0]}},
    "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0]}},
    "4": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
}


def _through_the_store(tmp_path, rows, progress=()):
    """Save ``rows`` (and then ``(job_id, percent, progress)`` updates), read every job back."""
    store = Store(tmp_path / "s.sqlite3")
    store.open()
    try:
        for row in rows:
            store.save_job(row)
        for update in progress:
            store.save_progress(*update)
        assert store.flush()
        return {row.job_id: row for row in store.load_jobs(unfinished_only=False)}
    finally:
        store.close()


def test_a_restored_job_counts_the_nodes_that_finished_and_never_publishes_below_what_was(tmp_path):
    """Issue 8: a job at 62.5 % (nodes 1 and 4 done, sampler 2 at half) when the sidecar stopped, restored
    by a fresh tracker: the same percent, current node and plan; the next progress frame goes on from there."""
    book = JobBook(Sequencer("r"))
    tracker = InstanceTracker("a", book, output_classes={"SaveImage", "PreviewImage"})
    job, _ = book.accept("j", "a", WORKFLOW, None, 1)
    tracker.submitted(job, "p", 1, {}, 2)
    row = job_row(job)  # saved at job.queued
    published = []
    for msg in [
        comfy.ExecutionStart("p"),
        comfy.Executing("1", "p"),
        comfy.Executing("4", "p"),
        comfy.Executing("2", "p"),
    ]:
        published += [e.data.percent for e in tracker.feed(msg, 3) if e.type == "job.progress"]
    at_node_start = (job.job_id, *progress_of(job))  # saved after node.executing "2"
    published += [e.data.percent for e in tracker.feed(comfy.Progress(5, 10, "p", "2"), 3) if e.type == "job.progress"]
    assert published == [25.0, 50.0, 62.5]
    graceful = (job.job_id, *progress_of(job))  # saved at a graceful stop
    for updates, floor in (([at_node_start], 50.0), ([at_node_start, graceful], 62.5)):
        back = job_from_row(_through_the_store(tmp_path / str(floor), [row], updates)["j"])
        fresh = InstanceTracker("a", JobBook(Sequencer("r2")))  # output classes unknown until connected
        fresh.restore(back)
        assert back.plan.percent == back.view().percent == floor and back.current_node == "2"
        assert back.plan.nodes() == job.plan.nodes()
        assert fresh.feed(comfy.Executing("2"), 4) == []  # the re-announcement, without prompt_id
        events = fresh.feed(comfy.Progress(6, 10, "p", "2"), 5)
        assert [e.data.percent for e in events if e.type == "job.progress"] == [65.0]


def test_a_row_of_an_older_sidecar_gets_a_plan_from_its_workflow(tmp_path):
    """No progress nodes stored (schema 1): the plan is rebuilt from the workflow, floored at the stored percent."""
    book = JobBook(Sequencer("r"))
    job, _ = book.accept("j", "a", WORKFLOW, None, 1)
    InstanceTracker("a", book).submitted(job, "p", 1, {}, 2)
    row = job_row(job)
    row.progress, row.percent = None, 30.0
    back = job_from_row(row)
    InstanceTracker("a", JobBook(Sequencer("r2"))).restore(back)
    assert back.plan.known and back.plan.percent == 30.0 and back.current_node is None


def test_a_finished_job_reads_back_with_the_percent_it_last_published(tmp_path):
    """Issue 8: `job` and a duplicate `submit` of a job finished in an earlier run show 100.0 when it
    completed, and its last value when it failed."""
    book = JobBook(Sequencer("r"))
    tracker = InstanceTracker("a", book)
    done, _ = book.accept("done", "a", WORKFLOW, None, 1)
    broken, _ = book.accept("broken", "a", WORKFLOW, None, 1)
    tracker.submitted(done, "p1", 1, {}, 2)
    tracker.submitted(broken, "p2", 2, {}, 2)
    tracker.feed(comfy.Executing("1", "p1"), 3)
    book.complete(done, {}, 4)
    tracker.feed(comfy.Executing("1", "p2"), 5)
    tracker.feed(comfy.Executing("4", "p2"), 5)
    book.fail(broken, JobFailed(code="execution_error", message="x"), 6)
    rows = _through_the_store(tmp_path, [job_row(done), job_row(broken)])
    assert job_from_row(rows["done"]).view().percent == 100.0
    assert job_from_row(rows["broken"]).view().percent == broken.plan.percent == 25.0


def test_a_jobs_stored_outputs_come_back_in_place(tmp_path):
    """Each `stored` entry is saved at its position (offered, then ended) and comes back with the job,
    equal, in order; an entry the state file holds in an unreadable shape comes back failed, in place."""
    book = JobBook(Sequencer("r"))
    job, _ = book.accept("j", "a", WORKFLOW, None, 1)
    kept = StoredOutput(node="4", filename="t.png", subfolder="", type="temp", state="pending", prompt_id="p")
    waiting = StoredOutput(node="3", filename="s.png", subfolder="x", type="output", state="pending", prompt_id="p")
    job.stored = [kept, waiting]
    store = Store(tmp_path / "s.sqlite3")
    store.open()
    try:
        store.save_job(job_row(job))
        for n, entry in enumerate(job.stored):
            assert stored_position(job, entry) == n
            store.save_output(job.job_id, n, entry)
        kept.state, kept.ref, kept.size_bytes, kept.sha256, kept.attempts = "stored", "/o/t.png", 9, "ab" * 32, 1
        store.save_output(job.job_id, 0, kept)
        assert stored_position(job, StoredOutput(**msgspec.structs.asdict(kept))) is None  # equal, not it
        store.save_output("j", 2, {"node": 4})  # not a StoredOutput
        assert store.flush()
        (row,) = store.load_jobs()
    finally:
        store.close()
    back = job_from_row(row)
    assert back.stored[:2] == [kept, waiting] and back.stored[0] is not kept
    assert back.stored[2].state == "failed" and "unreadable" in (back.stored[2].error or "")
