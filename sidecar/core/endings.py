"""How a prompt ended, as its final event's data: from ComfyUI's terminal messages or from its
``/history/<id>`` entry (PROTOCOL.md §3.3).

Pure functions of the job and what ComfyUI said; :class:`~sidecar.core.tracker.InstanceTracker`
keeps the result on the job (``Job.ending``) until the final event is published.
"""

from __future__ import annotations

from typing import Any

from ..protocol import comfy
from ..protocol.events import JobCancelled, JobFailed, JobPaused
from .jobs import SUCCESS, Job

__all__ = ["Ending", "failure", "from_history", "interrupted"]

#: ``SUCCESS``, ``UNTOLD`` (ask the history) or the final event's data
Ending = str | JobFailed | JobCancelled | JobPaused


def failure(msg: comfy.ExecutionError) -> JobFailed:
    """``execution_error``: the node that raised, and what it raised."""
    return JobFailed(
        code="execution_error",
        message=msg.exception_message.strip() or "node raised an exception",
        prompt_id=msg.prompt_id,
        node=msg.node_id,
        node_type=msg.node_type,
        exception_type=msg.exception_type or None,
        traceback=msg.traceback,
    )


def interrupted(
    job: Job | None, prompt_id: str | None, node: str | None, node_type: str | None, by: str = "execution_interrupted"
) -> JobFailed | JobCancelled | JobPaused:
    """An interrupt ends ``job`` as cancelled or paused when this sidecar asked for it, else as failed
    (another client, or a person at ComfyUI's page, interrupted it)."""
    if job is not None and job.cancel_requested_ns is not None:
        return JobCancelled(confirmed_by=by, prompt_id=prompt_id, node=node, node_type=node_type)
    if job is not None and job.pause_requested_ns is not None:
        return JobPaused(confirmed_by=by, prompt_id=prompt_id, node=node, node_type=node_type)
    return JobFailed(
        code="interrupted",
        message="execution was interrupted (not by this sidecar)",
        prompt_id=prompt_id,
        node=node,
        node_type=node_type,
    )


def from_history(job: Job, history: dict[str, Any]) -> Ending:
    """The ending ``job``'s history entry records: its first error or interrupt message, else its
    ``status_str``; ``SUCCESS`` when it shows neither. Any shape is accepted (history is not ours)."""
    raw_status = history.get("status")
    status: dict[str, Any] = raw_status if isinstance(raw_status, dict) else {}
    raw_messages = status.get("messages")
    messages: list[Any] = raw_messages if isinstance(raw_messages, list) else []
    for item in messages:
        if not (isinstance(item, list) and len(item) == 2 and isinstance(item[1], dict)):
            continue
        kind, data = item
        if kind == "execution_error":
            return JobFailed(
                code="execution_error",
                message=str(data.get("exception_message", "")).strip() or "node raised an exception",
                prompt_id=job.prompt_id,
                node=data.get("node_id"),
                node_type=data.get("node_type"),
                exception_type=data.get("exception_type") or None,
                traceback=[str(t) for t in data.get("traceback") or ()],
            )
        if kind == "execution_interrupted":
            return interrupted(job, job.prompt_id, data.get("node_id"), data.get("node_type"), by="history")
    if status.get("status_str") == "error":
        return JobFailed(code="execution_error", message="ComfyUI reports the prompt failed", prompt_id=job.prompt_id)
    return SUCCESS
