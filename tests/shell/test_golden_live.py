"""The golden fixtures have the shape a live sidecar sends: the same keys, at every level.

``tests/golden/`` is what a client in another language (the Rust backend, the example in
``examples/rust-client/``) decodes into typed structs. A key the live sidecar sends but the
golden reply lacks, or the reverse, makes a typed client pass its test vectors and fail live
(or the reverse). These tests drive a real sidecar over ZeroMQ and compare the key sets of its
replies and events with the golden ones of the same name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import pytest

from sidecar.config import OutputsConfig, PreviewConfig

from .conftest import Client, connected, probe_workflow, text_workflow

GOLDEN = Path(__file__).resolve().parent.parent / "golden"

#: Maps whose keys are data, not schema: ComfyUI's outputs, the client's own value, counts by type.
OPAQUE = {"outputs", "output", "client_data", "dropped"}


def golden(name: str) -> Any:
    return msgspec.msgpack.decode((GOLDEN / name).read_bytes())


def shape(value: Any, path: str = "") -> set[str]:
    """Every key path of ``value`` (``result.instances[].name``); lists by their first item."""
    if isinstance(value, dict):
        keys: set[str] = set()
        for key, item in value.items():
            here = f"{path}.{key}" if path else key
            keys.add(here)
            if key not in OPAQUE:
                keys |= shape(item, here)
        return keys
    if isinstance(value, list) and value and isinstance(value[0], dict):
        return shape(value[0], path + "[]")
    return set()


def differences(name: str, live: Any) -> list[str]:
    """What the live message has that the golden one of ``name`` lacks, and the reverse."""
    want, got = shape(golden(name)), shape(live)
    out = [f"{name}: live only {sorted(got - want)}"] if got - want else []
    return out + ([f"{name}: golden only {sorted(want - got)}"] if want - got else [])


async def start(sims: Any, sidecars: Any, client: Any, previews: PreviewConfig | None = None) -> Client:
    return (await start_sim(sims, sidecars, client, previews))[1]


async def start_sim(
    sims: Any, sidecars: Any, client: Any, previews: PreviewConfig | None = None, outputs: OutputsConfig | None = None
) -> tuple[Any, Client]:
    sim = await sims("0.12.1")
    c: Client = await client(await sidecars({"gpu0": sim.url}, previews=previews, outputs=outputs))
    await connected(c, "gpu0")
    return sim, c


@pytest.mark.parametrize("store", ["files", "inline", "none"])
async def test_live_health_reply_has_the_golden_key_set(sims, sidecars, client, tmp_path, store):
    """reply-ok-health.msgpack has exactly the keys of a live health reply (events, previews, store),
    whatever the preview store (the files store's writer counts are there, as 0, for the others)."""
    c = await start(sims, sidecars, client, PreviewConfig(store=store, dir=str(tmp_path / "previews")))
    await c.request("submit", job_id="j", workflow=probe_workflow(steps=2, step_ms=5))
    assert (await c.job_final("j"))["type"] == "job.completed"
    live = await c.request("health")
    assert live["ok"] is True, live
    assert not differences("reply-ok-health.msgpack", live)
    if store == "files":
        counts = live["result"]["previews"]
        assert counts["queued"] + counts["written"] + counts["dropped"] + counts["failed"] >= 1, counts


async def test_live_replies_and_events_have_the_golden_key_sets(sims, sidecars, client, tmp_path):
    """Every golden reply, and every golden event type a plain run produces, matches a live one."""
    sim, c = await start_sim(sims, sidecars, client, outputs=OutputsConfig(dir=str(tmp_path / "out"), retry_s=0.01))
    live: dict[str, Any] = {"reply-ok-ping.msgpack": await c.request("ping")}
    done = await c.request("submit", job_id="done", workflow=probe_workflow(steps=2, step_ms=5), client_data={"u": 1})
    live["reply-ok-submit.msgpack"] = done
    assert (await c.job_final("done"))["type"] == "job.completed"
    live["reply-ok-job.msgpack"] = await c.request("job", job_id="done")
    again = probe_workflow(steps=2, step_ms=5)  # a new seed: run in full, then again from cache
    await c.request("submit", job_id="warm", workflow=again)
    await c.job_final("warm")
    await c.request("submit", job_id="cached", workflow=again)
    await c.job_final("cached")
    await c.request("submit", job_id="fails", workflow=probe_workflow(steps=3, step_ms=5, fail_at=2))
    assert (await c.job_final("fails"))["type"] == "job.failed"
    sim.view_fault = 404  # output.failed: ComfyUI no longer has the files
    await c.request("submit", job_id="nofiles", workflow=probe_workflow(steps=1, step_ms=5))
    assert (await c.job_final("nofiles"))["type"] == "job.completed"
    sim.view_fault = None
    await c.request("submit", job_id="text", workflow=text_workflow())  # node.text
    assert (await c.job_final("text"))["type"] == "job.completed"

    await c.request("submit", job_id="long", workflow=probe_workflow(steps=200, step_ms=20))
    await c.wait_for(lambda e: e["type"] == "node.progress" and e["job_id"] == "long")
    live["reply-ok-snapshot.msgpack"] = await c.request("snapshot")
    live["reply-ok-jobs.msgpack"] = await c.request("jobs", active=True, instance="gpu0")
    live["reply-ok-health.msgpack"] = await c.request("health")
    live["reply-ok-pause.msgpack"] = await c.request("pause", job_id="long")
    await c.wait_for(lambda e: e["type"] == "job.paused" and e["job_id"] == "long")
    live["reply-ok-resume.msgpack"] = await c.request("resume", job_id="long")
    live["reply-error-job-not-paused.msgpack"] = await c.request("resume", job_id="done")
    mark = c.events[-1]["seq"]
    await c.wait_for(lambda e: e["type"] == "node.progress" and e["job_id"] == "long" and e["seq"] > mark)
    live["reply-ok-cancel.msgpack"] = await c.request("cancel", job_id="long")
    assert (await c.job_final("long"))["type"] == "job.cancelled"
    live["reply-error-job-finished.msgpack"] = await c.request("cancel", job_id="long")
    live["reply-error-job-not-found.msgpack"] = await c.request("job", job_id="job-9999")
    live["reply-error-unknown-op.msgpack"] = await c.request("reboot")
    live["reply-error-invalid-request.msgpack"] = await c.request("job")
    live["reply-error-expired.msgpack"] = await c.request("cancel", job_id="long", deadline_ns=1)
    live["reply-error-malformed-request.msgpack"] = await c.raw(msgspec.msgpack.encode(["ping"]))
    wide = {str(n): {"class_type": "EmptyImage", "inputs": {}} for n in range(10_001)}  # limits.workflow_nodes
    live["reply-error-limit-exceeded.msgpack"] = await c.request("submit", job_id="wide", workflow=wide)
    replies = {p.name for p in GOLDEN.glob("reply-*.msgpack")}
    assert set(live) == replies, "a golden reply has no live counterpart here: add one"

    # instance.status: the first "connected" may go out before this client's SUB has joined (a PUB
    # drops what no subscriber holds), so the connection is dropped and followed back up.
    await sim.drop_connections()
    down = await c.wait_for(lambda e: e["type"] == "instance.status" and e["data"]["state"] == "disconnected")
    await c.wait_for(
        lambda e: e["type"] == "instance.status" and e["data"]["state"] == "connected" and e["seq"] > down["seq"]
    )
    await c.tick()  # a heartbeat, once the sidecar is idle
    seen: dict[str, dict[str, Any]] = {}
    for event in c.events:
        seen.setdefault(event["type"], event)
    unreachable = {"job.cancel_unconfirmed", "job.pause_unconfirmed", "job.resubmitted"}  # need a misbehaving ComfyUI
    golden_types = {p.name[len("event-") : -len(".msgpack")] for p in GOLDEN.glob("event-*.msgpack")}
    assert golden_types - unreachable <= set(seen), f"not produced live: {golden_types - unreachable - set(seen)}"
    for type_ in sorted(golden_types & set(seen)):
        live[f"event-{type_}.msgpack"] = seen[type_]

    mismatches = [line for name, body in sorted(live.items()) for line in differences(name, body)]
    assert not mismatches, "\n".join(mismatches)
