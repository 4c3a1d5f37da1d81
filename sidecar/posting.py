"""SHELL: the jobs an instance posts on its own, one at a time, oldest first (issue 11).

Held jobs released at a connect and jobs ComfyUI lost (resubmitted after a resync)
used to be posted by one task each: their ``POST /prompt`` calls reached ComfyUI in
any order, and a later job could run first. :class:`Outbox` posts them from a single
task per instance, each POST after the previous answer, the job accepted first going
first, across batches. While the instance is not connected the rest waits: the next
connect resumes it, or failover moves the jobs (:mod:`.failover`).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from .core.jobs import PAUSED, Job
from .protocol.events import JobFailed

if TYPE_CHECKING:
    from .instance import Instance

__all__ = ["Outbox"]


class Outbox:
    """Jobs waiting to be posted to one :class:`~sidecar.instance.Instance`."""

    def __init__(self, inst: Instance) -> None:
        self.inst = inst
        #: job id -> (job, whether it is resubmitted, the prompt id ComfyUI lost)
        self._jobs: dict[str, tuple[Job, bool, str | None]] = {}
        self._posting = False

    def add(self, jobs: list[Job], lost: dict[str, str | None] | None = None) -> None:
        """Queue ``jobs`` (``lost``: job id -> the prompt id ComfyUI lost, for jobs resubmitted, with
        ``job.resubmitted``), and start posting unless a task already does."""
        for job in jobs:
            resubmit = lost is not None and job.job_id in lost
            self._jobs[job.job_id] = (job, resubmit, lost.get(job.job_id) if lost is not None else None)
        if self._jobs and not self._posting:
            self._posting = True
            self.inst.spawn(self._post())

    def discard(self, job: Job) -> None:
        """Do not post ``job`` (paused while it waited here)."""
        self._jobs.pop(job.job_id, None)

    async def _post(self) -> None:
        inst = self.inst
        try:
            while self._jobs and inst.healthy:  # the rest waits for the next connect (or failover)
                job_id = min(self._jobs, key=lambda key: self._jobs[key][0].created_ns)
                job, resubmit, previous = self._jobs.pop(job_id)
                if not job.active or job.state == PAUSED or job.instance != inst.name:
                    continue  # ended, paused, or moved by failover, meanwhile
                try:
                    if job.maybe_posted:
                        await inst.recovery.find_or_submit(job)
                    elif job.cancel_requested_ns is not None and job.prompt_id is None:
                        inst.emit(inst.tracker.cancelled_in_queue(job, time.time_ns()))  # cancelled while waiting
                    elif resubmit:
                        await inst.submit(job, moved_from=(inst.name, previous))
                    else:
                        await inst.submit(job)
                except Exception:  # one job's failure must not hold back the others, nor leave it unended
                    inst.log.error("submitting job %s failed", job.job_id, exc_info=True)
                    failure = JobFailed(
                        code="internal_error",
                        message=f"the sidecar failed to post job {job.job_id} (see its log)",
                        prompt_id=job.prompt_id,
                    )
                    inst.emit(inst.book.fail(job, failure, time.time_ns()))
        finally:
            self._posting = False
