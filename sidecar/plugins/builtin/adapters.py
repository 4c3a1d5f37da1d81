"""Built-in protocol adapters: one per ComfyUI generation boundary of PROTOCOL.md §10.

A boundary gets an adapter only when the sidecar does something different past it:

| adapter | since | what the sidecar does differently from there on |
|---|---|---|
| ``comfyui-0.0`` | 0.0.0 | (oldest) no ``execution_success``: ``executing`` with node null ends a prompt as a success |
| ``comfyui-0.0.3`` | 0.0.3 | decodes ``execution_success``; a bare ``executing`` null leaves the outcome to history |
| ``comfyui-0.3.45`` | 0.3.45 | knows ``progress_state``; posts its own prompt id |
| ``comfyui-0.3.58`` | 0.3.58 | cancels a running prompt with a targeted ``POST /interrupt {"prompt_id"}`` |
| ``comfyui-0.7`` | 0.7.0 | probes for the per-job cancel endpoint of ``/api/jobs`` |

The execution rewrite of 0.1.0 (``display_node``, history ``meta``) has no adapter of
its own: ``display_node`` is read wherever it is present and ``meta`` is not read.
Newer servers are served by the newest adapter through feature detection (the
cancel endpoint probe); one newer than the last recorded version (0.12.1) is logged
as such.
"""

from __future__ import annotations

from typing import Any

import msgspec

from ...core.submission import Queued, Rejected, read_prompt_response
from ...core.versions import Capabilities
from ...protocol.comfy import TEXT_TYPES
from .. import hookimpl
from ..api import ProtocolAdapter, ServerInfo

__all__ = ["BUILTIN_ADAPTERS", "GenerationAdapter", "bridge_protocol_adapters"]

RECORDED_NEWEST = (0, 12, 1)

# The boundaries of PROTOCOL.md §10: the first release with each change.
EXECUTION_SUCCESS = (0, 0, 3)
CLIENT_PROMPT_ID = (0, 3, 45)  # also progress_state, the feature-flags handshake, type-4 previews
TARGETED_INTERRUPT = (0, 3, 58)
JOBS_API = (0, 7, 0)


class GenerationAdapter:
    """An adapter for one generation of stock ComfyUI: what it can do follows from ``since``."""

    def __init__(self, name: str, since: tuple[int, int, int], verified: tuple[int, int, int] | None = None) -> None:
        self.name = name
        self.since = since
        self.verified = verified
        self.execution_success = since >= EXECUTION_SUCCESS
        self.client_prompt_id = since >= CLIENT_PROMPT_ID
        self.targeted_interrupt = since >= TARGETED_INTERRUPT
        self.jobs_api = since >= JOBS_API
        types = dict(TEXT_TYPES)
        if not self.client_prompt_id:  # never sent before v0.3.45; feature_flags stays, it is how new servers show
            types.pop("progress_state", None)
        if not self.execution_success:
            types.pop("execution_success", None)
        self._types = types

    def __repr__(self) -> str:
        return f"<GenerationAdapter {self.name} since {'.'.join(map(str, self.since))}>"

    def accepts(self, info: ServerInfo) -> bool:
        return True

    def capabilities(self, info: ServerInfo) -> Capabilities:
        return Capabilities(
            version=info.version,
            execution_success=self.execution_success,
            client_prompt_id=self.client_prompt_id,
            targeted_interrupt=self.targeted_interrupt,
            jobs_api=self.jobs_api,
            jobs_cancel=self.jobs_api and info.jobs_cancel,
        )

    def message_types(self) -> dict[str, type[msgspec.Struct]]:
        return self._types

    def read_prompt_response(self, status: int, body: Any, accept_partial: bool) -> Queued | Rejected:
        return read_prompt_response(status, body, accept_partial)


BUILTIN_ADAPTERS: tuple[GenerationAdapter, ...] = (
    GenerationAdapter("comfyui-0.0", (0, 0, 0)),
    GenerationAdapter("comfyui-0.0.3", EXECUTION_SUCCESS),
    GenerationAdapter("comfyui-0.3.45", CLIENT_PROMPT_ID),
    GenerationAdapter("comfyui-0.3.58", TARGETED_INTERRUPT),
    GenerationAdapter("comfyui-0.7", JOBS_API, verified=RECORDED_NEWEST),
)


@hookimpl
def bridge_protocol_adapters() -> list[ProtocolAdapter]:
    return list(BUILTIN_ADAPTERS)
