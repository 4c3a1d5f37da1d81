"""The client commands and `watch` as a person uses them (issue 11, section 3): real processes.

`comfy-bridge ...` runs as a subprocess against a sidecar process (or none). No command hangs, none
prints a traceback, and every exit code is one README.md lists.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import socket
import sys
from pathlib import Path

import pytest

from sidecar.cli import _parser
from sidecar.cli_client import EXIT_JOB_CANCELLED, EXIT_JOB_FAILED, EXIT_NO_SIDECAR, EXIT_REFUSED, _body
from sidecar.errors import ConfigError

from .conftest import CLI_ENV, LogLines, connected, probe_workflow, spawn_cli, spawn_sidecar, stop

ROOT = Path(__file__).resolve().parents[2]


async def cli(*args: str, cwd: Path | None = None, timeout_s: float = 30) -> tuple[int, str, str]:
    """``comfy-bridge ARGS`` (through ``python -m sidecar``) to its end: (exit code, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "sidecar",
        *args,
        cwd=cwd,
        env=CLI_ENV,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(timeout_s):
            out, err = await proc.communicate()
    finally:
        await stop(proc)
    return proc.returncode or 0, out.decode(), err.decode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def readme_exit_codes() -> set[int]:
    """The exit codes README.md's table lists."""
    section = (ROOT / "README.md").read_text(encoding="utf-8").split("### Exit codes", 1)[1].split("\n## ", 1)[0]
    return {int(code) for code in re.findall(r"^\| `(\d+)` \|", section, re.MULTILINE)}


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


async def test_every_subcommand_with_bad_input_answers_with_a_message_and_a_listed_exit_code(tmp_path):
    """No traceback anywhere, and only exit codes README.md lists (issue 11: simulate on a taken port,
    simulate --version 1.0, demo --versions 9.9 or '', config init into a missing folder, a bad
    [simulator] version all printed tracebacks; client commands waited 30 s and exited 1)."""
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    nobody = f"tcp://127.0.0.1:{free_port()}"
    bad_sim = write(tmp_path / "sim.toml", '[simulator]\nversion = "0.5"\n')
    bad_json = write(tmp_path / "bad.json", "{not json")
    workflow = write(tmp_path / "w.json", json.dumps(probe_workflow()))
    quick = ["--timeout", "0.5", "--router", nobody]
    cases: list[tuple[list[str], int]] = [
        (["no-such-command"], 2),
        (["--log-level", "LOUD", "ping"], 2),
        (["run", "--config", str(tmp_path / "missing.toml")], 2),
        (["run", "--config", str(bad_sim)], 2),
        (["run", "--instance", "nourl"], 2),
        (["run", "--router", "nonsense", "--instance", "a=http://127.0.0.1:9", "--state", str(tmp_path / "s")], 2),
        (["simulate", "--version", "1.0"], 2),
        (["simulate", "--version", "9.9"], 2),
        (["simulate", "--port", str(taken.getsockname()[1])], 2),
        (["simulate", "--port", "99999"], 2),
        (["demo", "--versions", "9.9"], 2),
        (["demo", "--versions", ""], 2),
        (["demo", "--step-ms", "-1"], 2),
        (["config", "init", str(tmp_path / "missing" / "bridge.toml")], 2),
        (["config"], 2),
        (["plugins", "--config", str(bad_sim), "--no-probe"], 2),
        (["plugins", "--instance", "=", "--no-probe"], 2),
        (["watch", "--timeout", "0.5", "--router", nobody, "--pub", nobody], EXIT_NO_SIDECAR),
        (["watch", "--router", "nonsense", "--timeout", "0.5"], 2),
        (["watch", "--timeout", "-1"], 2),
        (["submit", str(tmp_path / "missing.json"), *quick], 2),
        (["submit", str(bad_json), *quick], 2),
        (["submit", str(workflow), "--client-data", "{", *quick], 2),
        (["submit", str(workflow), *quick], EXIT_NO_SIDECAR),
        (["submit", str(workflow), "--wait", *quick], EXIT_NO_SIDECAR),
        (["job", "x", *quick], EXIT_NO_SIDECAR),
        (["job", *quick], 2),
        (["cancel", "x", *quick], EXIT_NO_SIDECAR),
        (["jobs", "--active", "--instance", "a", *quick], EXIT_NO_SIDECAR),
        (["health", *quick], EXIT_NO_SIDECAR),
        (["snapshot", *quick], EXIT_NO_SIDECAR),
        (["ping", *quick], EXIT_NO_SIDECAR),
        (["ping", "--timeout", "soon"], 2),
        (["ping", "--timeout", "0"], 2),
        (["ping", "--router", "nonsense"], 2),
    ]
    try:
        results = await asyncio.gather(*(cli(*args, cwd=tmp_path) for args, _ in cases))
    finally:
        taken.close()
    listed = readme_exit_codes()
    problems = []
    for (args, expected), (code, out, err) in zip(cases, results, strict=True):
        if "Traceback" in out + err or code != expected or code not in listed or not err.strip():
            problems.append(f"{args}: exit {code} (expected {expected}, README lists {sorted(listed)})\n{err}")
    assert not problems, "\n".join(problems)


async def test_no_sidecar_is_said_plainly_within_the_timeout(tmp_path):
    """Every client command with no sidecar: about --timeout, then a plain message and exit 3 (not 1)."""
    nobody = f"tcp://127.0.0.1:{free_port()}"
    loop = asyncio.get_running_loop()
    started = loop.time()
    code, _, err = await cli("health", "--router", nobody, "--timeout", "1")
    assert code == EXIT_NO_SIDECAR and loop.time() - started < 10
    assert f"no sidecar at {nobody}" in err and "Traceback" not in err


async def test_client_commands_against_a_sidecar(tmp_path, sims, zctx):
    """--version, snapshot, jobs --active --instance, submit --client-data, job, pause, resume, cancel."""
    sim = await sims("0.12.1")
    proc, c = await spawn_sidecar(zctx, tmp_path / "s.sqlite3", f"a={sim.url}")
    try:
        await connected(c, "a")
        r = ["--router", c.router]
        code, out, _ = await cli("--version")
        assert code == 0 and out.strip() == "comfy-bridge 0.1.0"
        workflow = write(tmp_path / "w.json", json.dumps(probe_workflow(steps=2)))
        code, out, err = await cli("submit", str(workflow), "--job-id", "one", "--client-data", '{"k": [1]}', *r)
        assert code == 0, err
        assert (await c.job_final("one"))["data"]["client_data"] == {"k": [1]}
        sim.pause_worker()
        code, out, _ = await cli("submit", str(workflow), "--job-id", "two", "--instance", "a", *r)
        assert code == 0 and json.loads(out)["result"]["job"]["job_id"] == "two"
        code, out, _ = await cli("snapshot", *r)
        snap = json.loads(out)["result"]
        assert code == 0 and [j["job_id"] for j in snap["jobs"]] == ["two"] and snap["instances"][0]["name"] == "a"
        code, out, _ = await cli("jobs", "--active", "--instance", "a", *r)
        assert code == 0 and [j["job_id"] for j in json.loads(out)["result"]["jobs"]] == ["two"]
        code, out, _ = await cli("jobs", "--instance", "b", *r)
        assert code == 0 and json.loads(out)["result"]["jobs"] == []
        code, out, _ = await cli("pause", "two", *r)
        assert code == 0 and json.loads(out)["result"]["method"] == "queue_delete"
        await c.wait_for(lambda e: e["type"] == "job.paused" and e["job_id"] == "two")
        code, out, _ = await cli("resume", "two", "--instance", "a", *r)
        assert code == 0 and json.loads(out)["result"]["job"]["state"] == "queued"
        code, out, _ = await cli("cancel", "two", *r)
        assert code == 0 and json.loads(out)["ok"]
        code, out, _ = await cli("cancel", "nope", *r)
        assert code == EXIT_REFUSED and json.loads(out)["error"]["code"] == "job_not_found"
        code, out, _ = await cli("job", "one", *r)
        assert code == 0 and json.loads(out)["result"]["state"] == "completed"
    finally:
        await c.close()
        await stop(proc)


async def test_submit_wait_follows_the_job_and_exits_by_its_end(tmp_path, sims, zctx):
    """`submit --wait`: one line per change off a terminal; exit 0 completed, 4 failed, 5 cancelled."""
    sim = await sims("0.12.1")
    proc, c = await spawn_sidecar(zctx, tmp_path / "s.sqlite3", f"a={sim.url}")
    try:
        await connected(c, "a")
        r = ["--router", c.router, "--pub", c.pub]
        ok = write(tmp_path / "ok.json", json.dumps(probe_workflow(steps=4)))
        bad = write(tmp_path / "bad.json", json.dumps(probe_workflow(steps=4, fail_at=2)))
        long = write(tmp_path / "long.json", json.dumps(probe_workflow(steps=500, step_ms=20)))
        code, out, err = await cli("submit", str(ok), "--wait", "--job-id", "w1", *r)
        assert code == 0, err
        lines = [line for line in out.splitlines() if line.startswith("w1  ")]
        assert lines[-1].split()[1:3] == ["completed", "100.0%"], out
        assert len(lines) >= 3 and any("node " in line for line in lines), out
        code, out, _ = await cli("submit", str(bad), "--wait", "--job-id", "w2", *r)
        assert code == EXIT_JOB_FAILED and '"state": "failed"' in out
        waiting = asyncio.create_task(cli("submit", str(long), "--wait", "--job-id", "w3", *r))
        await c.wait_for(lambda e: e["type"] == "job.progress" and e["job_id"] == "w3")
        assert (await cli("cancel", "w3", "--router", c.router))[0] == 0
        code, out, _ = await waiting
        assert code == EXIT_JOB_CANCELLED and '"state": "cancelled"' in out
    finally:
        await c.close()
        await stop(proc)


async def test_a_request_the_client_gave_up_on_never_takes_effect(tmp_path, sims, zctx):
    """A submit sent to a stalled sidecar (SIGSTOP) times out (exit 3); when the sidecar resumes and
    resumes, nothing it could read is left (ZMQ_IMMEDIATE): no job."""
    sim = await sims("0.12.1")
    proc, c = await spawn_sidecar(zctx, tmp_path / "s.sqlite3", f"a={sim.url}")
    workflow = write(tmp_path / "w.json", json.dumps(probe_workflow(steps=2)))
    try:
        await connected(c, "a")
        proc.send_signal(signal.SIGSTOP)
        try:
            code, _, err = await cli(
                "submit", str(workflow), "--job-id", "late", "--router", c.router, "--timeout", "1"
            )
        finally:
            proc.send_signal(signal.SIGCONT)
        assert code == EXIT_NO_SIDECAR and "no sidecar" in err  # ZMQ_IMMEDIATE: a stopped peer takes nothing
        await c.tick(2)
        code, out, _ = await cli("job", "late", "--router", c.router)
        assert code == EXIT_REFUSED and json.loads(out)["error"]["code"] == "job_not_found"
    finally:
        await c.close()
        await stop(proc)


async def test_client_requests_carry_their_deadline(tmp_path, zctx):
    """A peer that reads the request and never answers: the command gives up after --timeout (exit 3)
    and its request carried deadline_ns = about the moment it gave up (PROTOCOL.md §2, §5.1)."""
    import time

    import msgspec
    import zmq

    router = zctx.socket(zmq.ROUTER)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    try:
        sent_ns = time.time_ns()
        command = asyncio.create_task(cli("cancel", "j", "--router", f"tcp://127.0.0.1:{port}", "--timeout", "1"))
        async with asyncio.timeout(15):
            frames = await router.recv_multipart()
        body = msgspec.msgpack.decode(frames[-1])
        assert body["op"] == "cancel" and body["job_id"] == "j"
        assert sent_ns < body["deadline_ns"] < sent_ns + 10 * 10**9
        code, _, err = await command
        assert code == EXIT_NO_SIDECAR and "no reply" in err
    finally:
        router.close(0)


async def watch_proc(*args: str) -> tuple[asyncio.subprocess.Process, LogLines]:
    """`comfy-bridge watch ARGS` with its stdout read line by line into a LogLines."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sidecar", "watch", *args, env=CLI_ENV, stdout=asyncio.subprocess.PIPE
    )
    lines = LogLines()

    async def follow() -> None:
        while line := await proc.stdout.readline():  # type: ignore[union-attr]
            lines.add(line.decode())

    _tasks.add(asyncio.create_task(follow()))
    return proc, lines


_tasks: set[asyncio.Task[None]] = set()


async def test_watch_until_idle_exits_when_the_jobs_already_ended(tmp_path, sims, zctx):
    """Started after every job ended, `watch --until-idle` exits 0 at once (it hung)."""
    sim = await sims("0.12.1")
    proc, c = await spawn_sidecar(zctx, tmp_path / "s.sqlite3", f"a={sim.url}")
    try:
        await connected(c, "a")
        await c.request("submit", job_id="done", workflow=probe_workflow(steps=2))
        await c.job_final("done")
        code, out, _ = await cli("watch", "--router", c.router, "--pub", c.pub, "--until-idle", timeout_s=20)
        assert code == 0 and "instance a: connected" in out
    finally:
        await c.close()
        await stop(proc)


async def test_watch_shows_instance_states_and_marks_jobs_of_a_down_instance(tmp_path, sims, zctx):
    """An instance going down shows on screen, and its unfinished job is marked (nothing showed it)."""
    sim = await sims("0.12.1")
    proc, c = await spawn_sidecar(zctx, tmp_path / "s.sqlite3", f"a={sim.url}")
    watcher = None
    try:
        await connected(c, "a")
        watcher, lines = await watch_proc("--router", c.router, "--pub", c.pub)
        await lines.wait_for(r"^instance a: connected")
        await c.request("submit", job_id="held", workflow=probe_workflow(steps=50, step_ms=50))
        await lines.wait_for(r"^held .*started")
        await sim.close()
        await lines.wait_for(r"^instance a: (disconnected|waiting)")
        await lines.wait_for(r"^held .*started .*\(instance down\)")
    finally:
        if watcher is not None:
            await stop(watcher)
        await c.close()
        await stop(proc)


async def test_watch_shows_the_end_of_a_job_that_ended_while_the_sidecar_was_down(tmp_path, sims, zctx):
    """The sidecar is SIGKILLed mid-job, the job ends in ComfyUI, a new sidecar settles it from history:
    `watch` (running throughout) shows it completed at 100 % (it showed the old percentage forever)."""
    sim = await sims("0.12.1")
    state = tmp_path / "s.sqlite3"
    router, pub = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    args = ["run", "--router", router, "--pub", pub, "--state", str(state), "--instance", f"a={sim.url}"]
    proc, _ = await spawn_cli(*args, until=r"ROUTER on", cwd=tmp_path)
    watcher = None
    try:
        watcher, lines = await watch_proc("--router", router, "--pub", pub, "--timeout", "2")
        await lines.wait_for(r"^instance a: connected")
        workflow = write(tmp_path / "w.json", json.dumps(probe_workflow(steps=6, step_ms=20)))
        code, _, err = await cli("submit", str(workflow), "--job-id", "unseen", "--router", router)
        assert code == 0, err
        await lines.wait_for(r"^unseen .*started")
        sim.hold_steps()
        await stop(proc, signal.SIGKILL)
        sim.release_steps()
        await sim.wait_idle()
        proc, _ = await spawn_cli(*args, until=r"ROUTER on", cwd=tmp_path)
        await lines.wait_for(r"^unseen .*completed +100\.0%", timeout_s=30)
    finally:
        if watcher is not None:
            await stop(watcher)
        await stop(proc)


def test_watcher_keeps_a_nodes_class_across_a_snapshot():
    """A restored job's view names its node by id; the watcher shows the class it learnt (it showed the id)."""
    from sidecar.watch import Watcher

    w = Watcher()
    view = {"job_id": "j", "instance": "a", "state": "started", "percent": 10.0, "current_node": "2"}
    w.load_snapshot({"run": "r1", "seq": 1, "jobs": [view], "instances": [{"name": "a", "state": "connected"}]})
    assert w.jobs["j"].node == "#2"
    executing = {"node": "2", "class_type": "KSampler", "title": None}
    w.feed({"seq": 2, "run": "r1", "type": "node.executing", "instance": "a", "job_id": "j", "data": executing})
    w.load_snapshot({"run": "r2", "seq": 5, "jobs": [view], "instances": [{"name": "a", "state": "waiting"}]})
    assert w.jobs["j"].node == "KSampler" and "(instance down)" in w.jobs["j"].text()


def test_submit_file_options_carry_input_files_by_name(tmp_path):
    """``--file NAME=PATH`` and ``--file PATH`` (named as the file) put the bytes in ``files``; an
    unreadable one is a usage error naming it."""
    workflow = write(tmp_path / "w.json", json.dumps(probe_workflow()))
    (tmp_path / "cat.png").write_bytes(b"\x89PNG cat")
    args = _parser().parse_args(
        ["submit", str(workflow), "--file", str(tmp_path / "cat.png"), "--file", f"dog.png={tmp_path / 'cat.png'}"]
    )
    assert _body(args)["files"] == {"cat.png": b"\x89PNG cat", "dog.png": b"\x89PNG cat"}
    args = _parser().parse_args(["submit", str(workflow), "--file", str(tmp_path / "none.png")])
    with pytest.raises(ConfigError, match=r"--file .*none\.png: cannot read"):
        _body(args)
