"""``sidecar.protocol.comfy``: every recorded frame decodes; garbage never raises."""

from __future__ import annotations

import json
import random
import struct
from pathlib import Path
from typing import Any

import msgspec
import pytest

from sidecar.protocol import comfy
from sidecar.protocol.comfy import Decoder, Malformed, Unknown
from tests.tracesupport import frame_of, load, trace_params, ws_recv

ALL_TRACES = trace_params()


def _assert_fields_match(decoded: Any, data: Any, where: str) -> None:
    """Every field the Struct declares and the JSON carries has the JSON's value."""
    assert isinstance(data, dict), where
    for name in decoded.__struct_fields__:
        if name not in data:
            continue
        value = getattr(decoded, name)
        if isinstance(value, msgspec.Struct):
            _assert_fields_match(value, data[name], f"{where}.{name}")
        elif isinstance(value, dict) and value and all(isinstance(v, msgspec.Struct) for v in value.values()):
            assert value.keys() == data[name].keys(), f"{where}.{name}"
            for key, item in value.items():
                _assert_fields_match(item, data[name][key], f"{where}.{name}[{key}]")
        else:
            assert value == data[name], f"{where}.{name}"


def _binary(event: int, payload: bytes) -> bytes:
    return struct.pack(">I", event) + payload


def _type4(metadata: bytes, image: bytes = b"\xff\xd8\xff\xe0img") -> bytes:
    return _binary(4, struct.pack(">I", len(metadata)) + metadata + image)


# Recorded traffic ---------------------------------------------------------------------


@pytest.mark.parametrize("path", ALL_TRACES)
def test_recorded_text_frames_decode_to_their_struct_with_the_recorded_values(path: Path) -> None:
    """Each text frame decodes to the Struct of its ``type``, field for field."""
    decoder = Decoder()
    count = 0
    for i, rec in ws_recv(load(path)):
        if rec["kind"] != "text":
            continue
        frame, _ = frame_of(rec)
        msg = decoder.decode(frame, is_text=True)
        assert not isinstance(msg, (Malformed, Unknown)), f"record {i}: {msg}"
        assert type(msg) is comfy.TEXT_TYPES[rec["msg"]["type"]], f"record {i}"
        _assert_fields_match(msg, rec["msg"].get("data", {}), f"record {i} {rec['msg']['type']}")
        count += 1
    assert count > 0


@pytest.mark.parametrize("path", ALL_TRACES)
def test_recorded_binary_frames_match_their_recorded_headers(path: Path) -> None:
    """Each binary frame's event, format, metadata and exact image bytes are recovered."""
    decoder = Decoder()
    for i, rec in ws_recv(load(path)):
        if rec["kind"] != "binary":
            continue
        frame, _ = frame_of(rec)
        header = rec["header"]
        assert len(frame) == header["len"], f"record {i}"
        msg = decoder.decode(frame, is_text=False)
        assert int.from_bytes(frame[:4], "big") == header["event"]
        if header["event"] == comfy.BINARY_PREVIEW_IMAGE:
            assert isinstance(msg, comfy.PreviewImage), f"record {i}: {msg}"
            assert header["image_type"] == {"jpeg": 1, "png": 2}[msg.format]
            assert msg.format == header["image_format"].lower()
            start = 8
        elif header["event"] == comfy.BINARY_PREVIEW_WITH_METADATA:
            assert isinstance(msg, comfy.PreviewWithMetadata), f"record {i}: {msg}"
            assert int.from_bytes(frame[4:8], "big") == header["metadata_len"]
            _assert_fields_match(msg.metadata, header["metadata"], f"record {i} metadata")
            assert msg.metadata.node_id == header["metadata"]["node_id"]
            assert msg.metadata.prompt_id == header["metadata"]["prompt_id"]
            assert msg.format == header["metadata"]["image_type"].rpartition("/")[2]
            start = 8 + header["metadata_len"]
        else:
            pytest.fail(f"record {i}: binary event {header['event']} not covered by this test")
        image = bytes(msg.image)
        assert image == frame[start:], f"record {i}"
        assert len(image) == header["image_len"]
        assert image[:4].hex() == header["image_magic"]


@pytest.mark.parametrize("path", ALL_TRACES)
def test_first_byte_guess_agrees_with_the_recorded_frame_kind(path: Path) -> None:
    """``is_text=None`` decodes every recorded frame exactly as the explicit kind does."""
    guessing, explicit = Decoder(), Decoder()
    frames = 0
    for i, rec in ws_recv(load(path)):
        frame, is_text = frame_of(rec)
        guessed = guessing.decode(frame)
        told = explicit.decode(frame, is_text=is_text)
        assert not isinstance(guessed, (Malformed, Unknown)), f"record {i}: {guessed}"
        assert type(guessed) is type(told), f"record {i}"
        assert msgspec.to_builtins(guessed) == msgspec.to_builtins(told), f"record {i}"
        frames += 1
    assert frames > 0


