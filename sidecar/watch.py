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
from dataclasses import dataclass, field
from typing import Any

import zmq
import zmq.asyncio

from .cli_client import NoSidecar
from .curve import ClientCurve
from .fleetsub import FleetSubscriber, Member, ask

__all__ = ["JobLine", "NoSidecar", "Watcher", "watch", "watch_fleet"]

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
    sidecar: str = ""  # the sidecar's name when watching several ("" for one)

    def info(self) -> str:
        node = f"  node {self.node}" if self.node and self.state == "started" else ""
        down = "  (instance down)" if self.instance_down and self.state not in FINAL_STATES else ""
        return f"{self.state:<9} {self.percent:5.1f}%{node}{down}"

    def text(self) -> str:
        where = f"{self.sidecar}/{self.instance}" if self.sidecar else self.instance
        return f"{self.job_id}  [{where}]  {self.info()}"

    @property
    def key(self) -> str:
        return f"{self.sidecar}/{self.job_id}" if self.sidecar else self.job_id


class Watcher:
    """What the watcher knows: one :class:`JobLine` per job and each instance's state, from events."""

    def __init__(self, sidecar: str = "") -> None:
        self.sidecar = sidecar  # shown with each job and instance when watching several sidecars
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
            self.sidecar,
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
            job_id,
            JobLine(job_id, event["instance"], instance_down=self.down(event["instance"]), sidecar=self.sidecar),
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


class _WatchStream:
    """The :class:`~sidecar.fleetsub.Stream` of ``watch``: a :class:`Watcher` per sidecar, drawn by ``view``."""

    def __init__(
        self,
        ctx: zmq.asyncio.Context,
        view: _Lines | _Bars,
        timeout_s: float,
        several: bool,
        idle_after_jobs: bool,
        curve: ClientCurve | None = None,
    ) -> None:
        self.ctx, self.view, self.timeout_s, self.curve = ctx, view, timeout_s, curve
        self.several, self.idle_after_jobs = several, idle_after_jobs
        self.watchers: dict[str, Watcher] = {}

    async def load(self, member: Member, snap: dict[str, Any]) -> None:
        """A new snapshot of one sidecar; ask ``job`` for what ended meanwhile (7.2 step 5)."""
        watcher = self.watchers.get(member.name)
        if watcher is None:  # its first snapshot
            watcher = self.watchers[member.name] = Watcher(member.name if self.several else "")
            watcher.load_snapshot(snap)
            if not watcher.active and not self.idle_after_jobs:  # jobs that ended before we came count as seen
                listed = await ask(self.ctx, member.router, "jobs", self.timeout_s, self.curve)
                watcher.finished += len(listed["result"]["jobs"])
            self.view.begin(watcher, member.name if self.several else "")
            return
        ended = watcher.unlisted(snap)
        watcher.load_snapshot(snap)
        for name in watcher.instances:
            self.view.instance(name, watcher)
        for line in watcher.jobs.values():
            if line.job_id not in ended:
                self.view.show(line)
        for job_id in ended:
            reply = await ask(self.ctx, member.router, "job", self.timeout_s, self.curve, job_id=job_id)
            if reply["ok"]:
                line = watcher.update(reply["result"])
                if line.state in FINAL_STATES:
                    watcher.finished += 1
                self.view.show(line)

    def apply(self, member: Member, event: dict[str, Any]) -> bool:
        watcher = self.watchers[member.name]
        try:
            line = watcher.feed(event)
        except LookupError:
            return False
        if event["type"] == "instance.status":
            self.view.instance(event["instance"], watcher)
        elif line is not None:
            self.view.show(line)
        return True

    def note(self, member: Member | None, text: str) -> None:
        who = "sidecar" if member is None or not self.several else f"sidecar {member.name}"
        self.view.sidecar(f"{who}: {text}")

    def idle(self, members: int) -> bool:
        """Every sidecar followed, jobs were seen, and none is unfinished."""
        watchers = self.watchers.values()
        finished = sum(w.finished for w in watchers)
        return len(self.watchers) >= members and finished > 0 and not any(w.active for w in watchers)


async def watch(
    router: str,
    pub: str,
    until_idle: bool = False,
    out: Any = None,
    timeout_s: float = 5.0,
    idle_after_jobs: bool = False,
    curve: ClientCurve | None = None,
) -> Watcher:
    """Follow every job of one sidecar until cancelled; with ``until_idle``, until no job is unfinished
    (for a sidecar that never had one, or with ``idle_after_jobs``, once jobs were seen and all ended).

    Raises :class:`NoSidecar` when no sidecar answers within ``timeout_s`` at start.
    """
    watchers = await watch_fleet([router], [pub], until_idle, out, timeout_s, idle_after_jobs, curve)
    return next(iter(watchers.values()))


