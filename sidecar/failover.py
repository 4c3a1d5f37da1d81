"""SHELL: a job never waits forever on a dead instance (issue 11).

:class:`Failover` looks at every instance each ``recovery.check_s`` (more often
for a short threshold). An instance unreachable for ``recovery.failover_after_s``
(counted from when the sidecar lost its connection, or from its first failed
attempt) is logged at WARNING once, and its unfinished jobs, oldest first, are:

- moved to the least-loaded other connected instance: the old instance's tracker
  forgets the prompt, the job's row is saved with its new instance, and it is
  posted there (``job.resubmitted`` with ``previous_instance`` and ``instance``,
  then ``job.queued``; its percentage never goes back: the plan keeps its floor);
- failed with code ``instance_down`` when no other instance is connected;
- cancelled (``confirmed_by: "sidecar"``) when a cancel was requested: the dead
  instance cannot confirm it and the client wanted it stopped; paused
  (``confirmed_by: "sidecar"``) when a pause was, for the same reason;
- ended as the socket said when its end was seen but its history could not be read.

Jobs held with ``queue_anyway`` stay held: the client asked to wait for that
instance. Paused jobs are on no instance (the sidecar holds them): ``resume`` places them.
A job whose ``POST /prompt`` is in flight is left to it (it fails with ``instance_unavailable``
or is queued, and is looked at again next time).

When the instance comes back, its resync removes the prompts of the jobs that left
it (:meth:`Recovery.resync`), so a moved job does not run twice there, unless the
instance ran it while the sidecar could not reach it (a network partition, a
frozen host): that cannot be undone. ``failover_after_s = 0`` never moves a job.

A job's input files (issue 10) go with it: :meth:`Instance.submit` uploads them to the new
instance before the ``POST /prompt`` there (:mod:`.inputs`); a failed upload fails the job
with ``upload_failed``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from .core.jobs import PAUSED, Job, JobBook
from .instance import Instance
from .protocol.events import JobCancelled, JobFailed

__all__ = ["WARN_AFTER_S", "Failover"]

logger = logging.getLogger(__name__)

WARN_AFTER_S = 30.0
"""With failover off (0), an instance down this long is still logged at WARNING once."""


class Failover:
    """Moves the jobs of instances unreachable for ``recovery.failover_after_s``."""

    def __init__(self, instances: dict[str, Instance], book: JobBook, persist: Callable[[Job], None]) -> None:
        self.instances = instances
        self.book = book
        self.persist = persist
        self.moved = 0  # jobs moved to another instance (metrics, health)
        self.failed = 0  # jobs failed with instance_down

    async def run(self) -> None:
        """Look every ``check_s`` (at most a quarter of the threshold) until cancelled."""
        while True:
            cfg = next(iter(self.instances.values())).config.recovery
            after = cfg.failover_after_s
            await asyncio.sleep(min(cfg.check_s, after / 4) if after > 0 else cfg.check_s)
            try:
                await self.check(time.time_ns())
            except asyncio.CancelledError:
                raise
            except Exception:  # the supervision boundary: log, go on
                logger.error("failover check failed", exc_info=True)

    async def check(self, now_ns: int) -> None:
        for inst in list(self.instances.values()):
            since = inst.down_since_ns
            if since is None:
                continue
            after = inst.config.recovery.failover_after_s
            down_s = (now_ns - since) / 1e9
            if down_s < (after or WARN_AFTER_S):
                continue
            jobs = self._jobs_of(inst) if after > 0 else []
            if not inst.down_warned:
                inst.down_warned = True
                inst.log.warning(
                    "%s unreachable for %.1f s (%s); %s",
                    inst.url,
                    down_s,
                    inst.last_error,
                    f"moving its {len(jobs)} unfinished jobs" if after > 0 else "failover is off",
                )
            for job in jobs:
                if inst.down_since_ns != since:
                    return  # it came back meanwhile: its jobs stay
                if job.active and job.state != PAUSED and job.instance == inst.name and not job.posting:
                    await self._move(inst, job, down_s)

    # Private

    def _jobs_of(self, inst: Instance) -> list[Job]:
        jobs = [
            job
            for job in self.book
            if job.instance == inst.name and job.active and job.state != PAUSED and not job.posting
        ]
        waiting = [job for job in inst.held if not job.maybe_posted and job.cancel_requested_ns is None]
        return sorted((job for job in jobs if job not in waiting), key=lambda job: job.created_ns)

    def _target(self, old: Instance) -> Instance | None:
        healthy = [inst for inst in self.instances.values() if inst is not old and inst.healthy]
        return min(healthy, key=lambda inst: inst.load()) if healthy else None

    async def _move(self, old: Instance, job: Job, down_s: float) -> None:
        now = time.time_ns()
        if job in old.held:
            old.held.remove(job)
        old.recovery.forget(job)
        if job.ending is not None:  # its end was seen; its history cannot be read
            old.log.info("job %s ended on the socket; ending it so (%s stays unreachable)", job.job_id, old.name)
            old.emit(old.tracker.finalize(job, None, now))
            return
        if job.cancel_requested_ns is not None:
            old.log.info("job %s was being cancelled; %s cannot confirm it: cancelled", job.job_id, old.name)
            old.emit(self.book.cancel(job, JobCancelled(confirmed_by="sidecar"), now))
            return
        if job.pause_requested_ns is not None:
            old.log.info("job %s was being paused; %s cannot confirm it: paused", job.job_id, old.name)
            old.emit(old.tracker.paused_in_queue(job, now, by="sidecar"))
            return
        target = self._target(old)
        if target is None:
            self.failed += 1
            failure = JobFailed(
                code="instance_down",
                message=f"instance {old.name!r} unreachable for {down_s:.1f} s and no other instance is connected",
                prompt_id=job.prompt_id,
                details={
                    "instance": old.name,
                    "down_s": round(down_s, 3),
                    "instances": {name: inst.state for name, inst in self.instances.items()},
                },
            )
            old.emit(self.book.fail(job, failure, now))
            return
        # No await from here to the upload and POST: a returning instance's resync sees the job elsewhere.
        previous = old.tracker.resubmitting(job)
        job.maybe_posted = False  # the new instance never had it
        job.instance = target.name
        self.persist(job)  # a restart from here follows the job on its new instance
        self.moved += 1
        old.log.warning(
            "moving job %s to instance %s (%s unreachable for %.1f s)", job.job_id, target.name, old.name, down_s
        )
        await target.submit(job, moved_from=(old.name, previous))
