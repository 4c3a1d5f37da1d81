"""The command line as an operator uses it: real processes, real sockets."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from pathlib import Path

import aiohttp
import msgspec
import pytest
import zmq
import zmq.asyncio

from sidecar.config import load

from .conftest import probe_workflow

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


async def test_run_without_instances_starts_the_simulator_and_serves_a_job(tmp_path):
    """`run` with no instance says it starts a simulated ComfyUI, then a job submitted over ZeroMQ completes."""
    proc = await asyncio.create_subprocess_exec(
        *CMD, "run", "--router", "tcp://127.0.0.1:*", "--pub", "tcp://127.0.0.1:*",
        "--state", str(tmp_path / "state.sqlite3"),
        cwd=tmp_path, env=ENV, stderr=asyncio.subprocess.PIPE,
    )
    ctx = zmq.asyncio.Context()
    try:
        said_simulator = False
        router = pub = None
        async with asyncio.timeout(20):
            while router is None:
                line = (await proc.stderr.readline()).decode()  # type: ignore[union-attr]
                assert line, "sidecar exited before listening"
                said_simulator |= "started a simulated ComfyUI" in line
                match = re.search(r"ROUTER on (\S+), PUB on (\S+),", line)
                if match:
                    router, pub = match.groups()
        assert said_simulator
        drain = asyncio.create_task(proc.stderr.read())  # type: ignore[union-attr]
        sub = ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.SUBSCRIBE, b"job.")
        sub.connect(pub)
        dealer = ctx.socket(zmq.DEALER)
        dealer.connect(router)
        async with asyncio.timeout(20):
            while True:
                await dealer.send(msgspec.msgpack.encode({"op": "health", "id": "h"}))
                health = msgspec.msgpack.decode(await dealer.recv())
                if health["result"]["instances"][0]["state"] == "connected":
                    break
                await sub.poll(50)  # a bounded wait between polls, on a socket, not a sleep
            assert health["result"]["instances"][0]["name"] == "sim"
            await dealer.send(msgspec.msgpack.encode(
                {"op": "submit", "id": "s", "job_id": "cli-job", "workflow": probe_workflow(steps=2)}
            ))
            reply = msgspec.msgpack.decode(await dealer.recv())
            assert reply["ok"], reply
            while True:
                event = msgspec.msgpack.decode((await sub.recv_multipart())[1])
                if event["type"] in ("job.completed", "job.failed"):
                    break
        assert event["type"] == "job.completed" and event["job_id"] == "cli-job"
        sub.close(0)
        dealer.close(0)
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(15):
            assert await proc.wait() == 0
        await drain
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        ctx.destroy(linger=0)


async def test_simulate_serves_the_requested_version():
    """`simulate --port 0`-style use: the server answers /system_stats as the version asked for."""
    proc = await asyncio.create_subprocess_exec(
        *CMD, "simulate", "--port", "0", "--version", "0.3.44", env=ENV, stderr=asyncio.subprocess.PIPE,
    )
    try:
        url = None
        async with asyncio.timeout(20):
            while url is None:
                line = (await proc.stderr.readline()).decode()  # type: ignore[union-attr]
                assert line, "simulator exited"
                match = re.search(r"(http://127\.0\.0\.1:\d+)", line)
                url = match.group(1) if match else None
            async with aiohttp.ClientSession() as http:
                async with http.get(url + "/system_stats") as resp:
                    stats = await resp.json()
                async with http.get(url + "/features") as resp:
                    features_status = resp.status
        assert stats["system"]["comfyui_version"] == "0.3.44"
        assert features_status == 404
    finally:
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(10):
            await proc.wait()
