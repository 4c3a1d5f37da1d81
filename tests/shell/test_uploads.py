"""Issue 10, section 1: input files travel with the job. Real sockets throughout: simulated ComfyUI
servers over HTTP and WebSocket, a sidecar with TCP ZeroMQ sockets, a client as the backend would be."""

from __future__ import annotations

import shutil
from typing import Any

from sidecar.core.inputs import job_folder
from sidecar.simulator.images import solid_png

from .conftest import WAIT_S, connected
from .test_failover import quick_failover

CAT = solid_png((1, 2, 3), 16, 8)
OTHER_CAT = solid_png((250, 2, 3), 16, 8)


def load_image(name: str = "cat.png", steps: int = 0) -> dict[str, Any]:
    """LoadImage -> PreviewImage; with ``steps``, a BridgeProbe in between (a job that runs a while)."""
    workflow: dict[str, Any] = {
        "1": {"class_type": "LoadImage", "inputs": {"image": name}},
        "3": {"class_type": "PreviewImage", "inputs": {"images": ["2", 0] if steps else ["1", 0]}},
    }
    if steps:
        probe = {"image": ["1", 0], "steps": steps, "step_ms": 20, "fail_at": -1, "seed": 1}
        workflow["2"] = {"class_type": "BridgeProbe", "inputs": probe}
    return workflow


def uploaded(sim: Any, job_id: str, name: str = "cat.png") -> bytes | None:
    return sim.uploads.get("input", f"{job_folder(job_id)}/{name}")


async def test_a_load_image_job_runs_where_it_is_routed_with_its_own_file(sims, sidecars, client):
    """Submitted without an instance, over two: the file is uploaded to the instance the job is routed
    to (exactly those bytes, under the job's folder), the workflow names it there, the job completes.
    Two jobs sending the same name on one instance do not collide. The sidecar's copies are removed
    when the jobs end."""
    a, b = await sims("0.12.1"), await sims("0.12.1")
    running = await sidecars({"a": a.url, "b": b.url})
    c = await client(running)
    await connected(c, "a", "b")
    reply = await c.request("submit", job_id="routed", workflow=load_image(), files={"cat.png": CAT})
    assert reply["ok"], reply
    final = await c.job_final("routed")
    assert final["type"] == "job.completed", final
    where, other = (a, b) if final["instance"] == "a" else (b, a)
    assert uploaded(where, "routed") == CAT and other.uploads.log == []
    (posted,) = [p for p in where.submitted if p["extra_data"]["comfy_bridge_job_id"] == "routed"]
    assert posted["prompt"]["1"]["inputs"]["image"] == f"{job_folder('routed')}/cat.png"
    for job_id, data in (("same-1", CAT), ("same-2", OTHER_CAT)):
        reply = await c.request("submit", job_id=job_id, instance="a", workflow=load_image(), files={"cat.png": data})
        assert reply["ok"], reply
    for job_id in ("same-1", "same-2"):
        assert (await c.job_final(job_id))["type"] == "job.completed"
    assert uploaded(a, "same-1") == CAT and uploaded(a, "same-2") == OTHER_CAT
    inputs = running.sidecar.inputs
    await inputs.aclose()
    assert not any(inputs.root.iterdir())  # every job ended: no file kept