def test_traces_cover_every_text_type_and_both_preview_kinds() -> None:
    """The recorded traffic exercises every text Struct and binary types 1 and 4."""
    seen: set[str] = set()
    for param in ALL_TRACES:
        for _, rec in ws_recv(load(param.values[0])):
            seen.add(rec["msg"]["type"] if rec["kind"] == "text" else f"binary:{rec['header']['event']}")
    assert set(comfy.TEXT_TYPES) <= seen
    assert {"binary:1", "binary:4"} <= seen


def test_a_decoder_is_reusable_after_garbage() -> None:
    """A Malformed frame leaves the decoder able to decode the next good frame."""
    decoder = Decoder()
    assert isinstance(decoder.decode(b"\x00\x00\x00"), Malformed)
    msg = decoder.decode(b'{"type": "executing", "data": {"node": "7", "prompt_id": "p"}}')
    assert msg == comfy.Executing(node="7", prompt_id="p")


def test_module_level_decode_frame_uses_the_default_table() -> None:
    """``decode_frame`` decodes like a fresh ``Decoder``."""
    frame = b'{"type": "execution_start", "data": {"prompt_id": "p", "timestamp": 5}}'
    assert comfy.decode_frame(frame) == Decoder().decode(frame) == comfy.ExecutionStart("p", 5)


def test_a_custom_table_turns_left_out_types_into_unknown() -> None:
    """A version adapter's table that omits a type makes it Unknown, not Malformed."""
    decoder = Decoder({"status": comfy.Status})
    assert decoder.decode(b'{"type": "progress", "data": {"value": 1, "max": 2}}') == Unknown("progress")
    assert isinstance(decoder.decode(b'{"type": "status", "data": {}}'), comfy.Status)


def test_configure_changes_the_tables_a_bound_decode_method_uses() -> None:
    """A read loop binds ``decode`` once; reconfiguring the decoder changes the very next frame's result."""
    decoder = Decoder({"status": comfy.Status})
    decode = decoder.decode
    frame = b'{"type": "execution_success", "data": {"prompt_id": "p"}}'
    assert decode(frame) == Unknown("execution_success")
    decoder.configure(comfy.TEXT_TYPES)
    assert decode(frame) == comfy.ExecutionSuccess(prompt_id="p")
    decoder.configure(comfy.TEXT_TYPES, skip={"execution_success"})
    assert decode(frame) is comfy.SKIPPED and decoder.skipped_types == {"execution_success"}


@pytest.mark.parametrize("path", trace_params())
def test_skipped_progress_state_is_recognised_without_changing_any_other_frame(path: Path) -> None:
    """Skipping ``progress_state``: every recorded one is SKIPPED, every other frame decodes as before."""
    full, skipping = Decoder(), Decoder(comfy.TEXT_TYPES, skip={"progress_state"})
    for i, rec in ws_recv(load(path)):
        frame, _ = frame_of(rec)
        if rec["kind"] == "text" and rec["msg"]["type"] == "progress_state":
            assert skipping.decode(frame) is comfy.SKIPPED, f"record {i}"
        else:
            before, after = full.decode(frame), skipping.decode(frame)
            assert type(before) is type(after) and getattr(before, "image", None) == getattr(after, "image", None)


def test_a_skipped_type_written_another_way_is_skipped_after_its_envelope() -> None:
    """Spacing other than ComfyUI's still skips (after the envelope), and garbage is still Malformed."""
    decoder = Decoder(comfy.TEXT_TYPES, skip={"progress_state"})
    assert decoder.decode(b'{"data":{"nodes":{}},"type":"progress_state"}') is comfy.SKIPPED
    assert decoder.decode_text('{"type":"progress_state","data":{}}') is comfy.SKIPPED
    assert isinstance(decoder.decode(b'{"type": "progress_stat'), Malformed)


# Garbage ------------------------------------------------------------------------------

