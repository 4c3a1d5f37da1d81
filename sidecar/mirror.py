"""A client's copy of the sidecar's unfinished jobs, kept as docs/PROTOCOL.md §7.2 says.

Loaded from a ``snapshot`` result, then fed every event in ``seq`` order. :meth:`Mirror.apply`
answers False when the stream shows that events were lost (a new ``run``, a gap in ``seq``, or a
gap in a job's ``job_seq``): the client then takes a new snapshot. Used by the tests and the
benchmarks that check the snapshot procedure, and usable by any Python client.

:class:`FleetMirror` follows several sidecars on one SUB (docs/PROTOCOL.md §7.3): one
:class:`Mirror` per sidecar name, so ``seq`` is kept per (``sidecar``, ``run``) and a loss or a
restart of one sidecar calls for a snapshot of that sidecar only.
"""

from __future__ import annotations

from typing import Any

__all__ = ["FINAL", "FleetMirror", "Mirror", "sidecar_of"]

FINAL = {"job.completed": "completed", "job.failed": "failed", "job.cancelled": "cancelled"}


class Mirror:
    """JobView maps of the unfinished jobs the last snapshot listed, kept up to date by events."""

    def __init__(self) -> None:
        self.run: str | None = None
        self.next_seq = 0
        self.jobs: dict[str, dict[str, Any]] = {}  # JobView maps, by job id
        self.ended: set[str] = set()  # jobs whose final event was applied since the snapshot

    def load(self, snapshot: dict[str, Any]) -> None:
        """Start again from a ``snapshot`` result."""
        self.run, self.next_seq = snapshot["run"], snapshot["seq"] + 1
        self.jobs = {view["job_id"]: dict(view) for view in snapshot["jobs"]}
        self.ended = set()

    def apply(self, event: dict[str, Any]) -> bool:
        """Apply one event envelope; False when events were lost (snapshot again)."""
        if event["run"] != self.run or event["seq"] > self.next_seq:
            return False
        if event["seq"] < self.next_seq:
            return True  # already reflected by the snapshot
        self.next_seq += 1
        view = self.jobs.get(event["job_id"] or "")
        if view is None:
            return True  # not a job the snapshot listed (a new job starts with job.accepted)
        kind, data = event["type"], event["data"]
        job_seq = event.get("job_seq")
        if job_seq is not None:
            if job_seq != view.get("job_seq", 0) + 1:
                return False
            view["job_seq"] = job_seq
        if kind in ("job.queued", "job.started") or kind in FINAL:
            view["state"] = FINAL.get(kind) or kind.partition(".")[2]
            view["updated_ns"] = event["ts"]
        if kind == "job.queued":
            view["prompt_id"] = data["prompt_id"]
        elif kind == "node.executing":
            view["current_node"], view["current_class"] = data["node"], data.get("class_type")
        elif kind == "job.progress":
            view["percent"] = data["percent"]
        elif kind == "node.output":
            view["outputs"][data["node"]] = data["output"]
        elif kind in FINAL:
            view["outputs"], view["current_node"], view["current_class"] = data["outputs"], None, None
            if kind == "job.failed":
                view["error"] = data
            self.ended.add(event["job_id"])
        return True


def sidecar_of(message: dict[str, Any]) -> str:
    """The ``sidecar`` of an envelope or a snapshot; ``""`` from a sidecar older than the key."""
    name = message.get("sidecar", "")
    return name if isinstance(name, str) else ""


class FleetMirror:
    """One :class:`Mirror` per sidecar: events and snapshots are filed by their ``sidecar`` key."""

    def __init__(self) -> None:
        self.sidecars: dict[str, Mirror] = {}

    def load(self, snapshot: dict[str, Any]) -> str:
        """Start that sidecar's mirror again from its ``snapshot`` result; returns the sidecar's name."""
        name = sidecar_of(snapshot)
        self.sidecars.setdefault(name, Mirror()).load(snapshot)
        return name

    def apply(self, event: dict[str, Any]) -> bool:
        """Apply one event to its sidecar's mirror; False when that sidecar needs a snapshot (events
        lost, a new ``run``, or a sidecar not loaded yet). The other sidecars are not affected."""
        mirror = self.sidecars.get(sidecar_of(event))
        return mirror is not None and mirror.apply(event)

    @property
    def jobs(self) -> dict[tuple[str, str], dict[str, Any]]:
        """Every unfinished job of every sidecar, by (sidecar, job id)."""
        return {(name, job_id): view for name, m in self.sidecars.items() for job_id, view in m.jobs.items()}
