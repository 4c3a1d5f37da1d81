"""The tracker tells the shell which file outputs to fetch: one plain flag read per frame."""

from __future__ import annotations

from sidecar.core.jobs import JobBook
from sidecar.core.sequence import Sequencer
from sidecar.core.tracker import InstanceTracker
from sidecar.protocol import comfy

IMAGES = {"images": [{"filename": "a.png", "subfolder": "", "type": "temp"}]}


def test_node_outputs_and_ends_raise_the_flag_until_the_shell_takes_them() -> None:
    """``wanted`` is set by an ``executed`` (outputs to fetch) or an end (history to read), and
    cleared once both lists were taken; a progress frame leaves it alone."""
    book = JobBook(Sequencer("r"))
    tracker = InstanceTracker("gpu0", book)
    job, _ = book.accept("j", "gpu0", {}, None, 1)
    tracker.submitted(job, "p", 0, {}, 2)
    tracker.feed(comfy.ExecutionStart(prompt_id="p"), 3)
    tracker.feed(comfy.Progress(value=1, max=2, prompt_id="p", node="1"), 4)
    assert tracker.wanted is False
    events = tracker.feed(comfy.Executed(node="9", output=IMAGES, prompt_id="p"), 5)
    assert [e.type for e in events][:1] == ["node.output"] and tracker.wanted is True
    tracker.feed(comfy.ExecutionSuccess(prompt_id="p"), 6)
    assert tracker.outputs_wanted() == [(job, "9", IMAGES)]
    assert tracker.wanted is True  # the history is still wanted
    assert tracker.history_wanted() == [job]
    assert tracker.wanted is False and tracker.outputs_wanted() == [] and tracker.history_wanted() == []