GARBAGE: list[Any] = [
    pytest.param(b"", None, Malformed, "binary", id="empty-frame-guessed"),
    pytest.param(b"", True, Malformed, None, id="empty-frame-as-text"),
    pytest.param(b"", False, Malformed, "binary", id="empty-frame-as-binary"),
    pytest.param(b"\x00\x00\x01", None, Malformed, "binary", id="three-byte-binary"),
    pytest.param(b"\x00\x00\x00\x01\x00\x00", None, Malformed, "binary:1", id="type1-short-header"),
    pytest.param(_binary(1, struct.pack(">I", 9) + b"xx"), None, Malformed, "binary:1", id="type1-unknown-format"),
    pytest.param(b"\x00\x00\x00\x04\x00\x00", None, Malformed, "binary:4", id="type4-short-header"),
    pytest.param(
        _binary(4, struct.pack(">I", 500) + b'{"node_id": "1"}'),
        None,
        Malformed,
        "binary:4",
        id="type4-metadata-length-past-end",
    ),
    pytest.param(_type4(b"{not json"), None, Malformed, "binary:4", id="type4-bad-metadata-json"),
    pytest.param(_type4(b"[1, 2]"), None, Malformed, "binary:4", id="type4-metadata-not-object"),
    pytest.param(_type4(b'{"node_id": "1"}'), None, Malformed, "binary:4", id="type4-metadata-missing-prompt"),
    pytest.param(
        _type4(b'{"node_id": 1, "prompt_id": "p"}'),
        None,
        Malformed,
        "binary:4",
        id="type4-metadata-wrong-type",
    ),
    pytest.param(_binary(3, b"\x00\x00"), None, Malformed, "binary:3", id="type3-short-header"),
    pytest.param(_binary(3, struct.pack(">I", 50) + b"ab"), None, Malformed, "binary:3", id="type3-length-past-end"),
    pytest.param(_binary(3, struct.pack(">I", 1) + b"\xff\xfe"), None, Malformed, "binary:3", id="type3-not-utf8"),
    pytest.param(_binary(2, b"pil image"), None, Unknown, "binary:2", id="type2-never-on-the-wire"),
    pytest.param(_binary(77, b""), None, Unknown, "binary:77", id="unknown-binary-type"),
    pytest.param(b"hello world", None, Malformed, None, id="non-json-text"),
    pytest.param(b'{"type": "status", "data": {', None, Malformed, None, id="truncated-json"),
    pytest.param(b"\xff\xfe{}", True, Malformed, None, id="text-not-utf8"),
    pytest.param(b'{"type": "\xba"}', None, Malformed, None, id="type-string-not-utf8"),
    pytest.param(b'{"type": "status", "data": {"sid": "\xba"}}', None, Malformed, "status", id="data-string-not-utf8"),
    pytest.param(
        _type4(b'{"node_id": "\xba", "prompt_id": "p"}'),
        None,
        Malformed,
        "binary:4",
        id="type4-metadata-string-not-utf8",
    ),
    pytest.param(b"[1, 2, 3]", None, Malformed, None, id="json-array"),
    pytest.param(b'"status"', None, Malformed, None, id="json-string"),
    pytest.param(b"42", None, Malformed, None, id="json-number"),
    pytest.param(b"null", None, Malformed, None, id="json-null"),
    pytest.param(b'{"data": {}}', None, Malformed, None, id="object-without-type"),
    pytest.param(b'{"type": 5, "data": {}}', None, Malformed, None, id="type-not-a-string"),
    pytest.param(
        b'{"type": "crystools.monitor", "data": {"cpu": 3}}',
        None,
        Unknown,
        "crystools.monitor",
        id="unknown-text-type",
    ),
    pytest.param(
        b'{"type": "progress", "data": {"value": "x", "max": 8}}',
        None,
        Malformed,
        "progress",
        id="progress-value-not-a-number",
    ),
    pytest.param(
        b'{"type": "executing", "data": {"node": 3}}',
        None,
        Malformed,
        "executing",
        id="executing-node-not-a-string",
    ),
    pytest.param(b'{"type": "executing"}', None, Malformed, "executing", id="executing-without-data"),
    pytest.param(
        b'{"type": "execution_cached", "data": {"nodes": "1,2", "prompt_id": "p"}}',
        None,
        Malformed,
        "execution_cached",
        id="cached-nodes-not-a-list",
    ),
    pytest.param(
        b'{"type": "execution_start", "data": {}}',
        None,
        Malformed,
        "execution_start",
        id="execution-start-without-prompt-id",
    ),
    pytest.param(b'{"type": "status", "data": null}', None, Malformed, "status", id="status-data-null"),
    pytest.param(b'{"type": "status", "data": [1]}', None, Malformed, "status", id="status-data-list"),
    pytest.param(
        b'{"type": "progress_state", "data": {"prompt_id": "p", "nodes": {"1": 5}}}',
        None,
        Malformed,
        "progress_state",
        id="progress-state-node-not-object",
    ),
    pytest.param(
        b'{"type": "execution_error", "data": {"prompt_id": "p", "traceback": "boom"}}',
        None,
        Malformed,
        "execution_error",
        id="error-traceback-not-a-list",
    ),
]


@pytest.mark.parametrize(("frame", "is_text", "kind", "type_"), GARBAGE)
def test_garbage_frames_become_malformed_or_unknown_without_raising(
    frame: bytes, is_text: bool | None, kind: type, type_: str | None
) -> None:
    """Broken frames are Malformed (with a reason), unknown ones Unknown; nothing raises."""
    msg = Decoder().decode(frame, is_text=is_text)
    assert type(msg) is kind, msg
    assert msg.type == type_
    if kind is Malformed:
        assert msg.reason


