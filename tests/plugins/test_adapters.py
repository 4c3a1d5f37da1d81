"""Version adapters: chosen by what a server shows, and the same job outcome on every version."""

from __future__ import annotations

import pytest

from sidecar.core.jobs import JobBook
from sidecar.core.sequence import Sequencer
from sidecar.core.tracker import InstanceTracker
from sidecar.core.versions import first_to_know, select_adapter
from sidecar.plugins.api import ServerInfo
from sidecar.plugins.builtin.adapters import BUILTIN_ADAPTERS
from sidecar.protocol.comfy import Decoder
from tests.tracesupport import TRACES, frame_of, load

EXPECTED = {"0.0.2": "comfyui-0.0", "0.3.44": "comfyui-0.0.3", "0.12.1": "comfyui-0.7"}


@pytest.mark.parametrize(
    ("version", "features", "expected", "noted"),
    [
        (None, False, "comfyui-0.0", False),
        ("0.0.2", False, "comfyui-0.0", False),
        ("0.0.3", False, "comfyui-0.0.3", False),
        ("0.1.0", False, "comfyui-0.0.3", False),
        ("0.3.44", False, "comfyui-0.0.3", False),
        ("0.3.45", True, "comfyui-0.3.45", False),
        ("0.3.57", True, "comfyui-0.3.45", False),
        ("0.3.58", True, "comfyui-0.3.58", False),
        ("0.6.9", True, "comfyui-0.3.58", False),
        ("0.7.0", True, "comfyui-0.7", False),
        ("0.12.1", True, "comfyui-0.7", False),
        ("0.13.0", True, "comfyui-0.7", True),
        (None, True, "comfyui-0.3.45", False),
        ("v0.3.58-12-gabcdef", True, "comfyui-0.3.58", False),
    ],
)
def test_every_boundary_of_protocol_section_10_picks_its_adapter(version, features, expected, noted):
    """The highest adapter not above the server's version; a newer server gets the newest, with a note."""
    adapter, note = select_adapter(BUILTIN_ADAPTERS, ServerInfo(version, features, False, False))
    assert adapter.name == expected
    assert (note is not None) is noted
    if noted:
        assert "newer than any adapter knows" in note and adapter.name in note


def test_capabilities_follow_the_boundaries():
    """Own prompt ids from 0.3.45, targeted interrupt from 0.3.58, the cancel endpoint only when probed."""
    caps = {a.name: a.capabilities(ServerInfo("x", True, True, True)) for a in BUILTIN_ADAPTERS}
    assert not caps["comfyui-0.0"].execution_success and caps["comfyui-0.0.3"].execution_success
    assert not caps["comfyui-0.0.3"].client_prompt_id and caps["comfyui-0.3.45"].client_prompt_id
    assert not caps["comfyui-0.3.45"].targeted_interrupt and caps["comfyui-0.3.58"].targeted_interrupt
    assert caps["comfyui-0.7"].jobs_cancel and not caps["comfyui-0.3.58"].jobs_cancel
    unprobed = BUILTIN_ADAPTERS[-1].capabilities(ServerInfo("0.12.1", True, True, False))
    assert unprobed.jobs_cancel is False


def _decides(adapter, info: ServerInfo) -> tuple:
    """Everything an adapter decides for a server: its capabilities and the message types it decodes."""
    return adapter.capabilities(info), sorted(adapter.message_types())


@pytest.mark.parametrize("pair", range(len(BUILTIN_ADAPTERS) - 1), ids=lambda i: BUILTIN_ADAPTERS[i + 1].name)
def test_no_built_in_adapter_decides_the_same_as_the_one_before(pair):
    """A boundary gets an adapter only when the sidecar does something different past it."""
    older, newer = BUILTIN_ADAPTERS[pair], BUILTIN_ADAPTERS[pair + 1]
    infos = [
        ServerInfo(v, f, r, c)
        for v in (None, "0.12.1")
        for f in (False, True)
        for r in (False, True)
        for c in (False, True)
    ]
    assert any(_decides(older, info) != _decides(newer, info) for info in infos), (older.name, newer.name)


