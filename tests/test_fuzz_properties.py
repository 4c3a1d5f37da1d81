"""Property tests (hypothesis) for what takes hostile bytes: ComfyUI frames, requests, the config,
and the tracker fed with mutated traces (issue 12). Bounded: each target runs a few hundred
examples in a few seconds; ``bench/fuzz.py`` runs the same targets for 10^6 inputs.

Nothing here may raise but AssertionError: a decoder returns a value for every frame, a request
always gets a reply, the config loader raises only ConfigError, and the tracker keeps its
invariants (no exception, progress never decreasing, at most one final event per job).
"""

from __future__ import annotations

import json
import random
import struct
from typing import Any

import msgspec
import pytest
import tomli_w
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar.config import loads
from sidecar.errors import ConfigError
from sidecar.protocol import comfy
from sidecar.protocol.wire import decode_request
from sidecar.simulator.fuzz import HARMLESS_KINDS, harmless
from tests.fuzzsupport import (
    check_config,
    check_frame,
    check_request,
    check_tracker,
    deep,
    random_config_text,
    random_frame,
    random_request,
    trace_frames,
)

BOUNDED = settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
SEEDS = st.integers(min_value=0, max_value=2**32 - 1)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats()
    | st.text(max_size=20)
    | st.binary(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8) | st.integers(-5, 5), inner, max_size=4)
    ),
    max_leaves=20,
)


# The ComfyUI frame decoder ------------------------------------------------------------


@BOUNDED
@given(st.binary(max_size=200), st.sampled_from((True, False, None)))
def test_any_bytes_decode_to_a_message(frame: bytes, is_text: bool | None) -> None:
    check_frame(frame, is_text)


@BOUNDED
@given(st.sampled_from(list(comfy.TEXT_TYPES) + ["x", ""]), json_values)
def test_known_types_with_data_of_any_shape_decode_to_a_message(kind: str, data: Any) -> None:
    check_frame(json.dumps({"type": kind, "data": data}).encode(), True)
    check_frame(json.dumps(data).encode(), None)


