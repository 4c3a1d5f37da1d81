"""ComfyUI WebSocket frames -> typed messages.

Pure: bytes in, values out; no I/O, no clock. Decoding never raises: a frame that
cannot be understood becomes :class:`Malformed` (it was broken) or :class:`Unknown`
(it was well formed, but of a type this decoder does not know), so that the read
loop of an instance can count it and carry on.

Text frames are decoded in two stages (STYLE.md §11): an :class:`Envelope` whose
``data`` stays raw, then the Struct for that ``type``, with one reused
``msgspec.json.Decoder`` per type. Binary frames are ``u32`` big-endian event type
followed by a payload (PROTOCOL.md §3.4); image bytes are returned as a
``memoryview`` into the frame, so nothing is copied.

A type the reader does not want decoded right now (``progress_state``, unless node
state is wanted: see :class:`Decoder`) is *skipped*: recognised by its first bytes
and returned as the shared :data:`SKIPPED` value, without parsing the rest.

ComfyUI adds fields between versions, so message Structs never forbid unknown
fields and every field that some recorded version omits has a default.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import msgspec

__all__ = [
    "BINARY_PREVIEW_IMAGE",
    "BINARY_PREVIEW_WITH_METADATA",
    "BINARY_TEXT",
    "ComfyMessage",
    "Decoder",
    "Envelope",
    "Executed",
    "Executing",
    "ExecutionCached",
    "ExecutionError",
    "ExecutionInterrupted",
    "ExecutionStart",
    "ExecutionSuccess",
    "FeatureFlags",
    "Malformed",
    "NodeProgressState",
    "PreviewImage",
    "PreviewMetadata",
    "Progress",
    "ProgressState",
    "ProgressText",
    "SKIPPED",
    "Skipped",
    "Status",
    "TEXT_TYPES",
    "Unknown",
    "decode_frame",
]

BINARY_PREVIEW_IMAGE = 1
BINARY_TEXT = 3
BINARY_PREVIEW_WITH_METADATA = 4

IMAGE_FORMATS = {1: "jpeg", 2: "png"}
MIME_FORMATS = {"image/jpeg": "jpeg", "image/png": "png", "image/webp": "webp"}


# Public: text messages ----------------------------------------------------------------


class Envelope(msgspec.Struct):
    """Stage one of a text frame: the type, and the data left undecoded."""

    type: str
    data: msgspec.Raw = msgspec.Raw(b"{}")


class ExecInfo(msgspec.Struct):
    queue_remaining: int = 0


class StatusBody(msgspec.Struct):
    exec_info: ExecInfo = msgspec.field(default_factory=ExecInfo)


class Status(msgspec.Struct):
    """Queue length; broadcast on changes, and sent on connect with ``sid``."""

    status: StatusBody = msgspec.field(default_factory=StatusBody)
    sid: str | None = None


class ExecutionStart(msgspec.Struct):
    prompt_id: str
    timestamp: int | None = None


class ExecutionCached(msgspec.Struct):
    nodes: list[str]
    prompt_id: str
    timestamp: int | None = None


class Executing(msgspec.Struct):
    """``node`` None means the prompt ended (any outcome).

    After a reconnect with the same clientId, ComfyUI sends one ``executing`` with
    neither ``prompt_id`` nor ``display_node`` (PROTOCOL.md §8).
    """

    node: str | None
    prompt_id: str | None = None
    display_node: str | None = None


class Progress(msgspec.Struct):
    value: int | float
    max: int | float
    prompt_id: str | None = None
    node: str | None = None


class NodeProgressState(msgspec.Struct):
    value: int | float = 0
    max: int | float = 1
    state: str = ""
    node_id: str | None = None
    display_node_id: str | None = None
    parent_node_id: str | None = None
    real_node_id: str | None = None


class ProgressState(msgspec.Struct):
    prompt_id: str
    nodes: dict[str, NodeProgressState]


class Executed(msgspec.Struct):
    node: str
    output: dict[str, Any] | None
    prompt_id: str | None = None
    display_node: str | None = None


class ExecutionSuccess(msgspec.Struct):
    prompt_id: str
    timestamp: int | None = None


class ExecutionError(msgspec.Struct):
    prompt_id: str
    node_id: str | None = None
    node_type: str | None = None
    executed: list[str] = []
    exception_message: str = ""
    exception_type: str = ""
    traceback: list[str] = []
    current_inputs: Any = None
    current_outputs: Any = None
    timestamp: int | None = None


class ExecutionInterrupted(msgspec.Struct):
    prompt_id: str
    node_id: str | None = None
    node_type: str | None = None
    executed: list[str] = []
    timestamp: int | None = None


class FeatureFlags(msgspec.Struct):
    """The server's reply to the feature-flags handshake (v0.3.45 and newer)."""

    supports_preview_metadata: bool = False
    max_upload_size: int | None = None
    extension: dict[str, Any] = {}


