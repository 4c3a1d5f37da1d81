"""Behaviour of the simulator beyond the replayed traces: fault injection, restart, graphs, versions."""

from __future__ import annotations

import asyncio
import logging
import struct
import zlib
from typing import Any

import aiohttp
import pytest
import websockets
from websockets.asyncio.client import connect as ws_connect

from sidecar.simulator import VERSIONS, SimServer, serve

from .conftest import ServerFactory, WsRecorder, probe_graph


def t2i_graph(*, steps: int = 3, sampler: str = "euler", cfg: float = 8.0) -> dict[str, Any]:
    """ComfyUI's default text-to-image workflow (API format)."""
    return {
        "3": {
            "class_type": "KSampler",
            "inputs": {
                "seed": 42,
                "steps": steps,
                "cfg": cfg,
                "sampler_name": sampler,
                "scheduler": "normal",
                "denoise": 1.0,
                "model": ["4", 0],
                "positive": ["6", 0],
                "negative": ["7", 0],
                "latent_image": ["5", 0],
            },
        },
        "4": {
            "class_type": "CheckpointLoaderSimple",
            "inputs": {"ckpt_name": "v1-5-pruned-emaonly.safetensors"},
        },
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 512, "height": 512, "batch_size": 1}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a bottle", "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "text, watermark", "clip": ["4", 1]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "ComfyUI", "images": ["8", 0]}},
    }


async def _submit(http: aiohttp.ClientSession, server: SimServer, body: dict[str, Any]) -> dict[str, Any]:
    async with http.post(server.url + "/prompt", json=body) as resp:
        assert resp.status == 200, await resp.text()
        result: dict[str, Any] = await resp.json()
        return result


async def _connect(
    http: aiohttp.ClientSession,
    server: SimServer,
    cid: str,
    recorders: list[WsRecorder],
    *,
    flags: bool = False,
) -> WsRecorder:
    rec = await WsRecorder.connect(http, f"{server.ws_url}?clientId={cid}")
    recorders.append(rec)
    if flags:
        await rec.send_json({"type": "feature_flags", "data": {"supports_preview_metadata": True}})
    await rec.wait_for(lambda f: f.type == "status")
    return rec


def _png_pixels(data: bytes) -> tuple[int, int, bytes]:
    """Check a PNG's chunks and CRCs; return width, height and the decompressed scanlines."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, size = 8, b"", (0, 0)
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(kind + body)
        if kind == b"IHDR":
            size = struct.unpack(">II", body[:8])
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    return size[0], size[1], zlib.decompress(idat)


def _jpeg_markers(data: bytes) -> list[int]:
    """Walk a baseline JPEG's segments up to SOS; assert SOI/EOI framing."""
    assert data[:2] == b"\xff\xd8" and data[-2:] == b"\xff\xd9"
    pos, markers = 2, []
    while True:
        assert data[pos] == 0xFF
        marker = data[pos + 1]
        markers.append(marker)
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        pos += 2 + length
        if marker == 0xDA:
            return markers


# Previews and files -----------------------------------------------------------


async def test_metadata_previews_are_distinct_valid_jpegs(
    sim_factory: ServerFactory, http: Any, recorders: Any
) -> None:
    """With flags, each step brings a type-4 frame (before its progress) with a unique JPEG."""
    server = await sim_factory("0.12.1")
    ws = await _connect(http, server, "c1", recorders, flags=True)
    await ws.wait_for(lambda f: f.type == "feature_flags")
    pid = (await _submit(http, server, {"prompt": probe_graph(steps=3), "client_id": "c1"}))["prompt_id"]
    await ws.wait_terminal(pid)
    frames = [f for f in ws.frames if f.kind == "binary" or f.type == "progress"]
    assert [f.type if f.kind == "text" else f.event for f in frames] == [4, "progress"] * 3
    images = [f.image for f in frames if f.kind == "binary"]
    assert len(set(images)) == 3
    for frame in frames[::2]:
        assert frame.metadata == {
            "node_id": "2",
            "prompt_id": pid,
            "display_node_id": "2",
            "parent_node_id": None,
            "real_node_id": "2",
            "image_type": "image/jpeg",
        }
        assert frame.image[:4] == bytes.fromhex("ffd8ffe0")
        assert _jpeg_markers(frame.image) == [0xE0, 0xFE, 0xDB, 0xC0, 0xC4, 0xDA]


