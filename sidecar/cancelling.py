"""SHELL: cancelling a job on its instance, and confirming that it stopped.

A job held by the sidecar is dropped, unless the last run may have posted it (a
restart while ``POST /prompt`` was in flight): that one is looked for in ComfyUI
once the instance is connected and cancelled where it is found.
A queued job is removed from ComfyUI's queue and never interrupted, so another
client's running job is never touched. A running job gets the per-job cancel
endpoint where the server has one (found by probing, newer than 0.12.1), else a
targeted interrupt (v0.3.58 and newer), else on servers that ignore the prompt
id, a global interrupt only after ``/queue`` shows this very prompt running
(PROTOCOL.md §2; a race remains there, as upstream says). Confirmation is
ComfyUI's ``execution_interrupted`` for the prompt, or the queue and history
showing it stopped; without it in ``cancel.confirm_timeout_s``,
``job.cancel_unconfirmed`` (for a pause ``job.pause_unconfirmed``) is published and the job is
followed to its real end.
Exactly one final event is published whatever happens.

A ``pause`` (:mod:`.pausing`) stops a job the same way (:meth:`Canceller.send_stop`,
:meth:`Canceller.confirm`); the tracker then ends the prompt as ``job.paused`` instead of
``job.cancelled``, and the job stays unfinished, held by the sidecar. A paused job is
cancelled at once (ComfyUI does not have it).
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from .core.jobs import PAUSED, Job
from .errors import ComfyProtocolError, ComfyUnavailable
from .protocol.events import JobCancelled

if TYPE_CHECKING:
    from .instance import Instance

__all__ = ["Canceller", "queue_ids"]


def queue_ids(queue: dict[str, Any]) -> tuple[list[str], list[str]]:
    """``(pending, running)`` prompt ids from a ``GET /queue`` answer."""

    def ids(key: str) -> list[str]:
        items = queue.get(key)
        return [str(i[1]) for i in items if isinstance(i, list) and len(i) > 1] if isinstance(items, list) else []

    return ids("queue_pending"), ids("queue_running")


class Canceller:
    """The cancel logic of one :class:`~sidecar.instance.Instance`."""

    def __init__(self, inst: Instance) -> None:
        self.inst = inst

    # Public

    async def cancel(self, job: Job) -> dict[str, Any]:
        """Send the cancel for ``job`` now; exactly one final event follows. Returns what was done.

        Queued: removed from ComfyUI's queue, never interrupted (so another client's
        running job is never touched). Running: the per-job cancel endpoint where
        the server has one, else a targeted interrupt, else on servers that ignore
        the prompt id, a global interrupt only after ``/queue`` shows this prompt
        running (PROTOCOL.md §2; a race remains, as upstream says).
        """
        now = time.time_ns()
        if job.cancel_requested_ns is not None:
            return {"state": job.state, "cancel_sent": False, "already_requested": True, "method": None}
        job.cancel_requested_ns = now
        if job.state == PAUSED:  # ComfyUI does not have it: it ends now
            self.inst.emit(self.inst.book.cancel(job, JobCancelled(confirmed_by="sidecar"), now))
            return {"state": PAUSED, "cancel_sent": False, "already_requested": False, "method": "paused"}
        if job.maybe_posted:
            # Restored without a prompt id: the last run may have posted it. It is looked for in
            # ComfyUI once the instance is connected, and cancelled where it is found, if anywhere.
            return {"state": job.state, "cancel_sent": False, "already_requested": False, "method": "after_lookup"}
        if job in self.inst.held:
            self.inst.held.remove(job)
            self.inst.emit(self.inst.tracker.cancelled_in_queue(job, now))
            return {"state": job.state, "cancel_sent": False, "already_requested": False, "method": "held"}
        if job.prompt_id is None or job.posting:  # submit() cancels it as soon as ComfyUI has queued it
            return {"state": job.state, "cancel_sent": False, "already_requested": False, "method": "after_submit"}
        return await self.cancel_now(job)

    async def cancel_now(self, job: Job) -> dict[str, Any]:
        state = job.state
        method, sent = await self.send_stop(job, "cancel")
        self.inst.spawn(self.confirm(job, method))
        return {"state": state, "cancel_sent": sent, "already_requested": False, "method": method}

    async def send_stop(self, job: Job, what: str) -> tuple[str, bool]:
        """Remove ``job``'s prompt from the queue or interrupt it (for a ``what``: cancel or pause);
        ``(method, sent)``: ``retrying`` when ComfyUI could not be reached (:meth:`confirm` goes on)."""
        try:
            method = await self._send_cancel(job)
        except (ComfyUnavailable, ComfyProtocolError) as exc:
            self.inst.log.info("%s of %s not sent yet: %s", what, job.job_id, exc)
            return "retrying", False
        return method, method != "none"

    # Private

    async def _send_cancel(self, job: Job) -> str:
        prompt_id = job.prompt_id or ""
        if self.inst.caps.jobs_cancel:
            await self.inst.http.cancel_job(prompt_id)
            return "jobs_cancel"
        if job.state == "queued":
            await self.inst.http.delete_queued([prompt_id])
            return "queue_delete"
        return await self._interrupt(job)

    async def _interrupt(self, job: Job) -> str:
        prompt_id = job.prompt_id or ""
        if self.inst.caps.targeted_interrupt:
            await self.inst.http.interrupt(prompt_id)
            return "interrupt"
        pending, running = queue_ids(await self.inst.http.queue())
        if running == [prompt_id]:
            await self.inst.http.interrupt(None)
            return "checked_interrupt"
        if prompt_id in pending:
            await self.inst.http.delete_queued([prompt_id])
            return "queue_delete"
        return "none"

    async def confirm(self, job: Job, method: str) -> None:
        """Until ``job`` ends (or is paused): wait for ComfyUI's word, check the queue, finish what the
        cancel (or pause: no cancel requested) started."""
        cfg = self.inst.config.cancel
        loop = asyncio.get_running_loop()
        started = loop.time()
        interrupted = method in ("interrupt", "checked_interrupt", "jobs_cancel")
        prompt_id = job.prompt_id or ""
        first = True
        while job.active and job.state != PAUSED:
            # a removed queued job is checked at once; an interrupted one waits for ComfyUI's word
            if not (first and not interrupted) and await self._wait_end(job, cfg.poll_s * (10 if interrupted else 1)):
                return
            first = False
            waited = loop.time() - started
            if waited > cfg.confirm_timeout_s:
                if job.cancel_requested_ns is None:  # a pause: the job goes on, followed to its end
                    self.inst.log.warning("pause of %s not confirmed in %.1f s (%s)", job.job_id, waited, method)
                    self.inst.emit(self.inst.book.pause_unconfirmed(job, round(waited, 3), method, time.time_ns()))
                    return
                self.inst.emit(self.inst.book.cancel_unconfirmed(job, round(waited, 3), method, time.time_ns()))
                return  # the tracker follows the job to its real end
            if job.ending is not None:
                continue  # ComfyUI said it ended; the final event is on its way
            try:
                pending, running = queue_ids(await self.inst.http.queue())
                if self._moved_on(job, prompt_id):
                    return
                if prompt_id in running:
                    if not interrupted:
                        method = await self._interrupt(job)
                        interrupted = method != "none"
                elif prompt_id in pending:
                    if method not in ("queue_delete", "jobs_cancel"):  # it is waiting: remove it from the queue
                        await self.inst.http.delete_queued([prompt_id])
                        method = "queue_delete"
                else:
                    entry = await self.inst.http.history(prompt_id)
                    if self._moved_on(job, prompt_id):
                        return
                    if not job.active or job.ending is not None:
                        continue
                    if entry is None and job.cancel_requested_ns is None:
                        self.inst.emit(self.inst.tracker.paused_in_queue(job, time.time_ns()))
                    elif entry is None:
                        self.inst.emit(self.inst.tracker.cancelled_in_queue(job, time.time_ns()))
                    else:
                        self.inst.offer_outputs(job, entry)
                        self.inst.emit(self.inst.tracker.reconcile(job, entry, time.time_ns()))
            except (ComfyUnavailable, ComfyProtocolError) as exc:
                self.inst.log.info("confirming cancel of %s: %s", job.job_id, exc)

    @staticmethod
    def _moved_on(job: Job, prompt_id: str) -> bool:
        """``job`` is no longer this prompt's: paused (and maybe resumed as another prompt) or posted
        again; whatever the queue or history says of ``prompt_id`` says nothing of it now."""
        return job.state == PAUSED or (job.prompt_id or "") != prompt_id

    async def _wait_end(self, job: Job, timeout_s: float) -> bool:
        if not job.active or job.state == PAUSED:
            return True
        ended = self.inst.ends.setdefault(job.job_id, asyncio.Event())
        try:
            async with asyncio.timeout(timeout_s):
                await ended.wait()
        except TimeoutError:
            return not job.active or job.state == PAUSED
        return True
