"""The simulated ``POST /upload/image`` and ``LoadImage``, over real HTTP, as ComfyUI's source has them
(no recorded trace has an upload: see sidecar/simulator/uploads.py)."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from sidecar.simulator.images import solid_png

PNG = solid_png((10, 20, 30), 8, 4)
OTHER = solid_png((200, 20, 30), 8, 4)


async def upload(url: str, name: str, data: bytes, **fields: str) -> tuple[int, Any]:
    form = aiohttp.FormData()
    form.add_field("image", data, filename=name, content_type="image/png")
    for key, value in fields.items():
        form.add_field(key, value)
    async with aiohttp.ClientSession() as http, http.post(url + "/upload/image", data=form) as resp:
        body = await resp.json() if resp.content_type == "application/json" else await resp.text()
        return resp.status, body


def load_image_graph(name: str) -> dict[str, Any]:
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": name}},
        "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
    }


async def post_prompt(url: str, prompt: dict[str, Any]) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http, http.post(url + "/prompt", json={"prompt": prompt}) as resp:
        return resp.status, await resp.json()


async def test_upload_stores_the_file_and_renames_a_different_one_with_the_same_name(sims):
    """Without overwrite, a different file of an existing name becomes ``name (1).ext``; the same bytes
    again are not stored twice (the existing name is answered); overwrite=true replaces."""
    sim = await sims("0.12.1")
    assert await upload(sim.url, "cat.png", PNG, subfolder="jobs/a") == (
        200,
        {"name": "cat.png", "subfolder": "jobs/a", "type": "input"},
    )
    assert (await upload(sim.url, "cat.png", OTHER, subfolder="jobs/a"))[1]["name"] == "cat (1).png"
    assert (await upload(sim.url, "cat.png", OTHER, subfolder="jobs/a"))[1]["name"] == "cat (1).png"  # duplicate
    assert sim.uploads.get("input", "jobs/a/cat.png") == PNG
    assert sim.uploads.get("input", "jobs/a/cat (1).png") == OTHER
    assert (await upload(sim.url, "cat.png", OTHER, subfolder="jobs/a", overwrite="true"))[1]["name"] == "cat.png"
    assert sim.uploads.get("input", "jobs/a/cat.png") == OTHER
    async with aiohttp.ClientSession() as http:
        view = f"{sim.url}/view?filename=cat.png&subfolder=jobs/a&type=input"
        async with http.get(view) as resp:
            assert resp.status == 200 and await resp.read() == OTHER


async def test_upload_refuses_what_comfyui_refuses(sims):
    """No file: 400; a subfolder leaving the input directory: 400; an unknown type: 500."""
    sim = await sims("0.12.1")
    async with aiohttp.ClientSession() as http, http.post(sim.url + "/upload/image", data={"type": "input"}) as r:
        assert r.status == 400
    assert (await upload(sim.url, "cat.png", PNG, subfolder="../../etc"))[0] == 400
    assert (await upload(sim.url, "cat.png", PNG, type="models"))[0] == 500
    assert sim.uploads.log == []


@pytest.mark.parametrize("version", ["0.0.2", "0.3.44", "0.12.1"])
async def test_load_image_of_a_missing_file_fails_validation_and_an_uploaded_one_runs(sims, version):
    """A LoadImage naming no uploaded file: 400 prompt_outputs_failed_validation with the node error
    ``custom_validation_failed`` / "Invalid image file"; once uploaded, the same prompt runs and its
    preview has the uploaded image's size. The input directory outlives a restart."""
    sim = await sims(version)
    status, body = await post_prompt(sim.url, load_image_graph("in/cat.png"))
    assert status == 400
    error = body["error"]
    assert (error["type"] if isinstance(error, dict) else error) == "prompt_outputs_failed_validation"
    (node_error,) = body["node_errors"]["1"]["errors"]
    assert node_error["type"] == "custom_validation_failed"
    assert node_error["message"] == "Custom validation failed for node"
    assert node_error["details"] == "image - Invalid image file: in/cat.png"
    assert node_error["extra_info"]["input_name"] == "image"
    assert ("received_value" in node_error["extra_info"]) == (version == "0.0.2")
    await sim.close()
    await sim.start()  # the input directory is on disk: a restart keeps it
    assert (await upload(sim.url, "cat.png", PNG, subfolder="in"))[0] == 200
    await sim.close()
    await sim.start()
    status, body = await post_prompt(sim.url, load_image_graph("in/cat.png [input]"))
    assert status == 200, body
    await sim.wait_idle()
    async with aiohttp.ClientSession() as http, http.get(f"{sim.url}/history/{body['prompt_id']}") as resp:
        entry = (await resp.json())[body["prompt_id"]]
    assert entry["status"]["status_str"] == "success"
    (image,) = entry["outputs"]["2"]["images"]
    async with aiohttp.ClientSession() as http:
        view = f"{sim.url}/view?filename={image['filename']}&type=temp"
        async with http.get(view) as resp:
            preview = await resp.read()
    assert preview[16:24] == PNG[16:24]  # IHDR width and height: 8 x 4
