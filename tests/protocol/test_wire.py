"""The ZeroMQ contract in bytes: golden fixtures, framing, envelope echo, bad requests.

Pure: no sockets. The golden files in ``tests/golden/`` are frozen; these tests
re-encode the generator's example values and fail on any byte difference.
"""

from __future__ import annotations

import importlib.util
import random
from pathlib import Path
from typing import Any

import msgspec
import pytest

from sidecar.errors import CODES
from sidecar.protocol import wire
from sidecar.protocol.events import EVENT_TYPES

GOLDEN = Path(__file__).resolve().parent.parent / "golden"


def _load_generator() -> Any:
    spec = importlib.util.spec_from_file_location("make_golden", GOLDEN / "make_golden.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gen = _load_generator()
REQUESTS: dict[str, wire.Request] = gen.requests()
REPLIES: dict[str, wire.Reply] = gen.replies()
EVENTS: dict[str, wire.Event] = gen.events()


def golden(name: str) -> bytes:
    return (GOLDEN / name).read_bytes()


def pack(obj: Any) -> bytes:
    return msgspec.msgpack.encode(obj)


# Coverage of the fixtures ---------------------------------------------------------------


def test_every_request_op_has_a_golden_fixture() -> None:
    """Each op in REQUEST_TYPES has an example and a frozen request file."""
    assert set(REQUESTS) == set(wire.REQUEST_TYPES)
    for op in wire.REQUEST_TYPES:
        assert (GOLDEN / f"request-{op}.msgpack").is_file(), op


def test_every_event_type_has_a_golden_fixture() -> None:
    """Each type in EVENT_TYPES has an example and frozen topic and envelope files."""
    assert set(EVENTS) == set(EVENT_TYPES)
    for type_ in EVENT_TYPES:
        assert (GOLDEN / f"event-{type_}.topic").is_file(), type_
        assert (GOLDEN / f"event-{type_}.msgpack").is_file(), type_


def test_golden_directory_holds_no_stale_fixture() -> None:
    """Every frame file in tests/golden is still produced by the generator."""
    made = set(gen.frames())
    on_disk = {p.name for p in GOLDEN.iterdir() if p.suffix in (".msgpack", ".topic", ".image")}
    assert on_disk == made


def test_golden_json_renders_every_msgpack_fixture() -> None:
    """golden.json is the decoded value of each .msgpack file."""
    rendered = msgspec.json.decode(golden("golden.json"))
    files = {p.name: p.read_bytes() for p in GOLDEN.glob("*.msgpack")}
    assert set(rendered) == set(files)
    for name, body in files.items():
        assert msgspec.json.decode(msgspec.json.encode(msgspec.msgpack.decode(body))) == rendered[name], name


# Requests -------------------------------------------------------------------------------


@pytest.mark.parametrize("op", list(wire.REQUEST_TYPES))
def test_request_struct_encodes_to_the_golden_bytes(op: str) -> None:
    """Field names, tag and order of each request are frozen."""
    assert pack(REQUESTS[op]) == golden(f"request-{op}.msgpack")


@pytest.mark.parametrize("op", list(wire.REQUEST_TYPES))
def test_decode_request_turns_each_golden_request_into_its_struct(op: str) -> None:
    """decode_request gives the Struct REQUEST_TYPES names, equal to the example."""
    envelope, request = wire.decode_request([b"peer", golden(f"request-{op}.msgpack")])
    assert envelope == [b"peer"]
    assert type(request) is wire.REQUEST_TYPES[op]
    assert request == REQUESTS[op]


def test_request_with_only_op_decodes_with_null_id_and_defaults() -> None:
    """Optional fields, ``id`` included, may be left out."""
    _, request = wire.decode_request([pack({"op": "jobs"})])
    assert request == wire.ListJobs(id=None, active=False, instance=None)


def test_submit_without_job_id_decodes_with_job_id_none() -> None:
    """``job_id`` is optional on submit (the sidecar then generates one)."""
    _, request = wire.decode_request([pack({"op": "submit", "id": "a", "workflow": {"1": {}}})])
    assert isinstance(request, wire.Submit)
    assert request.job_id is None and request.instance is None and request.client_data is None


def test_optional_field_sent_as_nil_equals_field_left_out() -> None:
    """nil and absent mean the same for an optional request field."""
    _, with_nil = wire.decode_request([pack({"op": "submit", "workflow": {}, "job_id": None, "instance": None})])
    _, absent = wire.decode_request([pack({"op": "submit", "workflow": {}})])
    assert with_nil == absent


def test_unknown_request_fields_are_ignored() -> None:
    """A newer client's extra fields do not break an older sidecar (evolution rule)."""
    _, request = wire.decode_request([pack({"op": "ping", "id": "a", "trace": {"span": 1}})])
    assert request == wire.Ping(id="a")


def test_request_keys_may_come_in_any_order() -> None:
    """``op`` need not be the first key of the map."""
    _, request = wire.decode_request([pack({"job_id": "j", "id": "a", "op": "job"})])
    assert request == wire.GetJob(id="a", job_id="j")


# deadline_ns ----------------------------------------------------------------------------

MORE_REQUESTS: dict[str, wire.Request] = gen.more_requests()


@pytest.mark.parametrize("name", list(MORE_REQUESTS))
def test_more_request_examples_encode_to_and_decode_from_their_golden_bytes(name: str) -> None:
    """``request-cancel-deadline``: the common field ``deadline_ns`` travels after ``id``."""
    assert pack(MORE_REQUESTS[name]) == golden(f"request-{name}.msgpack")
    _, request = wire.decode_request([b"peer", golden(f"request-{name}.msgpack")])
    assert request == MORE_REQUESTS[name]


def test_a_request_without_deadline_has_no_deadline_key() -> None:
    """Unset, ``deadline_ns`` is not encoded: requests keep the bytes they had before the field."""
    assert "deadline_ns" not in msgspec.msgpack.decode(golden("request-cancel.msgpack"))
    _, request = wire.decode_request([pack({"op": "ping", "id": "a", "deadline_ns": None})])
    assert request == wire.Ping(id="a", deadline_ns=None) and wire.expired(request, 10**19) is None


@pytest.mark.parametrize("op", list(wire.REQUEST_TYPES))
def test_every_op_takes_a_deadline(op: str) -> None:
    """``deadline_ns`` is common to every request."""
    by_job = ("cancel", "job", "pause", "resume")
    fields = {"workflow": {}} if op == "submit" else {"job_id": "j"} if op in by_job else {}
    _, request = wire.decode_request([pack({"op": op, "id": "a", "deadline_ns": 5, **fields})])
    assert isinstance(request, wire.REQUEST_TYPES[op]) and request.deadline_ns == 5


def test_a_request_read_after_its_deadline_is_expired_with_both_times() -> None:
    """``expired`` gives the error reply only strictly after the deadline; details name both clocks."""
    _, request = wire.decode_request([pack({"op": "cancel", "id": "a", "job_id": "j", "deadline_ns": 1_000})])
    assert isinstance(request, wire.Request)
    assert wire.expired(request, 999) is None and wire.expired(request, 1_000) is None
    reply = wire.expired(request, 2_000)
    assert reply is not None and reply.id == "a" and reply.ok is False and reply.error is not None
    assert reply.error.code == "expired" and reply.error.code in CODES
    assert reply.error.details == {"deadline_ns": 1_000, "now_ns": 2_000}
    assert "cancel" in reply.error.message and "expired" in reply.error.message
    assert wire.expired(wire.Cancel(id="b", job_id="j"), 10**19) is None


@pytest.mark.parametrize("value", ["5", 1.5, True, [5]], ids=["string", "float", "bool", "array"])
def test_a_deadline_that_is_not_an_integer_is_an_invalid_request(value: Any) -> None:
    """Strict types: the field is named in the error."""
    _, bad = wire.decode_request([pack({"op": "ping", "id": "a", "deadline_ns": value})])
    assert isinstance(bad, wire.BadRequest) and bad.code == "invalid_request"
    assert bad.details == {"field": "deadline_ns"} and bad.id == "a"


# Envelope echo --------------------------------------------------------------------------


def test_dealer_message_envelope_is_the_identity_frame() -> None:
    """A DEALER client's message arrives as ``[id, body]``: the envelope is ``[id]``."""
    envelope, request = wire.decode_request([b"\x00k\x8bEg", golden("request-ping.msgpack")])
    assert envelope == [b"\x00k\x8bEg"]
    assert request == REQUESTS["ping"]


def test_req_message_envelope_keeps_the_empty_delimiter() -> None:
    """A REQ client's message arrives as ``[id, b"", body]``: the envelope is ``[id, b""]``."""
    envelope, request = wire.decode_request([b"\x00k\x8bEh", b"", golden("request-ping.msgpack")])
    assert envelope == [b"\x00k\x8bEh", b""]
    assert request == REQUESTS["ping"]


@pytest.mark.parametrize(
    "envelope",
    [[b"\x00k\x8bEg"], [b"\x00k\x8bEh", b""], [b"proxy", b"\x00client", b""]],
    ids=["dealer", "req", "through-a-proxy"],
)
def test_reply_echoes_the_envelope_verbatim_then_the_body(envelope: list[bytes]) -> None:
    """encode_reply gives ``[*envelope, body]`` for every client shape."""
    frames = [*envelope, golden("request-ping.msgpack")]
    got_envelope, request = wire.decode_request(frames)
    reply = wire.encode_reply(got_envelope, REPLIES["ok-ping"])
    assert reply == [*envelope, golden("reply-ok-ping.msgpack")]
    assert request.id == msgspec.msgpack.decode(reply[-1])["id"]


def test_bad_request_envelope_is_echoed_too() -> None:
    """A request that cannot be decoded is still answered to its sender."""
    envelope, bad = wire.decode_request([b"peer", b"", b"\xc1"])
    assert isinstance(bad, wire.BadRequest)
    assert envelope == [b"peer", b""]


# Malformed requests ---------------------------------------------------------------------

BAD_CASES: list[tuple[str, list[bytes], str, str | None, list[str], str | None]] = [
    # (case id, frames, code, id in the reply, words the message must contain, details["field"])
    ("empty-message", [], "malformed_request", None, ["empty"], None),
    ("empty-body", [b"peer", b""], "malformed_request", None, ["not MessagePack"], None),
    ("not-msgpack", [b"peer", b"\xc1"], "malformed_request", None, ["not MessagePack"], None),
    ("json-not-msgpack", [b"peer", b'{"op": "ping"}'], "malformed_request", None, ["not MessagePack"], None),
    ("array-not-map", [b"peer", pack(["ping"])], "malformed_request", None, ["must be a map", "array"], None),
    ("string-not-map", [b"peer", pack("ping")], "malformed_request", None, ["must be a map", "string"], None),
    ("integer-not-map", [b"peer", pack(7)], "malformed_request", None, ["must be a map", "integer"], None),
    ("missing-op", [b"peer", pack({"id": "a"})], "invalid_request", "a", ["missing", "'op'"], "op"),
    (
        "unknown-op",
        [b"peer", pack({"op": "reboot", "id": "a"})],
        "unknown_op",
        "a",
        ["'reboot'", "ping"],
        None,
    ),
    ("op-not-a-string", [b"peer", pack({"op": 3, "id": "a"})], "invalid_request", "a", ["'op' must be a string"], "op"),
    (
        "job-missing-job-id",
        [b"peer", pack({"op": "job", "id": "a"})],
        "invalid_request",
        "a",
        ["job_id"],
        "job_id",
    ),
    (
        "cancel-missing-job-id",
        [b"peer", pack({"op": "cancel", "id": "a"})],
        "invalid_request",
        "a",
        ["job_id"],
        "job_id",
    ),
    (
        "submit-missing-workflow",
        [b"peer", pack({"op": "submit", "id": "a"})],
        "invalid_request",
        "a",
        ["workflow"],
        "workflow",
    ),
    (
        "job-id-is-integer",
        [b"peer", pack({"op": "job", "id": "a", "job_id": 5})],
        "invalid_request",
        "a",
        ["job_id", "str"],
        "job_id",
    ),
    (
        "workflow-is-array",
        [b"peer", pack({"op": "submit", "id": "a", "workflow": [1]})],
        "invalid_request",
        "a",
        ["workflow", "object"],
        "workflow",
    ),
    (
        "active-is-string",
        [b"peer", pack({"op": "jobs", "id": "a", "active": "yes"})],
        "invalid_request",
        "a",
        ["active", "bool"],
        "active",
    ),
    (
        "instance-is-integer",
        [b"peer", pack({"op": "submit", "id": "a", "workflow": {}, "instance": 1})],
        "invalid_request",
        "a",
        ["instance"],
        "instance",
    ),
    (
        "id-is-integer",
        [b"peer", pack({"op": "ping", "id": 5})],
        "invalid_request",
        None,
        ["'id'", "string", "integer"],
        "id",
    ),
    (
        "id-is-array",
        [b"peer", pack({"op": "ping", "id": ["a"]})],
        "invalid_request",
        None,
        ["'id'", "string", "array"],
        "id",
    ),
]


@pytest.mark.parametrize(
    ("frames", "code", "request_id", "words", "field"),
    [case[1:] for case in BAD_CASES],
    ids=[case[0] for case in BAD_CASES],
)
def test_malformed_request_yields_bad_request_with_code_and_a_message_naming_the_problem(
    frames: list[bytes], code: str, request_id: str | None, words: list[str], field: str | None
) -> None:
    """Each way a request can be wrong gives a BadRequest with a stable code and a helpful message."""
    _, bad = wire.decode_request(frames)
    assert isinstance(bad, wire.BadRequest)
    assert bad.code == code
    assert bad.code in CODES
    assert bad.id == request_id
    for word in words:
        assert word in bad.message, (word, bad.message)
    if field is not None:
        assert bad.details.get("field") == field


def test_unknown_op_lists_the_known_ops_in_details() -> None:
    """An unknown op's details name it and every op the sidecar serves."""
    _, bad = wire.decode_request([pack({"op": "reboot"})])
    assert isinstance(bad, wire.BadRequest)
    assert bad.details == {"op": "reboot", "known": list(wire.REQUEST_TYPES)}


def test_bad_request_message_carries_no_traceback() -> None:
    """Error messages are one line, without internals."""
    for _, frames, *_ in BAD_CASES:
        _, bad = wire.decode_request(frames)
        assert isinstance(bad, wire.BadRequest)
        assert "Traceback" not in bad.message and "\n" not in bad.message


def test_bad_request_becomes_an_error_reply_with_its_id() -> None:
    """The router answers a BadRequest ``{"id", "ok": false, "error": {code, message, details}}``."""
    _, bad = wire.decode_request([pack({"op": "job", "id": "a"})])
    assert isinstance(bad, wire.BadRequest)
    body = msgspec.msgpack.decode(
        wire.encode_reply([], wire.error_reply(bad.id, bad.code, bad.message, bad.details))[0]
    )
    assert body == {
        "id": "a",
        "ok": False,
        "error": {"code": bad.code, "message": bad.message, "details": bad.details},
    }


def test_decode_request_never_raises_on_arbitrary_bytes() -> None:
    """Any byte string, valid MessagePack or not, gives a Request or a BadRequest."""
    rng = random.Random(20260101)
    bodies = [bytes([b]) for b in range(256)]
    bodies += [rng.randbytes(rng.randrange(1, 64)) for _ in range(2000)]
    bodies += [golden(f"request-{op}.msgpack")[:cut] for op in wire.REQUEST_TYPES for cut in range(1, 12)]
    for body in bodies:
        _, result = wire.decode_request([b"peer", body])
        assert isinstance(result, wire.Request | wire.BadRequest)


@pytest.mark.parametrize("body", [b"\xa1\xff", b"\x81\xa2op\xa4\xff\xfe\xfd\xfc"], ids=["bare", "op"])
def test_string_that_is_not_utf8_yields_malformed_request(body: bytes) -> None:
    """A MessagePack str holding invalid UTF-8 is a malformed request, not an exception."""
    _, bad = wire.decode_request([b"peer", body])
    assert isinstance(bad, wire.BadRequest)
    assert bad.code == "malformed_request"


# Replies --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(REPLIES))
def test_reply_encodes_to_the_golden_bytes(name: str) -> None:
    """Every reply shape, JobView and InstanceView included, is frozen."""
    assert wire.encode_reply([], REPLIES[name]) == [golden(f"reply-{name}.msgpack")]


def test_ok_reply_has_exactly_id_ok_and_result() -> None:
    """No ``error`` key on success."""
    body = msgspec.msgpack.decode(golden("reply-ok-ping.msgpack"))
    assert list(body) == ["id", "ok", "result"]
    assert body["ok"] is True


def test_ok_reply_with_no_result_sends_an_empty_map() -> None:
    """``result`` is always a value, ``{}`` when the op has nothing to say."""
    assert msgspec.msgpack.decode(pack(wire.ok_reply("a", None))) == {"id": "a", "ok": True, "result": {}}


def test_error_reply_has_exactly_id_ok_and_error_with_code_message_details() -> None:
    """No ``result`` key on failure; ``details`` is always present, maybe empty."""
    body = msgspec.msgpack.decode(golden("reply-error-unknown-op.msgpack"))
    assert list(body) == ["id", "ok", "error"]
    assert body["ok"] is False
    assert list(body["error"]) == ["code", "message", "details"]
    assert msgspec.msgpack.decode(golden("reply-error-malformed-request.msgpack"))["error"]["details"] == {}


def test_undecodable_request_reply_has_nil_id() -> None:
    """``id`` is nil, not absent, when the request could not be read."""
    body = msgspec.msgpack.decode(golden("reply-error-malformed-request.msgpack"))
    assert "id" in body and body["id"] is None


def test_every_golden_error_reply_uses_a_listed_code() -> None:
    """Error codes on the wire come from errors.CODES."""
    for name in REPLIES:
        if name.startswith("error-"):
            assert msgspec.msgpack.decode(golden(f"reply-{name}.msgpack"))["error"]["code"] in CODES


# Events ---------------------------------------------------------------------------------


@pytest.mark.parametrize("type_", list(EVENT_TYPES))
def test_event_encodes_to_the_golden_frames(type_: str) -> None:
    """Topic, envelope (and the image frame of a preview) are frozen."""
    frames = [bytes(frame) for frame in wire.encode_event(EVENTS[type_])]
    expected = [golden(f"event-{type_}.topic"), golden(f"event-{type_}.msgpack")]
    if (GOLDEN / f"event-{type_}.image").exists():
        expected.append(golden(f"event-{type_}.image"))
    assert frames == expected


@pytest.mark.parametrize("type_", list(EVENT_TYPES))
def test_event_topic_is_family_dot_instance(type_: str) -> None:
    """Frame 0 is ``<family>.<instance>`` with the family from FAMILIES."""
    event = EVENTS[type_]
    assert golden(f"event-{type_}.topic") == f"{wire.FAMILIES[type_]}.{event.instance}".encode()


@pytest.mark.parametrize("type_", list(EVENT_TYPES))
def test_event_data_decodes_as_the_struct_event_types_names(type_: str) -> None:
    """The envelope's ``data`` is the EVENT_TYPES Struct, strictly."""
    envelope = msgspec.msgpack.decode(golden(f"event-{type_}.msgpack"))
    data = msgspec.convert(envelope["data"], EVENT_TYPES[type_], strict=True)
    assert data == EVENTS[type_].data


@pytest.mark.parametrize("type_", list(EVENT_TYPES))
def test_event_envelope_has_exactly_the_nine_keys_in_order(type_: str) -> None:
    """``seq, run, ts, type, instance, job_id, data``, then the extensions ``job_seq`` and ``sidecar``;
    never ``image``."""
    envelope = msgspec.msgpack.decode(golden(f"event-{type_}.msgpack"))
    assert list(envelope) == ["seq", "run", "ts", "type", "instance", "job_id", "data", "job_seq", "sidecar"]
    assert envelope["type"] == type_


@pytest.mark.parametrize("type_", list(EVENT_TYPES))
def test_job_seq_is_an_int_exactly_for_job_family_events(type_: str) -> None:
    """``job_seq`` is a positive int on job-family events about a job, nil (still sent) on all others."""
    envelope = msgspec.msgpack.decode(golden(f"event-{type_}.msgpack"))
    if wire.FAMILIES[type_] == "job":
        assert isinstance(envelope["job_seq"], int) and envelope["job_seq"] >= 1
    else:
        assert envelope["job_seq"] is None


def test_every_event_type_has_a_family() -> None:
    """Each published type maps to one of the four families."""
    assert set(EVENT_TYPES) <= set(wire.FAMILIES)
    assert set(wire.FAMILIES.values()) == {"instance", "job", "progress", "preview"}


def test_instance_events_carry_nil_job_id() -> None:
    """``job_id`` is present and nil on events about an instance."""
    for type_ in ("instance.status", "heartbeat"):
        assert msgspec.msgpack.decode(golden(f"event-{type_}.msgpack"))["job_id"] is None


def test_topic_of_an_unlisted_type_is_its_prefix() -> None:
    """A type missing from FAMILIES falls back to the part before the first dot."""
    assert wire.topic_for("widget.spun", "gpu9") == b"widget.gpu9"


def test_event_without_image_is_topic_and_envelope() -> None:
    """Every event but an inline preview is two frames."""
    assert len(wire.encode_event(EVENTS["job.progress"])) == 2


def test_inline_preview_is_topic_envelope_and_raw_image() -> None:
    """An inline preview is three frames, the image bytes last and unchanged."""
    frames = wire.encode_event(EVENTS["preview"])
    assert len(frames) == 3
    assert bytes(frames[2]) == gen.PREVIEW_IMAGE


def test_inline_preview_image_is_not_inside_the_envelope() -> None:
    """The envelope has no ``image`` key and does not contain the image bytes."""
    _, envelope, image = wire.encode_event(EVENTS["preview"])
    decoded = msgspec.msgpack.decode(envelope)
    assert "image" not in decoded and "image" not in decoded["data"]
    assert bytes(image) not in envelope
    assert decoded["data"]["size_bytes"] == len(image)


def test_inline_preview_image_may_be_a_memoryview() -> None:
    """A zero-copy memoryview of the ComfyUI frame is sent as the image frame."""
    frame = b"\x00\x00\x00\x01\x00\x00\x00\x01" + gen.PREVIEW_IMAGE
    event = msgspec.structs.replace(EVENTS["preview"], image=memoryview(frame)[8:])
    frames = wire.encode_event(event)
    assert bytes(frames[2]) == gen.PREVIEW_IMAGE
    assert frames[1] == golden("event-preview.msgpack")


def test_encode_event_leaves_the_event_unchanged() -> None:
    """Encoding an inline preview does not strip the image from the caller's event."""
    event = msgspec.structs.replace(EVENTS["preview"])
    wire.encode_event(event)
    assert event.image == gen.PREVIEW_IMAGE


def test_preview_data_states_inline_and_nil_ref_explicitly() -> None:
    """An inline preview sends ``inline: true`` and ``ref: nil`` rather than leaving them out."""
    data = msgspec.msgpack.decode(golden("event-preview.msgpack"))["data"]
    assert data["inline"] is True and data["ref"] is None


@pytest.mark.parametrize("type_", list(EVENT_TYPES))
def test_every_event_data_field_is_on_the_wire_even_at_its_default(type_: str) -> None:
    """No data Struct omits defaults, so a client sees every documented key."""
    data = msgspec.msgpack.decode(golden(f"event-{type_}.msgpack"))["data"]
    assert list(data) == [f.encode_name for f in msgspec.structs.fields(EVENT_TYPES[type_])]