# Public: binary frames ----------------------------------------------------------------


class PreviewImage(msgspec.Struct):
    """Binary type 1: an image with no prompt or node id (attribute it yourself)."""

    format: str
    image: memoryview


class PreviewMetadata(msgspec.Struct):
    node_id: str
    prompt_id: str
    image_type: str = "image/jpeg"
    display_node_id: str | None = None
    parent_node_id: str | None = None
    real_node_id: str | None = None


class PreviewWithMetadata(msgspec.Struct):
    """Binary type 4: metadata JSON (node, prompt, mime type) then the image."""

    metadata: PreviewMetadata
    format: str
    image: memoryview


class ProgressText(msgspec.Struct):
    """Binary type 3: a node's progress text."""

    node_id: str
    text: str


# Public: what could not be decoded ------------------------------------------------------


class Unknown(msgspec.Struct):
    """A well-formed frame of a type this decoder does not know."""

    type: str


class Malformed(msgspec.Struct):
    """A frame that could not be decoded; ``type`` is None when even that was unreadable."""

    type: str | None
    reason: str


class Skipped(msgspec.Struct, frozen=True):
    """A frame of a known type that the decoder was told to skip (not parsed, not counted)."""


SKIPPED = Skipped()


ComfyMessage = (
    Status
    | ExecutionStart
    | ExecutionCached
    | Executing
    | Progress
    | ProgressState
    | Executed
    | ExecutionSuccess
    | ExecutionError
    | ExecutionInterrupted
    | FeatureFlags
    | PreviewImage
    | PreviewWithMetadata
    | ProgressText
    | Unknown
    | Malformed
    | Skipped
)

TEXT_TYPES: dict[str, type[msgspec.Struct]] = {
    "status": Status,
    "execution_start": ExecutionStart,
    "execution_cached": ExecutionCached,
    "executing": Executing,
    "progress": Progress,
    "progress_state": ProgressState,
    "executed": Executed,
    "execution_success": ExecutionSuccess,
    "execution_error": ExecutionError,
    "execution_interrupted": ExecutionInterrupted,
    "feature_flags": FeatureFlags,
}


# Public: the decoder -------------------------------------------------------------------


