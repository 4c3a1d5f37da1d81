"""Drive ``JobBook`` + ``InstanceTracker`` with a recorded trace, the way the shell does.

Per trace: one ``InstanceTracker`` per ComfyUI ``clientId`` (sockets that reconnect
with the same id share it), one ``Decoder`` per socket. A job is accepted for every
200 ``POST /prompt`` that named a ``client_id``, and ``submitted`` is called when its
response record appears (or ``defer`` frames later, to exercise the buffering of
messages that beat the HTTP answer). Every frame the server sent to that client is
fed; after each call, every job from ``history_wanted()`` is finalized with the
trace's own ``/history/<id>`` record when it has one.

Also here: the oracle, i.e. what the trace itself says happened to each prompt,
derived from the raw records and never from the code under test.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sidecar.core.costs import NodeCosts
from sidecar.core.jobs import Job, JobBook
from sidecar.core.sequence import Sequencer
from sidecar.core.tracker import InstanceTracker
from sidecar.protocol.comfy import ComfyMessage, Decoder
from sidecar.protocol.wire import Event
from tests.tracesupport import Record, client_ids, frame_of, history_entry, load, ns, prompt_posts

__all__ = ["END", "Replay", "Step", "TraceJob", "replay"]

END = 10**9  # defer ``submitted`` past the last frame of the trace


@dataclass
class Step:
    """One call into the core and the events it returned."""

    index: int
    tracker: str
    msg: ComfyMessage | None
    events: list[Event]


@dataclass
class TraceJob:
    """A job of the replay, with what the trace says about its prompt."""

    job: Job
    post_index: int
    post: Record
    client_id: str
    history: dict[str, Any] | None = None
    frames: list[tuple[int, Record]] = field(default_factory=list)  # this run's frames (text + previews)

    # The oracle ---------------------------------------------------------------------

    @property
    def prompt_id(self) -> str:
        return str(self.post["response"]["prompt_id"])

    def texts(self, *types: str) -> list[dict[str, Any]]:
        return [
            rec["msg"]["data"]
            for _, rec in self.frames
            if rec["kind"] == "text" and (not types or rec["msg"]["type"] in types)
        ]

    @property
    def terminal(self) -> tuple[str, dict[str, Any]] | None:
        """The first end signal the trace shows for this run (PROTOCOL.md §3.3)."""
        for _, rec in self.frames:
            if rec["kind"] != "text":
                continue
            kind, data = rec["msg"]["type"], rec["msg"]["data"]
            if kind in ("execution_success", "execution_error", "execution_interrupted"):
                return kind, data
            if kind == "executing" and data.get("node") is None:
                return "execution_success", data
        return None

    @property
    def executing_nodes(self) -> list[str]:
        return [d["node"] for d in self.texts("executing") if d.get("node") is not None]

    @property
    def cached_nodes(self) -> list[str]:
        return [n for d in self.texts("execution_cached") for n in d["nodes"]]

    @property
    def ws_outputs(self) -> dict[str, Any]:
        return {d["node"]: d["output"] for d in self.texts("executed")}

    @property
    def history_outputs(self) -> dict[str, Any] | None:
        outputs = self.history.get("outputs") if self.history else None
        return outputs if isinstance(outputs, dict) else None


@dataclass
class Replay:
    path: Path
    records: tuple[Record, ...]
    book: JobBook
    trackers: dict[str, InstanceTracker]
    jobs: list[TraceJob] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)

    @property
    def events(self) -> list[Event]:
        return [e for step in self.steps for e in step.events]

    def events_of(self, tj: TraceJob, type_: str | None = None) -> list[Event]:
        return [e for e in self.events if e.job_id == tj.job.job_id and (type_ is None or e.type == type_)]


class _Unlearning(NodeCosts):
    def learn(self, class_type: str, seconds: float, steps: int = 0, step_s: float | None = None) -> None:
        pass


def replay(
    path: Path,
    defer: int = 0,
    output_classes: Collection[str] | None = None,
    edit_workflow: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    learn: bool = True,
) -> Replay:
    """Replay one trace; ``defer`` delays each ``submitted`` by that many frames of its client.

    ``output_classes`` is passed to every tracker; ``edit_workflow`` changes the prompt
    the sidecar believes it sent (the frames stay as recorded); ``learn=False``: the trackers
    learn no node durations, so every node weighs the same (the default).
    """
    records = load(path)
    labels = client_ids(records)
    seq = Sequencer("run-test")
    book = JobBook(seq)
    trackers: dict[str, InstanceTracker] = {}
    decoders: dict[str, Decoder] = {}
    result = Replay(path, records, book, trackers)
    pending: list[list[Any]] = []  # [frames_left, TraceJob]

    def tracker_for(client_id: str) -> InstanceTracker:
        if client_id not in trackers:
            trackers[client_id] = InstanceTracker(client_id, book, output_classes)
            if not learn:
                trackers[client_id].costs = _Unlearning()
        return trackers[client_id]

    def finalize(index: int, tracker: InstanceTracker, now_ns: int) -> None:
        for job in tracker.history_wanted():
            tj = next(t for t in result.jobs if t.job is job)
            tj.history = history_entry(records, job.prompt_id or "", after=tj.post_index, number=job.number)
            result.steps.append(Step(index, tracker.instance, None, tracker.finalize(job, tj.history, now_ns)))

    def submit(index: int, tj: TraceJob, now_ns: int) -> None:
        tracker = tracker_for(tj.client_id)
        body = tj.post["response"]
        events = tracker.submitted(tj.job, body["prompt_id"], body.get("number"), body.get("node_errors"), now_ns)
        result.steps.append(Step(index, tracker.instance, None, events))
        finalize(index, tracker, now_ns)

    posts = {i for i, r in prompt_posts(records) if r["status"] == 200}
    for i, rec in enumerate(records):
        now_ns = ns(rec["t"])
        if i in posts:
            client_id = rec["request"].get("client_id") if isinstance(rec["request"], dict) else None
            if client_id is None:
                continue  # broadcast prompt: the sidecar always names its client
            job_id = f"job-{len(result.jobs) + 1}"
            workflow = rec["request"]["prompt"]
            if edit_workflow is not None:
                workflow = edit_workflow(workflow)
            job, events = book.accept(job_id, client_id, workflow, {"post": i}, ns(rec["t_request"]))
            result.steps.append(Step(i, client_id, None, events))
            tj = TraceJob(job, i, rec, client_id)
            result.jobs.append(tj)
            if defer:
                pending.append([defer, tj])
            else:
                submit(i, tj, now_ns)
        elif rec["src"] == "ws" and rec["dir"] == "recv":
            label = rec["client"]
            client_id = labels.get(label) or label
            tracker = tracker_for(client_id)
            decoder = decoders.setdefault(label, Decoder())
            frame, is_text = frame_of(rec)
            msg = decoder.decode(frame, is_text=is_text)
            result.steps.append(Step(i, client_id, msg, tracker.feed(msg, now_ns)))
            finalize(i, tracker, now_ns)
            for entry in pending:
                if entry[1].client_id == client_id:
                    entry[0] -= 1
            for entry in [e for e in pending if e[0] <= 0]:
                pending.remove(entry)
                submit(i, entry[1], now_ns)
    for _, tj in pending:
        submit(len(records), tj, ns(records[-1]["t"]))
    _attach_frames(result, labels)
    return result


def _attach_frames(result: Replay, labels: dict[str, str | None]) -> None:
    """Give each job the frames of its own run: its prompt id, its client, from its POST on."""
    records = result.records
    for n, tj in enumerate(result.jobs):
        start = tj.post["t_request"]
        later = [
            o.post["t_request"]
            for o in result.jobs[n + 1 :]
            if o.prompt_id == tj.prompt_id and o.client_id == tj.client_id
        ]
        end = min(later, default=float("inf"))
        running = False
        for i, rec in enumerate(records):
            if not (rec["src"] == "ws" and rec["dir"] == "recv") or not start <= rec["t"] < end:
                continue
            if (labels.get(rec["client"]) or rec["client"]) != tj.client_id:
                continue
            if rec["kind"] == "text":
                data = rec["msg"].get("data") or {}
                if data.get("prompt_id") != tj.prompt_id:
                    continue
                kind = rec["msg"]["type"]
                if kind == "execution_start":
                    running = True
                elif kind in ("execution_success", "execution_error", "execution_interrupted") or (
                    kind == "executing" and data.get("node") is None
                ):
                    running = False
                tj.frames.append((i, rec))
            else:
                meta = rec["header"].get("metadata")
                if meta is not None and meta.get("prompt_id") == tj.prompt_id:
                    tj.frames.append((i, rec))
                elif meta is None and running:
                    tj.frames.append((i, rec))  # type 1: no ids, sent while this run was executing
