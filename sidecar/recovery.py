"""SHELL: nothing accepted is lost: resync after every connect, and the watchdogs.

After every (re)connect, :meth:`Recovery.resync` asks ComfyUI about each unfinished
job of the instance: still queued or running (keep following it), in
``/history/<id>`` (publish how it ended while the socket was down), or in neither,
which means a ComfyUI restart lost it (PROTOCOL.md §9): resubmitted up to
``recovery.resubmit_lost`` times (``job.resubmitted``), then ``job.failed`` with
code ``lost_on_restart``.

:meth:`Recovery.watch` runs while connected. When no frame has come for
``recovery.silent_s`` although jobs are unfinished, it checks the queue and
history over HTTP (settling any job that ended unseen); if one of them is still
running, the socket has gone silent (upstream issue 16010's symptom) and it forces
a reconnect, once per job. A queue that holds work but starts nothing for
``recovery.stalled_s`` (0.0.2 can wedge this way) marks the instance ``degraded``
until frames flow again.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from .cancelling import queue_ids
from .core.jobs import Job
from .errors import ComfyProtocolError, ComfyUnavailable
from .protocol.events import JobFailed

if TYPE_CHECKING:
    from .instance import Instance

__all__ = ["Recovery"]

HISTORY_SEARCH = 256  # how far back /history is searched for a prompt posted before a restart


def _carries(item: Any, job_id: str) -> bool:
    """Whether a queue item or history ``prompt`` list, ``[number, id, prompt, extra_data, ...]``,
    carries ``job_id`` in its ``extra_data``."""
    if not (isinstance(item, list) and len(item) > 3 and isinstance(item[3], dict)):
        return False
    return item[3].get("comfy_bridge_job_id") == job_id


class Recovery:
    """Resync and watchdogs for one :class:`~sidecar.instance.Instance`."""

    def __init__(self, inst: Instance) -> None:
        self.inst = inst
        self._forced: set[str] = set()
        self.forced = 0  # reconnects forced by the silent-socket watchdog

    # Public

    async def resync(self) -> None:
        """Reconcile every unfinished job of this instance with ComfyUI's queue and history."""
        inst = self.inst
        jobs = self._unfinished()
        if not jobs:
            return
        try:
            pending, running = queue_ids(await inst.http.queue())
            await self._settle(jobs, pending, running)
        except (ComfyUnavailable, ComfyProtocolError) as exc:
            inst.log.info("resync postponed: %s", exc)

    async def watch(self) -> None:
        """Run the watchdogs until cancelled (the session's end)."""
        inst = self.inst
        cfg = inst.config.recovery
        while True:
            await asyncio.sleep(cfg.check_s)
            jobs = self._unfinished()
            idle_s = (time.time_ns() - inst.last_frame_ns) / 1e9
            if idle_s < cfg.silent_s or not jobs:
                if inst.state == "degraded" and idle_s < cfg.silent_s:
                    inst.set_state("connected")
                continue
            try:
                pending, running = queue_ids(await inst.http.queue())
                await self._settle(jobs, pending, running)
            except (ComfyUnavailable, ComfyProtocolError) as exc:
                inst.log.info("watchdog check failed: %s", exc)
                continue
            silent = [j for j in jobs if j.active and j.prompt_id in running and j.job_id not in self._forced]
            if silent:
                self._forced.update(j.job_id for j in silent)
                self.forced += 1
                inst.log.warning(
                    "no frame for %.1f s while job %s runs: the socket looks silent, reconnecting",
                    idle_s,
                    silent[0].job_id,
                )
                await inst.force_reconnect()
                return
            if (pending or running) and idle_s >= cfg.stalled_s and inst.state != "degraded":
                inst.log.warning(
                    "queue holds %d prompts but nothing ran for %.1f s", len(pending) + len(running), idle_s
                )
                inst.set_state(
                    "degraded",
                    error=f"queue holds {len(pending) + len(running)} prompts but nothing ran for {idle_s:.1f} s",
                )

    async def find_or_submit(self, job: Job) -> None:
        """Submit a job restored without a prompt id, unless its POST reached ComfyUI before the
        sidecar died: ComfyUI's queue and recent history are searched for the job id the sidecar
        puts in every prompt's ``extra_data``, and a prompt found there is followed instead."""
        inst = self.inst
        job.maybe_posted = False
        try:
            found = await self._find_posted(job.job_id)
        except (ComfyUnavailable, ComfyProtocolError) as exc:
            inst.log.info("could not look for job %s in ComfyUI (%s); posting it", job.job_id, exc)
            found = None
        if found is None:
            await inst.submit(job)
            return
        prompt_id, number, entry, running = found
        inst.log.info("job %s was posted before the restart, as prompt %s; following it", job.job_id, prompt_id)
        job.attempts += 1
        now = time.time_ns()
        inst.emit(inst.tracker.submitted(job, prompt_id, number, {}, now))
        if entry is not None:
            inst.emit(inst.tracker.reconcile(job, entry, now))
        elif running:
            inst.emit(inst.tracker.resume_running(job, now))

    # Private

    async def _find_posted(self, job_id: str) -> tuple[str, int | None, dict[str, Any] | None, bool] | None:
        """``(prompt_id, number, history entry or None, running)`` of the prompt carrying ``job_id``."""
        http = self.inst.http
        queue = await http.queue()
        for key in ("queue_running", "queue_pending"):
            for item in queue.get(key) or ():
                if _carries(item, job_id):
                    return str(item[1]), item[0] if isinstance(item[0], int) else None, None, key == "queue_running"
        history = await http.get_json(f"/history?max_items={HISTORY_SEARCH}")
        if isinstance(history, dict):
            for prompt_id, entry in history.items():
                if isinstance(entry, dict) and _carries(entry.get("prompt"), job_id):
                    number = entry["prompt"][0]
                    return str(prompt_id), number if isinstance(number, int) else None, entry, False
        return None

    def _unfinished(self) -> list[Job]:
        name = self.inst.name
        return [
            job
            for job in self.inst.book
            if job.instance == name
            and job.active
            and job.prompt_id is not None
            and job.ending is None
            and not job.posting
        ]

    async def _settle(self, jobs: list[Job], pending: list[str], running: list[str]) -> None:
        inst = self.inst
        for job in jobs:
            prompt_id = job.prompt_id or ""
            if not job.active or job.ending is not None or prompt_id in pending:
                continue
            if prompt_id in running:
                inst.emit(inst.tracker.resume_running(job, time.time_ns()))
                continue
            entry = await inst.http.history(prompt_id)
            if not job.active or job.ending is not None or job.prompt_id != prompt_id:
                continue
            if entry is not None:
                inst.log.info("job %s ended while unseen; read from history", job.job_id)
                inst.emit(inst.tracker.reconcile(job, entry, time.time_ns()))
            elif job.cancel_requested_ns is not None:
                inst.emit(inst.tracker.cancelled_in_queue(job, time.time_ns()))
            elif job.attempts <= inst.config.recovery.resubmit_lost:
                inst.log.warning("job %s was lost by ComfyUI (restart?); resubmitting", job.job_id)
                inst.spawn(inst.submit(job, resubmit=True))
            else:
                failure = JobFailed(
                    code="lost_on_restart",
                    message=f"ComfyUI lost prompt {prompt_id} (restarted?) and it was not resubmitted again",
                    prompt_id=prompt_id,
                    details={"attempts": job.attempts},
                )
                inst.emit(inst.tracker.lost(job, failure, time.time_ns()))