async def test_a_job_moved_by_failover_has_its_file_uploaded_on_the_new_instance(sims, sidecars, client):
    """A LoadImage job submitted without an instance; the instance it was routed to is killed mid-job:
    failover posts the job on the other instance after uploading its file there, and it completes
    there with those bytes."""
    a, b = await sims("0.12.1", step_ms=1), await sims("0.12.1", step_ms=1)
    running = await sidecars({"a": a.url, "b": b.url})
    quick_failover(running, after_s=0.3)
    c = await client(running)
    await connected(c, "a", "b")
    for sim in (a, b):
        sim.hold_steps()  # the job stays in its BridgeProbe node until released
    reply = await c.request("submit", job_id="mover", workflow=load_image(steps=20), files={"cat.png": CAT})
    assert reply["ok"], reply
    running_on = await c.wait_for(
        lambda e: e["type"] == "node.executing" and e["job_id"] == "mover" and e["data"]["node"] == "2"
    )
    first, other = (a, b) if running_on["instance"] == "a" else (b, a)
    assert uploaded(first, "mover") == CAT and other.uploads.log == []
    await first.close()  # killed mid-job, and stays down
    other.release_steps()
    moved = await c.wait_for(lambda e: e["type"] == "job.resubmitted" and e["job_id"] == "mover")
    assert (
        moved["data"]["previous_instance"] == running_on["instance"]
        and moved["instance"] != moved["data"]["previous_instance"]
    )
    assert uploaded(other, "mover") == CAT
    final = await c.job_final("mover", timeout_s=WAIT_S)
    assert final["type"] == "job.completed" and final["instance"] == moved["instance"], final


async def test_files_are_uploaded_again_after_a_sidecar_restart_and_a_lost_file_fails_the_job(
    sims, sidecars, client, tmp_path
):
    """Two jobs held for a down instance when the sidecar stops: the next sidecar on the same state
    file takes their files back from its disk and uploads them before posting; a job whose files are
    gone from the disk fails with upload_failed, naming the reason, and is never posted."""
    sim = await sims("0.12.1")
    state = tmp_path / "bridge.sqlite3"
    first = await sidecars({"a": sim.url}, state=state)
    c = await client(first)
    await connected(c, "a")
    await sim.close()
    await c.wait_for(lambda e: e["type"] == "instance.status" and e["data"]["state"] == "waiting")
    for job_id in ("kept", "lost"):
        reply = await c.request(
            "submit", job_id=job_id, instance="a", queue_anyway=True, workflow=load_image(), files={"cat.png": CAT}
        )
        assert reply["ok"] and reply["result"]["held"], reply
    await first.close()
    shutil.rmtree(first.sidecar.inputs.path("lost"))
    second = await sidecars({"a": sim.url}, state=state)
    c2 = await client(second)
    await sim.start()
    kept = await c2.job_final("kept")
    assert kept["type"] == "job.completed", kept
    assert uploaded(sim, "kept") == CAT
    lost = await c2.job_final("lost")
    assert lost["type"] == "job.failed" and lost["data"]["code"] == "upload_failed"
    assert "input files of job 'lost' are no longer on disk" in lost["data"]["message"]
    assert [p for p in sim.submitted if p["extra_data"]["comfy_bridge_job_id"] == "lost"] == []


async def test_bad_files_are_refused_with_what_is_wrong_and_make_no_job(sims, sidecars, client):
    """A name with a path in it, or a file no node input names: invalid_request naming the file; a
    workflow naming a file that was sent nowhere fails as ComfyUI refuses it (Invalid image file)."""
    sim = await sims("0.12.1")
    running = await sidecars({"a": sim.url})
    c = await client(running)
    await connected(c, "a")
    reply = await c.request("submit", job_id="bad", workflow=load_image("a/cat.png"), files={"a/cat.png": CAT})
    assert reply["error"]["code"] == "invalid_request" and reply["error"]["details"]["field"] == "files"
    assert "'a/cat.png' must be a plain file name" in reply["error"]["message"]
    reply = await c.request("submit", job_id="bad", workflow=load_image(), files={"dog.png": CAT})
    assert reply["error"]["message"] == "files: 'dog.png' is named by no node input of the workflow"
    assert (await c.request("job", job_id="bad"))["error"]["code"] == "job_not_found"
    reply = await c.request("submit", job_id="missing", workflow=load_image("never-sent.png"))
    assert reply["error"]["code"] == "workflow_rejected"
    assert "Invalid image file: never-sent.png" in reply["error"]["message"]
    (error,) = reply["error"]["details"]["node_errors"]["1"]["errors"]
    assert error["type"] == "custom_validation_failed" and error["input"] == "image"
    final = await c.job_final("missing")
    assert final["type"] == "job.failed" and final["data"]["code"] == "workflow_rejected"


