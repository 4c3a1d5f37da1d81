"""SHELL: posting a job to one ComfyUI instance (``POST /prompt``), and withdrawing a prompt.

:class:`Submitter` is the one path every post of a job takes (a submit, a resume, a resubmission
after ComfyUI lost it, a move by failover): the job's input files are uploaded first
(:mod:`.inputs`), the prompt id is saved before the post where ComfyUI takes the client's own,
and ComfyUI's answer becomes ``job.queued`` (after ``job.resubmitted`` for a moved or lost job) or
``job.failed``. A cancel or pause that arrived while the post ran is carried out once ComfyUI
answered.
"""

from __future__ import annotations

import time
import uuid
from typing import TYPE_CHECKING, Any

from .cancelling import queue_ids
from .core.jobs import Job
from .core.submission import Queued, Rejected
from .errors import ComfyProtocolError, ComfyUnavailable
from .protocol.events import JobFailed

if TYPE_CHECKING:
    from .instance import Instance

__all__ = ["Submitter"]


class Submitter:
    """Posts jobs to (and withdraws prompts from) one :class:`~sidecar.instance.Instance`."""

    def __init__(self, inst: Instance) -> None:
        self.inst = inst

    async def submit(self, job: Job, moved_from: tuple[str, str | None] | None = None) -> Queued | Rejected:
        """``POST /prompt`` for ``job``; publishes ``job.queued``, or ``job.failed`` when refused.

        Every post of a job goes through here, and its input files (:mod:`.inputs`) are uploaded
        to this instance first: when that fails, the job fails with ``upload_failed``.
        ``moved_from``: ``(instance, prompt id there)`` when ``job`` is posted again, ComfyUI
        having lost it (this instance) or failover having moved it here (another instance); the
        caller already called ``resubmitting`` there. ``job.resubmitted`` precedes ``job.queued``.
        """
        inst = self.inst
        source, previous = moved_from if moved_from is not None else (None, None)
        job.posting = True  # from here: a cancel or pause waits for ComfyUI's answer (after_submit)
        job.attempts += 1
        if inst.inputs is not None and inst.inputs.names(job.job_id):
            try:  # still posting: failover and resync leave it alone, a cancel or pause waits
                refused = await inst.inputs.upload(inst.http, job.job_id, inst.name)
            except BaseException:
                job.posting = False
                raise
            if refused is not None:
                job.posting = False
                inst.log.warning("job %s: %s", job.job_id, refused.message)
                return self._refused(job, refused)
        body: dict[str, Any] = {
            "prompt": job.workflow,
            "client_id": inst.client_id,
            "extra_data": {"comfy_bridge_job_id": job.job_id},
        }
        if inst.caps.client_prompt_id:
            # Our own id, saved before the POST: a sidecar killed before ComfyUI's answer finds the
            # prompt again on restart (queue or history) instead of posting it twice.
            body["prompt_id"] = job.prompt_id = str(uuid.uuid4())
            if inst.persist is not None:
                inst.persist(job)
        try:
            status, answer = await inst.http.post_prompt(body)
        except ComfyUnavailable as exc:
            result: Queued | Rejected = Rejected(
                code="instance_unavailable", message=f"instance {inst.name!r}: {exc}", details={}
            )
        else:
            result = inst.adapter.read_prompt_response(status, answer, inst.config.submit.accept_partial)
        finally:
            job.posting = False
        now = time.time_ns()
        if isinstance(result, Queued):
            number, errors = result.number, result.node_errors
            inst.emit(inst.tracker.submitted(job, result.prompt_id, number, errors, now, previous, source))
            inst.after_feed()
            if job.cancel_requested_ns is not None and job.active:  # cancelled while POST /prompt ran
                inst.spawn(inst.canceller.cancel_now(job))
            elif job.pause_requested_ns is not None and job.active:  # paused while POST /prompt ran
                inst.spawn(inst.pauser.pause_now(job))
            return result
        if result.prompt_id is not None:
            inst.spawn(self.withdraw(result.prompt_id))
        return self._refused(job, result, now)

    def _refused(self, job: Job, result: Rejected, now: int | None = None) -> Rejected:
        inst = self.inst
        job.prompt_id = None  # ComfyUI does not hold it (or it was withdrawn)
        failure = JobFailed(
            code=result.code, message=result.message, prompt_id=result.prompt_id, details=result.details
        )
        inst.emit(inst.book.fail(job, failure, now or time.time_ns()))
        return result

    async def withdraw(self, prompt_id: str) -> None:
        """Remove a prompt the sidecar does not follow: refused after ComfyUI queued it, or left behind
        on this instance by failover (deleted from the queue; interrupted if it runs)."""
        inst = self.inst
        try:
            await inst.http.delete_queued([prompt_id])
            _, running = queue_ids(await inst.http.queue())
            if prompt_id in running and (inst.caps.targeted_interrupt or running == [prompt_id]):
                await inst.http.interrupt(prompt_id)
        except (ComfyUnavailable, ComfyProtocolError) as exc:
            inst.log.warning("could not withdraw prompt %s: %s", prompt_id, exc)
