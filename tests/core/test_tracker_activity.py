"""``InstanceTracker.progress_ns``: when ComfyUI last showed work on its queue, from recorded traces.

The stalled-queue watchdog ends ``degraded`` only on progress: a message about a prompt (it
started, a node ran or progressed, a preview, an output, the end). A ``status`` broadcast, which
ComfyUI sends to every client whenever anyone's submission changes the queue, is not progress.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from sidecar.core.jobs import JobBook
from sidecar.core.sequence import Sequencer
from sidecar.core.tracker import InstanceTracker
from sidecar.protocol import comfy
from tests.tracesupport import frame_of, load, ns, trace_params

NOT_FED = (comfy.Unknown, comfy.Malformed, comfy.FeatureFlags)  # the shell handles these itself


@pytest.mark.parametrize("path", trace_params())
def test_every_message_about_a_prompt_stamps_progress_and_status_never_does(path: Path) -> None:
    """Fed every frame a client received, ``progress_ns`` moves to the frame's time for every
    message about a prompt (``progress_state`` included), and stays put for ``status``."""
    trackers: dict[str, InstanceTracker] = {}
    decoder = comfy.Decoder()
    book = JobBook(Sequencer("run-test"))
    fed = {"status": 0, "other": 0}
    for rec in load(path):
        if not (rec["src"] == "ws" and rec["dir"] == "recv"):
            continue
        tracker = trackers.setdefault(rec["client"], InstanceTracker(rec["client"], book))
        frame, is_text = frame_of(rec)
        msg = decoder.decode(frame, is_text=is_text)
        if isinstance(msg, NOT_FED):
            continue
        before, now = tracker.progress_ns, ns(rec["t"]) + 1
        tracker.feed(msg, now)
        if isinstance(msg, comfy.Status):
            fed["status"] += 1
            assert tracker.progress_ns == before, msg
        else:
            fed["other"] += 1
            assert tracker.progress_ns == now, msg
    assert fed["status"] + fed["other"], f"{path.name}: nothing was fed"