@BOUNDED
@given(SEEDS)
def test_mutated_trace_frames_decode_to_a_message(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(20):
        check_frame(*random_frame(rng))


@BOUNDED
@given(st.sampled_from((1, 3, 4)), st.integers(0, 2**32 - 1), st.binary(max_size=64), st.integers(0, 80))
def test_binary_headers_with_garbage_and_truncation_decode_to_a_message(
    event: int, second: int, rest: bytes, cut: int
) -> None:
    frame = struct.pack(">II", event, second) + rest
    check_frame(frame[:cut], False)
    check_frame(frame, None)


@pytest.mark.parametrize("depth", [10, 999, 1000, 5000, 100_000])
def test_deeply_nested_json_is_malformed_not_an_exception(depth: int) -> None:
    """Regression (found by this fuzzing): JSON nested past the recursion limit raised RecursionError
    out of the decoder, which aborted the instance's connection (``instance loop failed``)."""
    nested = deep(depth).decode()
    frames = [
        nested.encode(),
        f'{{"type": "executed", "data": {{"node": "1", "output": {{"a": {nested}}}}}}}'.encode(),
        f'{{"type": "x", "data": {nested}}}'.encode(),
    ]
    meta = f'{{"node_id": "1", "prompt_id": "p", "x": {nested}}}'.encode()
    frames.append(struct.pack(">II", 4, len(meta)) + meta + b"\xff\xd8")
    for n, frame in enumerate(frames):
        msg = comfy.decode_frame(frame)
        assert isinstance(msg, (comfy.Malformed, comfy.Unknown, comfy.Executed, comfy.PreviewWithMetadata))
        if depth >= 5000 and n > 0:  # a bare array is refused before its depth matters
            assert isinstance(msg, comfy.Malformed) and "nested too deeply" in msg.reason


@BOUNDED
@given(SEEDS, st.sampled_from(HARMLESS_KINDS))
def test_the_simulators_mutations_cannot_change_a_real_job(seed: int, kind: str) -> None:
    """What the fuzzing simulator sends is malformed, unknown, or for a prompt no one submitted."""
    rng = random.Random(seed)
    frames = trace_frames()
    for _ in range(20):
        frame, is_text = rng.choice(frames)
        out, text, _ = harmless(rng, frame, is_text, kind)
        msg = comfy.Decoder().decode(out, is_text=text)
        if isinstance(msg, (comfy.Malformed, comfy.Unknown)):
            continue
        meta = getattr(msg, "metadata", None)
        prompt = getattr(msg, "prompt_id", None) or getattr(meta, "prompt_id", None)
        assert isinstance(prompt, str) and prompt.startswith("fuzz-"), (kind, out[:200], msg)


# The request decoder ---------------------------------------------------------------------


@BOUNDED
@given(st.binary(max_size=200))
def test_any_request_bytes_get_a_reply(body: bytes) -> None:
    check_request([b"id", body])


@BOUNDED
@given(msgpack_values)
def test_any_messagepack_value_gets_a_reply(value: Any) -> None:
    check_request([b"id", b"", msgspec.msgpack.encode(value)])


@BOUNDED
@given(
    st.sampled_from(("submit", "cancel", "job", "jobs", "health", "snapshot", "ping", "other")),
    st.dictionaries(
        st.sampled_from(
            (
                "id",
                "workflow",
                "job_id",
                "instance",
                "client_data",
                "queue_anyway",
                "active",
                "preview_interval_s",
                "deadline_ns",
                "extra",
            )
        ),
        msgpack_values,
        max_size=6,
    ),
)
def test_known_ops_with_fields_of_wrong_types_get_a_reply(op: str, fields: dict[str, Any]) -> None:
    check_request([b"id", msgspec.msgpack.encode({**fields, "op": op})])


@BOUNDED
@given(SEEDS)
def test_random_requests_get_a_reply(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(20):
        check_request(random_request(rng))


@pytest.mark.parametrize("depth", [10, 999, 1000, 5000, 100_000])
def test_deeply_nested_request_is_refused_not_an_exception(depth: int) -> None:
    """Regression (found by this fuzzing): a body nested past the recursion limit raised
    RecursionError out of decode_request (the ROUTER logged a traceback at ERROR)."""
    check_request([b"id", deep(depth, text=False)])
    body = msgspec.msgpack.encode({"op": "ping", "id": "r", "x": msgspec.Raw(deep(depth, text=False))})
    envelope, request = decode_request([b"id", body])
    assert envelope == [b"id"]
    if depth >= 5000:
        assert getattr(request, "code", None) == "malformed_request" and "nested too deeply" in request.message


# The config loader --------------------------------------------------------------------------

toml_values = st.recursive(
    st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats() | st.text(max_size=20) | st.datetimes(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(min_size=1, max_size=8), inner, max_size=3),
    max_leaves=10,
)
TABLES = (
    "instances",
    "zmq",
    "backoff",
    "submit",
    "cancel",
    "recovery",
    "previews",
    "state",
    "simulator",
    "plugins",
    "metrics",
    "log",
    "other",
)


@BOUNDED
@given(st.text(max_size=200))
def test_any_text_is_a_config_or_a_config_error(text: str) -> None:
    check_config(text)


@BOUNDED
@given(
    st.dictionaries(
        st.sampled_from(TABLES), st.dictionaries(st.text(min_size=1, max_size=12), toml_values, max_size=4), max_size=4
    )
)
def test_any_toml_document_is_a_config_or_a_config_error(doc: dict[str, Any]) -> None:
    check_config(tomli_w.dumps(doc))


@BOUNDED
@given(SEEDS)
def test_mutated_bridge_toml_is_a_config_or_a_config_error(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(5):
        check_config(random_config_text(rng))


@pytest.mark.parametrize("url", ["http://[abc", "http://[::1", "http://\uff03x/", "https://a\u2100b/"])
def test_an_unparsable_instance_url_is_a_config_error(url: str) -> None:
    """Regression (found by this fuzzing): urlsplit's ValueError ("Invalid IPv6 URL", NFKC) escaped
    the loader instead of a ConfigError naming the key."""
    with pytest.raises(ConfigError, match=r"key 'instances\.a\.url'"):
        loads(f'[instances.a]\nurl = "{url}"\n')


# The tracker ---------------------------------------------------------------------------------


@settings(BOUNDED, max_examples=150)
@given(st.integers(0, 1000), SEEDS, st.sampled_from((0.0, 0.05, 0.2, 0.5, 1.0)))
def test_tracker_fed_mutated_traces_keeps_its_invariants(trace: int, seed: int, rate: float) -> None:
    check_tracker(trace, random.Random(seed), rate)