def test_text_frame_given_as_str_decodes() -> None:
    """``decode_text`` accepts a ``str`` frame, as a WebSocket library delivers text."""
    assert Decoder().decode_text('{"type": "executing", "data": {"node": null}}') == comfy.Executing(node=None)


def test_envelope_without_data_uses_an_empty_object() -> None:
    """A message with no ``data`` decodes its type's defaults."""
    assert Decoder().decode(b'{"type": "status"}') == comfy.Status()


def test_extra_fields_from_newer_versions_are_ignored() -> None:
    """Fields a future ComfyUI adds do not make a known message Malformed."""
    frame = b'{"type": "executing", "data": {"node": "2", "prompt_id": "p", "brand_new": [1]}, "extra": 1}'
    assert Decoder().decode(frame) == comfy.Executing(node="2", prompt_id="p")


def test_binary_text_frame_decodes_node_and_text() -> None:
    """Binary type 3: node id length, node id, then the text."""
    frame = _binary(3, struct.pack(">I", 2) + b"12" + "étape 3/8".encode())
    assert Decoder().decode(frame) == comfy.ProgressText(node_id="12", text="étape 3/8")


@pytest.mark.parametrize(
    ("mime", "fmt"),
    [("image/png", "png"), ("image/webp", "webp"), ("image/avif", "avif"), ("", "unknown")],
)
def test_type4_format_follows_the_metadata_mime_type(mime: str, fmt: str) -> None:
    """Binary type 4 names its format from ``image_type``, including types not in the table."""
    meta = json.dumps({"node_id": "3", "prompt_id": "p", "image_type": mime}).encode()
    msg = Decoder().decode(_type4(meta, b"IMG"))
    assert isinstance(msg, comfy.PreviewWithMetadata)
    assert (msg.format, bytes(msg.image), msg.metadata.node_id) == (fmt, b"IMG", "3")


def test_type1_png_and_empty_image_decode() -> None:
    """Binary type 1 with format 2 is PNG; an image of zero bytes is still a preview."""
    msg = Decoder().decode(_binary(1, struct.pack(">I", 2)))
    assert isinstance(msg, comfy.PreviewImage)
    assert (msg.format, bytes(msg.image)) == ("png", b"")


def test_binary_event_with_a_nonzero_first_byte_is_guessed_as_text_and_malformed() -> None:
    """An event type of 2**24 or more looks like text to the guess; it still never raises."""
    msg = Decoder().decode(_binary(1 << 24, b"\x00\x00\x00\x01abc"))
    assert isinstance(msg, Malformed)
    assert isinstance(Decoder().decode(_binary(1 << 24, b""), is_text=False), Unknown)


def _recorded_binary_frame(event: int) -> bytes:
    for param in ALL_TRACES:
        for _, rec in ws_recv(load(param.values[0])):
            if rec["kind"] == "binary" and rec["header"]["event"] == event:
                return frame_of(rec)[0]
    raise AssertionError(f"no recorded binary frame of type {event}")


@pytest.mark.parametrize("event", [1, 4])
def test_every_truncation_of_a_recorded_preview_decodes_without_raising(event: int) -> None:
    """Cutting a real preview frame at any length gives a value, never an exception."""
    frame = _recorded_binary_frame(event)
    decoder = Decoder()
    kinds = set()
    for cut in range(len(frame) + 1):
        msg = decoder.decode(frame[:cut], is_text=False)
        kinds.add(type(msg))
        if cut < 8:
            assert isinstance(msg, Malformed)
    assert kinds <= {Malformed, comfy.PreviewImage, comfy.PreviewWithMetadata}
    assert Malformed in kinds and len(kinds) == 2


def test_random_bytes_never_raise() -> None:
    """Fuzz: random and bit-flipped frames always decode to some message value."""
    rng = random.Random(20240714)
    decoder = Decoder()
    seeds = [
        _recorded_binary_frame(4),
        b'{"type": "progress", "data": {"value": 1, "max": 8, "prompt_id": "p", "node": "2"}}',
    ]
    allowed = tuple(t for t in comfy.ComfyMessage.__args__)  # type: ignore[attr-defined]
    for n in range(3000):
        if n % 2:
            frame = bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 64)))
        else:
            buf = bytearray(rng.choice(seeds))
            for _ in range(rng.randrange(1, 4)):
                buf[rng.randrange(len(buf))] = rng.getrandbits(8)
            frame = bytes(buf)
        msg = decoder.decode(frame, is_text=rng.choice([None, True, False]))
        assert isinstance(msg, allowed)
