"""``GET /view`` and ComfyUI's folders: what the simulator serves, and what a restart leaves.

ComfyUI (server.py ``view_image``; main.py empties the temp directory at start-up): a missing
``filename`` is 404, an empty one, one starting with ``/`` or holding ``..`` 400, an unknown
``type`` 400, a subfolder outside the folder 403, a missing file 404. The traces record only the
200 of an ``output`` file (``image/png``); the rest follows ComfyUI's source.
"""

from __future__ import annotations

from typing import Any

from .conftest import ServerFactory, probe_graph


async def _run(http: Any, server: Any, graph: dict[str, Any]) -> dict[str, Any]:
    async with http.post(server.url + "/prompt", json={"prompt": graph}) as resp:
        prompt_id = (await resp.json())["prompt_id"]
    await server.wait_idle()
    async with http.get(f"{server.url}/history/{prompt_id}") as resp:
        outputs: dict[str, Any] = (await resp.json())[prompt_id]["outputs"]
    return outputs


async def _view(http: Any, server: Any, **params: str) -> tuple[int, bytes, Any]:
    async with http.get(server.url + "/view", params=params) as resp:
        return resp.status, await resp.read(), resp.headers


async def test_view_serves_saved_and_temp_files_and_refuses_as_comfyui(sim_factory: ServerFactory, http: Any) -> None:
    """Output and temp PNGs with their content type and name; 404/400/403 as ComfyUI answers them."""
    server = await sim_factory("0.12.1")
    outputs = await _run(http, server, probe_graph(steps=1))
    saved, preview = outputs["3"]["images"][0], outputs["4"]["images"][0]
    assert (saved["type"], preview["type"]) == ("output", "temp")
    for entry in (saved, preview):
        status, body, headers = await _view(http, server, **entry)
        assert status == 200 and body[:8] == b"\x89PNG\r\n\x1a\n"
        assert headers["Content-Type"] == "image/png"
        assert headers["Content-Disposition"] == f'filename="{entry["filename"]}"'
    assert (await _view(http, server, filename=saved["filename"]))[0] == 200  # type defaults to output
    assert (await _view(http, server, filename=preview["filename"], type="output"))[0] == 404
    assert (await _view(http, server, filename="nothing_00001_.png", type="output"))[0] == 404
    assert (await _view(http, server, type="output"))[0] == 404  # no filename at all
    assert (await _view(http, server, filename="", type="output"))[0] == 400
    assert (await _view(http, server, filename="../secret.png", type="output"))[0] == 400
    assert (await _view(http, server, filename=saved["filename"], type="models"))[0] == 400
    assert (await _view(http, server, filename=saved["filename"], subfolder="../..", type="output"))[0] == 403
    server.view_fault = 503
    assert (await _view(http, server, **saved))[0] == 503
    assert server.view_requests == 11


async def test_a_restart_empties_temp_and_keeps_output(sim_factory: ServerFactory, http: Any) -> None:
    """As ComfyUI's start-up does: PreviewImage files are gone, SaveImage files stay, numbering goes on."""
    server = await sim_factory("0.12.1")
    outputs = await _run(http, server, probe_graph(steps=1))
    saved, preview = outputs["3"]["images"][0], outputs["4"]["images"][0]
    _, saved_bytes, _ = await _view(http, server, **saved)
    await server.close()
    await server.start()
    assert (await _view(http, server, **preview))[0] == 404
    status, body, _ = await _view(http, server, **saved)
    assert status == 200 and body == saved_bytes
    again = await _run(http, server, probe_graph(steps=1, seed=2))
    assert again["3"]["images"][0]["filename"] == "bridge_00002_.png"  # the counter reads the folder
    new_preview = again["4"]["images"][0]["filename"]
    assert new_preview.startswith("ComfyUI_temp_") and new_preview[:18] != preview["filename"][:18]  # a new process
