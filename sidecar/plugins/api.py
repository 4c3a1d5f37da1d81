"""The objects plugins return: :class:`PreviewStore`, :class:`OutputStore` and :class:`ProtocolAdapter`.

Typed ``Protocol`` classes (structural: a plugin need not import or subclass them), plus
the plain values they receive: :class:`PreviewItem`, :class:`OutputItem` and :class:`ServerInfo`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import msgspec

if TYPE_CHECKING:
    from ..core.submission import Queued, Rejected
    from ..core.versions import Capabilities

__all__ = ["OutputItem", "OutputStore", "PreviewItem", "PreviewStore", "ProtocolAdapter", "ServerInfo"]


class PreviewItem(msgspec.Struct, frozen=True):
    """One preview image of one job, as the store receives it."""

    instance: str
    job_id: str
    node: str | None
    index: int  # 0, 1, 2 ... per job, in arrival order
    format: str  # "jpeg", "png", "webp"
    image: bytes | memoryview
    ts_ns: int  # when the frame arrived


@runtime_checkable
class PreviewStore(Protocol):
    """Where preview images go. One store serves the whole sidecar.

    ``inline`` True: the image bytes travel as the extra frame of the ``preview`` event.
    :meth:`ref` runs on the read loop and must not block: it only names where the image
    will be; :meth:`put` does the writing later, from a bounded queue, off the read loop.
    """

    name: str
    inline: bool

    def ref(self, item: PreviewItem) -> str | None:
        """The reference the ``preview`` event carries (a path, a URL), or None."""
        ...

    async def put(self, item: PreviewItem, ref: str | None) -> None:
        """Store the image (called from the preview writer task, one at a time)."""
        ...

    async def job_finished(self, job_id: str) -> None:
        """The job reached its final state (retention can act on it)."""
        ...

    async def aclose(self) -> None:
        """Flush and release everything; called once at shutdown."""
        ...


class OutputItem(msgspec.Struct, frozen=True):
    """One file output of one job, fetched from ComfyUI, as the output store receives it."""

    instance: str  # the instance it was fetched from
    job_id: str
    prompt_id: str | None
    node: str
    filename: str  # ComfyUI's entry: {filename, subfolder, type}
    subfolder: str
    type: str  # "output", "temp" or "input"
    content_type: str | None  # as ComfyUI's /view answered
    size_bytes: int
    sha256: str  # hex digest of the bytes
    ts_ns: int  # when the executed frame arrived


@runtime_checkable
class OutputStore(Protocol):
    """Where copies of jobs' file outputs go. One store serves the whole sidecar.

    :meth:`put` is called from the output fetcher's workers (at most ``outputs.concurrency``
    at a time, never on the read loop) with the whole file, and returns the reference the
    events carry. A store named ``none`` turns fetching off.
    """

    name: str

    async def put(self, item: OutputItem, data: bytes) -> str:
        """Keep ``data``; return where it is (a path, a URL). Raise to report a failure."""
        ...

    async def job_finished(self, job_id: str) -> None:
        """The job's final event was published (retention can act on it)."""
        ...

    async def aclose(self) -> None:
        """Flush and release everything; called once at shutdown."""
        ...


class ServerInfo(msgspec.Struct, frozen=True):
    """What a ComfyUI server has shown on this connection; adapters are chosen from it."""

    version: str | None  # /system_stats' comfyui_version (older servers, e.g. 0.0.2, report none)
    features: bool  # GET /features answered 200
    feature_flags_reply: bool  # the WebSocket feature-flags handshake was answered
    jobs_cancel: bool  # POST /api/jobs/{id}/cancel answered the probe
    system_stats: Any = None
    # A server without a version sent a message first sent by this release (see first_to_know)
    min_version: tuple[int, int, int] | None = None


@runtime_checkable
class ProtocolAdapter(Protocol):
    """Translates one generation of ComfyUI to the sidecar's model. Pure: no I/O.

    ``since`` is the first ComfyUI version the adapter is for; the sidecar picks, among
    adapters whose :meth:`accepts` is true, the one with the highest ``since`` not above
    the server's version.
    """

    name: str
    since: tuple[int, int, int]

    def accepts(self, info: ServerInfo) -> bool:
        """Whether this adapter can serve that server at all (e.g. a fork's marker)."""
        ...

    def capabilities(self, info: ServerInfo) -> Capabilities:
        """How to submit, cancel and detect the end of a job on that server."""
        ...

    def message_types(self) -> dict[str, type[msgspec.Struct]]:
        """The WebSocket message types to decode, by ``type``; others decode as Unknown."""
        ...

    def read_prompt_response(self, status: int, body: Any, accept_partial: bool) -> Queued | Rejected:
        """ComfyUI's answer to ``POST /prompt``, normalised."""
        ...
