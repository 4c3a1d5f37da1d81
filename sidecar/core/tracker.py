"""One instance's job tracking: ComfyUI messages in, events out.

Pure: fed with decoded ComfyUI messages and a clock value, returns events; the shell
publishes every returned event, in order, right after each call.
:class:`InstanceTracker` maps prompt ids to jobs, attributes type-1 previews to the
node that last ran, computes progress, and detects the end of a prompt on every
recorded version: the first of ``execution_success``, ``execution_error``,
``execution_interrupted`` or ``executing`` with ``node`` null (PROTOCOL.md §3.3).
When ComfyUI signals the end, the tracker asks for the prompt's history
(:meth:`InstanceTracker.history_wanted`); :meth:`InstanceTracker.finalize` then
publishes the final event with the outputs, which history may lag behind. On a
server that announces success (``execution_success``, v0.0.3 on), an ``executing``
null that no terminal message preceded means that message was missed: the outcome
is then read from the history.

Node state from ``progress_state`` (v0.3.45 on) is applied only to prompts the
tracker was told to resync (:meth:`InstanceTracker.want_state`: after a reconnect or
a restart, when ``executing``/``executed`` frames may have been missed); the shell
decodes that message only while :attr:`InstanceTracker.state_wanted` is true.
ComfyUI's progress text (binary type 3, no prompt id) is attributed to the running
prompt, like type-1 previews.

ComfyUI sends nothing while a node such as a checkpoint load runs: while
:attr:`InstanceTracker.ticking` is true, the shell calls :meth:`InstanceTracker.tick`
every quarter second or so, which moves the running job's percentage with the time that
node has run against its learned duration (:meth:`ProgressPlan.receive_tick`).
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from ..protocol import comfy
from ..protocol.events import (
    JobCancelled,
    JobFailed,
    JobPaused,
    JobProgress,
    JobQueued,
    JobResubmitted,
    JobStarted,
    NodeCached,
    NodeExecuting,
    NodeOutput,
    NodeProgress,
    NodeText,
    PreviewPublished,
)
from ..protocol.wire import Event
from . import endings
from .costs import NodeCosts
from .early import EarlyMessages
from .graph import node_title, will_run
from .jobs import PAUSED, SUCCESS, Job, JobBook
from .progress import ProgressPlan

__all__ = ["InstanceTracker"]

ENDED_PROMPTS = 1024
UNTOLD = "untold"  # the prompt ended without saying how (its terminal message was missed): ask history


class InstanceTracker:
    """Follows one instance's messages; see the module docstring for the contract."""

    def __init__(self, instance: str, book: JobBook, output_classes: Collection[str] | None = None) -> None:
        self.instance = instance
        self.book = book
        self.seq = book.seq
        self.output_classes = output_classes
        self.queue_remaining = 0
        self._by_prompt: dict[str, Job] = {}
        self._early = EarlyMessages()  # messages of prompts not (yet) mapped to a job
        self._arrived_ns: int | None = None  # while early messages are replayed: when the one fed arrived
        self._running_prompt: str | None = None
        self._running_node: str | None = None
        self._history_wanted: list[Job] = []
        self._outputs_wanted: list[tuple[Job, str, Any]] = []
        #: something waits for the shell: a job's history (:meth:`history_wanted`) or its file
        #: outputs (:meth:`outputs_wanted`). A plain attribute, read once per frame
        self.wanted = False
        self._ended: dict[str, None] = {}  # recently ended prompt ids, oldest first: late messages are dropped
        self.previews = True  # False: preview frames make no events
        self.announces_success = False  # the server sends execution_success (Capabilities.execution_success)
        self._state_wanted: set[str] = set()  # prompt ids whose node state the next progress_state restores
        #: ``now_ns`` of the last message showing ComfyUI at work (a prompt started, a node ran or
        #: progressed, a prompt ended; never ``status``): the stalled-queue watchdog reads it
        self.progress_ns = 0
        #: the instance's learned node costs (the shell loads them from the state file and saves
        #: what ``costs.changed()`` returns); jobs' progress is weighted by them
        self.costs = NodeCosts()

    # Public: inputs

    def submitted(
        self,
        job: Job,
        prompt_id: str,
        number: int | None,
        node_errors: Any,
        now_ns: int,
        previous_prompt_id: str | None = None,
        moved_from: str | None = None,
    ) -> list[Event]:
        """ComfyUI queued ``job`` as ``prompt_id``; publish ``job.queued`` and replay what came early.

        ``previous_prompt_id`` set: this is a resubmission of a job ComfyUI lost, and
        ``job.resubmitted`` comes first; so it does when ``moved_from`` names the instance the
        job was moved from (failover).
        """
        if not job.active:
            return []
        events: list[Event] = []
        if previous_prompt_id is not None or moved_from is not None:
            resubmitted = JobResubmitted(
                prompt_id=prompt_id,
                previous_prompt_id=previous_prompt_id,
                attempt=job.attempts,
                previous_instance=moved_from or self.instance,
                instance=self.instance,
            )
            events.append(self.seq.event("job.resubmitted", self.instance, job.job_id, resubmitted, now_ns))
        job.prompt_id = prompt_id
        job.number = number
        job.state = "queued"
        job.updated_ns = now_ns
        nodes = will_run(job.workflow, self.output_classes, node_errors)
        job.plan = job.plan.next_run(nodes, self.costs.weigher(job.workflow))  # done nodes stay done
        self._by_prompt[prompt_id] = job
        self._ended.pop(prompt_id, None)  # a reused prompt id starts a new run
        data = JobQueued(prompt_id=prompt_id, number=number, client_data=job.client_data)
        events.append(self.seq.event("job.queued", self.instance, job.job_id, data, now_ns))
        early = self._early.take(prompt_id)
        if early:
            # Replayed messages are old: the live ones already set which prompt and node run now.
            # The progress plan times them by when they arrived (their events' ts is now).
            running = self._running_prompt, self._running_node
            try:
                for arrived_ns, msg in early:
                    self._arrived_ns = arrived_ns
                    events.extend(self.feed(msg, now_ns))
            finally:
                self._arrived_ns = None
            self._running_prompt, self._running_node = running
        return events

    def feed(self, msg: comfy.ComfyMessage, now_ns: int) -> list[Event]:
        """One decoded message in; the events it causes out (publish them in order)."""
        kind = type(msg)
        if kind is not comfy.Status:
            self.progress_ns = now_ns  # any message about a prompt shows ComfyUI at work
        if kind is comfy.Progress:
            return self._on_progress(msg, now_ns)  # type: ignore[arg-type]
        if kind is comfy.PreviewWithMetadata:
            return self._on_preview(msg, msg.metadata.prompt_id, msg.metadata.node_id, now_ns)  # type: ignore[union-attr]
        if kind is comfy.PreviewImage:
            return self._on_preview(msg, self._running_prompt, self._running_node, now_ns)
        if kind is comfy.Executing:
            return self._on_executing(msg, now_ns)  # type: ignore[arg-type]
        if kind is comfy.Status:
            self.queue_remaining = msg.status.exec_info.queue_remaining  # type: ignore[union-attr]
            return []
        if kind is comfy.ExecutionStart:
            return self._on_start(msg, now_ns)  # type: ignore[arg-type]
        if kind is comfy.ExecutionCached:
            return self._on_cached(msg, now_ns)  # type: ignore[arg-type]
        if kind is comfy.Executed:
            return self._on_executed(msg, now_ns)  # type: ignore[arg-type]
        if kind is comfy.ExecutionSuccess:
            return self._on_end(msg.prompt_id, SUCCESS, msg, now_ns)  # type: ignore[union-attr]
        if kind is comfy.ExecutionError:
            return self._on_end(msg.prompt_id, endings.failure(msg), msg, now_ns)  # type: ignore[union-attr,arg-type]
        if kind is comfy.ExecutionInterrupted:
            job = self._by_prompt.get(msg.prompt_id or "")  # type: ignore[union-attr]
            ending = endings.interrupted(job, msg.prompt_id, msg.node_id, msg.node_type)  # type: ignore[union-attr]
            return self._on_end(msg.prompt_id, ending, msg, now_ns)  # type: ignore[union-attr]
        if kind is comfy.ProgressText:
            return self._on_text(msg, now_ns)  # type: ignore[arg-type]
        if kind is comfy.ProgressState:
            return self._on_progress_state(msg, now_ns)  # type: ignore[arg-type]
        return []

    def tick(self, now_ns: int) -> list[Event]:
        """Time passed (``now_ns``, the shell's clock): the running job's ``job.progress`` if its
        silent node moved it by at least 0.1 (the same rules as a frame's); publish the events.

        ComfyUI runs one prompt at a time, so the running prompt's job is the one to move.
        """
        job = self._ticking_job()
        if job is None:
            return []
        job.plan.receive_tick(now_ns)
        events: list[Event] = []
        self._progress(job, events, now_ns)
        return events

    def want_state(self, job: Job) -> None:
        """Frames about ``job`` may have been missed: restore its node state from the next ``progress_state``."""
        if job.prompt_id is not None and job.active:
            self._state_wanted.add(job.prompt_id)

    def finalize(self, job: Job, history: Any, now_ns: int) -> list[Event]:
        """The end of ``job`` with its ``/history/<id>`` entry (None if it never came).

        The final event's ``ts`` is when the frame that ended the job arrived.
        """
        if not job.active or job.ending is None:
            return []
        if job.ended_ns is not None:
            now_ns = job.ended_ns
        if job.ending == UNTOLD:
            job.ending = endings.from_history(job, history) if isinstance(history, dict) else SUCCESS
        outputs = dict(job.outputs)
        if isinstance(history, dict) and isinstance(history.get("outputs"), dict):
            outputs.update(history["outputs"])
        ending = job.ending
        self._forget(job.prompt_id)
        if ending == SUCCESS:
            return self.book.complete(job, outputs, now_ns)
        if isinstance(ending, JobPaused):
            ending.outputs = outputs
            return self.book.pause(job, ending, now_ns)
        assert isinstance(ending, (JobFailed, JobCancelled))
        job.outputs = outputs
        ending.outputs = outputs
        if isinstance(ending, JobCancelled):
            return self.book.cancel(job, ending, now_ns)
        return self.book.fail(job, ending, now_ns)

    def reconcile(self, job: Job, history: dict[str, Any], now_ns: int) -> list[Event]:
        """End ``job`` from its ``/history/<id>`` entry, when the WebSocket did not say how it ended."""
        if not job.active:
            return []
        if job.ending is None:
            job.ending = endings.from_history(job, history)
        return self.finalize(job, history, now_ns)

    def restore(self, job: Job) -> None:
        """Follow a job restored from the store: map its prompt id again.

        Its progress plan comes back with it (finished nodes count as done); a row
        that kept no node sets (an older state file) gets one rebuilt from the
        workflow, with the stored percentage as its floor.
        """
        if job.prompt_id is not None:
            if not job.plan.known:
                nodes = will_run(job.workflow, self.output_classes)
                job.plan = ProgressPlan(nodes, job.plan.percent, self.costs.weigher(job.workflow))
            else:
                job.plan.weigh_with(self.costs.weigher(job.workflow))
            self._by_prompt[job.prompt_id] = job
            self._ended.pop(job.prompt_id, None)

    def resume_running(self, job: Job, now_ns: int) -> list[Event]:
        """``/queue`` shows ``job`` running although its start was not seen (a gap, a restart)."""
        self._running_prompt = job.prompt_id
        if not job.active or job.state != "queued":
            return []
        job.state = "started"
        job.updated_ns = now_ns
        data = JobStarted(prompt_id=job.prompt_id or "", client_data=job.client_data)
        return [self.seq.event("job.started", self.instance, job.job_id, data, now_ns)]

    def lost(self, job: Job, failure: JobFailed, now_ns: int) -> list[Event]:
        """ComfyUI no longer knows ``job`` and it will not be resubmitted."""
        self._forget(job.prompt_id)
        return self.book.fail(job, failure, now_ns)

    def resubmitting(self, job: Job) -> str | None:
        """``job`` is about to be submitted again; returns the prompt id it had."""
        previous = job.prompt_id
        self._forget(previous)
        job.outputs = {}
        job.current_node = None
        job.prompt_id = None
        job.state = "accepted"
        job.plan = ProgressPlan((), floor=job.plan.percent)  # the lost prompt's nodes say nothing of the new one
        return previous

    def paused_in_queue(self, job: Job, now_ns: int, by: str | None = None) -> list[Event]:
        """``job`` left ComfyUI's queue without running (the sidecar removed it for a pause), or
        ``by`` the sidecar: ComfyUI does not have it (held, or its instance is gone)."""
        if not job.active or job.state == PAUSED:
            return []
        self._forget(job.prompt_id)
        confirmed_by = by or ("queue" if job.prompt_id else "sidecar")
        return self.book.pause(job, JobPaused(confirmed_by=confirmed_by), now_ns)

    def cancelled_in_queue(self, job: Job, now_ns: int) -> list[Event]:
        """``job`` left ComfyUI's queue without running (the sidecar removed it)."""
        if not job.active:
            return []
        self._forget(job.prompt_id)
        by = "queue" if job.prompt_id is not None else "sidecar"
        return self.book.cancel(job, JobCancelled(confirmed_by=by), now_ns)

    # Public: outputs

    def history_wanted(self) -> list[Job]:
        """Jobs whose end was signalled: fetch their history, then call :meth:`finalize`."""
        wanted, self._history_wanted = self._history_wanted, []
        self.wanted = bool(self._outputs_wanted)
        return wanted

    def outputs_wanted(self) -> list[tuple[Job, str, Any]]:
        """``(job, node, output)`` of each ``node.output`` made since the last call: fetch its files."""
        wanted, self._outputs_wanted = self._outputs_wanted, []
        self.wanted = bool(self._history_wanted)
        return wanted

    @property
    def history_pending(self) -> bool:
        return bool(self._history_wanted)

    @property
    def running_prompt(self) -> str | None:
        return self._running_prompt

    @property
    def ticking(self) -> bool:
        """Whether :meth:`tick` can move a job: the running job's node sends nothing and its duration
        was learned (a cheap check: the shell's timer runs only while it is true)."""
        return self._ticking_job() is not None

    @property
    def state_wanted(self) -> bool:
        """Whether some prompt waits for a ``progress_state`` (decode that message only while true)."""
        return bool(self._state_wanted)

    # Private

    def _ticking_job(self) -> Job | None:
        prompt_id = self._running_prompt
        job = self._by_prompt.get(prompt_id) if prompt_id is not None else None
        if job is None or job.ending is not None or not job.active or not job.plan.ticking:
            return None
        return job

    def _job(self, prompt_id: str | None, msg: comfy.ComfyMessage, now_ns: int) -> Job | None:
        """The active job of ``prompt_id``; an unknown prompt's message is kept for later."""
        if prompt_id is None:
            return None
        job = self._by_prompt.get(prompt_id)
        if job is not None:
            return job if job.ending is None and job.active else None
        if prompt_id not in self._ended:
            self._early.keep(prompt_id, msg, now_ns)
        return None

    def _forget(self, prompt_id: str | None) -> None:
        """The prompt ended: stop mapping it, and drop whatever ComfyUI still sends for it."""
        if prompt_id is None:
            return
        self._by_prompt.pop(prompt_id, None)
        self._early.take(prompt_id)
        self._ended[prompt_id] = None
        if len(self._ended) > ENDED_PROMPTS:
            del self._ended[next(iter(self._ended))]

    def _on_start(self, msg: comfy.ExecutionStart, now_ns: int) -> list[Event]:
        self._running_prompt = msg.prompt_id
        self._running_node = None
        job = self._job(msg.prompt_id, msg, now_ns)
        if job is None or job.state == "started":
            return []
        job.state = "started"
        job.updated_ns = now_ns
        data = JobStarted(prompt_id=msg.prompt_id, client_data=job.client_data)
        return [self.seq.event("job.started", self.instance, job.job_id, data, now_ns)]

    def _on_cached(self, msg: comfy.ExecutionCached, now_ns: int) -> list[Event]:
        job = self._job(msg.prompt_id, msg, now_ns)
        if job is None or not msg.nodes:
            return []
        job.plan.receive_cached(msg.nodes)
        return [self.seq.event("node.cached", self.instance, job.job_id, NodeCached(msg.nodes), now_ns)]

    def _on_executing(self, msg: comfy.Executing, now_ns: int) -> list[Event]:
        prompt_id = msg.prompt_id if msg.prompt_id is not None else self._running_prompt
        if msg.node is None:
            if prompt_id == self._running_prompt:
                self._running_prompt = self._running_node = None
            return self._on_end(prompt_id, UNTOLD if self.announces_success else SUCCESS, msg, now_ns)
        self._running_prompt = prompt_id
        self._running_node = msg.node
        job = self._job(prompt_id, msg, now_ns)
        if job is None:
            return []
        if job.current_node == msg.node:
            return []  # the re-announcement after a reconnect (PROTOCOL.md §8)
        job.current_node = msg.node
        job.plan.receive_executing(msg.node, self._arrived_ns or now_ns)
        self.costs.learn_nodes(job.workflow, job.plan.measured())
        class_type, title = node_title(job.workflow, msg.node)
        data = NodeExecuting(node=msg.node, class_type=class_type, title=title, display_node=msg.display_node)
        events = [self.seq.event("node.executing", self.instance, job.job_id, data, now_ns)]
        self._progress(job, events, now_ns)
        return events

    def _on_progress(self, msg: comfy.Progress, now_ns: int) -> list[Event]:
        prompt_id = msg.prompt_id if msg.prompt_id is not None else self._running_prompt
        job = self._job(prompt_id, msg, now_ns)
        if job is None:
            return []
        node = msg.node if msg.node is not None else job.current_node
        if node is not None:
            self._running_node = node
        job.plan.receive_progress(node, msg.value, msg.max, self._arrived_ns or now_ns)
        data = NodeProgress(node=node, value=msg.value, max=msg.max)
        events = [self.seq.event("node.progress", self.instance, job.job_id, data, now_ns)]
        self._progress(job, events, now_ns)
        return events

    def _on_executed(self, msg: comfy.Executed, now_ns: int) -> list[Event]:
        prompt_id = msg.prompt_id if msg.prompt_id is not None else self._running_prompt
        job = self._job(prompt_id, msg, now_ns)
        if job is None:
            return []
        job.outputs[msg.node] = msg.output
        self._outputs_wanted.append((job, msg.node, msg.output))
        self.wanted = True
        job.plan.receive_executed(msg.node, self._arrived_ns or now_ns)
        self.costs.learn_nodes(job.workflow, job.plan.measured())
        data = NodeOutput(node=msg.node, output=msg.output, display_node=msg.display_node)
        events = [self.seq.event("node.output", self.instance, job.job_id, data, now_ns)]
        self._progress(job, events, now_ns)
        return events

    def _on_preview(self, msg: comfy.ComfyMessage, prompt_id: str | None, node: str | None, now_ns: int) -> list[Event]:
        if not self.previews:
            return []
        job = self._job(prompt_id, msg, now_ns)
        if job is None:
            return []
        if job.preview_interval_ns and job.last_preview_ns is not None:
            if now_ns - job.last_preview_ns < job.preview_interval_ns:
                return []  # within the job's capture interval: skipped, not counted
        job.last_preview_ns = now_ns
        image = msg.image  # type: ignore[union-attr]
        index = job.previews
        job.previews += 1
        data = PreviewPublished(node=node, format=msg.format, size_bytes=len(image), index=index)  # type: ignore[union-attr]
        event = self.seq.event("preview", self.instance, job.job_id, data, now_ns)
        event.image = image
        return [event]

    def _on_text(self, msg: comfy.ProgressText, now_ns: int) -> list[Event]:
        """Progress text carries a node id but no prompt id: it belongs to the running prompt."""
        job = self._job(self._running_prompt, msg, now_ns)
        if job is None:
            return []
        data = NodeText(node=msg.node_id or None, text=msg.text)
        return [self.seq.event("node.text", self.instance, job.job_id, data, now_ns)]

    def _on_progress_state(self, msg: comfy.ProgressState, now_ns: int) -> list[Event]:
        """A wanted prompt's node states: finished nodes count as done, the running one by its fraction."""
        wanted = self._state_wanted
        if msg.prompt_id not in wanted:
            if not any(p in self._by_prompt for p in wanted):
                wanted.clear()  # every prompt still waiting has ended: stop decoding progress_state
            return []
        wanted.discard(msg.prompt_id)
        job = self._by_prompt.get(msg.prompt_id)
        if job is None or not job.active or job.ending is not None:
            return []
        finished = [node for node, state in msg.nodes.items() if state.state == "finished"]
        running = next((node for node, state in msg.nodes.items() if state.state == "running"), None)
        value, maximum = (msg.nodes[running].value, msg.nodes[running].max) if running is not None else (0, 0)
        job.plan.receive_state(finished, running, value, maximum)
        if running is not None:
            self._running_prompt, self._running_node = msg.prompt_id, running
        events: list[Event] = []
        self._progress(job, events, now_ns)
        return events

    def _on_end(
        self,
        prompt_id: str | None,
        ending: endings.Ending,
        msg: comfy.ComfyMessage,
        now_ns: int,
    ) -> list[Event]:
        job = self._job(prompt_id, msg, now_ns)
        if job is None:
            return []
        job.ending = ending
        job.ended_ns = now_ns
        job.current_node = None
        if ending == SUCCESS:  # not UNTOLD: the last node's time is learned on a sure success only
            job.plan.receive_success(self._arrived_ns or now_ns)
            self.costs.learn_nodes(job.workflow, job.plan.measured())
        self._history_wanted.append(job)
        self.wanted = True
        return []

    def _progress(self, job: Job, events: list[Event], now_ns: int) -> None:
        percent = job.plan.percent_update()
        if percent is not None:
            data = JobProgress(percent, job.plan.eta_s())
            events.append(self.seq.event("job.progress", self.instance, job.job_id, data, now_ns))
