"""Issue 13, beyond one host: three sidecars (real processes), two simulated instances each.

One ``watch`` (through ``comfy-bridge proxy``) and two clients (one on the sidecars' own PUBs, one
on the proxy) follow every job of every sidecar; jobs are spread by load over the six instances;
one sidecar is SIGKILLed and started again: each client notices its silence, then its new ``run``,
snapshots that sidecar again and only that one, and the other two sidecars' events keep flowing
(their latency during the restart is printed; run with ``-s`` to see it).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import re
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import zmq
import zmq.asyncio

from sidecar.cli import main
from sidecar.cli_client import NoSidecar
from sidecar.fleet import ask_all, pick_instance
from sidecar.fleetsub import FleetSubscriber, Member, ask
from sidecar.mirror import FINAL, FleetMirror
from sidecar.simulator import SimServer

from .conftest import probe_workflow, spawn_cli, stop
from .test_cli_client import free_port, watch_proc

NAMES = ("host-a", "host-b", "host-c")
JOBS = 12


class Recorder:
    """A client's :class:`~sidecar.fleetsub.Stream`: per-sidecar Clone state (FleetMirror), every
    job's final state, each event's latency (arrival here minus its ``ts``) and the notes."""

    def __init__(self, ctx: zmq.asyncio.Context) -> None:
        self.ctx = ctx
        self.mirror = FleetMirror()
        self.jobs: dict[str, str] = {}  # job id -> sidecar
        self.final: dict[str, str] = {}  # job id -> final state
        self.latency: list[tuple[int, str, int]] = []  # (arrival ns, sidecar, latency ns)
        self.notes: list[tuple[float, str, str]] = []  # (monotonic, sidecar, text)
        self.loads: list[tuple[float, str, str]] = []  # (monotonic, sidecar, run)
        self.instances: dict[str, str] = {}  # "sidecar/instance" -> state
        self.changed = asyncio.Event()

    async def load(self, member: Member, snap: dict[str, Any]) -> None:
        self.mirror.load(snap)
        for inst in snap["instances"]:
            self.instances[f"{member.name}/{inst['name']}"] = inst["state"]
        for view in snap["jobs"]:
            self.jobs[view["job_id"]] = member.name
        listed = {view["job_id"] for view in snap["jobs"]}
        for job_id, name in list(self.jobs.items()):  # 7.2 step 5: ended meanwhile
            if name == member.name and job_id not in listed and job_id not in self.final:
                reply = await ask(self.ctx, member.router, "job", 5.0, job_id=job_id)
                if reply["ok"] and reply["result"]["state"] in FINAL.values():
                    self.final[job_id] = reply["result"]["state"]
        self.loads.append((time.monotonic(), member.name, snap["run"]))
        self.changed.set()

    def apply(self, member: Member, event: dict[str, Any]) -> bool:
        arrived = time.time_ns()
        if not self.mirror.apply(event):
            return False
        self.latency.append((arrived, member.name, arrived - event["ts"]))
        if event["type"] == "instance.status":
            self.instances[f"{member.name}/{event['instance']}"] = event["data"]["state"]
        if event["job_id"] is not None:
            self.jobs[event["job_id"]] = member.name
            if event["type"] in FINAL:
                self.final[event["job_id"]] = FINAL[event["type"]]
        self.changed.set()
        return True

    def note(self, member: Member | None, text: str) -> None:
        self.notes.append((time.monotonic(), member.name if member else "", text))
        self.changed.set()

    async def until(self, what: Any, timeout_s: float = 30.0) -> None:
        async with asyncio.timeout(timeout_s):
            while not what():
                self.changed.clear()
                await self.changed.wait()


async def follow(ctx: zmq.asyncio.Context, routers: list[str], pubs: list[str]) -> tuple[Recorder, Any, Any]:
    recorder = Recorder(ctx)
    fleet = FleetSubscriber(ctx, routers, pubs, recorder, timeout_s=5.0, silence_s=1.0)
    await fleet.start()
    return recorder, fleet, asyncio.create_task(fleet.run())


def p99_ms(values: list[int]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] / 1e6


@pytest.mark.timeout(120)
async def test_three_sidecars_one_watch_two_clients_and_a_restart(tmp_path: Path, zctx) -> None:
    simulators = SimThread(2 * len(NAMES))
    instances = {name: simulators.sims[2 * n : 2 * n + 2] for n, name in enumerate(NAMES)}
    routers = {name: f"tcp://127.0.0.1:{free_port()}" for name in NAMES}
    pubs = {name: f"tcp://127.0.0.1:{free_port()}" for name in NAMES}

    def run_args(name: str) -> list[str]:
        config = tmp_path / f"{name}.toml"
        config.write_text(f'[sidecar]\nname = "{name}"\n[zmq]\nheartbeat_s = 0.05\n')
        args = ["run", "--config", str(config), "--router", routers[name], "--pub", pubs[name]]
        args += ["--state", str(tmp_path / f"{name}.sqlite3")]
        for n, sim in enumerate(instances[name], 1):
            args += ["--instance", f"{name[-1]}{n}={sim.url}"]  # a1, a2, b1, ...: unique in the fleet
        return args

    started = await asyncio.gather(
        *(spawn_cli(*run_args(name), until=r"ROUTER on", cwd=tmp_path) for name in NAMES),
        spawn_cli(
            "proxy", *(f"--xsub={pubs[n]}" for n in NAMES), "--xpub", "tcp://127.0.0.1:*", until=r"XPUB on (\S+),"
        ),
    )
    procs = {name: proc for name, (proc, _) in zip(NAMES, started, strict=False)}
    proxy, xpub = started[-1][0], started[-1][1].group(1)
    watcher: asyncio.subprocess.Process | None = None
    tasks: list[Any] = []
    try:
        all_routers = [routers[n] for n in NAMES]
        direct, direct_fleet, direct_task = await follow(zctx, all_routers, [pubs[n] for n in NAMES])
        proxied, proxied_fleet, proxied_task = await follow(zctx, all_routers, [xpub])
        tasks += [(direct_fleet, direct_task), (proxied_fleet, proxied_task)]
        watch_args = [f"--router={r}" for r in all_routers]
        watcher, lines = await watch_proc(*watch_args, "--pub", xpub, "--timeout", "1")
        for client in (direct, proxied):
            await client.until(lambda c=client: len(c.loads) == 3)
        await direct.until(lambda: len(direct.instances) == 6 and set(direct.instances.values()) == {"connected"})
        await lines.wait_for(r"^watching .*sidecar host-c")

        # Jobs spread by load: each submit goes to the least loaded connected instance of the fleet.
        # The simulators hold their steps meanwhile, so no job ends and frees its instance early.
        simulators.call(lambda sim: sim.hold_steps())
        (code, out, err), placed = await asyncio.gather(
            asyncio.to_thread(cli_main, "submit", str(write_workflow(tmp_path)), "--job-id", "job-00", *watch_args),
            asyncio.to_thread(submit_many, all_routers, [f"job-{n:02}" for n in range(1, JOBS)]),
        )
        assert code == 0, out + err
        placed["job-00"] = re.search(r"instance (\w+)", err).group(1)  # type: ignore[union-attr]
        simulators.call(lambda sim: sim.release_steps())
        per_instance = {f"{n[-1]}{i}": 0 for n in NAMES for i in (1, 2)}
        for instance in placed.values():
            per_instance[instance] += 1
        assert min(per_instance.values()) >= 1 and max(per_instance.values()) <= 3, per_instance

        # SIGKILL host-b mid-job; start it again on the same endpoints and state file.
        b_jobs = [job for job, inst in placed.items() if inst.startswith("b")]
        await direct.until(lambda: any(direct.jobs.get(j) == "host-b" for j in b_jobs))
        killed_ns = time.time_ns()
        await stop(procs["host-b"], signal.SIGKILL)
        for client in (direct, proxied):
            await client.until(lambda c=client: any(s == "host-b" and "no event" in t for _, s, t in c.notes))
        spawned_ns = time.time_ns()
        procs["host-b"], _ = await spawn_cli(*run_args("host-b"), until=r"ROUTER on", cwd=tmp_path)
        for client in (direct, proxied):
            await client.until(lambda c=client: len([x for x in c.loads if x[1] == "host-b"]) == 2)
        resnapshot_ns = time.time_ns()
        b_job = b_jobs[0]  # the fleet commands find it on whichever sidecar holds it
        commands = asyncio.to_thread(lambda: (cli_main("jobs", *watch_args), cli_main("job", b_job, *watch_args)))

        for client in (direct, proxied):
            await client.until(lambda c=client: len(c.final) == JOBS)
            assert c_final_ok(client), client.final
            assert {j: client.jobs[j] for j in placed} == {j: f"host-{inst[0]}" for j, inst in placed.items()}
            loads = [name for _, name, _ in client.loads]
            assert sorted(loads) == ["host-a", "host-b", "host-b", "host-c"], loads  # only host-b again
            assert [t for _, s, t in client.notes if s != "host-b" and "no event" in t] == []
        for job in placed:
            await lines.wait_for(rf"^{job}  \[host-\w/\w\d\]  completed +100\.0%")
        await lines.wait_for(r"^sidecar host-b: no event for")

        # The other two sidecars' events while host-b was down and re-snapshotted: not delayed.
        report = []
        for label, client in (("direct", direct), ("proxy", proxied)):
            before = [lat for t, s, lat in client.latency if s != "host-b" and t < killed_ns]
            during = [lat for t, s, lat in client.latency if s != "host-b" and killed_ns <= t <= resnapshot_ns]
            back = [lat for t, s, lat in client.latency if s != "host-b" and spawned_ns <= t <= resnapshot_ns]
            assert during and back, f"{label}: no event of host-a or host-c while host-b restarted"
            report.append(
                f"{label}: host-a/host-c event latency p99 {p99_ms(before):.1f} ms before the kill "
                f"({len(before)} events), {p99_ms(during):.1f} ms from the kill to host-b's re-snapshot "
                f"({len(during)} events, {(resnapshot_ns - killed_ns) / 1e9:.1f} s), {p99_ms(back):.1f} ms from "
                f"host-b's new start to its re-snapshot ({len(back)} events)"
            )
            assert p99_ms(during) < 1000, report[-1]
        print("\n" + "\n".join(report))

        (code, out, err), (jcode, jout, jerr) = await commands
        assert code == 0 and all(f'"{job}"' in out for job in placed), out + err
        assert jcode == 0 and f'"job_id": "{b_job}"' in jout and '"instance": "b' in jout, jout + jerr
        assert await stop(proxy, signal.SIGTERM) == 0  # SIGTERM stops the proxy cleanly
    finally:
        for fleet, task in tasks:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await fleet.close()
        for proc in (*procs.values(), proxy, *([watcher] if watcher else [])):
            await stop(proc, signal.SIGTERM)
        simulators.close()


class SimThread:
    """Simulated ComfyUIs served by their own event loop in a thread: the work a restarted sidecar
    asks of its simulators (resync) does not stall this loop, whose clients measure latency."""

    def __init__(self, count: int) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.sims: list[SimServer] = asyncio.run_coroutine_threadsafe(self._start(count), self.loop).result(30)

    async def _start(self, count: int) -> list[SimServer]:
        sims = [SimServer("0.12.1", step_ms=10) for _ in range(count)]
        for sim in sims:
            await sim.start()
        return sims

    def call(self, action: Any) -> None:
        """``action(sim)`` for every simulator, in their loop; returns once done."""

        async def each() -> None:
            for sim in self.sims:
                action(sim)

        asyncio.run_coroutine_threadsafe(each(), self.loop).result(10)

    def close(self) -> None:
        async def close_all() -> None:
            for sim in self.sims:
                await sim.close()

        asyncio.run_coroutine_threadsafe(close_all(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def cli_main(*argv: str) -> tuple[int, str, str]:
    """``comfy-bridge ARGV`` in this process (a thread): the command's own code, without the seconds a
    Python start costs a loaded machine; (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


def c_final_ok(client: Recorder) -> bool:
    return set(client.final.values()) == {"completed"}


def write_workflow(tmp_path: Path) -> Path:
    import json

    path = tmp_path / "w.json"
    path.write_text(json.dumps(probe_workflow(steps=12, step_ms=25)))
    return path


def submit_many(routers: list[str], job_ids: list[str]) -> dict[str, str]:
    """What ``comfy-bridge submit`` does with several ``--router``, for each job: the health of all,
    then a submit to the least loaded instance's sidecar. Returns each job's instance."""
    ctx: zmq.Context[Any] = zmq.Context()
    placed = {}
    try:
        for job_id in job_ids:
            router, instance = pick_instance(ask_all(ctx, routers, {"op": "health"}, 5.0), None)
            workflow = probe_workflow(steps=12, step_ms=25)
            body = {"op": "submit", "job_id": job_id, "instance": instance, "workflow": workflow}
            reply = ask_all(ctx, [router], body, 5.0)[router]
            assert not isinstance(reply, NoSidecar) and reply["ok"], reply
            placed[job_id] = instance
        return placed
    finally:
        ctx.destroy(linger=0)
