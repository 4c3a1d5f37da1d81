"""Jobs: platform job ids, ComfyUI prompt ids, and what happens to them.

Pure: fed with decoded ComfyUI messages and a clock value, returns events. The
shell publishes every returned event, in order, right after each call.

- :class:`JobBook` holds the jobs of every instance: the unfinished ones whole, the
  finished ones as light records (their views), a bounded number of them.
- :class:`~sidecar.core.tracker.InstanceTracker` (in ``tracker.py``) follows one
  instance's WebSocket and moves jobs through these states.

A job's life: ``accepted`` (the sidecar took it) -> ``queued`` (ComfyUI answered
``POST /prompt``) -> ``started`` (``execution_start``) -> ``completed`` |
``failed``. A ``pause`` takes a job to ``paused`` (unfinished, held by the sidecar, not
in ComfyUI); ``resume`` takes it back to ``accepted`` and it is posted again. When
ComfyUI signals the end, the tracker asks for the prompt's history
(:meth:`InstanceTracker.history_wanted`); :meth:`InstanceTracker.finalize` then
publishes the final event with the outputs, which history may lag behind.
"""

from __future__ import annotations

import collections
from collections.abc import Iterator
from typing import Any

from ..protocol.events import (
    JobAccepted,
    JobCancelled,
    JobCancelUnconfirmed,
    JobCompleted,
    JobFailed,
    JobPaused,
    JobProgress,
    JobResumed,
    JobView,
    StoredOutput,
)
from ..protocol.wire import Event
from .graph import node_title
from .progress import ProgressPlan
from .sequence import Sequencer

__all__ = ["ACTIVE_STATES", "FINAL_STATES", "KEEP_FINISHED", "KEEP_FULL", "PAUSED", "SUCCESS", "Job", "JobBook"]

ACTIVE_STATES = frozenset({"accepted", "queued", "started", "paused"})
PAUSED = "paused"
FINAL_STATES = frozenset({"completed", "failed", "cancelled"})
SUCCESS = "success"
KEEP_FINISHED = 256
"""Finished jobs the book holds; all but the last :data:`KEEP_FULL` as light views (under 1 KB)."""
KEEP_FULL = 8
"""Finished jobs the book holds whole (workflow and progress plan included), the last to finish."""


class Job:
    """One platform job. Mutated only by :class:`JobBook` and :class:`InstanceTracker`."""

    __slots__ = (
        "job_id",
        "instance",
        "workflow",
        "client_data",
        "state",
        "prompt_id",
        "number",
        "created_ns",
        "updated_ns",
        "outputs",
        "error",
        "current_node",
        "plan",
        "previews",
        "ending",
        "cancel_requested_ns",
        "pause_requested_ns",
        "ended_ns",
        "attempts",
        "preview_interval_ns",
        "last_preview_ns",
        "posting",
        "maybe_posted",
        "job_seq",
        "stored",
    )

    def __init__(self, job_id: str, instance: str, workflow: dict[str, Any], client_data: Any, now_ns: int) -> None:
        self.job_id = job_id
        self.instance = instance
        self.workflow = workflow
        self.client_data = client_data
        self.state = "accepted"
        self.prompt_id: str | None = None
        self.number: int | None = None
        self.created_ns = now_ns
        self.updated_ns = now_ns
        self.outputs: dict[str, Any] = {}
        self.error: JobFailed | None = None
        self.current_node: str | None = None
        self.plan = ProgressPlan(())
        self.previews = 0
        self.ending: str | JobFailed | JobCancelled | JobPaused | None = None  # how it ended, until finalized
        self.cancel_requested_ns: int | None = None
        self.pause_requested_ns: int | None = None  # a pause was accepted and has not taken effect yet
        self.ended_ns: int | None = None  # when the frame that ended it arrived
        self.attempts = 0  # submissions to ComfyUI so far
        self.preview_interval_ns = 0  # at most one preview per interval (0: every one)
        self.last_preview_ns: int | None = None
        self.posting = False  # its POST /prompt is in flight: ComfyUI may not show it yet
        self.maybe_posted = False  # restored without a prompt id: the last run may have posted it
        self.job_seq = 0  # job-family events about it made in this run (counted by the Sequencer)
        #: its file outputs and their copies in the output store, in the order they were offered
        #: (the shell's output fetcher appends and updates them; kept across resubmissions)
        self.stored: list[StoredOutput] = []

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES

    def view(self) -> JobView:
        return JobView(
            job_id=self.job_id,
            instance=self.instance,
            state=self.state,
            prompt_id=self.prompt_id,
            percent=self.plan.percent,
            current_node=self.current_node,
            created_ns=self.created_ns,
            updated_ns=self.updated_ns,
            outputs=self.outputs,
            error=self.error,
            client_data=self.client_data,
            cancel_requested=self.cancel_requested_ns is not None,
            attempts=self.attempts,
            job_seq=self.job_seq,
            current_class=node_title(self.workflow, self.current_node)[0] if self.current_node else None,
            pause_requested=self.pause_requested_ns is not None,
            stored=list(self.stored),
        )


