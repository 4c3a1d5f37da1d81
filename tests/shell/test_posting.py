"""The outbox that posts held and lost jobs one at a time (sidecar/posting.py)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from sidecar.core.jobs import JobBook
from sidecar.core.sequence import Sequencer
from sidecar.posting import Outbox
from sidecar.protocol.wire import Event

WORKFLOW = {"1": {"class_type": "Probe", "inputs": {}}}


class FakeInstance:
    """What the outbox uses of an Instance; ``submit`` fails for the job ids in ``broken``."""

    name = "a"
    healthy = True

    def __init__(self, book: JobBook, broken: set[str]) -> None:
        self.book, self.broken = book, broken
        self.log = logging.getLogger("test.posting")
        self.posted: list[str] = []
        self.events: list[Event] = []
        self.tasks: list[asyncio.Task[Any]] = []

    def spawn(self, coro: Any) -> None:
        self.tasks.append(asyncio.get_running_loop().create_task(coro))

    def emit(self, events: list[Event]) -> None:
        self.events.extend(events)

    async def submit(self, job: Any, moved_from: Any = None) -> None:
        if job.job_id in self.broken:
            raise RuntimeError("a bug")
        self.posted.append(job.job_id)


async def test_a_job_whose_post_fails_unexpectedly_is_failed_and_the_others_still_go():
    """Nothing accepted is left unended: an unexpected error while posting one job ends it
    ``job.failed`` (``internal_error``), and the jobs after it are posted, oldest first."""
    book = JobBook(Sequencer("r"))
    jobs = [book.accept(f"j{n}", "a", WORKFLOW, None, n)[0] for n in range(3)]
    inst = FakeInstance(book, broken={"j1"})
    outbox = Outbox(inst)  # type: ignore[arg-type]
    outbox.add(list(reversed(jobs)))
    async with asyncio.timeout(5):
        await asyncio.gather(*inst.tasks)
    assert inst.posted == ["j0", "j2"]
    (failed,) = [e for e in inst.events if e.type == "job.failed"]
    assert failed.job_id == "j1" and failed.data.code == "internal_error"
    assert jobs[1].state == "failed"
