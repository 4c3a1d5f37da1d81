"""``sidecar.core.jobs`` edge cases the recorded traces do not reach."""

from __future__ import annotations

import gc
import tracemalloc
from typing import Any

from sidecar.core import early
from sidecar.core.jobs import KEEP_FINISHED, KEEP_FULL, Job, JobBook
from sidecar.core.sequence import Sequencer
from sidecar.core.tracker import InstanceTracker
from sidecar.protocol import comfy
from sidecar.protocol.events import JobFailed

WORKFLOW = {
    "1": {"class_type": "EmptyImage", "inputs": {}},
    "2": {"class_type": "BridgeProbe", "inputs": {"image": ["1", 0]}},
    "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0]}},
}


def _tracker() -> tuple[JobBook, InstanceTracker]:
    book = JobBook(Sequencer("run"))
    return book, InstanceTracker("gpu-1", book)


def test_a_late_post_answer_does_not_steal_the_running_prompt_from_type1_previews() -> None:
    """Replaying an earlier prompt's buffered messages keeps type-1 previews with the prompt running now."""
    book, tracker = _tracker()
    early, _ = book.accept("early", "gpu-1", WORKFLOW, None, 0)
    now, _ = book.accept("now", "gpu-1", WORKFLOW, None, 0)
    tracker.submitted(now, "P2", 2, {}, 1)
    for msg in [
        comfy.ExecutionStart("P1"),
        comfy.Executing("1", "P1"),
        comfy.Executing(None, "P1"),
        comfy.ExecutionStart("P2"),
        comfy.Executing("2", "P2"),
    ]:
        tracker.feed(msg, 2)
    tracker.submitted(early, "P1", 1, {}, 3)  # P1's HTTP answer arrives after P1 ended
    events = tracker.feed(comfy.PreviewImage("jpeg", memoryview(b"\xff\xd8")), 4)
    assert [(e.type, e.job_id, e.data.node) for e in events] == [("preview", "now", "2")]
    assert tracker.running_prompt == "P2"


def test_orphan_buffer_is_bounded_in_prompts_and_messages() -> None:
    """Messages of unknown prompts are kept for at most ORPHAN_PROMPTS prompts and ORPHAN_MESSAGES each."""
    book, tracker = _tracker()
    for n in range(early.ORPHAN_PROMPTS + 5):
        tracker.feed(comfy.ExecutionStart(f"P{n}"), n)
    for _ in range(early.ORPHAN_MESSAGES + 10):
        tracker.feed(comfy.Progress(1, 2, prompt_id="P-last", node="2"), 100)
    job, _ = book.accept("j", "gpu-1", WORKFLOW, None, 0)
    events = tracker.submitted(job, "P-last", 1, {}, 101)
    assert [e.type for e in events].count("node.progress") == early.ORPHAN_MESSAGES
    oldest, _ = book.accept("k", "gpu-1", WORKFLOW, None, 0)
    assert [e.type for e in tracker.submitted(oldest, "P0", 1, {}, 102)] == ["job.queued"]


def test_orphans_older_than_the_ttl_are_dropped() -> None:
    """A prompt's early messages expire after ORPHAN_TTL_NS once another prompt is buffered."""
    book, tracker = _tracker()
    tracker.feed(comfy.ExecutionStart("old"), 0)
    tracker.feed(comfy.ExecutionStart("new"), early.ORPHAN_TTL_NS + 1)
    job, _ = book.accept("j", "gpu-1", WORKFLOW, None, 0)
    assert [e.type for e in tracker.submitted(job, "old", 1, {}, early.ORPHAN_TTL_NS + 2)] == ["job.queued"]


def test_final_states_are_final() -> None:
    """Failing or completing a finished job publishes nothing more."""
    book, tracker = _tracker()
    job, _ = book.accept("j", "gpu-1", WORKFLOW, {"k": 1}, 0)
    tracker.submitted(job, "P", 1, {}, 1)
    failed = book.fail(job, JobFailed(code="interrupted", message="stop"), 2)
    assert [e.type for e in failed] == ["job.failed"]
    assert failed[0].data.prompt_id == "P" and failed[0].data.client_data == {"k": 1}
    assert book.fail(job, JobFailed(code="x", message="y"), 3) == []
    assert book.complete(job, {}, 4) == []
    assert tracker.feed(comfy.ExecutionSuccess("P"), 5) == [] and tracker.history_wanted() == []


def test_finished_jobs_beyond_keep_finished_are_forgotten_oldest_first() -> None:
    """The book keeps the views of at most ``keep_finished`` finished jobs, the newest."""
    book = JobBook(Sequencer("run"), keep_finished=2, keep_full=1)
    for n in range(4):
        job, _ = book.accept(f"j{n}", "gpu-1", WORKFLOW, None, n)
        book.complete(job, {}, n)
    assert [v.job_id for v in book.views()] == ["j2", "j3"]
    assert book.view("j0") is None and book.view("j1") is None
    assert book.view("j2") is not None and book.view("j2").state == "completed"


