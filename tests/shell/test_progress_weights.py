"""Progress that follows the work (issue 11 section 4), end to end.

A simulated ComfyUI (``comfy-bridge simulate``, a process) runs ComfyUI's default text-to-image
graph, whose nodes take plausible time (a checkpoint load of 40 steps' time on a cold run, cached
on a warm one); the sidecar (``comfy-bridge run``, a process) learns how long each class took and
keeps it in its state file, so after a restart a warm run's percentage follows the time it takes.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import zmq.asyncio

from sidecar.simulator.runtime import WORK_STEPS

from .conftest import WAIT_S, Client, connected, spawn_sidecar, stop
from .test_faults import spawn_simulator

ROOT = Path(__file__).resolve().parents[2]
STEP_MS = 20


def text_to_image(seed: int, steps: int = 20) -> dict[str, Any]:
    workflow: dict[str, Any] = json.loads((ROOT / "docs" / "examples" / "text-to-image.json").read_text())
    workflow["3"]["inputs"].update(seed=seed, steps=steps)
    return workflow


async def run(c: Client, job_id: str, seed: int) -> list[dict[str, Any]]:
    reply = await c.request("submit", job_id=job_id, workflow=text_to_image(seed))
    assert reply["ok"], reply
    assert (await c.job_final(job_id, WAIT_S))["type"] == "job.completed"
    return c.of_job(job_id)


async def test_a_warm_run_after_a_restart_moves_with_its_time(tmp_path: Path, zctx: zmq.asyncio.Context) -> None:
    """Cold run on one sidecar; then a new sidecar on the same state file, and a warm run (new seed:
    loader, prompts and latent cached). Its percent at the sampler's first step is close to that
    moment's share of the run's time (about 7 %; counting nodes gave 1.7 %: one node of three at
    1/20), every published percent is within 10 points of the straight line over time (counting
    nodes: 45), percent never goes back, stays at most 99.9, ends at exactly 100.0, and an eta_s
    is published with it (every class was learned by the first sidecar)."""
    sim, port = await spawn_simulator("0.12.1", step_ms=STEP_MS)
    state = tmp_path / "state.sqlite3"
    url = f"sim=http://127.0.0.1:{port}"
    try:
        first, c = await spawn_sidecar(zctx, state, url)
        try:
            await connected(c, "sim")
            await run(c, "cold", 1)
        finally:
            await c.close()
            assert await stop(first, signal.SIGTERM) == 0
        second, c = await spawn_sidecar(zctx, state, url)
        try:
            await connected(c, "sim")
            events = await run(c, "warm", 2)
        finally:
            await c.close()
            await stop(second, signal.SIGTERM)
    finally:
        await stop(sim)

    cached = next(e for e in events if e["type"] == "node.cached")
    assert sorted(cached["data"]["nodes"]) == ["4", "5", "6", "7"]
    start = next(e["ts"] for e in events if e["type"] == "job.started")
    progress = [e for e in events if e["type"] == "job.progress"]
    end = progress[-1]["ts"]
    percents = [e["data"]["percent"] for e in progress]
    assert percents == sorted(percents) and percents[-1] == 100.0 and max(percents[:-1]) <= 99.9

    def share(ts: int) -> float:
        return 100.0 * (ts - start) / (end - start)

    first_step = next(e for e in events if e["type"] == "node.progress" and e["data"]["node"] == "3")
    at_first_step = next(e for e in progress if e["seq"] > first_step["seq"])["data"]["percent"]
    # The warm run's work by the simulator's model (WORK_STEPS, in sampler steps): the sampler's
    # set-up and its first step out of set-up, 20 steps, decode and save. Measured against the
    # model, not the wall clock, so a loaded machine's pauses do not move the target.
    work = WORK_STEPS["KSampler"] + 20 + WORK_STEPS["VAEDecode"] + WORK_STEPS["SaveImage"]
    expected = 100.0 * (WORK_STEPS["KSampler"] + 1) / work
    # Within 4.5 points: counting nodes gives 1.7 (more than 5 off). The learned times are wall-clock
    # measurements of the cold run, which a loaded machine stretches unevenly (4.1 seen, -n 3 beside
    # another suite run).
    assert abs(at_first_step - expected) <= 4.5, (at_first_step, expected, share(first_step["ts"]))
    gaps = [abs(e["data"]["percent"] - share(e["ts"])) for e in progress]
    assert max(gaps) <= 15.0, gaps  # counting nodes: 45
    etas = [e["data"]["eta_s"] for e in progress]
    assert etas[-1] == 0.0 and all(eta is not None for eta in etas), etas


async def test_a_cold_run_moves_the_bar_during_the_checkpoint_load(tmp_path: Path, zctx: zmq.asyncio.Context) -> None:
    """A cold run teaches the sidecar the classes' durations (kept in its state file); a new sidecar
    and a new, empty ComfyUI then run it cold again. ComfyUI sends nothing while it loads the
    checkpoint (1.2 s here), yet ``job.progress`` events (with eta_s) arrive between that loader's
    ``node.executing`` and the next node's, rising with the time it ran and staying below the
    loader's whole share of the run (it holds at 90 % of its learned time). Before the ticker there
    were none: the bar stood still for 57 % of the run."""
    state = tmp_path / "state.sqlite3"
    for job_id, seed in (("learn", 1), ("cold", 2)):
        sim, port = await spawn_simulator("0.12.1", step_ms=30)  # an empty ComfyUI: a cold run
        try:
            proc, c = await spawn_sidecar(zctx, state, f"sim=http://127.0.0.1:{port}")
            try:
                await connected(c, "sim")
                events = await run(c, job_id, seed)
            finally:
                await c.close()
                assert await stop(proc, signal.SIGTERM) == 0
        finally:
            await stop(sim)

    assert not any(e["type"] == "node.cached" for e in events)
    starts = [i for i, e in enumerate(events) if e["type"] == "node.executing"]
    load = next(i for i in starts if events[i]["data"]["node"] == "4")
    after = next(i for i in starts if i > load)
    during = [e for e in events[load + 1 : after] if e["type"] == "job.progress"]
    percents = [e["data"]["percent"] for e in during]
    assert len(during) >= 2, [e["type"] for e in events]
    assert percents == sorted(percents) and len(set(percents)) == len(percents), percents
    assert all(e["data"]["eta_s"] is not None for e in during), during
    # the loader is 40 of 67 steps' work (60 %): at most 90 % of it (54 %) before it ends, with room
    # for a loaded machine's timing of the first run
    assert 0.0 < percents[-1] <= 0.9 * 100.0 * 40 / 67 + 5.0, percents
    assert events[after]["data"]["node"] != "4"
