"""Loading the vendored ComfyUI traces (``tests/traces/<version>/*.jsonl``).

Pure helpers shared by the pure test rings: read a trace once, pick out its
records, and turn a WebSocket ``recv`` record back into the frame bytes the
server sent. The record format is described in ``tests/traces/README.md``.
"""

from __future__ import annotations

import base64
import functools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

__all__ = [
    "Record",
    "TRACES",
    "VERSIONS",
    "client_ids",
    "frame_of",
    "history_entry",
    "http_records",
    "load",
    "ns",
    "prompt_posts",
    "trace_id",
    "trace_params",
    "trace_paths",
    "ws_recv",
]

TRACES = Path(__file__).resolve().parent / "traces"
VERSIONS = ("0.0.2", "0.3.44", "0.12.1")

Record = dict[str, Any]


def trace_paths(*scenarios: str) -> list[Path]:
    """Every trace file of every version, or only those whose name starts with one of ``scenarios``."""
    paths = sorted(p for version in VERSIONS for p in (TRACES / version).glob("*.jsonl"))
    if scenarios:
        paths = [p for p in paths if p.name.startswith(scenarios)]
    return paths


def trace_id(path: Path) -> str:
    """``0.12.1/01-success-featureflags``: a readable test id."""
    return f"{path.parent.name}/{path.stem}"


def trace_params(*scenarios: str) -> list[Any]:
    """``pytest.param(path, id=...)`` for :func:`trace_paths`; fails loudly when nothing matches."""
    paths = trace_paths(*scenarios)
    assert paths, f"no trace files for {scenarios or 'any scenario'} under {TRACES}"
    return [pytest.param(p, id=trace_id(p)) for p in paths]


@functools.cache
def _load(path: Path) -> tuple[Record, ...]:
    with path.open(encoding="utf-8") as fh:
        return tuple(json.loads(line) for line in fh if line.strip())


def load(path: Path) -> tuple[Record, ...]:
    """Every record of one trace, in file order (cached; do not mutate the records)."""
    return _load(Path(path))


def ns(t: float) -> int:
    """A record's ``t`` (seconds since the scenario started) as a ``now_ns`` clock value."""
    return round(t * 1_000_000_000)


def ws_recv(records: tuple[Record, ...]) -> Iterator[tuple[int, Record]]:
    """``(index, record)`` of every frame the server sent, on any socket."""
    for i, rec in enumerate(records):
        if rec.get("src") == "ws" and rec.get("dir") == "recv":
            yield i, rec


def frame_of(rec: Record) -> tuple[bytes, bool]:
    """The raw frame of a ``recv`` record and whether it was a text frame."""
    if rec["kind"] == "text":
        return json.dumps(rec["msg"]).encode(), True
    assert rec["b64"] is not None, "binary frame was truncated by the recorder"
    return base64.b64decode(rec["b64"]), False


def client_ids(records: tuple[Record, ...]) -> dict[str, str | None]:
    """Socket label -> the ``clientId`` of its connect URL (None when it connected without one)."""
    out: dict[str, str | None] = {}
    for rec in records:
        if rec.get("src") == "ws" and rec.get("dir") == "connect":
            query = parse_qs(urlsplit(rec["url"]).query)
            out[rec["client"]] = query.get("clientId", [None])[0]
    return out


def http_records(records: tuple[Record, ...], method: str, path: str) -> Iterator[tuple[int, Record]]:
    """``(index, record)`` of HTTP exchanges with this method and exact path (query included)."""
    for i, rec in enumerate(records):
        if rec.get("src") == "http" and rec["method"] == method and rec["path"] == path:
            yield i, rec


def prompt_posts(records: tuple[Record, ...]) -> list[tuple[int, Record]]:
    """Every ``POST /prompt`` exchange that got an answer."""
    return [(i, r) for i, r in http_records(records, "POST", "/prompt") if r.get("status") is not None]


def history_entry(
    records: tuple[Record, ...], prompt_id: str, after: int = 0, number: int | None = None
) -> dict[str, Any] | None:
    """The first ``/history/<prompt_id>`` entry recorded after index ``after``, or None.

    With ``number``, an entry whose ``prompt`` names another queue number (an earlier
    run under a reused prompt id) is skipped. Reduced (``response_summary``) entries
    are returned as they are.
    """
    for i, rec in http_records(records, "GET", f"/history/{prompt_id}"):
        if i < after:
            continue
        body = rec.get("response", rec.get("response_summary"))
        entry = body.get(prompt_id) if isinstance(body, dict) else None
        if not isinstance(entry, dict):
            continue
        run = entry.get("prompt")
        if number is not None and isinstance(run, list) and run and run[0] != number:
            continue
        return entry
    return None
