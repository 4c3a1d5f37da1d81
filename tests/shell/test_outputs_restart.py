"""The output store's `stored` entries across a sidecar restart: kept in the state file, never fetched twice.

Real sockets throughout: the simulated ComfyUI over HTTP and WebSocket, each sidecar over TCP
ZeroMQ, restarted in this event loop on the same state file and output folder (or, for a crash,
a real `comfy-bridge run` process killed with SIGKILL).
"""

from __future__ import annotations

import hashlib
import signal
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from sidecar.config import OutputsConfig

from .conftest import Client, connected, probe_workflow, spawn_sidecar, stop
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


def saved_outputs(state: Path, job_id: str) -> int:
    """Rows of the job's file outputs committed to the state file (read while the sidecar writes: WAL)."""
    conn = sqlite3.connect(state)
    try:
        return int(conn.execute("SELECT count(*) FROM job_outputs WHERE job_id = ?", (job_id,)).fetchone()[0])
    finally:
        conn.close()


@pytest.mark.parametrize("comfy_restarts", [False, True], ids=["sidecar", "sidecar-and-comfyui"])
async def test_a_fetch_pending_when_the_sidecar_is_killed_ends_in_the_next_run(tmp_path, sims, zctx, comfy_restarts):
    """SIGKILL while a PreviewImage's fetch is pending (not tried yet, or waiting to retry a 503):
    the next process fetches the entry saved pending. ComfyUI still has the file: stored; ComfyUI
    restarted too (temp emptied, the prompt resubmitted): failed with HTTP 404, still listed in the
    final event before the new files."""
    (tmp_path / "bridge.toml").write_text("[zmq]\nheartbeat_s = 0.05\n[outputs]\nretry_s = 5.0\n")
    sim = await sims("0.12.1", step_ms=None)
    sim.view_fault = 503
    state = tmp_path / "bridge.sqlite3"
    proc, c = await spawn_sidecar(zctx, state, f"a={sim.url}")
    c2: Client | None = None
    try:
        await connected(c, "a")
        await c.request("submit", job_id="crash", workflow=preview_then_long_probe(STEPS))
        await c.wait_for(lambda e: e["job_id"] == "crash" and e["type"] == "node.output")
        while saved_outputs(state, "crash") == 0:  # the pending entry is committed (within ms)
            seen = c.events[-1]["seq"]
            await c.wait_for(lambda e, seen=seen: e["seq"] > seen)  # the sampler's next frame: 20 ms
        await stop(proc, signal.SIGKILL)
        before = sim.view_requests  # 0, or the one 503 (its retry waits 5 s); SaveImage has not run yet
        assert before <= 1
        sim.view_fault = None
        if comfy_restarts:
            await sim.close()
            await sim.start()
        proc, c2 = await spawn_sidecar(zctx, state, f"a={sim.url}")
        final = await c2.job_final("crash")
        assert final["type"] == "job.completed"
        entries: list[dict[str, Any]] = final["data"]["stored"]
        first = entries[0]
        assert first["node"] == "2" and first["attempts"] == 1  # the new run's one try
        if comfy_restarts:
            assert first["state"] == "failed" and "HTTP 404" in first["error"]
            assert [(e["node"], e["state"]) for e in entries[1:]] == [("2", "stored"), ("4", "stored")]
            assert first["prompt_id"] != entries[1]["prompt_id"]
        else:
            assert [(e["node"], e["state"]) for e in entries] == [("2", "stored"), ("4", "stored")]
        assert sim.view_requests == before + len(entries)  # the new run: one GET /view per file
        assert (await c2.request("job", job_id="crash"))["result"]["stored"] == entries
    finally:
        for client_ in (c, c2):
            if client_ is not None:
                await client_.close()
        await stop(proc, signal.SIGTERM)
