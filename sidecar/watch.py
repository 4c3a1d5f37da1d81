"""SHELL: ``comfy-bridge watch``: live progress of every job, read from the PUB socket.

A subscriber written the way docs/PROTOCOL.md §7 asks: subscribe first, then ask
``snapshot``, drop events older than the snapshot's ``seq``, and ask again when
``run`` changes. It skips the ``preview`` family, so gaps in ``seq`` are expected and
ignored; a gap in a job's ``job_seq`` means it lost events (it fell behind, §2): it
asks again. After every new snapshot it asks ``job`` for the jobs it showed as
unfinished that the snapshot no longer lists (they ended meanwhile, even while the sidecar
was down). Each instance's state is shown, and a job whose instance is not connected is
marked ``instance down``. Requests go on a fresh ``DEALER`` with ``ZMQ_IMMEDIATE`` and a
timeout each; no sidecar within the timeout at start raises :class:`NoSidecar`; a sidecar
that goes quiet later is shown as such until it is back. On a terminal it draws rich
progress bars; elsewhere it prints one line per change, so scripts and tests can read it.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Any

import msgspec
import zmq
import zmq.asyncio

from .cli_client import NoSidecar
from .curve import ClientCurve
from .errors import ConfigError

__all__ = ["JobLine", "Watcher", "watch"]

UP = ("connected", "degraded")  # states in which an instance runs its jobs

FINAL = {"job.completed": "completed", "job.failed": "failed", "job.cancelled": "cancelled"}
FINAL_STATES = set(FINAL.values())


@dataclass
class JobLine:
    job_id: str
    instance: str
    state: str = "accepted"
    percent: float = 0.0
    node: str = ""
    job_seq: int = 0  # the last job_seq applied (docs/PROTOCOL.md §7.2)
    instance_down: bool = False
    classes: dict[str, str] = field(default_factory=dict)  # node id -> title or class, from node.executing

    def info(self) -> str:
        node = f"  node {self.node}" if self.node and self.state == "started" else ""
        down = "  (instance down)" if self.instance_down and self.state not in FINAL_STATES else ""
        return f"{self.state:<9} {self.percent:5.1f}%{node}{down}"

    def text(self) -> str:
        return f"{self.job_id}  [{self.instance}]  {self.info()}"


class Watcher:
    """What the watcher knows: one :class:`JobLine` per job and each instance's state, from events."""

    def __init__(self) -> None:
        self.jobs: dict[str, JobLine] = {}
        self.instances: dict[str, str] = {}
        self.run: str | None = None
        self.seq = 0
        self.finished = 0

    def load_snapshot(self, snap: dict[str, Any]) -> None:
        self.run, self.seq = snap["run"], snap["seq"]
        for inst in snap.get("instances", ()):
            self.instances[inst["name"]] = inst["state"]
        for job in snap["jobs"]:
            self.update(job)
        for line in self.jobs.values():
            line.instance_down = self.down(line.instance)

    def update(self, job: dict[str, Any]) -> JobLine:
        """Take a JobView (from ``snapshot`` or ``job``) as the job's line."""
        known = self.jobs.get(job["job_id"])
        classes = known.classes if known is not None else {}
        node = job["current_node"] or ""
        line = self.jobs[job["job_id"]] = JobLine(
            job["job_id"],
            job["instance"],
            job["state"],
            job["percent"],
            job.get("current_class") or classes.get(node, f"#{node}" if node else ""),
            job.get("job_seq", 0),
            self.down(job["instance"]),
            classes,
        )
        return line

    def down(self, instance: str) -> bool:
        """True when ``instance`` is known and not running jobs (disconnected, waiting, connecting)."""
        state = self.instances.get(instance)
        return state is not None and state not in UP

    def unlisted(self, snap: dict[str, Any]) -> list[str]:
        """Jobs shown as unfinished that ``snap`` does not list: they ended meanwhile (ask ``job``)."""
        listed = {job["job_id"] for job in snap["jobs"]}
        return [j for j, line in self.jobs.items() if j not in listed and line.state not in FINAL_STATES]

    def of_instance(self, instance: str) -> list[JobLine]:
        return [line for line in self.jobs.values() if line.instance == instance]

    def feed(self, event: dict[str, Any]) -> JobLine | None:
        """Apply one event; returns the job line it changed, if any."""
        if event["run"] != self.run:
            raise LookupError("a new run: take a snapshot")
        if event["seq"] <= self.seq:
            return None
        self.seq = event["seq"]
        kind, data = event["type"], event["data"]
        if kind == "instance.status":
            self.instances[event["instance"]] = data["state"]
            for known in self.of_instance(event["instance"]):
                known.instance_down = self.down(known.instance)
            return None
        job_id = event["job_id"]
        if job_id is None:
            return None
        line = self.jobs.setdefault(
            job_id, JobLine(job_id, event["instance"], instance_down=self.down(event["instance"]))
        )
        job_seq = event.get("job_seq")
        if job_seq is not None:
            if job_seq > line.job_seq + 1:
                raise LookupError(f"job {job_id}: job_seq {job_seq} after {line.job_seq}: take a snapshot")
            line.job_seq = job_seq
        if kind in ("job.queued", "job.started", "job.paused"):
            line.state = kind.partition(".")[2]
        elif kind == "job.resumed":  # posted again, maybe on another instance
            line.state, line.instance = "accepted", data["instance"]
            line.instance_down = self.down(line.instance)
        elif kind == "job.progress":
            line.percent = data["percent"]
        elif kind == "node.executing":
            line.node = data.get("title") or data.get("class_type") or data["node"]
            if data.get("node") is not None:
                line.classes[data["node"]] = line.node
        elif kind in FINAL:
            line.state = FINAL[kind]
            self.finished += 1
        else:
            return None
        return line

    @property
    def active(self) -> int:
        return sum(1 for line in self.jobs.values() if line.state not in FINAL_STATES)


