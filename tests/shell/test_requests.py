"""Requests as a client sends them: what the replies hold (checked against docs/PROTOCOL.md), late
requests (``deadline_ns``), bodies that are not maps, and what the sidecar keeps of finished jobs.

Everything goes through real sockets: a DEALER to the sidecar's ROUTER over TCP, the simulator
over HTTP and WebSocket; the late-request test runs the sidecar as two processes in turn.
"""

from __future__ import annotations

import asyncio
import re
import signal
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest
import zmq
import zmq.asyncio

from sidecar.config import PreviewConfig
from sidecar.core.jobs import KEEP_FULL
from sidecar.plugins.builtin.previews_files import EXTENSIONS

from .conftest import (
    SIDECAR_LISTENING,
    WAIT_S,
    Client,
    connected,
    probe_workflow,
    spawn_cli,
    stop,
)

DOC = (Path(__file__).resolve().parents[2] / "docs" / "PROTOCOL.md").read_text(encoding="utf-8")


def doc_section(title: str) -> str:
    """The text under the heading ``title`` (exact), up to the next heading."""
    lines = DOC.splitlines()
    start = lines.index(title)
    end = next(i for i in range(start + 1, len(lines)) if lines[i].startswith("#"))
    return "\n".join(lines[start + 1 : end])


def table_rows(text: str) -> dict[str, str]:
    """First-column name -> whole row, for every table row of ``text``."""
    return {m.group(1): m.group(0) for m in re.finditer(r"^\| `([^`]+)` \|.*$", text, flags=re.MULTILINE)}


SUBMIT_RESULT = doc_section("### 5.4 `submit`").split("Result, when the job was created:", 1)[1].split("Behaviour:")[0]
JOB_STATES = ("accepted", "queued", "started", "completed", "failed", "cancelled")


# Finding: a fresh submit can be `started`; a duplicate sends `held` --------------------------


async def test_a_submit_answered_after_its_prompt_started_is_started_as_the_doc_says(sims, sidecars, client):
    """ComfyUI starts the prompt before its POST /prompt answer is handled: the reply says `started`,
    a state §5.4 lists for a fresh submit, and job.queued, job.started came first."""
    sim = await sims("0.12.1", step_ms=None)
    running = await sidecars({"a": sim.url})
    c = await client(running)
    await connected(c, "a")
    sim.prompt_delay_s = 1.0  # ComfyUI queues (and, idle, starts) the prompt, then answers a second late
    reply = await c.request("submit", job_id="early", workflow=probe_workflow(steps=50, step_ms=40))
    sim.prompt_delay_s = 0.0
    assert reply["ok"] and set(reply["result"]) == set(table_rows(SUBMIT_RESULT))
    job = reply["result"]["job"]
    assert job["state"] == "started" and job["prompt_id"] and reply["result"]["held"] is False
    documented = {s for s in re.findall(r"`(\w+)`", table_rows(SUBMIT_RESULT)["job"]) if s in JOB_STATES}
    assert job["state"] in documented, f"§5.4 allows {sorted(documented)} for a fresh submit"
    # the events come on the PUB socket, the reply on the DEALER: the reply can be read first
    await c.wait_for(lambda e: e["job_id"] == "early" and e["type"] == "job.started")
    kinds = [e["type"] for e in c.of_job("early") if e["type"].startswith("job.")]
    assert kinds[:3] == ["job.accepted", "job.queued", "job.started"]
    await c.request("cancel", job_id="early")
    assert (await c.job_final("early"))["type"] == "job.cancelled"


async def test_a_duplicate_submit_has_every_documented_key_and_held_says_whether_it_is_held(sims, sidecars, client):
    """A duplicate's result has the keys of §5.4's table, like a fresh one; `held` is true while the job is held."""
    sim = await sims("0.12.1")
    running = await sidecars({"a": sim.url})
    c = await client(running)
    await connected(c, "a")
    done = await c.request("submit", job_id="done", workflow=probe_workflow(steps=1))
    await c.job_final("done")
    await sim.close()  # the instance goes down: a job naming it with queue_anyway is held
    await c.wait_for(lambda e: e["type"] == "instance.status" and e["data"]["state"] == "waiting")
    held = await c.request("submit", job_id="held", instance="a", queue_anyway=True, workflow=probe_workflow())
    again = await c.request("submit", job_id="held", instance="a", queue_anyway=True, workflow=probe_workflow())
    finished = await c.request("submit", job_id="done", workflow=probe_workflow())
    keys = set(table_rows(SUBMIT_RESULT))
    assert keys == {"job", "duplicate", "held"}
    for reply in (done, held, again, finished):
        assert reply["ok"] and set(reply["result"]) == keys, reply
    assert "without `held`" not in doc_section("### 5.4 `submit`")
    assert (held["result"]["held"], held["result"]["duplicate"]) == (True, False)
    assert (again["result"]["held"], again["result"]["duplicate"]) == (True, True)
    assert again["result"]["job"]["state"] == "accepted"
    assert (finished["result"]["held"], finished["result"]["duplicate"]) == (False, True)
    assert finished["result"]["job"]["state"] == "completed"
    await c.request("cancel", job_id="held")
    assert (await c.job_final("held"))["type"] == "job.cancelled"


