"""A sidecar against a fuzzing ComfyUI (issue 12): ``comfy-bridge simulate --fuzz SEED`` sends, after
about half of its real frames, a mutated copy (garbled JSON, wrong types in known messages, binary
previews cut inside their header, unknown types, frames for prompts no one submitted).

Both are real processes; the test talks to the sidecar over ZeroMQ. Every job still reaches its
final state (published, and the ``job`` view says so), ``ping`` and ``health`` keep being served
while the fuzzed frames arrive, the instance's ``malformed`` and ``unknown`` counters rise, and
the sidecar logs no ERROR and no traceback.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest
import zmq.asyncio

from tests.shell.conftest import (
    LogLines,
    connected,
    probe_workflow,
    spawn_cli,
    spawn_sidecar,
    stop,
    text_workflow,
)

FINAL = ("job.completed", "job.failed", "job.cancelled")


@pytest.mark.parametrize(("version", "seed"), [("0.12.1", 1), ("0.0.2", 2)])
async def test_every_job_ends_against_a_fuzzing_comfyui(
    zctx: zmq.asyncio.Context, tmp_path: Path, version: str, seed: int
) -> None:
    sim, match = await spawn_cli(
        "simulate", "--port", "0", "--version", version, "--step-ms", "5", "--fuzz", str(seed),
        until=r"simulator ready at (http://127\.0\.0\.1:\d+)",
    )  # fmt: skip
    seen = LogLines()
    proc, c = await spawn_sidecar(zctx, tmp_path / "state.sqlite3", f"a={match.group(1)}", seen=seen)
    try:
        await connected(c, "a")
        expected: dict[str, str] = {}
        for n in range(6):
            fails = n % 3 == 2
            workflow: dict[str, Any] = probe_workflow(steps=4, fail_at=2 if fails else -1, step_ms=5)
            if version == "0.12.1" and n == 4:
                workflow = text_workflow()
            reply = await c.request("submit", workflow=workflow, job_id=f"fuzz-job-{n}")
            assert reply["ok"], reply
            expected[f"fuzz-job-{n}"] = "job.failed" if fails else "job.completed"

        for job_id, want in expected.items():  # served while the fuzzed frames keep coming
            assert (await c.request("ping"))["ok"]
            final = await c.job_final(job_id)
            assert final["type"] == want, (job_id, final)
            view = (await c.request("job", job_id=job_id))["result"]
            assert view["state"] == want.removeprefix("job."), view
            finals = [e for e in c.of_job(job_id) if e["type"] in FINAL]
            assert len(finals) == 1, finals

        health = await c.request("health")
        assert health["ok"], health
        (inst,) = health["result"]["instances"]
        assert inst["state"] == "connected" and inst["malformed"] > 0 and inst["unknown"] > 0, inst
    finally:
        await stop(proc, signal.SIGTERM)
        await stop(sim, signal.SIGTERM)
        await c.close()
    log = "".join(seen)
    assert "Traceback" not in log and " ERROR " not in log, log
    assert "malformed" in log  # the WARNING (once per type): the fuzzed frames did reach the read loop
