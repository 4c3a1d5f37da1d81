"""Issue 11, section 5: the Prometheus endpoint, scraped over HTTP and checked against what was sent."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
from prometheus_client.parser import text_string_to_metric_families

from sidecar.app import Sidecar
from sidecar.config import BridgeConfig, MetricsConfig, loads
from sidecar.errors import ConfigError

from .conftest import WAIT_S, Client, connected, make_config, probe_workflow

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(port: int) -> Samples:
    async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}/metrics") as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = await response.text()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def total(samples: Samples, name: str, **labels: str) -> float:
    want = set(labels.items())
    return sum(v for (n, lab), v in samples.items() if n == name and want <= lab)


async def test_scraped_counts_match_what_was_sent(sims, zctx, tmp_path: Path):
    """Three jobs (two complete, one fails) on a simulator, one dropped connection: the endpoint's
    frames by type, events by type, jobs by final state, histograms, instance up and reconnects
    match what the simulator sent and the subscriber received."""
    sim = await sims("0.12.1")
    config = make_config({"a": sim.url}, tmp_path / "state.sqlite3")
    config = msgspec.structs.replace(config, metrics=MetricsConfig(listen="127.0.0.1:0"))
    sidecar = Sidecar(config)
    stop = asyncio.Event()
    task = asyncio.create_task(sidecar.run(stop.wait))
    c = Client(zctx, sidecar.router.endpoint, sidecar.publisher.endpoint)
    try:
        await c.wait_for(lambda e: True)
        await connected(c, "a")
        assert sidecar.metrics is not None and sidecar.metrics.port > 0
        port = sidecar.metrics.port
        jobs = {"ok1": -1, "ok2": -1, "bad": 2}
        for job_id, fail_at in jobs.items():
            reply = await c.request("submit", job_id=job_id, workflow=probe_workflow(steps=5, fail_at=fail_at))
            assert reply["ok"], reply
        finals = {job_id: (await c.job_final(job_id))["type"] for job_id in jobs}
        assert finals == {"ok1": "job.completed", "ok2": "job.completed", "bad": "job.failed"}
        await sim.wait_idle()
        client_id = sidecar.instances["a"].client_id
        async with asyncio.timeout(WAIT_S):  # every frame the simulator sent has been read
            while total(samples := await scrape(port), "comfy_bridge_frames_total", instance="a") < (
                sim.frames_sent_to(client_id)
            ):
                await c.tick()
        assert total(samples, "comfy_bridge_frames_total", instance="a") == sim.frames_sent_to(client_id)
        received = Counter(e["type"] for e in c.events if e["job_id"] in jobs)
        for kind, count in received.items():
            assert value(samples, "comfy_bridge_events_total", type=kind) == count, kind
        assert received["node.progress"] > 0
        progress_frames = value(samples, "comfy_bridge_frames_total", instance="a", type="progress")
        assert progress_frames == received["node.progress"]
        assert value(samples, "comfy_bridge_frames_total", instance="a", type="execution_start") == 3
        assert value(samples, "comfy_bridge_jobs_finished_total", instance="a", state="completed") == 2
        assert value(samples, "comfy_bridge_jobs_finished_total", instance="a", state="failed") == 1
        assert value(samples, "comfy_bridge_job_duration_seconds_count") == 3
        published = total(samples, "comfy_bridge_events_total")
        assert value(samples, "comfy_bridge_event_latency_seconds_count") == published
        assert value(samples, "comfy_bridge_event_latency_seconds_bucket", le="+Inf") == published
        assert value(samples, "comfy_bridge_instance_up", instance="a") == 1
        assert value(samples, "comfy_bridge_instance_state", instance="a", state="connected") == 1
        assert value(samples, "comfy_bridge_reconnects_total", instance="a") == 0
        assert total(samples, "comfy_bridge_events_dropped_total") == 0
        assert value(samples, "comfy_bridge_jobs_active", instance="a") == 0

        sim.refuse_websockets = True
        await sim.drop_connections()
        down = await c.wait_for(lambda e: e["type"] == "instance.status" and e["data"]["state"] == "waiting")
        samples = await scrape(port)
        assert value(samples, "comfy_bridge_instance_up", instance="a") == 0
        assert value(samples, "comfy_bridge_instance_down_seconds", instance="a") > 0
        sim.refuse_websockets = False
        await c.wait_for(
            lambda e: e["type"] == "instance.status" and e["data"]["state"] == "connected" and e["seq"] > down["seq"]
        )
        samples = await scrape(port)
        assert value(samples, "comfy_bridge_reconnects_total", instance="a") == 1
        assert value(samples, "comfy_bridge_instance_up", instance="a") == 1
        statuses = sum(1 for e in c.events if e["type"] == "instance.status")
        assert value(samples, "comfy_bridge_events_total", type="instance.status") >= statuses
    finally:
        await c.close()
        stop.set()
        async with asyncio.timeout(10):
            await task


async def test_metrics_are_off_by_default(sims, sidecars):
    sim = await sims("0.12.1")
    running = await sidecars({"a": sim.url})
    assert BridgeConfig().metrics.listen == ""
    assert running.sidecar.metrics is None


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ('[metrics]\nlisten = "0.0.0.0:9464"\n', "not a loopback address"),
        ('[metrics]\nlisten = "9464"\n', "is not HOST:PORT"),
        ('[metrics]\nlisten = "127.0.0.1:http"\n', "is not HOST:PORT"),
        ("[recovery]\nfailover_after_s = -1\n", "failover_after_s"),
    ],
)
def test_bad_metrics_or_failover_config_is_refused_naming_the_key(toml: str, message: str):
    with pytest.raises(ConfigError, match=message) as caught:
        loads(toml, "bridge.toml")
    assert "key '" in str(caught.value)


def test_a_remote_metrics_address_needs_allow_remote():
    config: Any = loads('[metrics]\nlisten = "0.0.0.0:9464"\nallow_remote = true\n', "bridge.toml")
    assert config.metrics.listen == "0.0.0.0:9464"
