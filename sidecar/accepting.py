"""SHELL: the ``submit`` op: a workflow checked, deduplicated by ``job_id``, accepted, and posted.

:class:`Accepting` checks a submit against the limits (``limits.workflow_nodes``, the input
files', ``jobs_total``, ``jobs_per_instance``) and the workflow's shape, answers a ``job_id`` it
knows as a duplicate (two submits of one id at once share one ``POST /prompt``), chooses the
instance (the named one, else the least loaded connected one), publishes ``job.accepted``, and
posts the job through :meth:`~sidecar.app.Sidecar.post`, or holds it until its instance is back
(``queue_anyway``).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import TYPE_CHECKING

from .core.graph import check_workflow
from .core.submission import Queued
from .errors import RequestError, over_limit
from .inputs import check_files
from .protocol import wire
from .protocol.events import JobView
from .protocol.wire import Reply, ok_reply

if TYPE_CHECKING:
    from .app import Sidecar
    from .instance import Instance

__all__ = ["Accepting"]


class Accepting:
    """Serves ``submit`` for a :class:`~sidecar.app.Sidecar`."""

    def __init__(self, sidecar: Sidecar) -> None:
        self.sidecar = sidecar
        self._submits: dict[str, asyncio.Future[Reply]] = {}  # job id -> the reply of its submit in flight

    def pick_instance(self, name: str | None, queue_anyway: bool) -> Instance:
        """The named instance (``unknown_instance``; ``instance_unavailable`` unless ``queue_anyway``),
        else the least loaded connected one (``no_instance``)."""
        sc = self.sidecar
        if name is not None:
            inst = sc.instances.get(name)
            if inst is None:
                raise RequestError(
                    "unknown_instance",
                    f"no instance named {name!r}",
                    {"instance": name, "known": list(sc.instances)},
                )
            if not inst.healthy and not queue_anyway:
                raise RequestError(
                    "instance_unavailable",
                    f"instance {name!r} is {inst.state}; set queue_anyway to hold the job until it is back",
                    {"instance": name, "state": inst.state, "last_error": inst.last_error},
                )
            return inst
        healthy = [inst for inst in sc.instances.values() if inst.healthy]
        if not healthy:
            raise RequestError(
                "no_instance",
                "no ComfyUI instance is connected",
                {"instances": {n: i.state for n, i in sc.instances.items()}},
            )
        return min(healthy, key=lambda inst: inst.load())

    async def handle(self, request: wire.Submit) -> Reply:
        """Serve one ``submit``: checked, deduplicated by ``job_id``, accepted, posted (or held)."""
        sc = self.sidecar
        if request.preview_interval_s is not None and request.preview_interval_s < 0:
            raise RequestError(
                "invalid_request", "preview_interval_s must not be negative", {"field": "preview_interval_s"}
            )
        limits = sc.config.limits
        if isinstance(request.workflow, dict) and len(request.workflow) > limits.workflow_nodes:
            raise over_limit("workflow_nodes", limits.workflow_nodes, f"the workflow has {len(request.workflow)} nodes")
        problems = check_workflow(request.workflow)
        if problems:
            raise RequestError("invalid_workflow", "; ".join(problems), {"problems": problems})
        files = request.files or {}
        if files:
            check_files(files, request.workflow, limits)
        job_id = request.job_id or uuid.uuid4().hex
        existing = await sc.lookup(job_id) if request.job_id is not None else None
        if existing is not None:
            pending = self._submits.get(job_id)
            if pending is not None:  # the same job submitted twice at once: one POST, two replies
                reply = await asyncio.shield(pending)
                result = {**reply.result, "duplicate": True} if reply.ok else reply.result
                return Reply(id=request.id, ok=reply.ok, result=result, error=reply.error)
            if isinstance(existing, JobView):
                return ok_reply(request.id, {"job": existing, "duplicate": True, "held": False})
            inst = sc.instances.get(existing.instance)
            held = inst is not None and any(job is existing for job in inst.held)
            return ok_reply(request.id, {"job": existing.view(), "duplicate": True, "held": held})
        inst = self.pick_instance(request.instance, request.queue_anyway)
        unfinished = sum(1 for job in sc.book if job.active)
        if unfinished >= limits.jobs_total:
            raise over_limit("jobs_total", limits.jobs_total, f"{unfinished} jobs are unfinished already")
        on_instance = sc.book.active_on(inst.name)
        if on_instance >= limits.jobs_per_instance:
            raise over_limit(
                "jobs_per_instance",
                limits.jobs_per_instance,
                f"{on_instance} jobs are unfinished on instance {inst.name!r} already",
                instance=inst.name,
            )
        workflow = request.workflow
        if files:
            workflow = await sc.inputs.take(job_id, files, workflow)
            if sc.book.get(job_id) is not None:  # the same job id submitted meanwhile: served as a duplicate
                return await self.handle(request)
        job, events = sc.book.accept(job_id, inst.name, workflow, request.client_data, time.time_ns())
        interval_s = request.preview_interval_s
        job.preview_interval_ns = int(1e9 * (sc.config.previews.interval_s if interval_s is None else interval_s))
        for event in events:
            sc.publish(event)
        if not inst.healthy:
            inst.hold(job)
            return ok_reply(request.id, {"job": job.view(), "duplicate": False, "held": True})
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._submits[job_id] = future
        try:
            result = await sc.post(inst, job)
            if isinstance(result, Queued):
                reply = ok_reply(request.id, {"job": job.view(), "duplicate": False, "held": False})
            else:
                reply = wire.error_reply(request.id, result.code, result.message, {**result.details, "job_id": job_id})
            future.set_result(reply)
            return reply
        finally:
            if not future.done():
                future.cancel()
            del self._submits[job_id]