async def test_legacy_previews_follow_progress(sim_factory: ServerFactory, http: Any, recorders: Any) -> None:
    """Without flags (or on old versions) previews are type 1 JPEG frames right after progress."""
    for version in VERSIONS:
        server = await sim_factory(version)
        # old servers ignore the flags; 0.12.1 falls back to type 1 only without them
        ws = await _connect(http, server, "c1", recorders, flags=version != "0.12.1")
        pid = (await _submit(http, server, {"prompt": probe_graph(steps=2), "client_id": "c1"}))["prompt_id"]
        await ws.wait_terminal(pid)
        steps = [f for f in ws.frames if f.kind == "binary" or f.type == "progress"]
        assert [f.type if f.kind == "text" else f.event for f in steps] == ["progress", 1] * 2, version
        assert all(struct.unpack(">I", f.raw[4:8]) == (1,) for f in steps if f.kind == "binary")


async def test_view_serves_the_saved_png(sim_factory: ServerFactory, http: Any, recorders: Any) -> None:
    """``/view`` returns a valid PNG of the saved image, sized and coloured as the graph says."""
    server = await sim_factory("0.3.44")
    ws = await _connect(http, server, "c1", recorders)
    pid = (await _submit(http, server, {"prompt": probe_graph(color=0x102030), "client_id": "c1"}))["prompt_id"]
    await ws.wait_terminal(pid)
    async with http.get(f"{server.url}/history/{pid}") as resp:
        record = (await resp.json())[pid]["outputs"]["3"]["images"][0]
    assert record["type"] == "output"
    query = {"filename": record["filename"], "subfolder": "", "type": "output"}
    async with http.get(server.url + "/view", params=query) as resp:
        assert resp.content_type == "image/png"
        width, height, raw = _png_pixels(await resp.read())
    assert (width, height) == (64, 64)
    assert raw[:4] == b"\x00\x10\x20\x30"


# Default text-to-image graph --------------------------------------------------


async def test_default_text_to_image_graph_runs_with_sampler_progress(
    sim_factory: ServerFactory, http: Any, recorders: Any
) -> None:
    """The default workflow runs node by node; KSampler reports each step with a preview."""
    server = await sim_factory("0.12.1", step_ms=1)
    ws = await _connect(http, server, "c1", recorders)
    pid = (await _submit(http, server, {"prompt": t2i_graph(steps=3), "client_id": "c1"}))["prompt_id"]
    await ws.wait_terminal(pid)
    executing = [f.data["node"] for f in ws.frames if f.type == "executing" and f.data["node"]]
    assert executing[-3:] == ["3", "8", "9"] and sorted(executing) == ["3", "4", "5", "6", "7", "8", "9"]
    progress = [(f.data["value"], f.data["max"], f.data["node"]) for f in ws.frames if f.type == "progress"]
    assert progress == [(1, 3, "3"), (2, 3, "3"), (3, 3, "3")]
    assert sum(1 for f in ws.frames if f.kind == "binary" and f.event == 1) == 3
    (executed,) = [f for f in ws.frames if f.type == "executed"]
    filename = executed.data["output"]["images"][0]["filename"]
    assert filename == "ComfyUI_00001_.png"
    async with http.get(server.url + "/view", params={"filename": filename, "type": "output"}) as resp:
        assert _png_pixels(await resp.read())[:2] == (512, 512)


