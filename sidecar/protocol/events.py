"""The ``data`` of each published event type, and the views returned by requests.

Pure. Part of the wire contract (``docs/PROTOCOL.md``): add fields only with
defaults, never change a type, never rename. ``EVENT_TYPES`` lists every event
``type`` with the Struct its ``data`` is; a test checks each one is documented.
"""

from __future__ import annotations

from typing import Any

import msgspec

__all__ = [
    "EVENT_TYPES",
    "CurveCounters",
    "EventCounters",
    "HealthView",
    "Heartbeat",
    "InstanceStatus",
    "InstanceView",
    "JobAccepted",
    "JobCancelUnconfirmed",
    "JobCancelled",
    "JobCompleted",
    "JobFailed",
    "JobPaused",
    "JobProgress",
    "JobQueued",
    "JobResubmitted",
    "JobResumed",
    "JobStarted",
    "JobView",
    "NodeCached",
    "NodeExecuting",
    "NodeOutput",
    "NodeProgress",
    "NodeText",
    "OutputCounters",
    "PreviewCounters",
    "PreviewPublished",
    "StoreCounters",
    "StoredOutput",
]


class InstanceStatus(msgspec.Struct):
    """An instance changed state: ``connecting``, ``connected``, ``degraded``, ``disconnected``, ``waiting``."""

    state: str
    url: str
    version: str | None = None
    error: str | None = None
    next_attempt_ns: int | None = None


class Heartbeat(msgspec.Struct):
    """Sent when no other event went out for ``zmq.heartbeat_s``: the sidecar is alive."""

    instances_up: int
    instances: int
    jobs_active: int


class JobAccepted(msgspec.Struct):
    """The sidecar took the job; it will reach a final state, published and stored."""

    instance: str
    client_data: Any = None


class JobQueued(msgspec.Struct):
    """ComfyUI accepted the prompt: its id and queue number."""

    prompt_id: str
    number: int | None = None
    client_data: Any = None


class JobStarted(msgspec.Struct):
    prompt_id: str
    client_data: Any = None


class NodeExecuting(msgspec.Struct):
    node: str
    class_type: str | None = None
    title: str | None = None
    display_node: str | None = None


class NodeCached(msgspec.Struct):
    nodes: list[str]


class NodeProgress(msgspec.Struct):
    node: str | None
    value: int | float
    max: int | float


class NodeText(msgspec.Struct):
    """A node's progress text (ComfyUI binary frame type 3); ``node`` None when ComfyUI sent none."""

    node: str | None
    text: str


class JobProgress(msgspec.Struct):
    """Overall percentage (weighted by what each node costs): never decreases, exactly 100.0 on success.

    ``eta_s``: seconds of work still to run as estimated then; nil when unknown.
    """

    percent: float
    eta_s: float | None = None


class NodeOutput(msgspec.Struct):
    """An output node finished; ``output`` is ComfyUI's ui dict (images, text, ...)."""

    node: str
    output: Any
    display_node: str | None = None


class PreviewPublished(msgspec.Struct):
    """A preview image; inline ones carry the bytes as the message's extra frame."""

    node: str | None
    format: str
    size_bytes: int
    index: int
    inline: bool = True
    ref: str | None = None


class StoredOutput(msgspec.Struct):
    """One file output of a job (a ``{filename, subfolder, type}`` entry of an ``executed`` output)
    and where the output store keeps its copy: the data of ``output.stored`` and ``output.failed``,
    and an item of the final events' and JobView's ``stored``.

    ``state``: ``pending`` (still being fetched), ``stored`` (``ref``, ``size_bytes``,
    ``sha256`` set) or ``failed`` (``error`` says why).
    """

    node: str
    filename: str
    subfolder: str
    type: str
    state: str
    prompt_id: str | None = None
    ref: str | None = None
    size_bytes: int | None = None
    sha256: str | None = None
    content_type: str | None = None
    error: str | None = None
    attempts: int = 0


class JobCompleted(msgspec.Struct):
    prompt_id: str
    outputs: dict[str, Any]
    client_data: Any = None
    stored: list[StoredOutput] = []


class JobFailed(msgspec.Struct):
    """``code`` is a stable reason (``execution_error``, ``workflow_rejected``, ...)."""

    code: str
    message: str
    prompt_id: str | None = None
    node: str | None = None
    node_type: str | None = None
    exception_type: str | None = None
    traceback: list[str] = []
    details: dict[str, Any] = {}
    outputs: dict[str, Any] = {}
    client_data: Any = None
    stored: list[StoredOutput] = []


class JobCancelled(msgspec.Struct):
    """The job stopped because it was cancelled; ``outputs`` are those finished before it stopped.

    ``confirmed_by``: ``execution_interrupted`` (ComfyUI said so), ``queue`` (it left the
    queue without running), ``history`` (its history shows it stopped), or ``sidecar``
    (cancelled before ComfyUI ever had it).
    """

    confirmed_by: str
    prompt_id: str | None = None
    node: str | None = None
    node_type: str | None = None
    outputs: dict[str, Any] = {}
    client_data: Any = None
    stored: list[StoredOutput] = []


class JobCancelUnconfirmed(msgspec.Struct):
    """No confirmation of a cancel (or, as ``job.pause_unconfirmed``, of a pause) within
    ``cancel.confirm_timeout_s``; the job is still tracked to its real end."""

    prompt_id: str | None
    waited_s: float
    method: str


