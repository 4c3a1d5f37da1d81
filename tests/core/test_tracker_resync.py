"""``InstanceTracker`` where frames were missed or carry no prompt id, driven by recorded 0.12.1 traces.

- ``progress_state`` restores the node state of a prompt the tracker was told to resync
  (:meth:`InstanceTracker.want_state`), and is ignored otherwise;
- an ``executing`` null that no terminal message preceded leaves the outcome to history
  on servers that announce success;
- progress text (binary type 3; no trace records one, so it is inserted as ComfyUI frames
  it, with the simulator's encoder) becomes ``node.text`` of the running prompt's job.
"""

from __future__ import annotations

from typing import Any

from sidecar.core.jobs import Job, JobBook
from sidecar.core.sequence import Sequencer
from sidecar.core.tracker import InstanceTracker
from sidecar.protocol import comfy
from sidecar.protocol.events import JobFailed
from sidecar.protocol.wire import Event
from sidecar.simulator.hub import encode_text
from tests.tracesupport import TRACES, frame_of, history_entry, load, prompt_posts, ws_recv

SUCCESS_TRACE = TRACES / "0.12.1" / "01-success-featureflags.jsonl"
ERROR_TRACE = TRACES / "0.12.1" / "05-runtime-error.jsonl"


def _frames(records: tuple[dict[str, Any], ...], client: str) -> list[bytes]:
    return [frame_of(rec)[0] for _, rec in ws_recv(records) if rec["client"] == client]


def _posted(records: tuple[dict[str, Any], ...]) -> tuple[dict[str, Any], str]:
    ((_, post),) = prompt_posts(records)[:1]
    return post, post["response"]["prompt_id"]


def _tracker(announces_success: bool = True) -> tuple[InstanceTracker, JobBook]:
    book = JobBook(Sequencer("run-test"))
    tracker = InstanceTracker("a", book)
    tracker.announces_success = announces_success
    return tracker, book


def _restored(records: tuple[dict[str, Any], ...], tracker: InstanceTracker, book: JobBook) -> Job:
    """The trace's job as a restarted sidecar has it: restored from the store, started, prompt known."""
    post, prompt_id = _posted(records)
    job, _ = book.accept("job-1", "a", post["request"]["prompt"], None, 0)
    job.prompt_id, job.state = prompt_id, "started"
    tracker.restore(job)
    return job


def _feed(tracker: InstanceTracker, decoder: comfy.Decoder, frames: list[bytes]) -> list[Event]:
    events: list[Event] = []
    for frame in frames:
        events += tracker.feed(decoder.decode(frame), 5)
    return events


def _missed_until_step(frames: list[bytes], step: int) -> list[bytes]:
    """The frames from the ``progress`` of ``step`` on: what a sidecar started mid-node sees."""
    decoder = comfy.Decoder()
    for i, frame in enumerate(frames):
        msg = decoder.decode(frame)
        if isinstance(msg, comfy.Progress) and msg.value == step:
            return frames[i + 1 :]
    raise AssertionError(f"no progress step {step} in the trace")


def test_progress_state_restores_finished_nodes_of_a_prompt_that_wants_it() -> None:
    """A sidecar that missed nodes 1 and 4 counts them done from the next progress_state."""
    records = load(SUCCESS_TRACE)
    later = _missed_until_step(_frames(records, "A"), 3)
    percents = {}
    for wanted in (False, True):
        tracker, book = _tracker()
        job = _restored(records, tracker, book)
        if wanted:
            tracker.want_state(job)
        assert tracker.state_wanted is wanted
        events = _feed(tracker, comfy.Decoder(), later[:2])  # progress_state, then the type-4 preview
        percents[wanted] = [e.data.percent for e in events if e.type == "job.progress"]
        assert tracker.state_wanted is False
    assert percents[False] == []  # node 2's fraction alone: 3 of 8 steps of one node of five
    # the next progress_state (sent before step 4's preview): nodes 1 and 4 finished, node 2 at 4 of 8
    assert percents[True] == [50.0]  # (2 + 4/8) / 5


