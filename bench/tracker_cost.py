"""The pure tracker's cost per ComfyUI ``progress`` frame (no sockets, no event loop).

Feeds an :class:`~sidecar.core.tracker.InstanceTracker` decoded messages of text-to-image jobs
(loaders cached, the sampler reporting ``--steps`` steps, 1 ms apart on the fake clock) and
times ``tracker.feed`` of the ``progress`` frames: the part of the hot path that computes the
percentage and makes the ``node.progress`` and ``job.progress`` events. Best of ``--repeat``.
Runs against whichever ``sidecar`` package is first on ``PYTHONPATH`` (for before/after figures).

Usage: ``python bench/tracker_cost.py [--steps 1000] [--jobs 50] [--repeat 5]``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from sidecar.core.jobs import JobBook
from sidecar.core.sequence import Sequencer
from sidecar.core.tracker import InstanceTracker
from sidecar.protocol import comfy

WORKFLOW = json.loads((Path(__file__).resolve().parent.parent / "docs" / "examples" / "text-to-image.json").read_text())
MS = 1_000_000


def one_pass(steps: int, jobs: int) -> tuple[float, int]:
    """Seconds spent in feed() on progress frames, and how many job.progress events they made."""
    book = JobBook(Sequencer("bench"))
    tracker = InstanceTracker("gpu0", book)
    now = 1_000 * MS
    spent = 0.0
    published = 0
    for n in range(jobs):
        job, _ = book.accept(f"j{n}", "gpu0", WORKFLOW, None, now)
        pid = f"p{n}"
        tracker.submitted(job, pid, n, {}, now)
        tracker.feed(comfy.ExecutionStart(prompt_id=pid), now)
        tracker.feed(comfy.ExecutionCached(nodes=["4", "5", "6", "7"], prompt_id=pid), now)
        tracker.feed(comfy.Executing(node="3", prompt_id=pid), now)
        frames = [comfy.Progress(value=v, max=steps, prompt_id=pid, node="3") for v in range(1, steps + 1)]
        feed = tracker.feed
        for msg in frames:
            now += MS
            t0 = time.thread_time()
            events = feed(msg, now)
            spent += time.thread_time() - t0
            published += len(events) - 1
        for node in ("8", "9"):
            now += 10 * MS
            tracker.feed(comfy.Executing(node=node, prompt_id=pid), now)
        tracker.feed(comfy.Executed(node="9", output={"images": []}, prompt_id=pid), now)
        tracker.feed(comfy.ExecutionSuccess(prompt_id=pid), now)
        for wanted in tracker.history_wanted():
            tracker.finalize(wanted, None, now)
    return spent, published


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--jobs", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    results = [one_pass(args.steps, args.jobs) for _ in range(args.repeat)]
    best, published = min(results)
    frames = args.steps * args.jobs
    print(
        f"tracker.feed(progress): {1e6 * best / frames:.2f} us per frame (best of {args.repeat}, "
        f"{frames} frames, {published} job.progress events)"
    )


if __name__ == "__main__":
    main()
