"""SHELL: what the sidecar keeps across restarts, between its live objects and the store's rows.

Rows are written on state transitions only: :data:`PERSISTED` lists the event
types after which a job's row is saved; an ``instance.status`` event saves the
instance's row. On start, unfinished jobs come back as live :class:`Job` objects
and each instance reuses its stored clientId, so ComfyUI keeps routing that
prompt's messages to it (PROTOCOL.md §8).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec

from .core.jobs import Job
from .protocol.events import JobFailed
from .store import InstanceRow, JobRow

if TYPE_CHECKING:
    from .instance import Instance

__all__ = ["PERSISTED", "instance_row", "job_from_row", "job_row"]

PERSISTED = frozenset(
    {
        "job.accepted",
        "job.queued",
        "job.started",
        "job.completed",
        "job.failed",
        "job.cancelled",
        "job.resubmitted",
    }
)


def job_row(job: Job) -> JobRow:
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
        percent=job.plan.percent,
        cancel_requested_ns=job.cancel_requested_ns,
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
    job.restored_percent = row.percent
    if row.error is not None:
        job.error = msgspec.convert(row.error, JobFailed)
    return job


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