async def _ask(
    ctx: zmq.asyncio.Context, router: str, op: str, timeout_s: float, curve: ClientCurve | None, **fields: Any
) -> dict[str, Any]:
    """One request on a fresh DEALER (ZMQ_IMMEDIATE, deadline_ns); :class:`NoSidecar` when none answers."""
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    if curve is not None:
        curve.apply(dealer)
    dealer.setsockopt(zmq.IMMEDIATE, 1)
    try:
        dealer.connect(router)
        if not await dealer.poll(int(timeout_s * 1000), zmq.POLLOUT):  # type: ignore[call-arg]
            raise NoSidecar(f"no sidecar at {router} (none accepted a connection within {timeout_s:g} s)")
        deadline_ns = time.time_ns() + int(timeout_s * 1e9)
        await dealer.send(msgspec.msgpack.encode({"op": op, "id": op, "deadline_ns": deadline_ns, **fields}))
        if not await dealer.poll(int(timeout_s * 1000)):
            raise NoSidecar(f"no reply from the sidecar at {router} within {timeout_s:g} s")
        reply: dict[str, Any] = msgspec.msgpack.decode(await dealer.recv())
        return reply
    finally:
        dealer.close(0)


async def watch(
    router: str,
    pub: str,
    until_idle: bool = False,
    out: Any = None,
    timeout_s: float = 5.0,
    idle_after_jobs: bool = False,
    curve: ClientCurve | None = None,
) -> Watcher:
    """Follow every job until cancelled; with ``until_idle``, until no job is unfinished (for a
    sidecar that never had one, or with ``idle_after_jobs``, once jobs were seen and all ended).

    Raises :class:`NoSidecar` when no sidecar answers within ``timeout_s`` at start.
    """
    out = out or sys.stdout
    ctx = zmq.asyncio.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    if curve is not None:
        curve.apply(sub)
    for topic in (b"job.", b"progress.", b"instance."):  # instance.: heartbeats and instance states
        sub.setsockopt(zmq.SUBSCRIBE, topic)
    watcher = Watcher()
    view: _Lines | _Bars = _Bars(router) if out.isatty() else _Lines(out)
    try:
        for endpoint in (router, pub):
            _check_endpoint(ctx, endpoint)
        sub.connect(pub)
        if not await sub.poll(int(timeout_s * 1000)):
            raise NoSidecar(f"no event from a sidecar at {pub} within {timeout_s:g} s")
        await sub.recv_multipart()  # subscribed: from here on nothing is missed
        watcher.load_snapshot((await _ask(ctx, router, "snapshot", timeout_s, curve))["result"])
        if not watcher.active and not idle_after_jobs:  # jobs that ended before we came count as seen
            watcher.finished += len((await _ask(ctx, router, "jobs", timeout_s, curve))["result"]["jobs"])
        view.begin(watcher, pub)
        silent = False
        while not (until_idle and watcher.finished and not watcher.active):
            if not await sub.poll(int(timeout_s * 1000)):
                if not silent:
                    silent = True
                    view.sidecar(f"sidecar: no event for {timeout_s:g} s (not running?); waiting")
                continue
            event = msgspec.msgpack.decode((await sub.recv_multipart())[1])
            if silent:
                silent = False
                view.sidecar("sidecar: heard again")
            try:
                line = watcher.feed(event)
            except LookupError:
                try:
                    await _resnapshot(ctx, router, watcher, view, timeout_s, curve)
                except NoSidecar as exc:
                    view.sidecar(f"sidecar: {exc}; will ask again")
                continue
            if event["type"] == "instance.status":
                view.instance(event["instance"], watcher)
            elif line is not None:
                view.show(line)
    finally:
        view.stop()
        sub.close(0)
        ctx.term()
    return watcher


