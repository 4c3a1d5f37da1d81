"""Capabilities from what each recorded server showed, as the sidecar derives them at connect time:
``select_adapter`` over the built-in adapters, then the chosen adapter's ``capabilities``."""

from __future__ import annotations

from typing import Any

import pytest

from sidecar.core.versions import Capabilities, parse_version, select_adapter
from sidecar.plugins.api import ServerInfo
from sidecar.plugins.builtin.adapters import BUILTIN_ADAPTERS
from tests.tracesupport import TRACES, VERSIONS, http_records, load, ws_recv


def capabilities(stats: Any, features_ok: bool, flags_replied: bool) -> Capabilities:
    """What ``Instance`` computes when it connects to a server showing these."""
    system = stats.get("system") if isinstance(stats, dict) else None
    version = system.get("comfyui_version") if isinstance(system, dict) else None
    info = ServerInfo(version if isinstance(version, str) else None, features_ok, flags_replied, False, stats)
    adapter, _ = select_adapter(BUILTIN_ADAPTERS, info)
    return adapter.capabilities(info)


def _observed(version: str) -> dict[str, Any]:
    """What the traces of ``version`` show, independent of the code under test."""
    endpoints = load(TRACES / version / "08-prompt-id-and-endpoints.jsonl")
    ((_, stats),) = http_records(endpoints, "GET", "/system_stats")
    ((_, features),) = http_records(endpoints, "GET", "/features")
    ((_, jobs),) = http_records(endpoints, "GET", "/api/jobs?limit=3")
    notes = [r["text"] for p in (TRACES / version).glob("*.jsonl") for r in load(p) if r["src"] == "note"]
    frames = [rec for p in (TRACES / version).glob("*.jsonl") for _, rec in ws_recv(load(p))]
    flags = load(TRACES / version / "01-success-featureflags.jsonl")
    return {
        "system_stats": stats["response"],
        "features_ok": features["status"] == 200,
        "flags_replied": any(r["kind"] == "text" and r["msg"]["type"] == "feature_flags" for _, r in ws_recv(flags)),
        "execution_success": any(r["kind"] == "text" and r["msg"]["type"] == "execution_success" for r in frames),
        "client_prompt_id": any("same as supplied: True" in n for n in notes),
        "targeted_interrupt": any("NON-matching" in n and "kept running" in n for n in notes),
        "jobs_api": jobs["status"] == 200,
    }


@pytest.mark.parametrize("version", VERSIONS)
def test_capabilities_match_what_the_recorded_server_did(version: str) -> None:
    """Each flag agrees with the trace: stats, /features, handshake, and observed behaviour.

    ``preview_metadata`` is deprecated and left at its default: nothing reads it (the
    tracker takes type-1 and type-4 previews alike, whatever the handshake said)."""
    seen = _observed(version)
    caps = capabilities(seen["system_stats"], seen["features_ok"], seen["flags_replied"])
    assert caps == Capabilities(
        version=seen["system_stats"]["system"].get("comfyui_version"),
        execution_success=seen["execution_success"],
        client_prompt_id=seen["client_prompt_id"],
        targeted_interrupt=seen["targeted_interrupt"],
        jobs_api=seen["jobs_api"],
    )


def test_versions_differ_as_protocol_md_says() -> None:
    """0.12.1 has client prompt ids and targeted interrupt, 0.3.44 neither, 0.0.2 no execution_success."""
    caps = {
        v: capabilities(*(lambda s: (s["system_stats"], s["features_ok"], s["flags_replied"]))(_observed(v)))
        for v in VERSIONS
    }
    assert caps["0.12.1"].client_prompt_id and caps["0.12.1"].targeted_interrupt
    assert not caps["0.3.44"].client_prompt_id and not caps["0.3.44"].targeted_interrupt
    assert caps["0.3.44"].execution_success
    assert not caps["0.0.2"].execution_success and caps["0.0.2"].version is None


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("0.3.44", (0, 3, 44)),
        ("v0.12.1", (0, 12, 1)),
        ("0.7", (0, 7, 0)),
        ("1.2.3-rc1", (1, 2, 3)),
        (" 0.3.45 ", (0, 3, 45)),
        ("", None),
        (None, None),
        ("nightly", None),
        ("0.x.1", None),
    ],
)
def test_parse_version_reads_dotted_numbers_only(text: str | None, parsed: tuple[int, int, int] | None) -> None:
    """``parse_version`` returns a 3-tuple for dotted numbers and None for anything else."""
    assert parse_version(text) == parsed


@pytest.mark.parametrize(
    ("stats", "features_ok", "flags", "success", "prompt_id", "targeted"),
    [
        pytest.param(
            {"system": {"comfyui_version": "0.3.45"}}, True, True, True, True, False, id="first-flags-release"
        ),
        pytest.param({"system": {"comfyui_version": "0.3.58"}}, True, True, True, True, True, id="targeted-interrupt"),
        pytest.param({"system": {"comfyui_version": "9.0.0"}}, True, True, True, True, True, id="future"),
        pytest.param({"system": {}}, True, False, True, True, False, id="no-version-but-features"),
        pytest.param(None, False, False, False, False, False, id="no-stats-at-all"),
        pytest.param({"system": {"comfyui_version": 12}}, False, False, False, False, False, id="version-not-a-string"),
    ],
)
def test_capability_boundaries(
    stats: Any, features_ok: bool, flags: bool, success: bool, prompt_id: bool, targeted: bool
) -> None:
    """Boundaries of PROTOCOL.md §10; unknown versions fall back on /features and the handshake."""
    caps = capabilities(stats, features_ok, flags)
    assert (caps.execution_success, caps.client_prompt_id, caps.targeted_interrupt) == (
        success,
        prompt_id,
        targeted,
    )
    assert caps.preview_metadata is False  # deprecated, never set by the built-ins
