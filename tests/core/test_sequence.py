"""``sidecar.core.sequence``: ``seq`` over every event, ``job_seq`` per job over its job-family events."""

from __future__ import annotations

from collections import defaultdict

from sidecar.core.jobs import JobBook
from sidecar.core.sequence import Sequencer
from sidecar.core.tracker import InstanceTracker
from sidecar.persistence import job_from_row, job_row
from sidecar.protocol import comfy
from sidecar.protocol.events import JobFailed
from sidecar.protocol.wire import FAMILIES
from tests.core.replay import replay
from tests.tracesupport import trace_params

WORKFLOW = {
    "1": {"class_type": "EmptyImage", "inputs": {}},
    "2": {"class_type": "BridgeProbe", "inputs": {"image": ["1", 0]}},
    "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0]}},
}


def test_job_seq_counts_only_job_family_events_of_each_job_and_the_view_reports_it() -> None:
    """Two interleaved jobs: each job's job.* and node.output events count 1, 2, 3 ...; progress
    events and instance events have job_seq None; JobView.job_seq is the last count."""
    book = JobBook(Sequencer("run"))
    tracker = InstanceTracker("gpu-1", book)
    a, events = book.accept("a", "gpu-1", WORKFLOW, None, 0)
    b, more = book.accept("b", "gpu-1", WORKFLOW, None, 1)
    events += more + tracker.submitted(a, "PA", 1, {}, 2) + tracker.submitted(b, "PB", 2, {}, 3)
    events += tracker.feed(comfy.ExecutionStart("PA"), 4)
    events += tracker.feed(comfy.Executing(node="2", prompt_id="PA"), 5)
    events += tracker.feed(comfy.Progress(value=1, max=2, prompt_id="PA", node="2"), 6)
    events += tracker.feed(comfy.Executed(node="3", output={"images": []}, prompt_id="PA"), 7)
    events += book.fail(b, JobFailed(code="interrupted", message="stop"), 8)
    events += book.complete(a, {"3": {"images": []}}, 9)
    events.append(book.seq.event("instance.status", "gpu-1", None, {}, 10))

    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    counted: dict[str, list[int]] = defaultdict(list)
    for event in events:
        if FAMILIES[event.type] == "job":
            assert event.job_id is not None and event.job_seq is not None, event
            counted[event.job_id].append(event.job_seq)
        else:
            assert event.job_seq is None, event
    a_types = [e.type for e in events if e.job_id == "a" and e.job_seq is not None]
    assert a_types == ["job.accepted", "job.queued", "job.started", "node.output", "job.completed"]
    assert counted == {"a": [1, 2, 3, 4, 5], "b": [1, 2, 3]}
    assert a.view().job_seq == 5 and b.view().job_seq == 3
    assert any(e.type == "node.progress" for e in events) and any(e.type == "job.progress" for e in events)


def test_a_job_restored_in_a_new_run_counts_from_one_again() -> None:
    """job_seq is per run: a job saved by one run and restored by the next starts at 0, its
    next job event is job_seq 1, while seq is the new run's."""
    first = JobBook(Sequencer("run-1"))
    job, _ = first.accept("j", "gpu-1", WORKFLOW, None, 0)
    InstanceTracker("gpu-1", first).submitted(job, "P", 1, {}, 1)
    assert job.job_seq == 2
    restored = job_from_row(job_row(job))
    second = JobBook(Sequencer("run-2", start=0))
    second.restore(restored)
    assert restored.view().job_seq == 0
    (unconfirmed,) = second.cancel_unconfirmed(restored, 10.0, "interrupt", 2)
    assert (unconfirmed.run, unconfirmed.seq, unconfirmed.job_seq) == ("run-2", 1, 1)
    assert restored.view().job_seq == 1


def test_job_seq_is_contiguous_per_job_in_every_trace() -> None:
    """Replaying every recorded trace, every job's job-family events carry job_seq 1..N in seq
    order, and the job's view ends at N: a ``job.``-filtered subscriber can detect any gap."""
    jobs = 0
    for param in trace_params():
        run = replay(param.values[0])
        for tj in run.jobs:
            mine = [e for e in run.events_of(tj) if FAMILIES[e.type] == "job"]
            assert [e.job_seq for e in mine] == list(range(1, len(mine) + 1)), (param.id, tj.job.job_id)
            assert tj.job.view().job_seq == len(mine)
            assert all(e.job_seq is None for e in run.events_of(tj) if FAMILIES[e.type] != "job")
            jobs += 1
    assert jobs >= 10, jobs