# Finding: the files store's extension and the doc --------------------------------------------


def documented_extensions() -> tuple[dict[str, str], str]:
    """``format -> extension`` and the extension of any other format, as §6.4 (`preview`, `ref`) says."""
    ref = table_rows(doc_section("#### `preview`"))["ref"]
    match = re.search(r"`<ext>` is (.*?) and `(\w+)` for any other format", ref)
    assert match, "the `ref` row of `preview` does not say which extension each format gets"
    pairs = dict((fmt, ext) for ext, fmt in re.findall(r"`(\w+)` for `(\w+)`", match.group(1)))
    return pairs, match.group(2)


def test_the_documented_extension_of_each_format_is_the_files_store_s() -> None:
    """§6.4 names the extension of each format exactly as the files store writes it."""
    by_format, other = documented_extensions()
    assert by_format == {fmt: ext for fmt, ext in EXTENSIONS.items() if fmt in ("jpeg", "png", "webp")}
    assert other == "bin"


async def test_files_store_names_each_preview_as_the_doc_says(tmp_path, sims, sidecars, client):
    """A live preview's `ref` is `<dir>/<instance>/<job_id>/<index>-node<node>.<ext>` with §6.4's extension."""
    sim = await sims("0.12.1")
    store_dir = tmp_path / "previews"
    running = await sidecars({"a": sim.url}, previews=PreviewConfig(store="files", dir=str(store_dir)))
    c = await client(running)
    await connected(c, "a")
    await c.request("submit", job_id="job-0001", workflow=probe_workflow(steps=2))
    await c.job_final("job-0001")
    by_format, other = documented_extensions()
    previews = [e["data"] for e in c.of_job("job-0001") if e["type"] == "preview"]
    assert previews and {p["format"] for p in previews} == {"jpeg"}
    for data in previews:
        expected = f"{data['index']:05d}-node{data['node']}.{by_format.get(data['format'], other)}"
        assert data["ref"] == str(store_dir / "a" / "job-0001" / expected)


# Finding: late requests -----------------------------------------------------------------------


def body(op: str, rid: str, **fields: Any) -> bytes:
    return msgspec.msgpack.encode({"op": op, "id": rid, **fields})


async def replies_by_id(dealer: zmq.asyncio.Socket, count: int) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    async with asyncio.timeout(WAIT_S):
        while len(out) < count:
            reply = msgspec.msgpack.decode(await dealer.recv())
            out[reply["id"]] = reply
    return out


async def test_requests_kept_in_a_dealer_while_no_sidecar_was_bound_expire_and_change_nothing(tmp_path, sims, zctx):
    """A cancel and a submit sent while the sidecar was down, with deadlines already past, reach the
    next sidecar: both are answered `expired`, nothing is cancelled, no job is created; requests
    without a deadline or with a later one are served. A DEALER with ZMQ_IMMEDIATE keeps nothing."""
    sim = await sims("0.12.1")
    state = tmp_path / "state.sqlite3"
    run = ["run", "--state", str(state), "--instance", f"a={sim.url}"]
    first, match = await spawn_cli(
        *run, "--router", "tcp://127.0.0.1:*", "--pub", "tcp://127.0.0.1:*", until=SIDECAR_LISTENING, cwd=tmp_path
    )
    router, pub = match.group(1), match.group(2)
    c = Client(zctx, router, pub)
    try:
        await c.wait_for(lambda e: True)
        await connected(c, "a")
        sim.pause_worker()  # J stays queued in ComfyUI: a cancel that went through would remove it
        queued = await c.request("submit", job_id="J", workflow=probe_workflow(steps=2))
        assert queued["ok"] and queued["result"]["job"]["state"] == "queued"
    finally:
        await c.close()
    assert await stop(first, signal.SIGTERM) == 0  # its state is written; nothing is bound at `router` now

    dealer = zctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.connect(router)
    careful = zctx.socket(zmq.DEALER)
    careful.setsockopt(zmq.LINGER, 0)
    careful.setsockopt(zmq.IMMEDIATE, 1)
    careful.connect(router)
    second: asyncio.subprocess.Process | None = None
    c2: Client | None = None
    try:
        with pytest.raises(zmq.Again):  # ZMQ_IMMEDIATE: no sidecar connected, nothing is queued
            await careful.send(body("cancel", "careful", job_id="J"), flags=zmq.DONTWAIT)
        gave_up = time.time_ns()  # the client stops waiting now: later, these must not act
        await dealer.send(body("cancel", "late-cancel", job_id="J", deadline_ns=gave_up))
        await dealer.send(body("submit", "late-submit", job_id="K", workflow=probe_workflow(), deadline_ns=gave_up))
        fresh = {"instance": "a", "queue_anyway": True, "deadline_ns": time.time_ns() + int(60e9)}
        await dealer.send(body("submit", "in-time", job_id="L", workflow=probe_workflow(steps=1), **fresh))
        await dealer.send(body("ping", "no-deadline"))

        second, _ = await spawn_cli(*run, "--router", router, "--pub", pub, until=SIDECAR_LISTENING, cwd=tmp_path)
        replies = await replies_by_id(dealer, 4)
        for rid in ("late-cancel", "late-submit"):
            error = replies[rid]["error"]
            assert replies[rid]["ok"] is False and error["code"] == "expired", replies[rid]
            assert error["details"]["deadline_ns"] == gave_up and error["details"]["now_ns"] > gave_up
        assert replies["in-time"]["ok"] and replies["no-deadline"]["ok"]

        c2 = Client(zctx, router, pub)
        await c2.wait_for(lambda e: True)
        j = await c2.request("job", job_id="J")
        assert j["result"]["state"] == "queued" and j["result"]["cancel_requested"] is False
        assert (await c2.request("job", job_id="K"))["error"]["code"] == "job_not_found"
        assert {v["job_id"] for v in (await c2.request("jobs"))["result"]["jobs"]} == {"J", "L"}
        assert not any(e["job_id"] == "K" for e in c2.events)
        sim.resume_worker()
        assert (await c2.job_final("J"))["type"] == "job.completed"  # the late cancel changed nothing
        assert (await c2.job_final("L"))["type"] == "job.completed"
        posted = [b["extra_data"]["comfy_bridge_job_id"] for b in sim.submitted]
        assert sorted(posted) == ["J", "L"]
    finally:
        dealer.close(linger=0)
        careful.close(linger=0)
        if c2 is not None:
            await c2.close()
        if second is not None:
            await stop(second, signal.SIGTERM)


