"""The command line as an operator uses it: real processes, real sockets."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import zmq
import zmq.asyncio

from sidecar.config import load
from sidecar.store import Store

from .conftest import Client, LogLines, connected, probe_workflow, spawn_cli, spawn_sidecar, stop

CMD = [sys.executable, "-m", "sidecar"]
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


async def run_cli(*args: str, cwd: Path | None = None, timeout_s: float = 30) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *CMD, *args, cwd=cwd, env=ENV, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    async with asyncio.timeout(timeout_s):
        out, err = await proc.communicate()
    return proc.returncode or 0, out.decode(), err.decode()


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("[zmq]\nrotuer = 'tcp://127.0.0.1:1'\n", "unknown key 'rotuer' in [zmq]"),
        ("[zmq]\npub_hwm = 'lots'\n", "key 'zmq.pub_hwm': Expected `int`, got `str`"),
        ("[zmq]\npub_hwm = 0\n", "key 'zmq.pub_hwm': must be >= 1 (got 0)"),
        ("[instances.a]\nurl = 'localhost:8188'\n", "key 'instances.a.url'"),
        ("[instances.a]\nheaders = {}\n", "missing key 'url'"),
        ("[zmq\n", "not valid TOML"),
    ],
)
async def test_broken_config_exits_non_zero_naming_the_key(tmp_path, text, named):
    """A bad key, type or URL in bridge.toml: exit 2 with a message naming it."""
    path = tmp_path / "bridge.toml"
    path.write_text(text)
    code, _, err = await run_cli("run", "--config", str(path))
    assert code == 2
    assert named in err and str(path) in err


async def test_bad_instance_flag_is_refused(tmp_path):
    """--instance without NAME=URL is refused before anything starts."""
    code, _, err = await run_cli("run", "--instance", "http://127.0.0.1:8188", cwd=tmp_path)
    assert code == 2 and "expected NAME=URL" in err


async def test_config_init_writes_a_default_that_loads(tmp_path):
    """`config init PATH` writes a commented file that decodes to the defaults; no overwrite without --force."""
    path = tmp_path / "b.toml"
    code, out, _ = await run_cli("config", "init", str(path))
    assert code == 0 and path.read_text().startswith("# comfy-bridge configuration")
    config = load(path)
    assert config.zmq.router == "tcp://127.0.0.1:5555" and config.instances == {}
    code, _, err = await run_cli("config", "init", str(path))
    assert code == 2 and "exists" in err


def test_repo_bridge_toml_is_the_working_default():
    """The bridge.toml at the repo root loads and equals the built-in defaults."""
    from sidecar.config import BridgeConfig

    assert load(Path(__file__).parents[2] / "bridge.toml") == BridgeConfig()


async def test_run_without_instances_starts_the_simulator_and_serves_a_job(tmp_path, zctx):
    """`run` with no instance says it starts a simulated ComfyUI, then a job submitted over ZeroMQ completes."""
    seen = LogLines()
    proc, c = await spawn_sidecar(zctx, tmp_path / "s.sqlite3", seen=seen)
    try:
        assert any("started a simulated ComfyUI" in line and "instance 'sim'" in line for line in seen)
        await connected(c, "sim")
        reply = await c.request("submit", job_id="cli-job", workflow=probe_workflow(steps=2))
        assert reply["ok"], reply
        assert (await c.job_final("cli-job"))["type"] == "job.completed"
        await c.close()
        assert await stop(proc, signal.SIGTERM) == 0
    finally:
        await stop(proc)


async def test_simulate_serves_the_requested_version():
    """`simulate --port 0`: the server answers /system_stats as the version asked for, /features 404."""
    proc, match = await spawn_cli("simulate", "--port", "0", "--version", "0.3.44", until=r"(http://127\.0\.0\.1:\d+)")
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(match.group(1) + "/system_stats") as resp:
                stats = await resp.json()
            async with http.get(match.group(1) + "/features") as resp:
                features_status = resp.status
        assert stats["system"]["comfyui_version"] == "0.3.44"
        assert features_status == 404
    finally:
        await stop(proc, signal.SIGTERM)


async def sidecar_with(
    sim: Any, tmp_path: Path, zctx: zmq.asyncio.Context, seen: LogLines | None = None
) -> tuple[asyncio.subprocess.Process, Client]:
    proc, c = await spawn_sidecar(zctx, tmp_path / "state.sqlite3", f"a={sim.url}", seen=seen)
    await connected(c, "a")
    return proc, c


async def test_sigterm_answers_requests_in_flight_and_stores_state(tmp_path, sims, zctx):
    """SIGTERM while a submit waits for ComfyUI: the reply still comes, the process exits 0, and the
    job is in the state file."""
    sim = await sims("0.12.1")
    proc, c = await sidecar_with(sim, tmp_path, zctx)
    try:
        sim.prompt_delay_s = 1.0
        sim.pause_worker()  # it stays queued: the answer, not the run, is what is late
        pending = asyncio.create_task(c.request("submit", job_id="in-flight", workflow=probe_workflow(steps=2)))
        await c.wait_for(lambda e: e["type"] == "job.accepted" and e["job_id"] == "in-flight")
        proc.send_signal(signal.SIGTERM)
        reply = await pending
        assert reply["ok"] is True and reply["result"]["job"]["state"] == "queued"
        assert await stop(proc, None) == 0
    finally:
        await c.close()
        await stop(proc)
    store = Store(tmp_path / "state.sqlite3")
    store.open()
    try:
        rows = {row.job_id: row for row in store.load_jobs(unfinished_only=False)}
    finally:
        store.close()
    assert rows["in-flight"].state == "queued" and rows["in-flight"].prompt_id == reply["result"]["job"]["prompt_id"]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_second_signal_exits_at_once(tmp_path, sims, zctx, sig):
    """A second SIGTERM or SIGINT during a slow graceful shutdown ends the process at once, and says so
    in the log (issue 11: the second SIGINT was not logged)."""
    sim = await sims("0.12.1")
    log = LogLines()
    proc, c = await sidecar_with(sim, tmp_path, zctx, log)
    try:
        sim.prompt_delay_s = 30.0
        asyncio.create_task(c.request("submit", job_id="slow", workflow=probe_workflow(steps=2)))
        await c.wait_for(lambda e: e["type"] == "job.accepted" and e["job_id"] == "slow")
        proc.send_signal(sig)
        await log.wait_for("shutting down")  # the first signal was handled; a graceful stop would take long
        proc.send_signal(sig)
        async with asyncio.timeout(5):
            code = await proc.wait()
        assert code == 130
        await log.wait_for(r"WARNING .*second signal")  # the README says it is logged
    finally:
        sim.prompt_delay_s = 0.0
        await c.close()
        await stop(proc)
