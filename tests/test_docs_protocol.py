"""docs/PROTOCOL.md stays in step with the wire (datasette's doc-sync test, applied to ZeroMQ).

Every request op, event type, event ``data`` field, view field, error code and
``job.failed`` code the code defines must be documented in its place, and the
examples must be the golden bytes.
"""

from __future__ import annotations

import re
from pathlib import Path

import msgspec
import pytest
import zmq

from sidecar.config import ZmqConfig
from sidecar.errors import CODES, FAILURE_CODES
from sidecar.protocol import wire
from sidecar.protocol.events import (
    EVENT_TYPES,
    CurveCounters,
    EventCounters,
    HealthView,
    InstanceStatus,
    InstanceView,
    JobView,
    OutputCounters,
    PreviewCounters,
    StoreCounters,
)
from sidecar.publisher import Publisher

ROOT = Path(__file__).resolve().parent.parent
DOC = (ROOT / "docs" / "PROTOCOL.md").read_text(encoding="utf-8")
GOLDEN = ROOT / "tests" / "golden"


def section(heading: re.Pattern[str]) -> str:
    """The text under the first heading matching ``heading``, up to the next heading of any level."""
    lines = DOC.splitlines()
    for start, line in enumerate(lines):
        if line.startswith("#") and heading.fullmatch(line):
            end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("#")), len(lines))
            return "\n".join(lines[start + 1 : end])
    raise AssertionError(f"docs/PROTOCOL.md has no heading matching {heading.pattern!r}")


def table_names(text: str) -> set[str]:
    """The names in the first column of every table row in ``text``."""
    return set(re.findall(r"^\| `([^`]+)` \|", text, flags=re.MULTILINE))


def fields(struct: type[msgspec.Struct]) -> list[str]:
    return [f.encode_name for f in msgspec.structs.fields(struct)]


@pytest.mark.parametrize("op", list(wire.REQUEST_TYPES))
def test_every_request_op_has_a_section_listing_its_fields(op: str) -> None:
    """Each op has a ``### 5.n `op` `` section whose table names ``op``, ``id`` and every field."""
    text = section(re.compile(rf"### 5\.\d+ `{re.escape(op)}`"))
    documented = table_names(text)
    assert {"op", *fields(wire.REQUEST_TYPES[op])} <= documented, sorted(documented)


@pytest.mark.parametrize("type_", list(EVENT_TYPES))
def test_every_event_type_has_a_section_listing_every_data_field(type_: str) -> None:
    """Each type in EVENT_TYPES has a ``#### `type` `` section with a row per field of its Struct."""
    text = section(re.compile(rf"#### `{re.escape(type_)}`"))
    missing = [name for name in fields(EVENT_TYPES[type_]) if name not in table_names(text)]
    assert not missing, f"{type_}: undocumented data fields {missing}"


@pytest.mark.parametrize("type_", list(EVENT_TYPES))
def test_every_event_section_documents_no_field_the_struct_lacks(type_: str) -> None:
    """The doc does not promise a data field the code does not send."""
    text = section(re.compile(rf"#### `{re.escape(type_)}`"))
    extra = table_names(text) - set(fields(EVENT_TYPES[type_]))
    assert not extra, f"{type_}: documented fields the code lacks {sorted(extra)}"


@pytest.mark.parametrize("type_", list(wire.FAMILIES))
def test_every_event_type_appears_in_the_families_table_with_its_family(type_: str) -> None:
    """The families table gives each type in FAMILIES the family the code publishes it under."""
    text = section(re.compile(r"### 6\.2 Families and topics"))
    assert f"| `{type_}` | `{wire.FAMILIES[type_]}` |" in text


def test_types_are_called_reserved_exactly_when_the_code_does_not_publish_them() -> None:
    """A type with a family but no data Struct is documented as reserved; a published one is not."""
    unpublished = set(wire.FAMILIES) - set(EVENT_TYPES)
    families = section(re.compile(r"### 6\.2 Families and topics"))
    for type_ in unpublished:
        assert re.search(rf"^\| `{re.escape(type_)}` \| `\w+` \| reserved", families, re.MULTILINE), type_
    for type_ in EVENT_TYPES:
        assert not re.search(rf"^\| `{re.escape(type_)}` \|.*\breserved\b", families, re.MULTILINE), type_
    if not unpublished:
        assert "Reserved event types" not in DOC


@pytest.mark.parametrize("code", list(FAILURE_CODES))
def test_every_failure_code_has_a_row_with_its_meaning(code: str) -> None:
    """The job.failed code table has a row per code in errors.FAILURE_CODES, with the same meaning text."""
    text = section(re.compile(r"##### `job\.failed` codes"))
    assert f"| `{code}` | {FAILURE_CODES[code]} |" in text


def test_failure_code_table_lists_no_code_the_code_lacks() -> None:
    """Every code in the job.failed code table exists in errors.FAILURE_CODES."""
    assert table_names(section(re.compile(r"##### `job\.failed` codes"))) == set(FAILURE_CODES)


def test_job_started_is_documented_once_per_prompt() -> None:
    """Issue 8 (11): a resubmitted job is started again (6.3; tests/core/test_jobs.py checks the
    behaviour); the `job.started` section says so instead of "once"."""
    text = " ".join(section(re.compile(r"#### `job\.started`")).split())
    assert "Published once per prompt of the job" in text and "one more `job.started`" in text
    assert "Published once," not in text


