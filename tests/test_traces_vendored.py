"""``tests/traces`` is a byte-for-byte copy of ``../shared/comfyui/traces`` and every line is JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.tracesupport import TRACES, VERSIONS

ROOT = Path(__file__).resolve().parent.parent
UPSTREAM = ROOT / ".." / "shared" / "comfyui" / "traces"


def _files(base: Path) -> dict[str, Path]:
    return {p.relative_to(base).as_posix(): p for p in sorted(base.rglob("*")) if p.is_file()}


@pytest.mark.skipif(not UPSTREAM.is_dir(), reason=f"no shared trace folder at {UPSTREAM} to compare with")
def test_vendored_traces_equal_the_shared_recording() -> None:
    """Same file names, same bytes, in both trees."""
    ours, theirs = _files(TRACES), _files(UPSTREAM)
    assert sorted(ours) == sorted(theirs)
    differing = [name for name in ours if ours[name].read_bytes() != theirs[name].read_bytes()]
    assert differing == []


def test_every_version_folder_has_every_scenario() -> None:
    """Each recorded version holds scenarios 00 to 11."""
    for version in VERSIONS:
        prefixes = sorted(p.name[:2] for p in (TRACES / version).glob("*.jsonl"))
        assert prefixes == [f"{n:02d}" for n in range(12)], version


@pytest.mark.parametrize("path", sorted(TRACES.rglob("*.jsonl")), ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_every_trace_line_is_a_json_record(path: Path) -> None:
    """One JSON object per line, each with a time and a known source."""
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines
    for n, line in enumerate(lines, 1):
        record = json.loads(line)
        assert isinstance(record, dict), f"{path.name}:{n}"
        assert record["src"] in {"ws", "http", "note", "proc"}, f"{path.name}:{n}"
        assert isinstance(record["t"], (int, float)), f"{path.name}:{n}"