async def test_text_to_image_nodes_take_time_and_a_warm_run_skips_the_loader(
    sim_factory: ServerFactory, http: Any, recorders: Any
) -> None:
    """Cold: the checkpoint load takes 40 steps' time, the decode 4, the save 2, the sampler one
    before its first step (runtime.WORK_STEPS). Warm (a new seed): loader, prompts and latent come
    from the cache and do not run; the sampler, decode and save run again."""
    STEP = 20  # ms per sampler step: the save (2 steps) lasts 40 ms, well above arrival jitter
    server = await sim_factory("0.12.1", step_ms=STEP)
    ws = await _connect(http, server, "c1", recorders)
    loop = asyncio.get_running_loop()

    async def node_times(pid: str) -> dict[str, float]:
        """Seconds from each ``executing`` to the next node's (the last: to the terminal frame)."""
        starts: list[tuple[str | None, float]] = []
        seen = 0
        async with asyncio.timeout(10):
            while not starts or starts[-1][0] is not None:
                await ws.wait_count(seen + 1)
                for frame in ws.frames[seen:]:
                    if frame.type == "executing" and frame.data.get("prompt_id") == pid:
                        starts.append((frame.data["node"], loop.time()))
                seen = len(ws.frames)
        return {str(node): end - at for (node, at), (_, end) in zip(starts, starts[1:], strict=False)}

    cold = await _submit(http, server, {"prompt": t2i_graph(steps=3), "client_id": "c1"})
    times = await node_times(cold["prompt_id"])
    # Times are read where frames arrive, so a frame delivered late shortens a node: 25 % slack.
    assert times["4"] >= 0.75 * 40 * STEP / 1000  # the checkpoint load
    assert times["8"] >= 0.75 * 4 * STEP / 1000 and times["9"] >= 0.75 * 2 * STEP / 1000
    assert times["3"] >= 0.75 * (1 + 3) * STEP / 1000
    warm_graph = t2i_graph(steps=3)
    warm_graph["3"]["inputs"]["seed"] = 43
    warm = await _submit(http, server, {"prompt": warm_graph, "client_id": "c1"})
    times = await node_times(warm["prompt_id"])
    assert sorted(times) == ["3", "8", "9"]
    (cached,) = [f for f in ws.frames if f.type == "execution_cached" and f.data["prompt_id"] == warm["prompt_id"]]
    assert sorted(cached.data["nodes"]) == ["4", "5", "6", "7"]


@pytest.mark.parametrize(
    ("graph", "error_type"),
    [
        (t2i_graph(sampler="no_such_sampler"), "value_not_in_list"),
        (t2i_graph(cfg=1000.0), "value_bigger_than_max"),
    ],
)
async def test_invalid_sampler_inputs_are_refused(
    graph: dict[str, Any], error_type: str, sim_factory: ServerFactory, http: Any
) -> None:
    """With the only output depending on KSampler, a bad KSampler input is a 400."""
    server = await sim_factory("0.12.1")
    async with http.post(server.url + "/prompt", json={"prompt": graph}) as resp:
        assert resp.status == 400
        body = await resp.json()
    assert body["error"]["type"] == "prompt_outputs_failed_validation"
    assert body["node_errors"]["3"]["errors"][0]["type"] == error_type
    assert body["node_errors"]["3"]["dependent_outputs"] == ["9"]


async def test_object_info_lists_every_class_with_output_node(sim_factory: ServerFactory, http: Any) -> None:
    """``/object_info`` covers the probe and default-graph classes; unknown classes give ``{}``."""
    server = await sim_factory("0.12.1")
    async with http.get(server.url + "/object_info") as resp:
        info = await resp.json()
    assert {"BridgeProbe", "KSampler", "SaveImage", "CheckpointLoaderSimple", "VAEDecode"} <= set(info)
    assert info["SaveImage"]["output_node"] is True and info["KSampler"]["output_node"] is False
    async with http.get(server.url + "/object_info/NoSuchNode") as resp:
        assert await resp.json() == {}


# Versions ---------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
async def test_interrupt_targeting_per_version(
    version: str, sim_factory: ServerFactory, http: Any, recorders: Any
) -> None:
    """A non-matching targeted interrupt is ignored on 0.12.1 and global on older servers."""
    server = await sim_factory(version, step_ms=10)
    ws = await _connect(http, server, "c1", recorders)
    pid = (await _submit(http, server, {"prompt": probe_graph(steps=30), "client_id": "c1"}))["prompt_id"]
    await ws.wait_for(lambda f: f.type == "progress")
    async with http.post(server.url + "/interrupt", json={"prompt_id": "not-the-running-one"}) as resp:
        assert resp.status == 200 and await resp.read() == b""
    await ws.wait_terminal(pid)
    interrupted = any(f.type == "execution_interrupted" for f in ws.frames)
    assert interrupted == (version != "0.12.1")


