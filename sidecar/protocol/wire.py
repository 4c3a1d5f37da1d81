"""The ZeroMQ contract with the backend: requests, replies and events.

Pure: Structs and the functions that turn them into frames and back. This module
is the single source of truth for the wire; ``docs/PROTOCOL.md`` describes it and
``tests/golden/`` freezes its bytes. Evolution rules (msgspec's): add fields only
with defaults, never change a field's type, never reuse or rename an ``op`` or an
event ``type``.

Framing (pyzmq serialization guide): a request is every frame of a ROUTER message;
the last frame is the MessagePack body and all frames before it are the envelope,
echoed back verbatim, which serves DEALER (``[id, body]``) and REQ
(``[id, b"", body]``) clients alike. An event is ``[topic, envelope]``, plus one raw
frame of image bytes when a preview is published inline.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec

__all__ = [
    "BadRequest",
    "Cancel",
    "ErrorBody",
    "Event",
    "GetJob",
    "Health",
    "ListJobs",
    "Pause",
    "Ping",
    "REQUEST_TYPES",
    "Reply",
    "Request",
    "Resume",
    "Snapshot",
    "Submit",
    "decode_request",
    "encode_event",
    "encode_reply",
    "error_reply",
    "expired",
    "family_of",
    "ok_reply",
    "topic_for",
]


# Public: requests (backend -> sidecar) -------------------------------------------------


class Request(msgspec.Struct, kw_only=True, tag_field="op"):
    """Every request carries ``op`` (the tag) and an ``id`` echoed in its reply.

    ``deadline_ns`` (Unix ns, optional): a request read after it is answered ``expired`` and
    has no effect (:func:`expired`). Left out of the encoding when unset, so a request without
    one is the same bytes as before the field existed.
    """

    id: str | None = None
    deadline_ns: int | None | msgspec.UnsetType = msgspec.UNSET


class Submit(Request, tag="submit"):
    """Submit a ComfyUI API-format prompt under a platform job id."""

    workflow: dict[str, Any]
    job_id: str | None = None
    instance: str | None = None
    client_data: Any = None
    queue_anyway: bool = False  # naming an instance that is down: hold the job until it is back
    preview_interval_s: float | None = None  # at most one preview per interval for this job
    #: input files (name -> raw bytes, MessagePack bin) the workflow names by those names; uploaded to
    #: the job's instance before each POST /prompt. Left out of the encoding when unset.
    files: dict[str, bytes] | msgspec.UnsetType = msgspec.UNSET


class Cancel(Request, tag="cancel"):
    job_id: str


class Pause(Request, tag="pause"):
    """Stop a job and hold it in the sidecar (removed from ComfyUI's queue, or interrupted)."""

    job_id: str


class Resume(Request, tag="resume"):
    """Post a paused job again: on ``instance`` when named, else on its own (or the least loaded)."""

    job_id: str
    instance: str | None = None


class GetJob(Request, tag="job"):
    job_id: str


class ListJobs(Request, tag="jobs"):
    """All jobs the sidecar knows; ``active`` True keeps only the unfinished ones."""

    active: bool = False
    instance: str | None = None


class Health(Request, tag="health"):
    pass


class Snapshot(Request, tag="snapshot"):
    pass


class Ping(Request, tag="ping"):
    pass


REQUEST_TYPES: dict[str, type[Request]] = {
    "submit": Submit,
    "cancel": Cancel,
    "job": GetJob,
    "jobs": ListJobs,
    "health": Health,
    "snapshot": Snapshot,
    "ping": Ping,
    "pause": Pause,
    "resume": Resume,
}


_OPS: dict[type[Request], str] = {cls: op for op, cls in REQUEST_TYPES.items()}


def expired(request: Request, now_ns: int) -> Reply | None:
    """The ``expired`` error reply if ``request``'s ``deadline_ns`` is before ``now_ns``, else None.

    The caller answers with it instead of serving the request, so the request has no effect.
    """
    deadline_ns = request.deadline_ns
    if not isinstance(deadline_ns, int) or now_ns <= deadline_ns:
        return None
    late_s = (now_ns - deadline_ns) / 1e9
    return error_reply(
        request.id,
        "expired",
        f"{_OPS.get(type(request), 'request')} expired {late_s:.3f} s before the sidecar read it; not served",
        {"deadline_ns": deadline_ns, "now_ns": now_ns},
    )


class BadRequest(msgspec.Struct):
    """A request that could not be decoded; answered with ``ok: false``."""

    id: str | None
    code: str
    message: str
    details: dict[str, Any] = {}


# Public: replies (sidecar -> backend) --------------------------------------------------


class ErrorBody(msgspec.Struct):
    code: str
    message: str
    details: dict[str, Any] = {}


class Reply(msgspec.Struct, omit_defaults=True):
    """``{"id", "ok": true, "result"}`` or ``{"id", "ok": false, "error"}``."""

    id: str | None
    ok: bool
    result: Any = None
    error: ErrorBody | None = None


def ok_reply(request_id: str | None, result: Any) -> Reply:
    return Reply(id=request_id, ok=True, result=result if result is not None else {})


def error_reply(request_id: str | None, code: str, message: str, details: dict[str, Any] | None = None) -> Reply:
    return Reply(id=request_id, ok=False, error=ErrorBody(code=code, message=message, details=details or {}))


# Public: events (sidecar -> subscribers) -----------------------------------------------


class Event(msgspec.Struct, omit_defaults=True):
    """One published event; ``image`` is never in the envelope but sent as an extra frame.

    ``seq`` grows by one per event over the whole sidecar, ``run`` changes when the
    sidecar restarts, ``ts`` is Unix nanoseconds when the triggering frame arrived
    (or the request was handled). ``job_seq`` (an extension, docs/PROTOCOL.md §6.1) is
    the job's own count of ``job``-family events in this run, nil for other events; it
    has no default here so that ``omit_defaults`` (which keeps ``image`` out of the
    envelope) still writes it when it is nil: clients read an absent key as nil.
    ``sidecar`` (an extension, §6.1) is the publishing sidecar's name (``sidecar.name``),
    the same string object in every event of a process: a subscriber of several
    sidecars keeps ``seq`` per (``sidecar``, ``run``).
    """

    seq: int
    run: str
    ts: int
    type: str
    instance: str
    job_id: str | None
    data: Any
    job_seq: int | None
    sidecar: str
    image: memoryview | bytes | None = None


FAMILIES: dict[str, str] = {
    "instance.status": "instance",
    "heartbeat": "instance",
    "job.accepted": "job",
    "job.queued": "job",
    "job.started": "job",
    "job.completed": "job",
    "job.failed": "job",
    "job.cancelled": "job",
    "job.cancel_unconfirmed": "job",
    "job.pause_unconfirmed": "job",
    "job.resubmitted": "job",
    "job.paused": "job",
    "job.resumed": "job",
    "node.output": "job",
    "output.stored": "job",
    "output.failed": "job",
    "node.executing": "progress",
    "node.cached": "progress",
    "node.progress": "progress",
    "node.text": "progress",
    "job.progress": "progress",
    "preview": "preview",
}

_topics: dict[tuple[str, str], bytes] = {}


def family_of(event_type: str) -> str:
    """The family an event type is published under: ``FAMILIES``, else its name before the first dot."""
    return FAMILIES.get(event_type) or event_type.partition(".")[0]


def topic_for(event_type: str, instance: str) -> bytes:
    """``<family>.<instance>`` as UTF-8; cached, since it is built for every event."""
    key = (event_type, instance)
    topic = _topics.get(key)
    if topic is None:
        family = family_of(event_type)
        topic = f"{family}.{instance}".encode()
        if len(_topics) < 4096:
            _topics[key] = topic
    return topic


# Public: framing ---------------------------------------------------------------------

_encoder = msgspec.msgpack.Encoder()


def encode_event(event: Event, encoder: msgspec.msgpack.Encoder = _encoder) -> list[Any]:
    """``[topic, envelope]``, plus the raw image frame for an inline preview."""
    topic = topic_for(event.type, event.instance)
    image = event.image
    if image is None:
        return [topic, encoder.encode(event)]
    envelope = encoder.encode(msgspec.structs.replace(event, image=None))
    return [topic, envelope, image]


def encode_reply(envelope: list[bytes], reply: Reply, encoder: msgspec.msgpack.Encoder = _encoder) -> list[bytes]:
    """The ROUTER envelope echoed verbatim, then the MessagePack reply."""
    return [*envelope, encoder.encode(reply)]


_loose = msgspec.msgpack.Decoder()
_FIELD = re.compile(r"at `\$\.([^`]+)`|required field `([^`]+)`")


def _describe(value: Any) -> str:
    names = {
        dict: "a map",
        list: "an array",
        str: "a string",
        bytes: "bytes",
        int: "an integer",
        float: "a float",
        bool: "a bool",
        type(None): "nil",
    }
    return names.get(type(value), f"a {type(value).__name__}")


def decode_request(frames: list[bytes]) -> tuple[list[bytes], Request | BadRequest]:
    """Split a ROUTER message into its envelope and a request, or a :class:`BadRequest`.

    Never raises. The ``id`` is recovered whenever the body is at least a map, so
    even a request with a bad field gets a reply its sender can match.
    """
    if not frames:
        return [], BadRequest(id=None, code="malformed_request", message="empty message")
    envelope, body = list(frames[:-1]), frames[-1]
    try:
        obj = _loose.decode(body)
    except (msgspec.DecodeError, ValueError) as exc:  # UnicodeDecodeError: a str that is not UTF-8
        return envelope, BadRequest(
            id=None, code="malformed_request", message=f"request body is not MessagePack: {exc}"
        )
    except RecursionError:  # arrays or maps nested deeper than the interpreter's recursion limit
        return envelope, BadRequest(
            id=None, code="malformed_request", message="request body is nested too deeply to decode"
        )
    if not isinstance(obj, dict):
        return envelope, BadRequest(
            id=None, code="malformed_request", message=f"request body must be a map, got {_describe(obj)}"
        )
    raw_id = obj.get("id")
    request_id = raw_id if isinstance(raw_id, str) else None
    if raw_id is not None and request_id is None:
        return envelope, BadRequest(
            id=None,
            code="invalid_request",
            message=f"field 'id' must be a string, got {_describe(raw_id)}",
            details={"field": "id"},
        )
    op = obj.get("op")
    if op is None:
        return envelope, BadRequest(
            id=request_id, code="invalid_request", message="missing field 'op'", details={"field": "op"}
        )
    if not isinstance(op, str):
        return envelope, BadRequest(
            id=request_id,
            code="invalid_request",
            message=f"field 'op' must be a string, got {_describe(op)}",
            details={"field": "op"},
        )
    cls = REQUEST_TYPES.get(op)
    if cls is None:
        return envelope, BadRequest(
            id=request_id,
            code="unknown_op",
            message=f"unknown op {op!r}; known ops: {', '.join(REQUEST_TYPES)}",
            details={"op": op, "known": list(REQUEST_TYPES)},
        )
    try:
        request = msgspec.convert(obj, cls, strict=True)
    except msgspec.ValidationError as exc:
        text = str(exc)
        match = _FIELD.search(text)
        field = match.group(1) or match.group(2) if match else None
        return envelope, BadRequest(
            id=request_id,
            code="invalid_request",
            message=f"{op}: {text}",
            details={"field": field} if field else {},
        )
    except RecursionError:
        return envelope, BadRequest(
            id=request_id, code="invalid_request", message=f"{op}: request body is nested too deeply"
        )
    return envelope, request