async def watch_fleet(
    routers: list[str],
    pubs: list[str],
    until_idle: bool = False,
    out: Any = None,
    timeout_s: float = 5.0,
    idle_after_jobs: bool = False,
    curve: ClientCurve | None = None,
) -> dict[str, Watcher]:
    """:func:`watch` for several sidecars (``pubs``: theirs, or one proxy's): their jobs together,
    each sidecar followed by its own snapshot procedure (docs/PROTOCOL.md §7.3). Returns a
    :class:`Watcher` per sidecar name."""
    out = out or sys.stdout
    ctx = zmq.asyncio.Context()
    several = len(set(routers)) > 1
    view: _Lines | _Bars = _Bars(", ".join(routers)) if out.isatty() else _Lines(out, ", ".join(dict.fromkeys(pubs)))
    stream = _WatchStream(ctx, view, timeout_s, several, idle_after_jobs, curve)
    # instance.: heartbeats and instance states; no preview. (the seq gaps they leave are expected)
    topics = (b"job.", b"progress.", b"instance.")
    fleet = FleetSubscriber(ctx, routers, pubs, stream, timeout_s, topics=topics, curve=curve)
    try:
        await fleet.start()
        await fleet.run(lambda: until_idle and fleet.live and stream.idle(len(fleet.members)))
    finally:
        view.stop()
        await fleet.close()
        ctx.term()
    return stream.watchers


class _Lines:
    """One line per change (not a terminal): readable by scripts and tests."""

    def __init__(self, out: Any, pub: str) -> None:
        self.out, self.pub = out, pub
        self.shown: dict[str, str] = {}

    def _print(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def begin(self, watcher: Watcher, sidecar: str) -> None:
        named = f"sidecar {sidecar}, " if sidecar else ""
        self._print(f"watching {self.pub} ({named}run {watcher.run}, seq {watcher.seq})")
        for name in watcher.instances:
            self.instance(name, watcher)
        for line in watcher.jobs.values():
            self.show(line)

    def instance(self, name: str, watcher: Watcher) -> None:
        where = f"{watcher.sidecar}/{name}" if watcher.sidecar else name
        text = f"instance {where}: {watcher.instances.get(name, '?')}"
        if self.shown.get(f"instance {where}") != text:
            self.shown[f"instance {where}"] = text
            self._print(text)
            for line in watcher.of_instance(name):
                self.show(line)

    def show(self, line: JobLine) -> None:
        text = line.text()
        if self.shown.get(line.key) != text:
            self.shown[line.key] = text
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
        self.watchers: dict[str, Watcher] = {}
        self.live = Live(Group(self.header, self.note, self.progress), refresh_per_second=10)
        self.live.start()

    def begin(self, watcher: Watcher, sidecar: str) -> None:
        self.instance("", watcher)
        for line in watcher.jobs.values():
            self.show(line)

    def instance(self, name: str, watcher: Watcher) -> None:
        self.watchers[watcher.sidecar] = watcher
        states = {
            (f"{w.sidecar}/{inst}" if w.sidecar else inst): state
            for w in self.watchers.values()
            for inst, state in w.instances.items()
        }
        self.header.plain = ""
        self.header.append("instances: ", style="bold")
        for n, (inst, state) in enumerate(sorted(states.items())):
            self.header.append(("  " if n else "") + f"{inst} ")
            self.header.append(state, style="green" if state == "connected" else "yellow" if state in UP else "red")
        for line in watcher.jobs.values():
            self.show(line)

    def show(self, line: JobLine) -> None:
        task = self.tasks.get(line.key)
        info = escape(line.info()).replace("(instance down)", "[bold red](instance down)[/]")
        if task is None:
            where = f"{line.sidecar}/{line.instance}" if line.sidecar else line.instance
            label = escape(f"{line.job_id} [{where}]")  # brackets are rich markup otherwise
            self.tasks[line.key] = task = self.progress.add_task(label, total=100, info=info)
        self.progress.update(task, completed=line.percent, info=info)

    def sidecar(self, text: str) -> None:
        self.note.plain = text

    def stop(self) -> None:
        self.live.stop()