class JobBook:
    """Every unfinished job, and the last finished ones; see :data:`KEEP_FINISHED`.

    Of the finished jobs, the book holds the last ``keep_finished``: the last
    ``keep_full`` to finish whole (a final event is published, and the job's row
    saved, from the :class:`Job` itself), the others as light records, their
    :class:`JobView` without the workflow or the progress plan. The shell reads
    anything older back from the state file.
    """

    def __init__(self, seq: Sequencer, keep_finished: int = KEEP_FINISHED, keep_full: int = KEEP_FULL) -> None:
        self.seq = seq
        self.keep_finished = keep_finished
        self.keep_full = max(1, keep_full)
        self._view_limit = max(0, keep_finished - self.keep_full)
        self._jobs: dict[str, Job] = {}  # unfinished jobs, and the last keep_full finished ones
        self._full: collections.deque[str] = collections.deque()  # those finished ones, oldest first
        self._views: dict[str, JobView] = {}  # light records of older finished jobs, oldest first
        seq.count_jobs_in(self._jobs)  # job_seq is kept on the jobs of this book

    # Public: inputs

    def accept(
        self, job_id: str, instance: str, workflow: dict[str, Any], client_data: Any, now_ns: int
    ) -> tuple[Job, list[Event]]:
        """Take a new job (the caller checked ``job_id`` is new); publish ``job.accepted``."""
        job = Job(job_id, instance, workflow, client_data, now_ns)
        self._jobs[job_id] = job
        event = self.seq.event(
            "job.accepted", instance, job_id, JobAccepted(instance=instance, client_data=client_data), now_ns
        )
        return job, [event]

    def fail(self, job: Job, failure: JobFailed, now_ns: int) -> list[Event]:
        """End ``job`` as failed (from any active state), with the outputs finished before."""
        if not job.active:
            return []
        job.error = failure
        return self._end(job, "failed", failure, now_ns)

    def complete(self, job: Job, outputs: dict[str, Any], now_ns: int) -> list[Event]:
        if not job.active:
            return []
        job.outputs = outputs
        events = []
        final = job.plan.percent_final()
        if final is not None:
            events.append(self.seq.event("job.progress", job.instance, job.job_id, JobProgress(final, 0.0), now_ns))
        self._finish(job, "completed", now_ns)
        data = JobCompleted(
            prompt_id=job.prompt_id or "", outputs=outputs, client_data=job.client_data, stored=list(job.stored)
        )
        events.append(self.seq.event("job.completed", job.instance, job.job_id, data, now_ns))
        return events

    def cancel(self, job: Job, data: JobCancelled, now_ns: int) -> list[Event]:
        """End ``job`` as cancelled, with the outputs it finished before it stopped."""
        if not job.active:
            return []
        return self._end(job, "cancelled", data, now_ns)

    def cancel_unconfirmed(self, job: Job, waited_s: float, method: str, now_ns: int) -> list[Event]:
        """A cancel was sent but nothing confirmed it in time; the job stays tracked."""
        return self._unconfirmed("job.cancel_unconfirmed", job, waited_s, method, now_ns)

    def pause_unconfirmed(self, job: Job, waited_s: float, method: str, now_ns: int) -> list[Event]:
        """A pause was sent but nothing confirmed it in time; the job stays in its state, tracked."""
        return self._unconfirmed("job.pause_unconfirmed", job, waited_s, method, now_ns)

    def _unconfirmed(self, type_: str, job: Job, waited_s: float, method: str, now_ns: int) -> list[Event]:
        if not job.active:
            return []
        data = JobCancelUnconfirmed(prompt_id=job.prompt_id, waited_s=waited_s, method=method)
        return [self.seq.event(type_, job.instance, job.job_id, data, now_ns)]

    def pause(self, job: Job, data: JobPaused, now_ns: int) -> list[Event]:
        """``job`` stopped for a pause: it is ``paused``, held by the sidecar, with its outputs so far.

        Its plan keeps the nodes that finished (done) and forgets the interrupted node's share
        (it restarts on resume); the percentage published stays the floor.
        """
        if not job.active or job.state == PAUSED:
            return []
        job.state = PAUSED
        job.updated_ns = now_ns
        job.pause_requested_ns = None
        job.current_node = None
        job.ending = None
        job.ended_ns = None
        job.plan.pause()
        if data.prompt_id is None:
            data.prompt_id = job.prompt_id
        if not data.outputs and job.outputs:
            data.outputs = job.outputs
        job.outputs = data.outputs
        data.percent = job.plan.percent
        data.client_data = job.client_data
        return [self.seq.event("job.paused", job.instance, job.job_id, data, now_ns)]

    def resume(self, job: Job, instance: str, now_ns: int) -> list[Event]:
        """``job`` (paused) is to be posted again on ``instance``: ``accepted`` with no prompt id."""
        if job.state != PAUSED:
            return []
        data = JobResumed(
            previous_prompt_id=job.prompt_id,
            instance=instance,
            previous_instance=job.instance,
            percent=job.plan.percent,
            client_data=job.client_data,
        )
        job.state = "accepted"
        job.instance = instance
        job.prompt_id = None
        job.number = None
        job.updated_ns = now_ns
        return [self.seq.event("job.resumed", instance, job.job_id, data, now_ns)]

    def restore(self, job: Job) -> None:
        """Take back an unfinished job loaded from the store after a restart (no event: it was published)."""
        self._jobs[job.job_id] = job

    def remember(self, job: Job) -> None:
        """Keep the view of a finished job read back from the store (a light record, bounded)."""
        if job.job_id not in self._jobs:
            self._keep_view(job.view())

    # Public: outputs

    def get(self, job_id: str) -> Job | None:
        """The job itself, while it is unfinished or one of the last ``keep_full`` to finish."""
        return self._jobs.get(job_id)

    def view(self, job_id: str) -> JobView | None:
        """The job's view, for any job the book holds (whole or as a light record)."""
        job = self._jobs.get(job_id)
        return job.view() if job is not None else self._views.get(job_id)

    def views(self, active_only: bool = False, instance: str | None = None) -> list[JobView]:
        """Views of the jobs the book holds, in the order they were accepted."""
        views = [
            job.view()
            for job in self._jobs.values()
            if (not active_only or job.active) and instance in (None, job.instance)
        ]
        if not active_only:
            views += [view for view in self._views.values() if instance in (None, view.instance)]
        views.sort(key=lambda view: view.created_ns)
        return views

    def __iter__(self) -> Iterator[Job]:
        """The whole jobs: every unfinished one and the last few finished."""
        return iter(list(self._jobs.values()))

    def __len__(self) -> int:
        return len(self._jobs)

    def active_on(self, instance: str) -> int:
        """Unfinished jobs on ``instance``; a paused job is on none (the sidecar holds it)."""
        return sum(1 for job in self._jobs.values() if job.instance == instance and job.active and job.state != PAUSED)

    # Private

    def _end(self, job: Job, state: str, data: JobFailed | JobCancelled, now_ns: int) -> list[Event]:
        """Fill what the job knows into ``data`` (client data, prompt id, partial outputs), end it."""
        data.client_data = job.client_data
        if data.prompt_id is None:
            data.prompt_id = job.prompt_id
        if not data.outputs and job.outputs:
            data.outputs = job.outputs
        job.outputs = data.outputs
        if not data.stored and job.stored:
            data.stored = list(job.stored)
        self._finish(job, state, now_ns)
        return [self.seq.event(f"job.{state}", job.instance, job.job_id, data, now_ns)]

    def _finish(self, job: Job, state: str, now_ns: int) -> None:
        job.state = state
        job.updated_ns = now_ns
        job.current_node = None
        job.ending = None
        self._views.pop(job.job_id, None)
        self._full.append(job.job_id)
        while len(self._full) > self.keep_full:  # its final event went out long ago: keep its view only
            old = self._jobs.get(self._full.popleft())
            if old is not None and not old.active:
                del self._jobs[old.job_id]
                self._keep_view(old.view())

    def _keep_view(self, view: JobView) -> None:
        self._views.pop(view.job_id, None)
        self._views[view.job_id] = view
        while len(self._views) > self._view_limit:
            del self._views[next(iter(self._views))]