def _check_endpoint(ctx: zmq.asyncio.Context, endpoint: str) -> None:
    probe = ctx.socket(zmq.DEALER)
    try:
        probe.connect(endpoint)
    except zmq.ZMQError as exc:
        raise ConfigError(f"endpoint {endpoint!r}: {exc} (expected e.g. tcp://127.0.0.1:5556)") from None
    finally:
        probe.close(0)


async def _resnapshot(
    ctx: zmq.asyncio.Context,
    router: str,
    watcher: Watcher,
    view: _Lines | _Bars,
    timeout_s: float,
    curve: ClientCurve | None = None,
) -> None:
    """A new run or lost events: take a snapshot; ask ``job`` for what ended meanwhile."""
    snap = (await _ask(ctx, router, "snapshot", timeout_s, curve))["result"]
    ended = watcher.unlisted(snap)
    watcher.load_snapshot(snap)
    for name in watcher.instances:
        view.instance(name, watcher)
    for line in watcher.jobs.values():
        if line.job_id not in ended:
            view.show(line)
    for job_id in ended:
        reply = await _ask(ctx, router, "job", timeout_s, curve, job_id=job_id)
        if reply["ok"]:
            line = watcher.update(reply["result"])
            if line.state in FINAL_STATES:
                watcher.finished += 1
            view.show(line)


class _Lines:
    """One line per change (not a terminal): readable by scripts and tests."""

    def __init__(self, out: Any) -> None:
        self.out = out
        self.shown: dict[str, str] = {}

    def _print(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def begin(self, watcher: Watcher, pub: str) -> None:
        self._print(f"watching {pub} (run {watcher.run}, seq {watcher.seq})")
        for name in watcher.instances:
            self.instance(name, watcher)
        for line in watcher.jobs.values():
            self.show(line)

    def instance(self, name: str, watcher: Watcher) -> None:
        text = f"instance {name}: {watcher.instances.get(name, '?')}"
        if self.shown.get(f"instance {name}") != text:
            self.shown[f"instance {name}"] = text
            self._print(text)
            for line in watcher.of_instance(name):
                self.show(line)

    def show(self, line: JobLine) -> None:
        text = line.text()
        if self.shown.get(line.job_id) != text:
            self.shown[line.job_id] = text
            self._print(text)

    def sidecar(self, text: str) -> None:
        self._print(text)

    def stop(self) -> None:
        pass


def escape(text: str) -> str:
    from rich.markup import escape as rich_escape

    return rich_escape(text)


class _Bars:
    """On a terminal: a line of instance states (and the sidecar's), then one rich bar per job."""

    def __init__(self, router: str) -> None:
        from rich.console import Group
        from rich.live import Live
        from rich.progress import BarColumn, Progress, TextColumn
        from rich.text import Text

        self.header = Text(f"waiting for a sidecar at {router}")
        self.note = Text("")
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[info]}"))
        self.tasks: dict[str, Any] = {}
        self.live = Live(Group(self.header, self.note, self.progress), refresh_per_second=10)
        self.live.start()

    def begin(self, watcher: Watcher, pub: str) -> None:
        self.instance("", watcher)
        for line in watcher.jobs.values():
            self.show(line)

    def instance(self, name: str, watcher: Watcher) -> None:
        self.header.plain = ""
        self.header.append("instances: ", style="bold")
        for n, (inst, state) in enumerate(sorted(watcher.instances.items())):
            self.header.append(("  " if n else "") + f"{inst} ")
            self.header.append(state, style="green" if state == "connected" else "yellow" if state in UP else "red")
        for line in watcher.jobs.values():
            self.show(line)

    def show(self, line: JobLine) -> None:
        task = self.tasks.get(line.job_id)
        info = escape(line.info()).replace("(instance down)", "[bold red](instance down)[/]")
        if task is None:
            label = escape(f"{line.job_id} [{line.instance}]")  # brackets are rich markup otherwise
            self.tasks[line.job_id] = task = self.progress.add_task(label, total=100, info=info)
        self.progress.update(task, completed=line.percent, info=info)

    def sidecar(self, text: str) -> None:
        self.note.plain = text

    def stop(self) -> None:
        self.live.stop()
