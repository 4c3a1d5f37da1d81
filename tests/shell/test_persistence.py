"""Live jobs to stored rows and back: what a restart must not lose."""

from __future__ import annotations

from sidecar.core.jobs import JobBook
from sidecar.core.sequence import Sequencer
from sidecar.core.tracker import InstanceTracker
from sidecar.persistence import job_from_row, job_row
from sidecar.protocol import comfy
from sidecar.protocol.events import JobFailed
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
