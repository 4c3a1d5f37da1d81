"""SHELL: nothing accepted is lost: resync after every connect, and the watchdogs.

After every (re)connect, :meth:`Recovery.resync` asks ComfyUI about each unfinished
job of the instance: still queued or running (keep following it), in
``/history/<id>`` (publish how it ended while the socket was down), or in neither,
which means a ComfyUI restart lost it (PROTOCOL.md §9): resubmitted up to
``recovery.resubmit_lost`` times (``job.resubmitted``), then ``job.failed`` with
code ``lost_on_restart``. A job whose end the socket reported but whose history
could not be read because ComfyUI went away (:meth:`Recovery.await_history`) is
settled there too: from its history, or, when a restarted ComfyUI lost it, as the
socket said.

:meth:`Recovery.watch` runs while connected. When no frame has come for
``recovery.unseen_s`` although jobs are unfinished, it reads the queue (again every
``unseen_s`` while the quiet lasts). A job that left the queue unseen is settled
from history, and because an open socket missed its end (upstream issue 16010: our
clientId's socket was displaced by another connection with the same id), the
socket is replaced by a new connection. After ``recovery.silent_s`` without a
frame, a job still running means the same: reconnect, once per job. A queue that
holds work but shows no progress (a prompt starting, a node running or
progressing, a prompt ending; a ``status`` broadcast is not progress) for
``recovery.stalled_s`` marks the instance ``degraded`` until it makes progress or
its queue empties (0.0.2 can wedge this way).

The resync after a connect also removes the prompts left behind on this instance that
the sidecar no longer follows: a job that failover (:mod:`.failover`) moved elsewhere, or
ended while this instance was unreachable (deleted from the queue, interrupted if
running), so a job moved away is not run twice when its first instance comes back.
Lost jobs are resubmitted one after the other, in the order they were accepted.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from .cancelling import queue_ids
from .core.jobs import PAUSED, Job
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
        self.forced = 0  # reconnects forced by the watchdog (a silent socket, or an end it missed)
        self._awaiting: dict[str, Job] = {}  # ends seen on the socket whose history could not be read
        self._checked_ns = 0  # the watchdog's last look at the queue
        self._degraded_ns = 0  # when the instance was marked degraded
        self._degraded_running: list[str] = []  # the prompts running then

    # Public

    def await_history(self, job: Job) -> None:
        """``job`` ended on the socket but ComfyUI could not be reached for its history: the resync
        after the reconnect (or the watchdog, while the socket stays open) settles it."""
        self._awaiting[job.job_id] = job

    async def resync(self) -> None:
        """Reconcile every unfinished job of this instance with ComfyUI's queue and history."""
        inst = self.inst
        jobs = self._unfinished()
        if not jobs and not len(inst.book):
            return
        try:
            queue = await inst.http.queue()
            await self._withdraw_strays(queue)
            if jobs:
                pending, running = queue_ids(queue)
                await self._settle(jobs, pending, running)
        except (ComfyUnavailable, ComfyProtocolError) as exc:
            inst.log.info("resync postponed: %s", exc)

    def forget(self, job: Job) -> None:
        """``job`` leaves this instance (failover): stop waiting for its history here."""
        self._awaiting.pop(job.job_id, None)

    async def watch(self) -> None:
        """Run the watchdogs until cancelled (the session's end) or a reconnect they force."""
        cfg = self.inst.config.recovery
        self._checked_ns = 0
        while True:
            await asyncio.sleep(cfg.check_s)
            if await self._check(time.time_ns()):
                return

    async def find_or_submit(self, job: Job) -> None:
        """Submit a job restored without a prompt id, unless its POST reached ComfyUI before the
        sidecar died: ComfyUI's queue and recent history are searched for the job id the sidecar
        puts in every prompt's ``extra_data``, and a prompt found there is followed instead.

        A job whose cancel was accepted meanwhile is cancelled where it is found (queue delete,
        interrupt), or dropped if ComfyUI never had it; it is never posted.
        """
        inst = self.inst
        try:
            found = await self._find_posted(job.job_id)
        except (ComfyUnavailable, ComfyProtocolError) as exc:
            if job.cancel_requested_ns is not None:
                inst.log.info("could not look for cancelled job %s in ComfyUI (%s); looking again", job.job_id, exc)
                inst.held.append(job)  # the watchdog, or the next connect, releases it again
                return
            inst.log.info("could not look for job %s in ComfyUI (%s); posting it", job.job_id, exc)
            found = None
        job.maybe_posted = False
        if not job.active:
            return
        now = time.time_ns()
        if found is None:
            if job.cancel_requested_ns is not None:
                inst.emit(inst.tracker.cancelled_in_queue(job, now))  # ComfyUI never had it
            else:
                await inst.submit(job)
            return
        prompt_id, number, entry, running = found
        inst.log.info("job %s was posted before the restart, as prompt %s; following it", job.job_id, prompt_id)
        job.attempts += 1
        inst.emit(inst.tracker.submitted(job, prompt_id, number, {}, now))
        if entry is not None:
            inst.offer_outputs(job, entry)
            inst.emit(inst.tracker.reconcile(job, entry, now))
        elif running:
            inst.emit(inst.tracker.resume_running(job, now))
        if job.cancel_requested_ns is not None and job.active:
            await inst.canceller.cancel_now(job)

    # Private

    async def _withdraw_strays(self, queue: dict[str, Any]) -> None:
        """Remove the prompts in ``queue`` that carry a job this sidecar follows elsewhere, or that
        ended here (failed, cancelled) while ComfyUI still held the prompt."""
        inst = self.inst
        for key in ("queue_running", "queue_pending"):
            for item in queue.get(key) or ():
                if not (isinstance(item, list) and len(item) > 3 and isinstance(item[3], dict)):
                    continue
                job_id = item[3].get("comfy_bridge_job_id")
                if not isinstance(job_id, str):
                    continue
                job = inst.book.get(job_id)
                view = job.view() if job is not None else inst.book.view(job_id)
                # a job being posted here may show in the queue before ComfyUI's answer; one being
                # posted elsewhere (uploading its files to the instance failover chose) is a stray here
                if view is None or (job is not None and job.posting and job.instance == inst.name):
                    continue
                prompt_id = str(item[1])
                if view.instance != inst.name:
                    why = f"moved to instance {view.instance!r}"
                elif view.state in ("failed", "cancelled", PAUSED):
                    why = f"it is {view.state}"
                elif view.prompt_id is not None and view.prompt_id != prompt_id and view.state != "completed":
                    why = f"it runs as prompt {view.prompt_id}"
                else:
                    continue
                inst.log.warning("prompt %s of job %s is still here (%s); removing it", prompt_id, job_id, why)
                await inst.withdraw(prompt_id)

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

    async def _check(self, now: int) -> bool:
        """One look of the watchdogs; True when it forced a reconnect."""
        inst = self.inst
        cfg = inst.config.recovery
        if inst.held and inst.state == "connected":
            inst.release_held()  # a cancelled job whose lookup failed is looked for again
        for job_id in [k for k, job in self._awaiting.items() if not job.active]:
            del self._awaiting[job_id]
        degraded = inst.state == "degraded"
        if degraded and inst.tracker.progress_ns > self._degraded_ns:
            inst.set_state("connected")  # a prompt started, a node ran or progressed, a prompt ended
            degraded = False
        jobs = self._unfinished()
        idle_s = (now - inst.last_frame_ns) / 1e9
        since = max([inst.tracker.progress_ns, inst.last_connected_ns or 0, *(job.updated_ns for job in jobs)])
        stalling = bool(jobs) and not degraded and (now - since) / 1e9 >= cfg.stalled_s
        periodic = now - self._checked_ns >= cfg.unseen_s * 1e9
        due = (
            bool(self._awaiting)
            or stalling
            or (degraded and periodic)
            or (bool(jobs) and (idle_s >= cfg.silent_s or (idle_s >= cfg.unseen_s and periodic)))
        )
        if not due:
            return False
        self._checked_ns = now
        try:
            pending, running = queue_ids(await inst.http.queue())
            missed = await self._settle(jobs, pending, running)
        except (ComfyUnavailable, ComfyProtocolError) as exc:
            inst.log.info("watchdog check failed: %s", exc)
            return False
        if missed and inst.state in ("connected", "degraded"):
            # The socket is open, yet it did not say that this job ended: it hears nothing more
            # (displaced by another connection with our clientId). A new one hears the next job.
            self.forced += 1
            inst.log.warning("job %s ended unseen although the socket is open; reconnecting", missed[0].job_id)
            await inst.force_reconnect("socket missed the end of a job")
            return True
        if idle_s >= cfg.silent_s:
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
                return True
        if degraded:
            if not (pending or running) or running != self._degraded_running:
                inst.set_state("connected")  # the queue emptied, or a prompt started or ended
        elif stalling and (pending or running):
            quiet_s = (now - since) / 1e9
            reason = f"queue holds {len(pending) + len(running)} prompts but nothing ran for {quiet_s:.1f} s"
            inst.log.warning("%s", reason)
            self._degraded_ns, self._degraded_running = now, running
            inst.set_state("degraded", error=reason)
        return False

    def _unfinished(self) -> list[Job]:
        name = self.inst.name
        return [
            job
            for job in self.inst.book
            if job.instance == name
            and job.active
            and job.state != PAUSED
            and job.prompt_id is not None
            and (job.ending is None or job.job_id in self._awaiting)
            and not job.posting
        ]

    async def _settle(self, jobs: list[Job], pending: list[str], running: list[str]) -> list[Job]:
        """Reconcile ``jobs`` with the queue; returns the jobs that ended without the socket saying so."""
        inst = self.inst
        missed = []
        lost: dict[str, str | None] = {}  # job id -> the prompt id ComfyUI lost
        for job in jobs:
            prompt_id = job.prompt_id or ""
            if self._awaiting.get(job.job_id) is job:
                await self._settle_seen(job, prompt_id)
                continue
            if not job.active or job.ending is not None or prompt_id in pending:
                continue
            if prompt_id in running:
                inst.emit(inst.tracker.resume_running(job, time.time_ns()))
                continue
            entry = await inst.http.history(prompt_id)
            if not job.active or job.ending is not None or job.prompt_id != prompt_id:
                continue
            missed.append(job)
            if entry is not None:
                inst.log.info("job %s ended while unseen; read from history", job.job_id)
                inst.offer_outputs(job, entry)
                inst.emit(inst.tracker.reconcile(job, entry, time.time_ns()))
            elif job.cancel_requested_ns is not None:
                inst.emit(inst.tracker.cancelled_in_queue(job, time.time_ns()))
            elif job.pause_requested_ns is not None:
                inst.emit(inst.tracker.paused_in_queue(job, time.time_ns()))
            elif job.attempts <= inst.config.recovery.resubmit_lost:
                inst.log.warning("job %s was lost by ComfyUI (restart?); resubmitting", job.job_id)
                lost[job.job_id] = inst.tracker.resubmitting(job)  # now: no other look counts it lost again
            else:
                failure = JobFailed(
                    code="lost_on_restart",
                    message=f"ComfyUI lost prompt {prompt_id} (restarted?) and it was not resubmitted again",
                    prompt_id=prompt_id,
                    details={"attempts": job.attempts},
                )
                inst.emit(inst.tracker.lost(job, failure, time.time_ns()))
        if lost:
            # in their order, never concurrently
            inst.post_in_order([job for job in jobs if job.job_id in lost], lost)
        return missed

    async def _settle_seen(self, job: Job, prompt_id: str) -> None:
        """The final event of a job whose end the socket reported, once its history can be read."""
        inst = self.inst
        if not job.active:
            self._awaiting.pop(job.job_id, None)
            return
        entry = await inst.http.history(prompt_id)
        if self._awaiting.pop(job.job_id, None) is None or not job.active:
            return
        if entry is None:
            inst.log.info("ComfyUI has no history of job %s (restarted?); it ends as the socket said", job.job_id)
        inst.offer_outputs(job, entry)
        inst.emit(inst.tracker.finalize(job, entry, time.time_ns()))
