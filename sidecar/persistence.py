"""SHELL: what the sidecar keeps across restarts, between its live objects and the store's rows.

Rows are written on state transitions only: :data:`PERSISTED` lists the event
types after which a job's row is saved; an ``instance.status`` event saves the
instance's row. At node boundaries (:data:`NODE_BOUNDARIES`) and at a graceful
shutdown only a job's percentage and progress nodes are saved (:func:`progress_of`),
never per progress frame. On start, unfinished jobs come back as live :class:`Job`
objects with their progress plan (nodes that finished count as done, nothing below
the stored percentage is published: PROTOCOL.md §6.5), and each instance reuses its
stored clientId, so ComfyUI keeps routing that prompt's messages to it (PROTOCOL.md §8).
A finished job comes back with the percentage it last published (100.0 if completed).

A job's file outputs (``Job.stored``) are saved one entry at a time, when the entry is offered
(``pending``) and when its fetch ends (:func:`stored_position` names the row), and come back
with the job: a copy made before a restart keeps its ``ref`` and ``sha256`` and is not fetched
again; an entry still ``pending`` is fetched again by the new run (``OutputFetcher.resume``).

Node costs (how long nodes of each class took on each instance, which the progress
percentage is weighted by) are loaded into each instance's tracker at start
(:func:`node_costs_from_rows`) and saved as they are learned (:func:`node_cost_rows`).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import msgspec

from .core.costs import NodeCost, NodeCosts
from .core.jobs import Job
from .core.progress import PlanNodes, ProgressPlan
from .protocol.events import JobFailed, StoredOutput
from .store import InstanceRow, JobRow, NodeCostRow

if TYPE_CHECKING:
    from .instance import Instance

__all__ = [
    "NODE_BOUNDARIES",
    "PERSISTED",
    "instance_row",
    "job_from_row",
    "job_row",
    "node_cost_rows",
    "node_costs_from_rows",
    "progress_of",
    "stored_position",
]

logger = logging.getLogger(__name__)

PERSISTED = frozenset(
    {
        "job.accepted",
        "job.queued",
        "job.started",
        "job.completed",
        "job.failed",
        "job.cancelled",
        "job.resubmitted",
        "job.paused",
        "job.resumed",
    }
)
# After these, a job's percentage and progress nodes are saved: a node started (the one
# before it finished), an output node finished, nodes were served from cache.
NODE_BOUNDARIES = frozenset({"node.executing", "node.output", "node.cached"})


def progress_of(job: Job) -> tuple[float, dict[str, Any]]:
    """``(percent, progress)`` for :meth:`Store.save_progress`: what a restart must not forget."""
    nodes = job.plan.nodes()
    return job.plan.percent, {
        "will_run": nodes.will_run,
        "done": nodes.done,
        "cached": nodes.cached,
        "current": nodes.current,
    }


def job_row(job: Job) -> JobRow:
    percent, progress = progress_of(job)
    error: dict[str, Any] | None = msgspec.to_builtins(job.error) if job.error is not None else None
    return JobRow(
        job_id=job.job_id,
        instance=job.instance,
        prompt_id=job.prompt_id,
        state=job.state,
        workflow=job.workflow,
        client_data=job.client_data,
        outputs=job.outputs,
        error=error,
        attempts=job.attempts,
        number=job.number,
        created_ns=job.created_ns,
        updated_ns=job.updated_ns,
        percent=percent,
        cancel_requested_ns=job.cancel_requested_ns,
        progress=progress,
        pause_requested_ns=job.pause_requested_ns,
    )


def job_from_row(row: JobRow) -> Job:
    job = Job(row.job_id, row.instance, row.workflow, row.client_data, row.created_ns)
    job.state = row.state
    job.prompt_id = row.prompt_id
    job.number = row.number
    job.outputs = dict(row.outputs)
    job.attempts = row.attempts
    job.updated_ns = row.updated_ns
    job.cancel_requested_ns = row.cancel_requested_ns
    job.pause_requested_ns = row.pause_requested_ns
    nodes = _plan_nodes(row)
    job.plan = ProgressPlan.resume(nodes, 100.0 if row.state == "completed" else row.percent)
    if job.active and job.state != "paused":
        job.current_node = nodes.current
    if row.error is not None:
        job.error = msgspec.convert(row.error, JobFailed)
    job.stored = [_stored_entry(row.job_id, n, entry) for n, entry in enumerate(row.stored)]
    return job


def stored_position(job: Job, entry: StoredOutput) -> int | None:
    """Where ``entry`` is in ``job.stored`` (its row in the state file), None if it is not there;
    the newest entries are looked at first."""
    for n in range(len(job.stored) - 1, -1, -1):
        if job.stored[n] is entry:
            return n
    return None


def _stored_entry(job_id: str, n: int, entry: dict[str, Any]) -> StoredOutput:
    """A saved file output; one unreadable comes back ``failed`` (it keeps its place: rows are named by place)."""
    try:
        return msgspec.convert(entry, StoredOutput)
    except msgspec.ValidationError as exc:
        logger.warning("job %r: stored output %d unreadable (%s)", job_id, n, exc)
        return StoredOutput(
            node="", filename="", subfolder="", type="", state="failed", error="unreadable in the state file"
        )


def _plan_nodes(row: JobRow) -> PlanNodes:
    """The stored node sets; none (a row of an older sidecar, or unreadable): empty."""
    try:
        return msgspec.convert(row.progress or {}, _StoredNodes).plan()
    except msgspec.ValidationError as exc:
        logger.warning("job %r: stored progress nodes unreadable (%s); its plan is rebuilt", row.job_id, exc)
        return PlanNodes((), (), (), None)


class _StoredNodes(msgspec.Struct):
    will_run: tuple[str, ...] = ()
    done: tuple[str, ...] = ()
    cached: tuple[str, ...] = ()
    current: str | None = None

    def plan(self) -> PlanNodes:
        return PlanNodes(self.will_run, self.done, self.cached, self.current)


def instance_row(inst: Instance) -> InstanceRow:
    return InstanceRow(
        name=inst.name,
        url=inst.url,
        status=inst.state,
        last_connected_ns=inst.last_connected_ns,
        last_error=inst.last_error,
        version=inst.caps.version,
        client_id=inst.client_id,
    )


def node_costs_from_rows(rows: list[NodeCostRow]) -> dict[str, NodeCosts]:
    """Each instance's learned node costs, as the state file keeps them."""
    by_instance: dict[str, dict[str, NodeCost]] = {}
    for row in rows:
        by_instance.setdefault(row.instance, {})[row.class_type] = NodeCost(
            row.seconds, row.step_s, row.steps, row.runs
        )
    return {name: NodeCosts(learned) for name, learned in by_instance.items()}


def node_cost_rows(instance: str, changed: dict[str, NodeCost], now_ns: int) -> list[NodeCostRow]:
    return [
        NodeCostRow(instance, class_type, cost.seconds, cost.step_s, cost.steps, cost.runs, now_ns)
        for class_type, cost in changed.items()
    ]