@pytest.mark.parametrize("version", VERSIONS)
async def test_client_prompt_id_and_api_routes_per_version(version: str, sim_factory: ServerFactory, http: Any) -> None:
    """Client prompt ids, ``/features``, ``/api`` and ``/api/jobs`` exist only where recorded."""
    server = await sim_factory(version)
    result = await _submit(http, server, {"prompt": probe_graph(steps=1), "prompt_id": "my-job-42"})
    assert (result["prompt_id"] == "my-job-42") == (version == "0.12.1")
    expected = {
        "/features": 200 if version == "0.12.1" else 404,
        "/api/prompt": 404 if version == "0.0.2" else 200,
        "/api/jobs": 200 if version == "0.12.1" else 404,
        "/jobs": 404,
    }
    for path, status in expected.items():
        async with http.get(server.url + path) as resp:
            assert resp.status == status, path
    async with http.get(server.url + "/system_stats") as resp:
        assert ("comfyui_version" in (await resp.json())["system"]) == (version != "0.0.2")


async def test_progress_text_is_a_type_3_frame_sent_to_every_socket(
    sim_factory: ServerFactory, http: Any, recorders: Any
) -> None:
    """GetImageSize (0.12.1) sends its progress text as binary type 3 (u32 3, u32 node id length, node id,
    text) with no prompt id, to every socket as ComfyUI's nodes do, between the node's executing and the end."""
    server = await sim_factory("0.12.1")
    mine = await _connect(http, server, "c1", recorders, flags=True)
    other = await _connect(http, server, "c2", recorders)
    graph = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 32, "height": 16, "batch_size": 3, "color": 0}},
        "2": {"class_type": "GetImageSize", "inputs": {"image": ["1", 0]}},
        "3": {
            "class_type": "EmptyImage",
            "inputs": {"width": ["2", 0], "height": ["2", 1], "batch_size": 1, "color": 0},
        },
        "4": {"class_type": "PreviewImage", "inputs": {"images": ["3", 0]}},
    }
    pid = (await _submit(http, server, {"prompt": graph, "client_id": "c1"}))["prompt_id"]
    await mine.wait_terminal(pid)
    expected = struct.pack(">II", 3, 1) + b"2" + b"32 x 16 pixels\nbatch of 3"
    for ws in (mine, other):
        frame = await ws.wait_for(lambda f: f.kind == "binary" and f.event == 3)
        assert frame.raw == expected
    order = [f.type if f.kind == "text" else f.event for f in mine.frames]
    executing = next(i for i, f in enumerate(mine.frames) if f.type == "executing" and f.data["node"] == "2")
    assert executing < order.index(3) < order.index("execution_success")
    async with http.get(server.url + "/object_info/GetImageSize") as resp:
        info = (await resp.json())["GetImageSize"]
    assert info["output"] == ["INT", "INT", "INT"] and info["output_name"] == ["width", "height", "batch_size"]


@pytest.mark.parametrize("version", ["0.0.2", "0.3.44"])
async def test_servers_before_progress_text_have_no_node_that_sends_it(
    version: str, sim_factory: ServerFactory, http: Any
) -> None:
    """Only the 0.12.1 profile has GetImageSize (no recorded trace shows progress text on older versions)."""
    server = await sim_factory(version)
    async with http.get(server.url + "/object_info/GetImageSize") as resp:
        assert await resp.json() == {}


async def test_a_server_can_hide_its_version_and_features(
    sim_factory: ServerFactory, http: Any, recorders: Any
) -> None:
    """``report_version=False``: no comfyui_version; ``features_route=False``: /features 404; the handshake stays."""
    server = await sim_factory("0.12.1", report_version=False, features_route=False)
    async with http.get(server.url + "/system_stats") as resp:
        assert "comfyui_version" not in (await resp.json())["system"]
    async with http.get(server.url + "/features") as resp:
        assert resp.status == 404
    ws = await _connect(http, server, "c1", recorders, flags=True)
    await ws.wait_for(lambda f: f.type == "feature_flags")


async def test_dangling_link_wedges_the_0_0_2_worker(sim_factory: ServerFactory, http: Any, recorders: Any) -> None:
    """On 0.0.2 a dangling link behind an optional input kills the worker: later prompts never start."""
    server = await sim_factory("0.0.2")
    ws = await _connect(http, server, "c1", recorders)
    graph = probe_graph()
    graph["2"]["inputs"]["image"] = ["99", 0]
    pid = (await _submit(http, server, {"prompt": graph, "client_id": "c1"}))["prompt_id"]
    await ws.wait_for(lambda f: f.type == "execution_cached" and f.data["prompt_id"] == pid)
    later = (await _submit(http, server, {"prompt": probe_graph(seed=7), "client_id": "c1"}))["prompt_id"]
    async with http.get(server.url + "/queue") as resp:
        queue = await resp.json()
    assert server.worker_crashed
    assert [i[1] for i in queue["queue_running"]] == [pid] and [i[1] for i in queue["queue_pending"]] == [later]