class Decoder:
    """Decodes ComfyUI frames; build one per connection and reuse it.

    ``types`` maps a text message type to its Struct; a version adapter may pass a
    different table (a message it ignores can be left out, and then decodes as
    :class:`Unknown`). ``skip`` names known types to skip cheaply: a text frame that
    starts as ComfyUI writes that type (``{"type": "<name>"``) is returned as
    :data:`SKIPPED` without being parsed, and one written otherwise is skipped after
    its envelope. :meth:`configure` replaces both in place, so a bound ``decode``
    method sees the new tables with the very next frame. ``decode_text`` and
    ``decode_binary`` never raise.
    """

    def __init__(self, types: dict[str, type[msgspec.Struct]] | None = None, skip: Collection[str] = ()) -> None:
        self._envelope = msgspec.json.Decoder(Envelope)
        self._metadata = msgspec.json.Decoder(PreviewMetadata)
        self._built: dict[type[msgspec.Struct], msgspec.json.Decoder[Any]] = {}
        self._decoders: dict[str, msgspec.json.Decoder[Any]] = {}
        self._skip: frozenset[str] = frozenset()
        self._skip_prefixes: tuple[bytes, ...] = ()
        self.configure(TEXT_TYPES if types is None else types, skip)

    # Public

    def configure(self, types: dict[str, type[msgspec.Struct]], skip: Collection[str] = ()) -> None:
        """Decode ``types`` from now on and skip ``skip`` (per-type decoders are built once and kept)."""
        built = self._built
        for cls in types.values():
            if cls not in built:
                built[cls] = msgspec.json.Decoder(cls)
        self._decoders = {name: built[cls] for name, cls in types.items() if name not in skip}
        self._skip = frozenset(skip)
        self._skip_prefixes = tuple(b'{"type": "' + name.encode() + b'"' for name in sorted(self._skip))

    @property
    def skipped_types(self) -> frozenset[str]:
        return self._skip

    def decode(self, frame: bytes, *, is_text: bool | None = None) -> ComfyMessage:
        """Decode one frame; ``is_text`` None guesses from the first byte.

        A binary frame starts with a big-endian u32 event type, so its first byte is
        0 for every type below 2**24; a ComfyUI text frame is a JSON object.
        """
        if is_text is None:
            is_text = bool(frame) and frame[0] != 0
        if not is_text:
            return self.decode_binary(frame)
        if self._skip_prefixes and frame.startswith(self._skip_prefixes):
            return SKIPPED
        return self.decode_text(frame)

    def decode_text(self, frame: bytes | str) -> ComfyMessage:
        try:
            env = self._envelope.decode(frame)
        except (msgspec.DecodeError, ValueError) as exc:  # ValidationError; UnicodeDecodeError
            return Malformed(type=None, reason=f"text frame: {exc}")
        except RecursionError:  # JSON nested deeper than the interpreter's recursion limit
            return Malformed(type=None, reason="text frame: JSON nested too deeply")
        decoder = self._decoders.get(env.type)
        if decoder is None:
            return SKIPPED if env.type in self._skip else Unknown(type=env.type)
        try:
            return decoder.decode(env.data)  # type: ignore[no-any-return]
        except (msgspec.DecodeError, ValueError) as exc:
            return Malformed(type=env.type, reason=str(exc))
        except RecursionError:
            return Malformed(type=env.type, reason="JSON nested too deeply")

    def decode_binary(self, frame: bytes) -> ComfyMessage:
        size = len(frame)
        if size < 4:
            return Malformed(type="binary", reason=f"binary frame of {size} bytes has no event type")
        view = memoryview(frame)
        event = int.from_bytes(view[0:4], "big")
        if event == BINARY_PREVIEW_IMAGE:
            if size < 8:
                return Malformed(type="binary:1", reason="preview frame shorter than its 8-byte header")
            code = int.from_bytes(view[4:8], "big")
            fmt = IMAGE_FORMATS.get(code)
            if fmt is None:
                return Malformed(type="binary:1", reason=f"unknown image format {code}")
            return PreviewImage(format=fmt, image=view[8:])
        if event == BINARY_PREVIEW_WITH_METADATA:
            if size < 8:
                return Malformed(type="binary:4", reason="preview frame shorter than its 8-byte header")
            length = int.from_bytes(view[4:8], "big")
            if 8 + length > size:
                return Malformed(type="binary:4", reason=f"metadata length {length} exceeds frame of {size} bytes")
            try:
                meta = self._metadata.decode(view[8 : 8 + length])
            except (msgspec.DecodeError, ValueError) as exc:
                return Malformed(type="binary:4", reason=f"metadata: {exc}")
            except RecursionError:
                return Malformed(type="binary:4", reason="metadata: JSON nested too deeply")
            fmt = MIME_FORMATS.get(meta.image_type, meta.image_type.rpartition("/")[2] or "unknown")
            return PreviewWithMetadata(metadata=meta, format=fmt, image=view[8 + length :])
        if event == BINARY_TEXT:
            if size < 8:
                return Malformed(type="binary:3", reason="text frame shorter than its 8-byte header")
            length = int.from_bytes(view[4:8], "big")
            if 8 + length > size:
                return Malformed(type="binary:3", reason=f"node id length {length} exceeds frame")
            try:
                node_id = bytes(view[8 : 8 + length]).decode()
                text = bytes(view[8 + length :]).decode()
            except UnicodeDecodeError as exc:
                return Malformed(type="binary:3", reason=f"not UTF-8: {exc}")
            return ProgressText(node_id=node_id, text=text)
        return Unknown(type=f"binary:{event}")


_DEFAULT = Decoder()


def decode_frame(frame: bytes, *, is_text: bool | None = None) -> ComfyMessage:
    """Decode one frame with a shared default :class:`Decoder`."""
    return _DEFAULT.decode(frame, is_text=is_text)