# Finding: a Rust struct encoded with rmp_serde::to_vec (an array) -----------------------------


async def test_a_request_encoded_as_an_array_is_answered_malformed_request_with_nil_id(sims, sidecars, client):
    """`rmp_serde::to_vec` writes a struct as an array of its values: the answer is §2's, and the
    sidecar goes on serving the same client."""
    sim = await sims("0.12.1")
    running = await sidecars({"a": sim.url})
    c = await client(running)
    as_array = msgspec.msgpack.encode(["cancel", "r1", "job-0001", None])  # {op, id, job_id, deadline_ns}
    reply = await c.raw(as_array)
    assert reply == {
        "id": None,
        "ok": False,
        "error": {"code": "malformed_request", "message": "request body must be a map, got an array", "details": {}},
    }
    assert "`request body must be a map, got an array`" in doc_section("## 2. Endpoints and socket types")
    assert (await c.request("ping"))["ok"]


# Finding: memory of finished jobs -------------------------------------------------------------


async def test_finished_jobs_are_answered_from_light_records_and_the_state_file(tmp_path, sims, sidecars, client):
    """The book holds at most KEEP_FULL finished jobs whole; older ones and those of an earlier run
    are still found by `job`, `submit` and `cancel`, without coming back whole into memory."""
    sim = await sims("0.12.1")
    state = tmp_path / "state.sqlite3"
    running = await sidecars({"a": sim.url}, state=state)
    c = await client(running)
    await connected(c, "a")
    ids = [f"f{n}" for n in range(KEEP_FULL + 4)]
    for job_id in ids:
        await c.request("submit", job_id=job_id, workflow=probe_workflow(steps=1, step_ms=1), client_data={"n": job_id})
        assert (await c.job_final(job_id))["type"] == "job.completed"
    book = running.sidecar.book
    assert len(list(book)) <= KEEP_FULL and book.get("f0") is None
    old = await c.request("job", job_id="f0")
    assert old["result"]["state"] == "completed" and old["result"]["client_data"] == {"n": "f0"}
    assert old["result"]["outputs"] == (await c.job_final("f0"))["data"]["outputs"]
    listed = [v["job_id"] for v in (await c.request("jobs"))["result"]["jobs"]]
    assert listed == ids
    await running.close()

    again = await sidecars({"a": sim.url}, state=state)  # a new run: nothing finished is in memory
    c2 = await client(again)
    assert (await c2.request("jobs"))["result"]["jobs"] == []
    found = await c2.request("job", job_id="f1")
    dup = await c2.request("submit", job_id="f2", workflow=probe_workflow())
    late = await c2.request("cancel", job_id="f3")
    assert found["result"]["state"] == "completed" and found["result"]["client_data"] == {"n": "f1"}
    assert dup["ok"] and dup["result"]["duplicate"] is True and dup["result"]["job"]["state"] == "completed"
    assert late["error"]["code"] == "job_finished" and late["error"]["details"]["state"] == "completed"
    assert list(again.sidecar.book) == []  # read back as light records only, never whole
    assert {v["job_id"] for v in (await c2.request("jobs"))["result"]["jobs"]} == {"f1", "f2", "f3"}
    assert len(sim.submitted) == len(ids)
