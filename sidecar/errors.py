"""The sidecar's exceptions and the wire error codes.

::

    SidecarError
    ├── ConfigError            bridge.toml or a flag is wrong; the message names the key
    ├── ComfyUnavailable       an instance could not be reached over HTTP
    │   └── AuthRefused        it answered 401 or 403: its credentials are wrong or missing
    ├── ComfyProtocolError     an instance answered something unexpected
    └── RequestError           a request cannot be served; carries a wire ``code``

Messages never carry tracebacks or internals. ``CODES`` is the single table of
wire error codes, mirrored in ``docs/PROTOCOL.md`` (a test keeps them in step).
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "CODES",
    "AuthRefused",
    "FAILURE_CODES",
    "ComfyProtocolError",
    "ComfyUnavailable",
    "ConfigError",
    "RequestError",
    "SidecarError",
    "over_limit",
]

CODES: dict[str, str] = {
    "malformed_request": "the request is not a MessagePack map",
    "unknown_op": "the op is not one the sidecar serves",
    "invalid_request": "a field is missing or has the wrong type",
    "invalid_workflow": "the workflow is not a ComfyUI API-format prompt",
    "unknown_instance": "the named instance is not configured",
    "no_instance": "no instance is connected to take the job",
    "instance_unavailable": "the instance could not be reached, or is not connected",
    "workflow_rejected": "ComfyUI refused the prompt (HTTP 400); details per node",
    "workflow_partially_invalid": "ComfyUI queued only some outputs (node_errors on a 200); removed",
    "comfy_error": "ComfyUI answered with an unexpected status",
    "job_not_found": "no job has that id",
    "job_finished": "the job already reached a final state; nothing to cancel or pause",
    "job_not_paused": "resume of a job that is not paused",
    "job_not_pausable": "the job cannot be paused now: a cancel of it is under way, or the sidecar is still looking"
    " for it in ComfyUI after a restart",
    "internal_error": "the sidecar failed to serve the request; it keeps running",
    "expired": "the request's deadline_ns passed before the sidecar read it; it had no effect",
    "limit_exceeded": "the request is over one of the sidecar's limits (limits.* in bridge.toml); it had no effect",
    "upload_failed": "an input file of the job could not be uploaded to its instance (POST /upload/image)",
}


# ``code`` of a ``job.failed`` event: why a job ended failed (docs/PROTOCOL.md, job.failed).
FAILURE_CODES: dict[str, str] = {
    "execution_error": "a node raised an exception in ComfyUI",
    "interrupted": "ComfyUI interrupted the prompt, and not because of a cancel from this sidecar",
    "lost_on_restart": "ComfyUI lost the prompt (a restart) and it was not resubmitted again",
    "unknown_instance": "the job's instance is no longer configured (after a sidecar restart)",
    "instance_down": "the job's instance stayed unreachable for recovery.failover_after_s and no other instance "
    "was connected to take it",
    "workflow_rejected": CODES["workflow_rejected"],
    "workflow_partially_invalid": CODES["workflow_partially_invalid"],
    "comfy_error": CODES["comfy_error"],
    "instance_unavailable": CODES["instance_unavailable"],
    "internal_error": CODES["internal_error"],
    "upload_failed": CODES["upload_failed"],
}


class SidecarError(Exception):
    """Base of every error the sidecar raises on purpose."""


class ConfigError(SidecarError):
    """The configuration is wrong; the message names the key or flag."""


class ComfyUnavailable(SidecarError):
    """An instance could not be reached (connection refused, timeout)."""


class AuthRefused(ComfyUnavailable):
    """An instance refused the sidecar's credentials (HTTP 401 or 403); the message has no secret."""


class ComfyProtocolError(SidecarError):
    """An instance answered in a way the sidecar does not understand."""


class RequestError(SidecarError):
    """A request cannot be served; ``code`` is one of :data:`CODES`."""

    def __init__(self, code: str, message: str, details: dict[str, Any] | None = None) -> None:
        assert code in CODES, code
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details or {}


def over_limit(key: str, value: int, what: str, **more: Any) -> RequestError:
    """``limit_exceeded`` for a request past ``limits.<key>``: names the limit and its value."""
    return RequestError(
        "limit_exceeded", f"{what}; limits.{key} is {value}", {"limit": f"limits.{key}", "value": value, **more}
    )
