"""What the server sends decides how it is read: adapters, decoders, node state and progress text, live.

A simulated ComfyUI over real WebSocket and HTTP, a sidecar, and a DEALER + SUB client over TCP.
"""

from __future__ import annotations

import signal
import sqlite3
from contextlib import closing
from typing import Any

from .conftest import connected, probe_workflow, spawn_sidecar, stop, text_workflow


async def _instance(c: Any) -> dict[str, Any]:
    return (await c.request("health"))["result"]["instances"][0]


async def test_a_versionless_server_that_answers_the_handshake_is_read_with_its_new_adapter_at_once(
    sims, sidecars, client
):
    """No comfyui_version, /features hidden: the feature-flags reply moves the instance to comfyui-0.3.45,
    and the frames after it are decoded with that adapter's table (none is counted as unknown)."""
    sim = await sims("0.12.1", report_version=False, features_route=False)
    running = await sidecars({"a": sim.url})
    c = await client(running)
    await connected(c, "a")
    await c.request("submit", job_id="j", workflow=probe_workflow(steps=3))
    assert (await c.job_final("j"))["type"] == "job.completed"
    view = await _instance(c)
    assert view["adapter"] == "comfyui-0.3.45" and view["version"] is None
    assert (view["unknown"], view["malformed"]) == (0, 0)  # execution_success, progress_state: known


async def test_a_versionless_server_is_placed_by_the_messages_it_sends(sims, sidecars, client):
    """A server that reports no version and sends execution_success is at least 0.0.3: the instance moves
    from comfyui-0.0 to comfyui-0.0.3 and that message is decoded, not counted as unknown."""
    sim = await sims("0.3.44", report_version=False)
    running = await sidecars({"a": sim.url})
    c = await client(running)
    await connected(c, "a")
    assert (await _instance(c))["adapter"] == "comfyui-0.0"
    for n in range(2):
        await c.request("submit", job_id=f"j{n}", workflow=probe_workflow(steps=2))
        assert (await c.job_final(f"j{n}"))["type"] == "job.completed"
    view = await _instance(c)
    assert view["adapter"] == "comfyui-0.0.3"
    assert (view["unknown"], view["malformed"]) == (0, 0)
    assert running.sidecar.instances["a"].caps.execution_success is True


async def test_a_restarted_sidecar_counts_nodes_that_finished_before_it_from_progress_state(
    tmp_path, sims, sidecars, client
):
    """Restarted while node 2 runs, the sidecar never sees nodes 1 and 4 finish; the first progress_state
    after it reconnects says they did, so job.progress moves on during node 2 instead of waiting for the end."""
    sim = await sims("0.12.1", step_ms=5)
    state = tmp_path / "bridge.sqlite3"
    first = await sidecars({"a": sim.url}, state=state)
    c = await client(first)
    await connected(c, "a")
    await c.request("submit", job_id="j", workflow=probe_workflow(steps=8))
    # node 2 (8 steps) is held at its next step (4 or 5) until the second sidecar is connected
    await c.wait_for(lambda e: e["type"] == "node.progress" and e["data"]["node"] == "2" and e["data"]["value"] == 3)
    sim.hold_steps()
    await first.close()
    # Both runs weigh the nodes alike (the default: node 1 and 4's learned milliseconds would make
    # them count for nothing), so what progress_state restores shows in the percentage.
    with closing(sqlite3.connect(state)) as db, db:
        db.execute("DELETE FROM node_costs")

    second = await sidecars({"a": sim.url}, state=state)
    c2 = await client(second)
    await connected(c2, "a")
    sim.release_steps()
    assert (await c2.job_final("j"))["type"] == "job.completed"
    events = [e for e in c2.of_job("j") if e["type"] in ("job.progress", "node.executing", "node.progress")]
    node2_steps = [e["data"]["value"] for e in events if e["type"] == "node.progress"]
    assert node2_steps and node2_steps[-1] == 8, "the second sidecar followed node 2 to its end"
    next_node = next(i for i, e in enumerate(events) if e["type"] == "node.executing" and e["data"]["node"] == "5")
    during_node2 = [e["data"]["percent"] for e in events[:next_node] if e["type"] == "job.progress"]
    assert during_node2, "no job.progress while node 2 ran after the restart"
    assert 40.0 < during_node2[0] < 60.0  # nodes 1 and 4 done, node 2 part way (step 4 or 5): (2 + k/8) / 5
    percents = [e["data"]["percent"] for e in events if e["type"] == "job.progress"]
    assert percents == sorted(percents) and percents[-1] == 100.0


async def test_a_sub_receives_node_text_from_comfyui_through_a_sidecar_process(tmp_path, sims, zctx):
    """GetImageSize sends progress text (binary type 3, to every socket); the sidecar, a separate process,
    publishes it as node.text of the running job, on the progress topic, between the node's start and the end."""
    sim = await sims("0.12.1")
    proc, c = await spawn_sidecar(zctx, tmp_path / "s.sqlite3", f"a={sim.url}")
    try:
        await connected(c, "a")
        reply = await c.request("submit", job_id="sized", workflow=text_workflow())
        assert reply["ok"], reply
        assert (await c.job_final("sized"))["type"] == "job.completed"
        events = c.of_job("sized")
        texts = [e for e in events if e["type"] == "node.text"]
        assert [e["data"] for e in texts] == [{"node": "2", "text": "64 x 48 pixels\nbatch of 2"}]
        assert c.topics[texts[0]["seq"]] == b"progress.a"
        types = [e["type"] for e in events]
        started = next(i for i, e in enumerate(events) if e["type"] == "node.executing" and e["data"]["node"] == "2")
        assert started < types.index("node.text") < types.index("job.completed")
        await c.close()
        assert await stop(proc, signal.SIGTERM) == 0
    finally:
        await stop(proc)