def test_progress_state_of_a_prompt_not_wanted_changes_nothing() -> None:
    """Followed live, progress_state adds nothing: same events with and without it."""
    records = load(SUCCESS_TRACE)
    frames = _frames(records, "A")
    post, prompt_id = _posted(records)
    runs = []
    for keep in (True, False):
        tracker, book = _tracker()
        job, _ = book.accept("job-1", "a", post["request"]["prompt"], None, 0)
        events = tracker.submitted(job, prompt_id, 0, {}, 1)
        decoder = comfy.Decoder()
        for frame in frames:
            msg = decoder.decode(frame)
            if keep or not isinstance(msg, comfy.ProgressState):
                events += tracker.feed(msg, 5)
        runs.append([(e.type, e.data) for e in events])
    assert runs[0] == runs[1]


def test_wants_of_prompts_that_ended_are_dropped_at_the_next_progress_state() -> None:
    """A wanted prompt that ended before its state came stops the decoding of progress_state."""
    records = load(SUCCESS_TRACE)
    tracker, book = _tracker()
    job = _restored(records, tracker, book)
    tracker.want_state(job)
    tracker.lost(job, JobFailed(code="lost_on_restart", message="lost"), 3)
    state = next(m for f in _frames(records, "A") if isinstance(m := comfy.Decoder().decode(f), comfy.ProgressState))
    assert tracker.state_wanted is True
    assert tracker.feed(state, 4) == []
    assert tracker.state_wanted is False


def _error_run(announces_success: bool) -> list[Event]:
    """Trace 05 with its execution_error frame missed: only the bare ``executing`` null says it ended."""
    records = load(ERROR_TRACE)
    tracker, book = _tracker(announces_success)
    post, prompt_id = _posted(records)
    job, events = book.accept("job-1", "a", post["request"]["prompt"], None, 0)
    events += tracker.submitted(job, prompt_id, 0, {}, 1)
    decoder = comfy.Decoder()
    for frame in _frames(records, "A"):
        msg = decoder.decode(frame)
        if not isinstance(msg, comfy.ExecutionError):
            events += tracker.feed(msg, 5)
    (ended,) = tracker.history_wanted()
    return events + tracker.finalize(ended, history_entry(records, prompt_id), 6)


def test_a_bare_executing_null_leaves_the_outcome_to_history_when_the_server_announces_success() -> None:
    """v0.0.3 on, success is announced: a missed execution_error is found in history, not taken for success."""
    assert _error_run(announces_success=True)[-1].type == "job.failed"
    assert _error_run(announces_success=True)[-1].data.code == "execution_error"
    # a server that never announces success (0.0.2): executing null is its success signal, as before
    assert _error_run(announces_success=False)[-1].type == "job.completed"


def test_progress_text_is_published_as_node_text_of_the_running_job() -> None:
    """Binary type 3 (node id, text; no prompt id) while the job's node 2 runs: node.text for that job."""
    records = load(SUCCESS_TRACE)
    frames = _frames(records, "A")
    post, prompt_id = _posted(records)
    tracker, book = _tracker()
    job, _ = book.accept("job-1", "a", post["request"]["prompt"], None, 0)
    tracker.submitted(job, prompt_id, 0, {}, 1)
    decoder = comfy.Decoder()
    text = encode_text("2", "étape 3/8\nok")
    events: list[Event] = []
    for frame in frames:
        msg = decoder.decode(frame)
        events += tracker.feed(msg, 5)
        if isinstance(msg, comfy.Progress) and msg.value == 3:
            events += tracker.feed(decoder.decode(text), 6)
    texts = [e for e in events if e.type == "node.text"]
    assert [(e.job_id, e.data.node, e.data.text, e.ts) for e in texts] == [("job-1", "2", "étape 3/8\nok", 6)]
    # after the prompt ended, nobody's job runs: the text of another client's prompt is dropped
    assert tracker.feed(decoder.decode(text), 7) == []
