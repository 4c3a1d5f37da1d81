"""SHELL: ``comfy-bridge watch``: live progress of every job, read from the PUB socket.

A subscriber written the way docs/PROTOCOL.md §7 asks: subscribe first, then ask
``snapshot``, drop events older than the snapshot's ``seq``, and ask again when
``run`` changes. It skips the ``preview`` family, so gaps in ``seq`` are expected and
ignored; a gap in a job's ``job_seq`` means it lost events (it fell behind, §2): it
asks again, and asks ``job`` for the jobs the new snapshot no longer lists. On a
terminal it draws one rich progress bar per job; elsewhere it prints one line per
change, so its output can be read by scripts and tests.
"""

from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass
from typing import Any

import msgspec
import zmq
import zmq.asyncio

__all__ = ["JobLine", "Watcher", "watch"]

FINAL = {"job.completed": "completed", "job.failed": "failed", "job.cancelled": "cancelled"}


@dataclass
class JobLine:
    job_id: str
    instance: str
    state: str = "accepted"
    percent: float = 0.0
    node: str = ""
    job_seq: int = 0  # the last job_seq applied (docs/PROTOCOL.md §7.2)

    def text(self) -> str:
        node = f"  node {self.node}" if self.node and self.state == "started" else ""
        return f"{self.job_id}  [{self.instance}]  {self.state:<9} {self.percent:5.1f}%{node}"


class Watcher:
    """What the watcher knows: one :class:`JobLine` per job, kept up to date from events."""

    def __init__(self) -> None:
        self.jobs: dict[str, JobLine] = {}
        self.run: str | None = None
        self.seq = 0
        self.finished = 0

    def load_snapshot(self, snap: dict[str, Any]) -> None:
        self.run, self.seq = snap["run"], snap["seq"]
        for job in snap["jobs"]:
            self.update(job)

    def update(self, job: dict[str, Any]) -> JobLine:
        """Take a JobView (from ``snapshot`` or ``job``) as the job's line."""
        line = self.jobs[job["job_id"]] = JobLine(
            job["job_id"],
            job["instance"],
            job["state"],
            job["percent"],
            job["current_node"] or "",
            job.get("job_seq", 0),
        )
        return line

    def unlisted(self, snap: dict[str, Any]) -> list[str]:
        """Jobs shown as unfinished that ``snap`` does not list: they ended meanwhile (ask ``job``)."""
        listed = {job["job_id"] for job in snap["jobs"]}
        return [j for j, line in self.jobs.items() if j not in listed and line.state not in FINAL.values()]

    def feed(self, event: dict[str, Any]) -> JobLine | None:
        """Apply one event; returns the job line it changed, if any."""
        if event["run"] != self.run:
            raise LookupError("a new run: take a snapshot")
        if event["seq"] <= self.seq:
            return None
        self.seq = event["seq"]
        job_id = event["job_id"]
        if job_id is None:
            return None
        line = self.jobs.setdefault(job_id, JobLine(job_id, event["instance"]))
        job_seq = event.get("job_seq")
        if job_seq is not None:
            if job_seq > line.job_seq + 1:
                raise LookupError(f"job {job_id}: job_seq {job_seq} after {line.job_seq}: take a snapshot")
            line.job_seq = job_seq
        kind, data = event["type"], event["data"]
        if kind in ("job.queued", "job.started"):
            line.state = kind.partition(".")[2]
        elif kind == "job.progress":
            line.percent = data["percent"]
        elif kind == "node.executing":
            line.node = data.get("title") or data.get("class_type") or data["node"]
        elif kind in FINAL:
            line.state = FINAL[kind]
            self.finished += 1
        else:
            return None
        return line

    @property
    def active(self) -> int:
        return sum(1 for line in self.jobs.values() if line.state not in FINAL.values())


async def _request(dealer: zmq.asyncio.Socket, op: str, timeout_s: float = 10.0, **fields: Any) -> dict[str, Any]:
    await dealer.send(msgspec.msgpack.encode({"op": op, "id": op, **fields}))
    async with asyncio.timeout(timeout_s):
        reply: dict[str, Any] = msgspec.msgpack.decode(await dealer.recv())
    return reply


async def watch(router: str, pub: str, until_idle: bool = False, out: Any = None) -> Watcher:
    """Follow every job until cancelled (or, with ``until_idle``, until jobs were seen and all ended)."""
    out = out or sys.stdout
    ctx = zmq.asyncio.Context()
    sub, dealer = ctx.socket(zmq.SUB), ctx.socket(zmq.DEALER)
    for topic in (b"job.", b"progress.", b"instance."):
        sub.setsockopt(zmq.SUBSCRIBE, topic)
    sub.connect(pub)
    dealer.connect(router)
    watcher = Watcher()
    live = _Bars() if out.isatty() else None
    try:
        await sub.recv_multipart()  # subscribed: from here on nothing is missed
        watcher.load_snapshot((await _request(dealer, "snapshot"))["result"])
        if live is None:
            print(f"watching {pub} (run {watcher.run}, seq {watcher.seq})", file=out, flush=True)
        for known in watcher.jobs.values():
            _show(known, out, live)
        while not (until_idle and watcher.finished and not watcher.active):
            event = msgspec.msgpack.decode((await sub.recv_multipart())[1])
            try:
                line = watcher.feed(event)
            except LookupError:
                snap = (await _request(dealer, "snapshot"))["result"]
                ended = watcher.unlisted(snap)
                watcher.load_snapshot(snap)
                for job_id in ended:
                    reply = await _request(dealer, "job", job_id=job_id)
                    if reply["ok"]:
                        _show(watcher.update(reply["result"]), out, live)
                        watcher.finished += 1
                continue
            if line is not None:
                _show(line, out, live)
    finally:
        if live is not None:
            live.stop()
        sub.close(0)
        dealer.close(0)
        ctx.term()
    return watcher


def _show(line: JobLine, out: Any, live: _Bars | None) -> None:
    if live is not None:
        live.update(line)
    else:
        print(line.text(), file=out, flush=True)


def escape(text: str) -> str:
    from rich.markup import escape as rich_escape

    return rich_escape(text)


class _Bars:
    """rich progress bars, one per job (only on a terminal)."""

    def __init__(self) -> None:
        from rich.progress import BarColumn, Progress, TextColumn

        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[info]}"))
        self.tasks: dict[str, Any] = {}
        self.progress.start()

    def update(self, line: JobLine) -> None:
        task = self.tasks.get(line.job_id)
        info = f"{line.state} {line.percent:5.1f}%" + (f"  {line.node}" if line.state == "started" else "")
        if task is None:
            label = escape(f"{line.job_id} [{line.instance}]")  # brackets are rich markup otherwise
            self.tasks[line.job_id] = self.progress.add_task(label, total=100, info=escape(info))
            task = self.tasks[line.job_id]
        self.progress.update(task, completed=line.percent, info=escape(info))

    def stop(self) -> None:
        self.progress.stop()