# Fault injection ----------------------------------------------------------------


async def test_drop_connections_aborts_without_close_frame(sim_factory: ServerFactory) -> None:
    """Dropped sockets end like a killed server: close code 1006 on the client."""
    server = await sim_factory("0.12.1")
    async with ws_connect(f"{server.ws_url}?clientId=x1") as ws:
        await asyncio.wait_for(ws.recv(), 5)
        assert server.clients() == ["x1"]
        await server.drop_connections()
        with pytest.raises(websockets.ConnectionClosedError):
            async with asyncio.timeout(5):
                await ws.recv()
        assert ws.close_code == 1006


@pytest.mark.parametrize("closing", ["second", "first"])
async def test_a_socket_displaced_by_its_clientid_hears_nothing_more(
    sim_factory: ServerFactory, http: Any, recorders: Any, closing: str
) -> None:
    """As in ComfyUI (issue 16010): a second socket with the same clientId replaces the first, and
    when either of them closes the id's registration goes, so the socket left open is deaf: no
    prompt message and no status broadcast reaches it, although the prompt runs."""
    server = await sim_factory("0.12.1")
    first = await _connect(http, server, "d1", recorders)
    second = await _connect(http, server, "d1", recorders)
    watcher = await _connect(http, server, "w1", recorders)
    closed, left_open = (second, first) if closing == "second" else (first, second)
    await closed.ws.close()
    async with asyncio.timeout(5):
        while "d1" in server.clients():  # the server drops the registration once it sees the close
            async with http.get(server.url + "/queue"):
                pass
    heard = len(left_open.frames)
    pid = (await _submit(http, server, {"prompt": probe_graph(steps=3), "client_id": "d1"}))["prompt_id"]
    await server.wait_idle()
    # the watcher's status broadcasts (connect, queued twice, done) show what the deaf socket missed
    await watcher.wait_until(lambda frames: sum(f.type == "status" for f in frames) >= 4)
    async with http.get(f"{server.url}/history/{pid}") as resp:
        assert pid in await resp.json()
    assert not left_open.closed.is_set() and len(left_open.frames) == heard, left_open.frames[heard:]
    assert server.clients() == ["w1"]


async def test_send_raw_reaches_one_client_or_all(sim_factory: ServerFactory, http: Any, recorders: Any) -> None:
    """Garbage frames go to the named client only, or to everyone."""
    server = await sim_factory("0.3.44")
    a = await _connect(http, server, "a", recorders)
    b = await _connect(http, server, "b", recorders)
    await server.send_raw(b"\x00\x00\x00\x63garbage", "a")
    await server.send_raw("not json at all")
    await a.wait_for(lambda f: f.kind == "garbage" and f.raw == "not json at all")
    await b.wait_for(lambda f: f.kind == "garbage")
    assert any(f.raw == b"\x00\x00\x00\x63garbage" for f in a.frames)
    assert not any(f.raw == b"\x00\x00\x00\x63garbage" for f in b.frames)


async def test_paused_worker_holds_the_queue(sim_factory: ServerFactory, http: Any, recorders: Any) -> None:
    """``pause_worker`` wedges the queue; ``resume_worker`` lets the prompt run."""
    server = await sim_factory("0.12.1")
    ws = await _connect(http, server, "c1", recorders)
    server.pause_worker()
    pid = (await _submit(http, server, {"prompt": probe_graph(), "client_id": "c1"}))["prompt_id"]
    async with http.get(server.url + "/queue") as resp:
        queue = await resp.json()
    assert queue["queue_running"] == [] and [i[1] for i in queue["queue_pending"]] == [pid]
    assert server.submitted[-1]["client_id"] == "c1"
    server.resume_worker()
    await ws.wait_terminal(pid)
    assert any(f.type == "execution_success" for f in ws.frames)