def test_a_resubmitted_job_is_queued_and_started_once_per_prompt() -> None:
    """Issue 8 (11): a job ComfyUI lost goes back to accepted (PROTOCOL.md §6.3); its new prompt gets
    one job.queued and one job.started, as the first did, and its percentage does not go back."""
    book, tracker = _tracker()
    job, events = book.accept("j", "gpu-1", WORKFLOW, None, 0)
    job.attempts = 1
    events += tracker.submitted(job, "P1", 1, {}, 1)
    for msg in [comfy.ExecutionStart("P1"), comfy.Executing("1", "P1"), comfy.Executing("2", "P1")]:
        events += tracker.feed(msg, 2)
    events += tracker.resume_running(job, 3)  # a resync that finds it running: no second start
    before = job.plan.percent
    previous = tracker.resubmitting(job)  # ComfyUI restarted and lost P1
    assert (job.state, job.prompt_id, previous) == ("accepted", None, "P1")
    assert not job.plan.known and job.plan.percent == before  # saved now, a restart rebuilds its plan
    job.attempts = 2
    events += tracker.submitted(job, "P2", 1, {}, 4, previous_prompt_id=previous)
    for msg in [comfy.ExecutionStart("P2"), comfy.ExecutionStart("P2"), comfy.Executing("1", "P2")]:
        events += tracker.feed(msg, 5)
    events += tracker.resume_running(job, 6)
    life = [(e.type, getattr(e.data, "prompt_id", None)) for e in events if e.type.startswith("job.")]
    assert [t for t in life if t[0] != "job.progress"] == [
        ("job.accepted", None),
        ("job.queued", "P1"),
        ("job.started", "P1"),
        ("job.resubmitted", "P2"),
        ("job.queued", "P2"),
        ("job.started", "P2"),
    ]
    assert job.state == "started" and job.plan.percent == before


def _big_workflow(n: int) -> dict[str, Any]:
    """About the size of a real UI export: 40 nodes with titles and prompt text."""
    return {
        str(i): {
            "class_type": "CLIPTextEncode",
            "inputs": {"text": f"job {n} node {i}: " + "a lighthouse at dusk, volumetric light " * 3, "clip": ["1", 1]},
            "_meta": {"title": f"Prompt {i}"},
        }
        for i in range(40)
    }


def test_the_book_keeps_only_a_few_finished_jobs_whole() -> None:
    """After many finished jobs the book holds KEEP_FULL of them whole; the others are light views."""
    book = JobBook(Sequencer("run"))
    jobs = []
    for n in range(300):
        job, _ = book.accept(f"j{n}", "gpu-1", _big_workflow(n), {"n": n}, n)
        book.complete(job, {"3": {"images": [{"filename": f"{n}.png"}]}}, n)
        jobs.append(job)
    whole = list(book)
    assert len(whole) <= KEEP_FULL and {j.job_id for j in whole} == {f"j{n}" for n in range(300 - KEEP_FULL, 300)}
    old = book.view("j100")
    assert old is not None and old.state == "completed" and old.client_data == {"n": 100}
    assert old.outputs == {"3": {"images": [{"filename": "100.png"}]}}
    assert book.get("j100") is None  # not whole any more
    assert len(book.views()) == KEEP_FINISHED and book.view(f"j{299 - KEEP_FINISHED}") is None


def test_memory_of_the_book_stays_flat_over_many_finished_jobs() -> None:
    """Once full, the book's memory does not grow with more finished jobs (workflows are not kept)."""

    def run(start: int, count: int) -> None:
        for n in range(start, start + count):
            job, _ = book.accept(f"j{n}", "gpu-1", _big_workflow(n), None, n)
            book.complete(job, {"3": {"images": [{"filename": f"{n}.png"}]}}, n)

    book = JobBook(Sequencer("run"))
    tracemalloc.start()
    try:
        run(0, 300)  # the bounds are reached
        gc.collect()
        before = tracemalloc.get_traced_memory()[0]
        run(300, 600)
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 64 * 1024, f"the book grew by {grown} bytes over 600 finished jobs"


def test_a_finished_job_read_back_from_the_store_is_kept_light_and_bounded() -> None:
    """``remember`` keeps a view (never the workflow) and counts towards ``keep_finished``."""
    book = JobBook(Sequencer("run"), keep_finished=3, keep_full=1)
    for n in range(5):
        job = Job(f"old{n}", "gpu-1", _big_workflow(n), None, n)
        job.state = "completed"
        book.remember(job)
    assert list(book) == [] and [v.job_id for v in book.views()] == ["old3", "old4"]
