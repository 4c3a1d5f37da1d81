"""SHELL: pausing a job and resuming it (issue 10, section 3).

ComfyUI has no pause. The sidecar stops the job's prompt exactly as a ``cancel`` does
(:mod:`.cancelling`: a queued prompt is removed from ComfyUI's queue and never
interrupted; a running one gets the per-job cancel, a targeted interrupt, or a global
interrupt only once ``/queue`` shows this very prompt running, so another client's job is
never touched), confirms that it stopped, and holds the job: state ``paused``,
``job.paused`` with the outputs finished so far. ComfyUI keeps the results of the nodes that
finished in its cache.

``resume`` posts the same workflow again through :meth:`Instance.submit`, the path every
``POST /prompt`` takes (a first submit, a resubmission after a restart, a failover): on the
job's own instance by default, where ComfyUI serves the finished nodes from its cache
(``execution_cached``) and work goes on from the interrupted node, which restarts from its
first step; or on another instance, which runs it all again. The percentage never goes back:
the nodes done before the pause stay done (:meth:`ProgressPlan.next_run`).

A paused job is unfinished (kept in the state file, listed by ``snapshot``) but on no
instance: failover does not move it and it does not count in an instance's load.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from .core.jobs import PAUSED, Job
from .core.submission import Queued
from .errors import RequestError, over_limit
from .protocol import wire
from .protocol.events import JobView
from .protocol.wire import Reply, ok_reply

if TYPE_CHECKING:
    from .app import Sidecar
    from .instance import Instance

__all__ = ["Pauser", "Pausing"]


class Pauser:
    """The pause logic of one :class:`~sidecar.instance.Instance`."""

    def __init__(self, inst: Instance) -> None:
        self.inst = inst

    async def pause(self, job: Job) -> dict[str, Any]:
        """Stop ``job`` and hold it; ``job.paused`` follows (or the job's real end, if it wins the race)."""
        inst = self.inst
        state = job.state
        if state == PAUSED or job.pause_requested_ns is not None:
            return {"state": state, "pause_sent": False, "already_requested": True, "method": None}
        now = time.time_ns()
        job.pause_requested_ns = now
        if job in inst.held:
            inst.held.remove(job)
            inst.emit(inst.tracker.paused_in_queue(job, now))
            return {"state": state, "pause_sent": False, "already_requested": False, "method": "held"}
        if job.prompt_id is None and not job.posting:  # waiting to be posted: not any more
            inst.outbox.discard(job)
            inst.emit(inst.tracker.paused_in_queue(job, now))
            return {"state": state, "pause_sent": False, "already_requested": False, "method": "held"}
        if job.prompt_id is None or job.posting:  # submit() pauses it as soon as ComfyUI has queued it
            return {"state": state, "pause_sent": False, "already_requested": False, "method": "after_submit"}
        return await self.pause_now(job)

    async def pause_now(self, job: Job) -> dict[str, Any]:
        state = job.state
        method, sent = await self.inst.canceller.send_stop(job, "pause")
        self.inst.spawn(self.inst.canceller.confirm(job, method))
        return {"state": state, "pause_sent": sent, "already_requested": False, "method": method}


class Pausing:
    """Serves ``pause`` and ``resume`` for a :class:`~sidecar.app.Sidecar`."""

    def __init__(self, sidecar: Sidecar) -> None:
        self.sidecar = sidecar

    async def handle(self, request: wire.Pause | wire.Resume) -> Reply:
        job = await self.sidecar.known_job(request.job_id)
        if isinstance(request, wire.Pause):
            return await self._pause(request, job)
        return await self._resume(request, job)

    # Private

    async def _pause(self, request: wire.Pause, found: Job | JobView) -> Reply:
        job = self.sidecar.unfinished(found, request.job_id)
        if job.cancel_requested_ns is not None or job.maybe_posted:
            why = "a cancel of it is under way" if job.cancel_requested_ns is not None else "it is being looked for"
            raise RequestError(
                "job_not_pausable",
                f"job {request.job_id!r} cannot be paused now: {why}",
                {"job_id": job.job_id, "state": job.state, "cancel_requested": job.cancel_requested_ns is not None},
            )
        result = await self.sidecar.instances[job.instance].pauser.pause(job)
        if job.active and job.state != PAUSED:  # remember it across a restart: its interrupt then pauses it
            self.sidecar._persist(job)
        return ok_reply(request.id, {"job_id": job.job_id, **result})

    async def _resume(self, request: wire.Resume, found: Job | JobView) -> Reply:
        if isinstance(found, JobView) or found.state != PAUSED:
            raise RequestError(
                "job_not_paused",
                f"job {request.job_id!r} is {found.state}, not paused",
                {"job_id": request.job_id, "state": found.state},
            )
        job = found
        sidecar = self.sidecar
        target = self._target(job, request.instance)
        on_instance = sidecar.book.active_on(target.name)
        limit = sidecar.config.limits.jobs_per_instance
        if on_instance >= limit:
            raise over_limit(
                "jobs_per_instance",
                limit,
                f"{on_instance} jobs are unfinished on instance {target.name!r} already",
                instance=target.name,
            )
        for event in sidecar.book.resume(job, target.name, time.time_ns()):
            sidecar.publish(event)
        if not target.healthy:
            target.hold(job)  # posted when it connects
            return ok_reply(request.id, {"job": job.view(), "held": True})
        result = await sidecar.post(target, job)  # the common path: job.queued, or job.failed
        if isinstance(result, Queued):
            return ok_reply(request.id, {"job": job.view(), "held": False})
        return wire.error_reply(request.id, result.code, result.message, {**result.details, "job_id": job.job_id})

    def _target(self, job: Job, name: str | None) -> Instance:
        """The named instance (connected), else the job's own if connected, else the least loaded
        connected one, else the job's own (held until it connects)."""
        sidecar = self.sidecar
        if name is not None:
            return sidecar.accepting.pick_instance(name, queue_anyway=False)
        own = sidecar.instances.get(job.instance)
        if own is not None and own.healthy:
            return own
        healthy = [inst for inst in sidecar.instances.values() if inst.healthy]
        if healthy:
            return min(healthy, key=lambda inst: inst.load())
        if own is None:
            raise RequestError(
                "no_instance",
                "no ComfyUI instance is connected, and the job's own is no longer configured",
                {"instances": {n: i.state for n, i in sidecar.instances.items()}},
            )
        return own
