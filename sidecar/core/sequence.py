"""The event sequence: one ``seq`` counter and a ``run`` id for the whole sidecar, and each job's ``job_seq``.

Pure: the clock value is passed in. Every event is made here, so ``seq`` grows by
exactly one per event in the order events are made; the shell publishes them in
that same order (Clone pattern, ZeroMQ guide).

``job_seq`` lets a subscriber that filters by topic (``job.`` only, say) detect its
own gaps, which ``seq`` cannot show it: each event of the ``job`` family about a job
takes that job's next count (1, 2, 3, ... in this run), kept on the job itself
(``Job.job_seq``, which its JobView reports), so the count lives exactly as long as
the job does. Every other event has ``job_seq`` nil.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from ..protocol.wire import Event, family_of

__all__ = ["Counted", "Sequencer"]


class Counted(Protocol):
    """What the sequencer needs of a job: its count of job-family events in this run."""

    job_seq: int


class Sequencer:
    __slots__ = ("run", "seq", "sidecar", "_jobs", "_job_types")

    def __init__(self, run: str, start: int = 0, sidecar: str = "") -> None:
        self.run = run
        self.seq = start
        self.sidecar = sidecar  # the sidecar's name, in every envelope (one str object, never rebuilt)
        self._jobs: Mapping[str, Counted] = {}
        self._job_types: dict[str, bool] = {}  # event type -> in the job family (cached per type)

    def count_jobs_in(self, jobs: Mapping[str, Counted]) -> None:
        """Keep ``job_seq`` on the jobs of ``jobs`` (the job book's own map, read at each event)."""
        self._jobs = jobs

    def event(self, type_: str, instance: str, job_id: str | None, data: Any, ts: int) -> Event:
        """The next event; ``seq`` is the last one made, and a job event's job has counted it."""
        self.seq += 1
        job_seq = None
        if job_id is not None:
            is_job = self._job_types.get(type_)
            if is_job is None:
                is_job = self._job_types[type_] = family_of(type_) == "job"
            if is_job:
                job = self._jobs.get(job_id)
                if job is not None:
                    job.job_seq += 1
                    job_seq = job.job_seq
        return Event(self.seq, self.run, ts, type_, instance, job_id, data, job_seq, self.sidecar)