@pytest.mark.parametrize(
    ("message_type", "least", "expected"),
    [
        ("status", (0, 0, 0), "comfyui-0.0"),
        ("execution_success", (0, 0, 3), "comfyui-0.0.3"),
        ("progress_state", (0, 3, 45), "comfyui-0.3.45"),
        ("no_such_message", None, "comfyui-0.0"),
    ],
)
def test_what_a_versionless_server_sends_places_it(message_type, least, expected):
    """A message first sent by release R makes a server that reports no version at least R."""
    info = ServerInfo(None, False, False, False)
    assert first_to_know(BUILTIN_ADAPTERS, info, message_type) == least
    refined = ServerInfo(None, False, False, False, min_version=least)
    assert select_adapter(BUILTIN_ADAPTERS, refined)[0].name == expected
    # what a server showed never lowers it: /features already placed it at 0.3.45
    shown = ServerInfo(None, True, False, False, min_version=least)
    assert select_adapter(BUILTIN_ADAPTERS, shown)[0].name == "comfyui-0.3.45"


def load_trace(version: str, scenario: str) -> tuple[dict, ...]:
    return load(TRACES / version / f"{scenario}.jsonl")


def _server_info(records: tuple[dict, ...]) -> ServerInfo:
    stats = next(r["response"] for r in records if r["src"] == "http" and r["path"] == "/system_stats")
    features = [r["status"] for r in records if r["src"] == "http" and r["path"] == "/features"]
    version = stats.get("system", {}).get("comfyui_version")
    return ServerInfo(version, bool(features) and features[0] == 200, False, False, stats)


@pytest.mark.parametrize("version", list(EXPECTED))
def test_each_adapter_driven_by_its_traces_gives_the_same_job_outcome(version):
    """The adapter chosen from a version's recorded endpoints decodes its recorded run to the same outcome."""
    adapter, _ = select_adapter(BUILTIN_ADAPTERS, _server_info(load_trace(version, "08-prompt-id-and-endpoints")))
    assert adapter.name == EXPECTED[version]
    outcomes = {}
    for scenario in ("01-success-featureflags", "05-runtime-error"):
        records = load_trace(version, scenario)
        decoder = Decoder(adapter.message_types())
        book = JobBook(Sequencer("r"))
        tracker = InstanceTracker("a", book)
        events = []
        for r in records:
            if r["src"] == "http" and r["method"] == "POST" and r["path"] == "/prompt" and r["status"] == 200:
                job, ev = book.accept("job", "a", r["request"]["prompt"], None, 0)
                events += ev
                queued = adapter.read_prompt_response(r["status"], r["response"], False)
                events += tracker.submitted(job, queued.prompt_id, queued.number, queued.node_errors, 1)
            elif r["src"] == "ws" and r["dir"] == "recv":
                frame, is_text = frame_of(r)
                msg = decoder.decode(frame, is_text=is_text)
                assert type(msg).__name__ not in ("Malformed", "Unknown"), msg
                events += tracker.feed(msg, 2)
            for done in tracker.history_wanted():
                events += tracker.finalize(done, None, 3)
        outcomes[scenario] = [e.type for e in events if e.type.startswith("job.") and e.type != "job.progress"]
    assert outcomes["01-success-featureflags"] == ["job.accepted", "job.queued", "job.started", "job.completed"]
    assert outcomes["05-runtime-error"] == ["job.accepted", "job.queued", "job.started", "job.failed"]


def test_disabling_every_adapter_is_a_clear_start_up_error(tmp_path):
    """With the built-in adapters disabled and no other, the sidecar refuses to start, saying why."""
    from sidecar.app import Sidecar
    from sidecar.config import BridgeConfig, InstanceConfig, PluginsConfig, StateConfig, ZmqConfig
    from sidecar.plugins.manager import PluginError

    config = BridgeConfig(
        instances={"a": InstanceConfig(url="http://127.0.0.1:9")},
        zmq=ZmqConfig(router="tcp://127.0.0.1:*", pub="tcp://127.0.0.1:*"),
        state=StateConfig(path=str(tmp_path / "s.sqlite3")),
        plugins=PluginsConfig(disabled=["sidecar.plugins.builtin.adapters"]),
    )
    with pytest.raises(PluginError, match="no protocol adapter.*plugins.disabled"):
        Sidecar(config)