async def test_a_job_comfyui_lost_in_a_restart_is_uploaded_again_before_it_is_resubmitted(sims, sidecars, client):
    """ComfyUI restarted mid-job loses the prompt: the sidecar uploads the job's file again (a second
    upload, replacing the first: overwrite) before posting it again, and the job completes."""
    sim = await sims("0.12.1", step_ms=1)
    running = await sidecars({"a": sim.url})
    c = await client(running)
    await connected(c, "a")
    sim.hold_steps()
    reply = await c.request("submit", job_id="again", workflow=load_image(steps=5), files={"cat.png": CAT})
    assert reply["ok"], reply
    await c.wait_for(lambda e: e["type"] == "node.executing" and e["job_id"] == "again" and e["data"]["node"] == "2")
    await sim.close()
    await c.wait_for(lambda e: e["type"] == "instance.status" and e["data"]["state"] == "disconnected")
    await sim.start()  # same port, empty queue and history; its input directory kept, as on disk
    final = await c.job_final("again")
    assert final["type"] == "job.completed", final
    assert [e["type"] for e in c.of_job("again")].count("job.resubmitted") == 1
    folder = job_folder("again")
    assert sim.uploads.log == [("input", folder, "cat.png", len(CAT))] * 2
    assert uploaded(sim, "again") == CAT


async def test_an_upload_comfyui_refuses_fails_the_job_with_upload_failed_and_posts_nothing(sims, sidecars, client):
    """ComfyUI started with a smaller --max-upload-size answers 413 to the upload: the submit's reply
    and job.failed say upload_failed with the status; no prompt is posted."""
    sim = await sims("0.12.1", max_upload_bytes=1024)
    running = await sidecars({"a": sim.url})
    c = await client(running)
    await connected(c, "a")
    big = CAT + b"\0" * 2048
    reply = await c.request("submit", job_id="refused", workflow=load_image(), files={"cat.png": big})
    error = reply["error"]
    assert error["code"] == "upload_failed"
    assert error["message"] == "instance 'a' answered HTTP 413 to POST /upload/image for input file 'cat.png'"
    assert error["details"]["status"] == 413 and error["details"]["job_id"] == "refused"
    final = await c.job_final("refused")
    assert final["type"] == "job.failed" and final["data"]["code"] == "upload_failed"
    assert sim.submitted == [] and sim.uploads.log == []


async def test_a_paused_job_resumed_on_another_instance_has_its_file_uploaded_there(sims, sidecars, client):
    """Issue 10 sections 1 and 3 together: a LoadImage job paused mid-run on ``a`` and resumed on
    ``b``: its file is uploaded to ``b`` (the same bytes, its own folder) before the post, and the job
    completes there."""
    from .test_pause import pause_running

    a, b = await sims("0.12.1", step_ms=None), await sims("0.12.1", step_ms=None)
    running = await sidecars({"a": a.url, "b": b.url})
    c = await client(running)
    await connected(c, "a", "b")
    reply = await c.request(
        "submit", job_id="roams", instance="a", workflow=load_image(steps=8), files={"cat.png": CAT}
    )
    assert reply["ok"], reply
    await pause_running(c, "roams", at_step=3)
    assert uploaded(a, "roams") == CAT and uploaded(b, "roams") is None
    reply = await c.request("resume", job_id="roams", instance="b")
    assert reply["ok"] and reply["result"]["job"]["instance"] == "b", reply
    final = await c.job_final("roams", timeout_s=WAIT_S)
    assert final["type"] == "job.completed" and final["instance"] == "b", final
    assert uploaded(b, "roams") == CAT
    (posted,) = [p for p in b.submitted if p["extra_data"]["comfy_bridge_job_id"] == "roams"]
    assert posted["prompt"]["1"]["inputs"]["image"] == f"{job_folder('roams')}/cat.png"