def test_instance_states_are_documented() -> None:
    """Every instance state InstanceStatus names is in the InstanceView table and instance.status."""
    states = re.findall(r"``(\w+)``", InstanceStatus.__doc__ or "")
    assert "degraded" in states, states
    view = section(re.compile(r"### 5\.3 Views")).split("**InstanceView**", 1)[1]
    status = section(re.compile(r"#### `instance\.status`"))
    for state in states:
        assert f"`{state}`" in view and f"`{state}`" in status, state


def test_health_events_table_lists_the_publisher_counters() -> None:
    """health's ``events`` map is Publisher.stats(); its table names exactly those keys."""
    ctx = zmq.Context()
    publisher = Publisher(ctx, "inproc://docs-health", hwm=10)
    try:
        keys = set(publisher.stats())
    finally:
        publisher.close(linger_ms=0)
        ctx.term()
    text = section(re.compile(r"### 5\.8 `health`")).split("`events` (", 1)[1].split("`previews` (", 1)[0]
    assert table_names(text) == keys
    assert set(fields(EventCounters)) == keys, "health's events Struct must name every Publisher.stats() key"


def test_health_tables_list_every_field_of_its_structs() -> None:
    """health's result table and its previews, store, outputs and curve tables name exactly the Structs' fields."""
    text = section(re.compile(r"### 5\.8 `health`"))
    result = text.split("Result:", 1)[1].split("`events` (", 1)[0]
    previews = text.split("`previews` (", 1)[1].split("`store` (", 1)[0]
    store = text.split("`store` (", 1)[1].split("`outputs` (", 1)[0]
    outputs = text.split("`outputs` (", 1)[1].split("`curve` (", 1)[0]
    curve = text.split("`curve` (", 1)[1]
    assert table_names(result) == set(fields(HealthView))
    assert table_names(previews) == set(fields(PreviewCounters))
    assert table_names(store) == set(fields(StoreCounters))
    assert table_names(outputs) == set(fields(OutputCounters))
    assert table_names(curve) == set(fields(CurveCounters))


def test_envelope_table_lists_every_envelope_field() -> None:
    """The envelope table names every Event field sent on the wire (``image`` never is)."""
    documented = table_names(section(re.compile(r"### 6\.1 Envelope")))
    assert documented == set(fields(wire.Event)) - {"image"}


@pytest.mark.parametrize("view", [JobView, InstanceView], ids=lambda v: v.__name__)
def test_views_list_every_field(view: type[msgspec.Struct]) -> None:
    """JobView and InstanceView tables name exactly the Struct's fields."""
    text = section(re.compile(r"### 5\.3 Views"))
    block = text.split(f"**{view.__name__}**", 1)[1].split("\n\n**", 1)[0]
    assert table_names(block) == set(fields(view))


@pytest.mark.parametrize("code", list(CODES))
def test_every_error_code_has_a_row_with_its_meaning(code: str) -> None:
    """The error table has a row per code in errors.CODES, with the same meaning text."""
    text = section(re.compile(r"## 9\. Error codes"))
    assert f"| `{code}` | {CODES[code]} |" in text


def test_error_table_lists_no_code_the_code_lacks() -> None:
    """Every code in the error table exists in errors.CODES."""
    text = section(re.compile(r"## 9\. Error codes"))
    assert table_names(text) == set(CODES)


def test_default_endpoints_are_documented() -> None:
    """The default ROUTER and PUB endpoints in the doc are config.py's defaults."""
    text = section(re.compile(r"## 2\. Endpoints and socket types"))
    defaults = ZmqConfig()
    assert f"| `ROUTER` | `{defaults.router}` |" in text
    assert f"| `PUB` | `{defaults.pub}` |" in text


EXAMPLE = re.compile(r"<!-- golden: (?P<name>[^ ]+) -->\n\n(?P<blocks>(?:```\w+\n.*?\n```\n\n?)+)", re.DOTALL)
BLOCK = re.compile(r"```(?P<lang>\w+)\n(?P<body>.*?)\n```", re.DOTALL)


def test_doc_has_examples_of_a_request_a_reply_and_an_event() -> None:
    """Section 11 shows at least a request, a reply and an event in JSON and hex."""
    names = {m["name"] for m in EXAMPLE.finditer(DOC)}
    assert any(n.startswith("request-") for n in names)
    assert any(n.startswith("reply-") for n in names)
    assert any(n.startswith("event-") and n.endswith(".msgpack") for n in names)


@pytest.mark.parametrize("match", list(EXAMPLE.finditer(DOC)), ids=lambda m: m["name"])
def test_every_doc_example_is_the_golden_bytes(match: re.Match[str]) -> None:
    """The hex (and JSON) shown for an example equal the frozen golden file."""
    expected = (GOLDEN / match["name"]).read_bytes()
    blocks = {b["lang"]: b["body"] for b in BLOCK.finditer(match["blocks"])}
    hex_lines = blocks["text"].splitlines()
    if match["name"].endswith(".topic"):
        assert hex_lines[0] == expected.decode()
        hex_lines = hex_lines[1:]
    assert bytes.fromhex(" ".join(hex_lines)) == expected
    if "json" in blocks:
        assert msgspec.json.decode(blocks["json"]) == msgspec.msgpack.decode(expected)
