"""The output store's `stored` entries across a sidecar restart: kept in the state file, never fetched twice.

Real sockets throughout: the simulated ComfyUI over HTTP and WebSocket, each sidecar over TCP
ZeroMQ, restarted in this event loop on the same state file and output folder.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest

from sidecar.config import OutputsConfig

from .conftest import connected, probe_workflow
from .test_outputs_e2e import preview_then_long_probe, read

STEPS = 50  # the probe after the preview runs 1 s: the restart lands before the job ends


def files_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


@pytest.mark.parametrize("comfy_restarts", [False, True], ids=["sidecar", "sidecar-and-comfyui"])
async def test_a_stored_output_survives_a_sidecar_restart_and_is_not_fetched_again(
    tmp_path, sims, sidecars, client, comfy_restarts
):
    """A PreviewImage is stored, the sidecar restarts on the same state file (and ComfyUI too:
    its temp folder emptied, the prompt lost and resubmitted): the job's final event and `job`
    reply list that entry with the same ref and sha256, and it is not fetched a second time."""
    sim = await sims("0.12.1", step_ms=None)
    state, store = tmp_path / "bridge.sqlite3", tmp_path / "outputs"
    outputs = OutputsConfig(dir=str(store), retry_s=0.05)
    first = await sidecars({"a": sim.url}, state=state, outputs=outputs)
    c = await client(first)
    await connected(c, "a")
    await c.request("submit", job_id="kept", workflow=preview_then_long_probe(STEPS))
    stored = (await c.wait_for(lambda e: e["job_id"] == "kept" and e["type"] == "output.stored"))["data"]
    assert stored["node"] == "2" and stored["type"] == "temp" and sim.view_requests == 1
    await first.close()
    if comfy_restarts:
        await sim.close()  # temp emptied, queue and history lost: the job is resubmitted
        await sim.start()

    second = await sidecars({"a": sim.url}, state=state, outputs=outputs)
    c2 = await client(second)
    final = await c2.job_final("kept")
    assert final["type"] == "job.completed"
    entries = final["data"]["stored"]
    assert entries[0] == stored  # the same ref, sha256, size, attempts: the copy of the first run
    assert hashlib.sha256(read(stored["ref"])).hexdigest() == stored["sha256"]
    assert [e["state"] for e in entries] == ["stored"] * len(entries)
    again = [e for e in entries[1:] if (e["node"], e["filename"]) == (stored["node"], stored["filename"])]
    assert again == [], "the stored preview was fetched a second time"
    if comfy_restarts:  # the resubmitted prompt's files come after it, with their prompt id
        assert [e["node"] for e in entries] == ["2", "2", "4"] and len({e["prompt_id"] for e in entries}) == 2
    else:
        assert [e["node"] for e in entries] == ["2", "4"]
    assert sim.view_requests == len(entries)  # one GET /view per file, over both runs
    assert len(files_in(store)) == len(entries)
    assert (await c2.request("job", job_id="kept"))["result"]["stored"] == entries


async def test_a_finished_jobs_stored_list_is_read_back_from_the_state_file(tmp_path, sims, sidecars, client):
    """A job completed before a restart: `job` (read back from the state file) and a duplicate
    `submit` show the `stored` list its final event carried."""
    sim = await sims("0.12.1")
    state = tmp_path / "bridge.sqlite3"
    outputs = OutputsConfig(dir=str(tmp_path / "outputs"), retry_s=0.05)
    first = await sidecars({"a": sim.url}, state=state, outputs=outputs)
    c = await client(first)
    await connected(c, "a")
    await c.request("submit", job_id="done", workflow=probe_workflow(steps=2))
    final = await c.job_final("done")
    assert final["type"] == "job.completed" and len(final["data"]["stored"]) == 2
    await first.close()

    second = await sidecars({"a": sim.url}, state=state, outputs=outputs)
    c2 = await client(second)
    found = (await c2.request("job", job_id="done"))["result"]
    assert found["state"] == "completed" and found["stored"] == final["data"]["stored"]
    duplicate = (await c2.request("submit", job_id="done", workflow=probe_workflow(steps=2)))["result"]
    assert duplicate["duplicate"] is True and duplicate["job"]["stored"] == final["data"]["stored"]
    assert sim.view_requests == 2


async def test_a_fetch_cut_short_by_a_graceful_stop_is_finished_by_the_next_run(tmp_path, sims, sidecars, client):
    """/view answers 503 while the first run waits to retry; a graceful stop leaves the unfinished
    job's entry pending (no output.failed), and the next run fetches it: exactly one output.*
    event for the file, `output.stored`, and the final event lists it stored."""
    sim = await sims("0.12.1", step_ms=None)
    sim.view_fault = 503
    state, store = tmp_path / "bridge.sqlite3", tmp_path / "outputs"
    first = await sidecars({"a": sim.url}, state=state, outputs=OutputsConfig(dir=str(store), retry_s=60.0))
    c = await client(first)
    await connected(c, "a")
    await c.request("submit", job_id="late", workflow=preview_then_long_probe(STEPS))
    await c.wait_for(lambda e: e["job_id"] == "late" and e["type"] == "node.output")
    await first.close()  # cuts the 60 s retry wait short
    assert sim.view_requests == 1
    assert not [e for e in c.of_job("late") if e["type"].startswith("output.")]

    retried = OutputsConfig(dir=str(store), retry_s=0.05, attempts=20)
    second = await sidecars({"a": sim.url}, state=state, outputs=retried)
    c2 = await client(second)
    sim.view_fault = None  # once c2 is subscribed (a try before that got 503): c2 sees the outcome
    final = await c2.job_final("late")
    assert final["type"] == "job.completed"
    entries: list[dict[str, Any]] = final["data"]["stored"]
    assert [(e["node"], e["state"]) for e in entries] == [("2", "stored"), ("4", "stored")]
    outcomes = [e for e in c2.of_job("late") if e["type"].startswith("output.")]
    assert [(e["type"], e["data"]["node"]) for e in outcomes] == [("output.stored", "2"), ("output.stored", "4")]
    assert len(files_in(store)) == 2