class JobResubmitted(msgspec.Struct):
    """ComfyUI lost the job (a restart), or its instance stayed unreachable (failover); it was
    submitted again as ``prompt_id`` on ``instance``, moved from ``previous_instance``."""

    prompt_id: str
    previous_prompt_id: str | None
    attempt: int
    previous_instance: str | None = None
    instance: str | None = None


class JobPaused(msgspec.Struct):
    """A ``pause`` took effect: ComfyUI no longer has the prompt and the sidecar holds the job.

    ``confirmed_by`` as for :class:`JobCancelled`; ``node``: the node interrupted (it restarts
    from its first step on ``resume``); ``outputs``: those finished before it stopped; ``percent``:
    the job's percentage, kept (``job.progress`` goes on from it after ``resume``).
    """

    confirmed_by: str
    prompt_id: str | None = None
    node: str | None = None
    node_type: str | None = None
    percent: float = 0.0
    outputs: dict[str, Any] = {}
    client_data: Any = None


class JobResumed(msgspec.Struct):
    """A ``resume`` took effect: the paused job is posted again on ``instance`` (``job.queued`` follows)."""

    previous_prompt_id: str | None
    instance: str
    previous_instance: str
    percent: float = 0.0
    client_data: Any = None


EVENT_TYPES: dict[str, type[msgspec.Struct]] = {
    "instance.status": InstanceStatus,
    "heartbeat": Heartbeat,
    "job.accepted": JobAccepted,
    "job.queued": JobQueued,
    "job.started": JobStarted,
    "node.executing": NodeExecuting,
    "node.cached": NodeCached,
    "node.progress": NodeProgress,
    "node.text": NodeText,
    "job.progress": JobProgress,
    "node.output": NodeOutput,
    "preview": PreviewPublished,
    "job.completed": JobCompleted,
    "job.failed": JobFailed,
    "job.cancelled": JobCancelled,
    "job.cancel_unconfirmed": JobCancelUnconfirmed,
    "job.pause_unconfirmed": JobCancelUnconfirmed,  # the same fields, for a pause
    "job.resubmitted": JobResubmitted,
    "job.paused": JobPaused,
    "job.resumed": JobResumed,
    "output.stored": StoredOutput,
    "output.failed": StoredOutput,
}


# Views returned by requests -----------------------------------------------------------


class JobView(msgspec.Struct):
    job_id: str
    instance: str
    state: str
    prompt_id: str | None
    percent: float
    current_node: str | None
    created_ns: int
    updated_ns: int
    outputs: dict[str, Any]
    error: JobFailed | None
    client_data: Any = None
    cancel_requested: bool = False
    attempts: int = 1
    job_seq: int = 0
    current_class: str | None = None
    pause_requested: bool = False
    stored: list[StoredOutput] = []


class InstanceView(msgspec.Struct):
    name: str
    url: str
    state: str
    client_id: str
    version: str | None
    last_connected_ns: int | None
    last_error: str | None
    queue_remaining: int
    in_flight: int
    frames: int
    malformed: int
    unknown: int
    adapter: str | None = None


class EventCounters(msgspec.Struct):
    """``health``'s ``events``: the publisher's counters (``Publisher.stats()``, one field per key)."""

    published: int
    dropped: dict[str, int]
    backlog: int = 0  # always 0 since each subscriber has its own queue (PROTOCOL.md §5.8)
    backlog_peak: int = 0
    hwm: int = 0


class PreviewCounters(msgspec.Struct):
    """``health``'s ``previews``: the preview store's name and the preview writer's counts.

    The counts stay 0 for a store that writes nothing off the read loop (``inline``, ``none``).
    """

    store: str
    queued: int = 0
    written: int = 0
    dropped: int = 0
    failed: int = 0
    too_big: int = 0  # preview images over limits.preview_bytes, dropped before the store (any store)


class OutputCounters(msgspec.Struct):
    """``health``'s ``outputs``: the output store's name and the output fetcher's counts.

    Every file output offered ends in exactly one of ``fetched`` and ``failed``; until then it is
    ``pending`` (waiting or being fetched). The counts stay 0 with the ``none`` store.
    """

    store: str
    fetched: int = 0
    failed: int = 0
    pending: int = 0
    bytes: int = 0
    retries: int = 0


class StoreCounters(msgspec.Struct):
    """``health``'s ``store``: the state file and its write counters."""

    path: str
    writes: int
    errors: int


class CurveCounters(msgspec.Struct):
    """health's ``curve``: is ZeroMQ CURVE on, how many client keys are allowed, handshakes let in and
    refused (by key; a client without keys fails before, uncounted). Never a key."""

    enabled: bool = False
    clients: int = 0
    accepted: int = 0
    refused: int = 0


class HealthView(msgspec.Struct):
    """The result of ``health``; the golden fixture is built from this Struct too."""

    run: str
    seq: int
    instances: list[InstanceView]
    events_published: int
    events: EventCounters
    requests_served: int
    bad_requests: int
    previews: PreviewCounters
    store: StoreCounters
    outputs: OutputCounters | None = None
    curve: CurveCounters = msgspec.field(default_factory=CurveCounters)  # an extension (section 10)
    sidecar: str = ""  # sidecar.name (an extension: older sidecars do not send it)