async def test_restart_forgets_queue_history_and_numbers(sim_factory: ServerFactory, http: Any) -> None:
    """Closing mid-run drops sockets (1006); a restart on the same port starts empty (trace 10)."""
    server = await sim_factory("0.12.1", step_ms=50)
    async with ws_connect(f"{server.ws_url}?clientId=r1") as ws:
        running = (await _submit(http, server, {"prompt": probe_graph(steps=50), "client_id": "r1"}))["prompt_id"]
        await _submit(http, server, {"prompt": probe_graph(steps=50, seed=2), "client_id": "r1"})
        async with asyncio.timeout(5):
            while "progress" not in str(await ws.recv()):
                pass
        await server.close()
        with pytest.raises(websockets.ConnectionClosedError):
            async with asyncio.timeout(5):
                while True:
                    await ws.recv()
        assert ws.close_code == 1006
    await server.start()
    async with http.get(server.url + "/queue") as resp:
        assert await resp.json() == {"queue_running": [], "queue_pending": []}
    async with http.get(f"{server.url}/history/{running}") as resp:
        assert await resp.json() == {}
    assert (await _submit(http, server, {"prompt": probe_graph(steps=1)}))["number"] == 0


async def test_serve_runs_until_cancelled(caplog: pytest.LogCaptureFixture, http: Any) -> None:
    """``serve`` logs its URL once listening and closes on cancellation."""
    ready = asyncio.Event()
    urls: list[str] = []

    class _Ready(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "ready at" in record.getMessage():
                urls.append(record.getMessage().rsplit(" ", 1)[-1])
                ready.set()

    handler = _Ready(level=logging.INFO)
    logger = logging.getLogger("sidecar.simulator")
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    task = asyncio.create_task(serve("127.0.0.1", 0, "0.3.44", 5))
    try:
        async with asyncio.timeout(5):
            await ready.wait()
        async with http.get(urls[0] + "/system_stats") as resp:
            assert (await resp.json())["system"]["comfyui_version"] == "0.3.44"
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    with pytest.raises(aiohttp.ClientConnectionError):
        async with http.get(urls[0] + "/system_stats"):
            pass


async def test_ignored_interrupts_let_the_prompt_finish(sim_factory: ServerFactory, http: Any, recorders: Any) -> None:
    """``ignore_interrupts`` models a node that never polls: POST /interrupt is 200, the run succeeds."""
    server = await sim_factory("0.12.1", step_ms=5)
    server.ignore_interrupts = True
    ws = await _connect(http, server, "c1", recorders)
    pid = (await _submit(http, server, {"prompt": probe_graph(steps=10), "client_id": "c1"}))["prompt_id"]
    await ws.wait_for(lambda f: f.type == "progress")
    async with http.post(server.url + "/interrupt", json={"prompt_id": pid}) as resp:
        assert resp.status == 200
    await ws.wait_terminal(pid)
    assert [f.type for f in ws.frames if f.type.startswith("execution_")][-1] == "execution_success"


async def test_optional_per_job_cancel_endpoint(sim_factory: ServerFactory, http: Any, recorders: Any) -> None:
    """With ``jobs_cancel_endpoint``: pending jobs are removed, the running one interrupted, unknown ids no-op."""
    plain = await sim_factory("0.12.1")
    async with http.post(f"{plain.url}/api/jobs/x/cancel", json={}) as resp:
        assert resp.status == 404
    server = await sim_factory("0.12.1", step_ms=10, jobs_cancel_endpoint=True)
    ws = await _connect(http, server, "c1", recorders)
    running = (await _submit(http, server, {"prompt": probe_graph(steps=40), "client_id": "c1"}))["prompt_id"]
    pending = (await _submit(http, server, {"prompt": probe_graph(steps=1, seed=3), "client_id": "c1"}))["prompt_id"]
    await ws.wait_for(lambda f: f.type == "progress")
    results = {}
    for job in (pending, running, "no-such-job"):
        async with http.post(f"{server.url}/api/jobs/{job}/cancel", json={}) as resp:
            results[job] = (await resp.json())["cancelled"]
    assert results == {pending: True, running: True, "no-such-job": False}
    interrupted = await ws.wait_for(lambda f: f.type == "execution_interrupted")
    assert interrupted.data["prompt_id"] == running
    await ws.wait_terminal(running)
    async with http.get(f"{server.url}/history/{pending}") as resp:
        assert await resp.json() == {}
