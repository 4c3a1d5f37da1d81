"""Fuzzing targets shared by the property tests (``tests/test_fuzz_properties.py``) and the long
runs (``bench/fuzz.py``): each takes one input and either returns the kind of result it got or
raises AssertionError (a broken invariant); any other exception escaping is a crash.

Inputs come from the vendored traces, mutated by :mod:`sidecar.simulator.fuzz`, and from
random values. Pure: no I/O but reading the traces once.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable
from typing import Any

import msgspec
import tomli_w

from sidecar.config import BridgeConfig, default_toml, loads
from sidecar.core.jobs import JobBook
from sidecar.core.sequence import Sequencer
from sidecar.core.tracker import InstanceTracker
from sidecar.errors import ConfigError
from sidecar.protocol import comfy
from sidecar.protocol.wire import BadRequest, Request, decode_request, encode_reply, error_reply, expired
from sidecar.simulator.fuzz import mutate, random_json
from tests.tracesupport import Record, client_ids, frame_of, history_entry, load, ns, prompt_posts, trace_paths

__all__ = [
    "FINAL",
    "MESSAGES",
    "check_config",
    "check_frame",
    "check_request",
    "check_tracker",
    "deep",
    "random_config_text",
    "random_request",
    "trace_frames",
]

FINAL = frozenset({"job.completed", "job.failed", "job.cancelled"})
MESSAGES = (
    *comfy.TEXT_TYPES.values(),
    comfy.PreviewImage,
    comfy.PreviewWithMetadata,
    comfy.ProgressText,
    comfy.Unknown,
    comfy.Malformed,
    comfy.Skipped,
)


@functools.cache
def trace_frames() -> tuple[tuple[bytes, bool], ...]:
    """Every frame every recorded server sent: ``(frame, is_text)``."""
    out = []
    for path in trace_paths():
        for rec in load(path):
            if rec.get("src") == "ws" and rec.get("dir") == "recv" and (rec["kind"] == "text" or rec.get("b64")):
                out.append(frame_of(rec))
    return tuple(out)


def deep(depth: int, text: bool = True) -> bytes:
    """JSON (or MessagePack) arrays nested ``depth`` deep."""
    return b"[" * depth + b"]" * depth if text else b"\x91" * depth + b"\xc0"


# The frame decoder ------------------------------------------------------------------------

_decoders = (comfy.Decoder(), comfy.Decoder(skip=("progress_state",)))


def check_frame(frame: bytes, is_text: bool | None) -> str:
    """Decode one frame with both decoder set-ups; the result must be a message value."""
    kind = ""
    for decoder in _decoders:
        msg = decoder.decode(frame, is_text=is_text)
        assert isinstance(msg, MESSAGES), f"decode returned {type(msg).__name__}"
        if isinstance(msg, comfy.Malformed):
            assert msg.reason, "Malformed without a reason"
        kind = type(msg).__name__
    return kind


def random_frame(rng: random.Random) -> tuple[bytes, bool | None]:
    """A mutated trace frame, random bytes, or random JSON, with how it is flagged."""
    frames = trace_frames()
    pick = rng.randrange(10)
    if pick < 7:
        frame, is_text = rng.choice(frames)
        for _ in range(rng.randrange(1, 3)):
            frame, is_text = mutate(rng, frame, is_text, [f for f, _ in frames[:64]])
        return frame, is_text
    if pick == 7:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(40))), rng.choice((True, False, None))
    if pick == 8:
        return msgspec.json.encode(random_json(rng, 4)), True
    value = random_json(rng, 3)
    return msgspec.json.encode({"type": rng.choice(list(comfy.TEXT_TYPES)), "data": value}), True


# The request decoder ----------------------------------------------------------------------

_OPS = ("submit", "cancel", "job", "jobs", "health", "snapshot", "ping", "", "SUBMIT", "nope")
_FIELDS = (
    "id",
    "op",
    "workflow",
    "job_id",
    "instance",
    "client_data",
    "queue_anyway",
    "preview_interval_s",
    "active",
    "deadline_ns",
    "x",
)


def random_msgpack(rng: random.Random, depth: int = 3) -> Any:
    pick = rng.randrange(12 if depth > 0 else 9)
    if pick == 0:
        return rng.choice((2**64 - 1, -(2**63), 2**63, 0, -1, 10**18))
    if pick == 1:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(8)))
    if pick == 2:
        return msgspec.msgpack.Ext(rng.randrange(-128, 128), b"\x00" * rng.randrange(4))
    if pick == 3:
        return rng.choice((float("nan"), float("inf"), -0.0, 1e300))
    if pick < 9:
        value = random_json(rng, 0)
        return value if not isinstance(value, int) or -(2**63) <= value < 2**64 else 2**64 - 1
    if pick == 9:
        return [random_msgpack(rng, depth - 1) for _ in range(rng.randrange(4))]
    if pick == 10:  # a map with keys that are not strings
        return {rng.choice((1, 2.5, b"k", None, True)): random_msgpack(rng, depth - 1) for _ in range(2)}
    return {rng.choice(_FIELDS): random_msgpack(rng, depth - 1) for _ in range(rng.randrange(4))}


def random_request(rng: random.Random) -> list[bytes]:
    """ROUTER frames: an envelope and a body that may be anything."""
    envelope = [b"client-1"] + ([b""] if rng.random() < 0.3 else [])
    pick = rng.randrange(10)
    if pick == 0:
        body = bytes(rng.randrange(256) for _ in range(rng.randrange(30)))
    elif pick == 1:
        body = deep(rng.choice((10, 999, 1000, 5000, 100_000)), text=False)
    elif pick == 2:
        body = msgspec.msgpack.encode(random_msgpack(rng))
    elif pick == 3 and rng.random() < 0.5:
        return []
    else:
        obj = {k: random_msgpack(rng) for k in rng.sample(_FIELDS, rng.randrange(len(_FIELDS)))}
        obj["op"] = rng.choice(_OPS)
        if rng.random() < 0.5:
            obj["id"] = "r-1"
        if obj["op"] == "submit" and rng.random() < 0.5:
            obj["workflow"] = {"1": {"class_type": "KSampler", "inputs": {"seed": random_msgpack(rng)}}}
        body = msgspec.msgpack.encode(obj)
        if rng.random() < 0.2 and body:  # cut or damage it
            at = rng.randrange(len(body))
            body = body[:at] if rng.random() < 0.5 else body[:at] + bytes([rng.randrange(256)]) + body[at + 1 :]
    return [*envelope, body]


_reply_decoder = msgspec.msgpack.Decoder()


def check_request(frames: list[bytes]) -> str:
    """Decode a request as the ROUTER does; a bad one must yield a reply that encodes."""
    envelope, request = decode_request(frames)
    assert envelope == list(frames[:-1])
    if isinstance(request, BadRequest):
        assert request.message and request.code in ("malformed_request", "invalid_request", "unknown_op")
        reply = error_reply(request.id, request.code, request.message, request.details)
        out = encode_reply(envelope, reply)
        body = _reply_decoder.decode(out[-1])
        assert body["ok"] is False and body["error"]["code"] == request.code and "id" in body
        return f"bad:{request.code}"
    assert isinstance(request, Request)
    late = expired(request, 1_700_000_000_000_000_000)
    if late is not None:
        encode_reply(envelope, late)
        return "expired"
    return f"ok:{type(request).__name__}"


# The config loader ------------------------------------------------------------------------

_DEFAULT_LINES = default_toml().splitlines()
_TABLE_KEYS = {f.encode_name: f for f in msgspec.structs.fields(BridgeConfig)}


def _toml_value(rng: random.Random, depth: int = 2) -> Any:
    import datetime

    pick = rng.randrange(9 if depth > 0 else 7)
    if pick == 0:
        return rng.choice((0, -1, 1, -3, 2**63 - 1, -(2**63)))
    if pick == 1:
        return rng.choice((0.0, -5.0, 1e-9, float("inf"), float("-inf"), float("nan"), 1e308))
    if pick == 2:
        return rng.random() < 0.5
    if pick == 3:
        return rng.choice(
            (
                "",
                "LOUD",
                "INFO",
                "http://[::1",
                "http://\uff03x/",
                "tcp://0.0.0.0:1",
                "files",
                "127.0.0.1:99999",
                "[::1]:9464",
                ":",
                "x" * 70,
                "http://127.0.0.1:8188",
            )
        )
    if pick == 4:
        return datetime.datetime(2020, 1, 2, 3, 4, 5)
    if pick in (5, 6):
        return rng.choice(("none", "inline", "\x00", "\u00e9"))
    if pick == 7:
        return [_toml_value(rng, depth - 1) for _ in range(rng.randrange(3))]
    return {rng.choice(("url", "headers", "a", "level")): _toml_value(rng, depth - 1) for _ in range(2)}


def random_config_text(rng: random.Random) -> str:
    """A TOML document: random tables and values, a mutated default file, or text that may not be TOML."""
    pick = rng.randrange(4)
    if pick == 0:  # known tables, known and unknown keys, values of any type
        doc: dict[str, Any] = {}
        for _ in range(rng.randrange(1, 4)):
            table = rng.choice([*_TABLE_KEYS, "zzz"])
            if table == "instances":
                name = rng.choice(("local", "a b", "x" * 70, "ok-1"))
                doc.setdefault("instances", {})[name] = {
                    rng.choice(("url", "headers", "client_id", "nope")): _toml_value(rng) for _ in range(2)
                }
                continue
            if table == "fleet":  # [fleet.NAME] tables, like instances
                name = rng.choice(("gpu-a", "a b", "x" * 70))
                doc.setdefault("fleet", {})[name] = {
                    rng.choice(("router", "pub", "nope")): _toml_value(rng) for _ in range(2)
                }
                continue
            field = _TABLE_KEYS.get(table)
            keys = [f.encode_name for f in msgspec.structs.fields(field.type)] if field is not None else ["k"]
            doc[table] = {rng.choice([*keys, "typo"]): _toml_value(rng) for _ in range(rng.randrange(1, 4))}
        return tomli_w.dumps(doc)
    if pick == 1:  # the default file with a few lines changed
        lines = list(_DEFAULT_LINES)
        for _ in range(rng.randrange(1, 4)):
            at = rng.randrange(len(lines))
            line = lines[at]
            if " = " in line and rng.random() < 0.7:
                key = line.split(" = ", 1)[0]
                lines[at] = f"{key} = {tomli_w.dumps({'v': _toml_value(rng)}).split('=', 1)[1].strip()}"
            else:
                cut = rng.randrange(len(line) + 1)
                lines[at] = line[:cut] + rng.choice(("", "=", "[", '"', "]]", "\x7f", "\ud7ff")) + line[cut:]
        return "\n".join(lines)
    if pick == 2:
        return "".join(chr(rng.choice((rng.randrange(32, 127), rng.randrange(0x10FFFF)))) for _ in range(40))
    return rng.choice(("[instances.a]\nurl = ", "x = 1\nx = 2", "[zmq]\n[zmq]", "a.b = 1\n[a]\nb = 2", ""))


def check_config(text: str) -> str:
    """Load a config text: a BridgeConfig, or a ConfigError with a message; nothing else."""
    try:
        loads(text)
    except ConfigError as exc:
        assert str(exc), "ConfigError without a message"
        return "ConfigError"
    return "ok"


# The tracker ------------------------------------------------------------------------------


def check_tracker(path_index: int, rng: random.Random, rate: float) -> str:
    """Replay one trace with mutated, dropped, duplicated and foreign frames fed to the tracker.

    Invariants: feed and finalize never raise; a job's ``job.progress`` never decreases; at
    most one final event per job.
    """
    paths = trace_paths()
    path = paths[path_index % len(paths)]
    records = load(path)
    labels = client_ids(records)
    seq = Sequencer("run-fuzz")
    book = JobBook(seq)
    trackers: dict[str, InstanceTracker] = {}
    decoder = comfy.Decoder()
    others = [f for f, _ in trace_frames()[:64]]
    posts = {i for i, r in prompt_posts(records) if r["status"] == 200}
    percent: dict[str, float] = {}
    finals: dict[str, int] = {}
    jobs = 0

    def tracker_for(client_id: str) -> InstanceTracker:
        if client_id not in trackers:
            trackers[client_id] = InstanceTracker(client_id, book)
        return trackers[client_id]

    def observe(events: list[Any]) -> None:
        for event in events:
            if event.type == "job.progress":
                last = percent.get(event.job_id, 0.0)
                assert event.data.percent >= last, f"{event.job_id}: progress {last} -> {event.data.percent}"
                percent[event.job_id] = event.data.percent
            elif event.type in FINAL:
                finals[event.job_id] = finals.get(event.job_id, 0) + 1
                assert finals[event.job_id] == 1, f"{event.job_id}: a second final event {event.type}"

    def finalize(tracker: InstanceTracker, now_ns: int, after: int) -> None:
        for job in tracker.history_wanted():
            history: Any = history_entry(records, job.prompt_id or "", after=after)
            if rng.random() < rate:
                history = rng.choice((None, {}, random_json(rng, 3), {"status": random_json(rng, 2)}))
            observe(tracker.finalize(job, history, now_ns))

    def feed(tracker: InstanceTracker, frame: bytes, is_text: bool, now_ns: int, index: int) -> None:
        msg = decoder.decode(frame, is_text=is_text)
        observe(tracker.feed(msg, now_ns))
        finalize(tracker, now_ns, index)

    for i, rec in enumerate(records):
        now_ns = ns(rec["t"])
        if i in posts:
            client_id = rec["request"].get("client_id") if isinstance(rec["request"], dict) else None
            if client_id is None:
                continue
            jobs += 1
            tracker = tracker_for(client_id)
            job, events = book.accept(f"job-{jobs}", client_id, rec["request"]["prompt"], None, ns(rec["t_request"]))
            observe(events)
            body = rec["response"]
            observe(tracker.submitted(job, body["prompt_id"], body.get("number"), body.get("node_errors"), now_ns))
            finalize(tracker, now_ns, i)
        elif rec["src"] == "ws" and rec["dir"] == "recv" and (rec["kind"] == "text" or rec.get("b64")):
            tracker = tracker_for(labels.get(rec["client"]) or rec["client"])
            frame, is_text = frame_of(rec)
            roll = rng.random()
            if roll < rate * 0.2:
                continue  # dropped
            if roll < rate * 0.4:
                feed(tracker, frame, is_text, now_ns, i)  # duplicated
            elif roll < rate:
                frame, is_text = mutate(rng, frame, is_text, others)
            feed(tracker, frame, is_text, now_ns, i)
            if rng.random() < rate * 0.3:  # a frame from another trace (a foreign prompt)
                other, other_text = rng.choice(trace_frames())
                feed(tracker, other, other_text, now_ns, i)
    return f"{sum(finals.values())}/{jobs} ended"


TARGETS: dict[str, Callable[[random.Random], str]] = {
    "decoder": lambda rng: check_frame(*random_frame(rng)),
    "requests": lambda rng: check_request(random_request(rng)),
    "config": lambda rng: check_config(random_config_text(rng)),
    "tracker": lambda rng: check_tracker(rng.randrange(1000), rng, rng.choice((0.05, 0.2, 0.5))),
}

__all__ += ["Record", "TARGETS", "random_frame", "random_msgpack"]
