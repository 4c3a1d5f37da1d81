"""What a ComfyUI server can do, and which version adapter serves it.

Pure. :class:`Capabilities` is what the shell acts on (how to submit, cancel and detect
the end of a job); adapters (``sidecar.plugins``) produce it. :func:`select_adapter`
picks the adapter for a server from what it shows: a server that reports no
``comfyui_version`` (the recorded 0.0.2, and older builds generally) is placed by
whether it has ``/features`` or answered the feature-flags handshake (PROTOCOL.md §10),
and by what it has sent since: :func:`first_to_know` turns a message type the current
adapter does not know into the lowest version the server must then be.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec

__all__ = ["Capabilities", "first_to_know", "parse_version", "placed_version", "select_adapter"]

FEATURE_FLAGS = (0, 3, 45)  # the first release with /features and the feature-flags handshake
UNVERSIONED = (0, 0, 2)  # where a server that shows nothing newer is placed


class Capabilities(msgspec.Struct, frozen=True):
    """What the sidecar does differently per server (from its adapter); docs/plugins.md says who reads each."""

    version: str | None  # shown in health and instance.status
    execution_success: bool  # sends execution_success: a bare `executing` null leaves the outcome to history
    client_prompt_id: bool  # POST /prompt carries the sidecar's own prompt id
    targeted_interrupt: bool  # POST /interrupt {"prompt_id"} stops only that prompt
    preview_metadata: bool = False  # deprecated, never read: type-1 and type-4 previews are taken alike
    jobs_api: bool = False  # /api/jobs exists: probe for the per-job cancel endpoint
    jobs_cancel: bool = False  # POST /api/jobs/{id}/cancel, found by probing (newer than 0.12.1)


def parse_version(text: str | None) -> tuple[int, int, int] | None:
    """``"0.3.44"`` -> ``(0, 3, 44)``; None for anything not of that shape."""
    if not text:
        return None
    parts = text.strip().lstrip("v").split("-")[0].split(".")
    try:
        nums = [int(p) for p in parts[:3]]
    except ValueError:
        return None
    while len(nums) < 3:
        nums.append(0)
    return nums[0], nums[1], nums[2]


def placed_version(info: Any) -> tuple[int, int, int]:
    """The version a server is taken for: the one it reports, else the lowest it has shown."""
    version = parse_version(info.version)
    if version is not None:
        return version
    shown = FEATURE_FLAGS if (info.features or info.feature_flags_reply) else UNVERSIONED
    least = getattr(info, "min_version", None)
    return max(shown, tuple(least)) if least else shown


def first_to_know(adapters: Sequence[Any], info: Any, message_type: str) -> tuple[int, int, int] | None:
    """The lowest ``since`` of the adapters (accepting ``info``) that decode ``message_type``; None if none does.

    A server that sends such a message is at least that version (the built-ins drop a
    type from the generations before the release that introduced it).
    """
    known = [tuple(a.since) for a in adapters if a.accepts(info) and message_type in a.message_types()]
    return min(known) if known else None


def select_adapter(adapters: Sequence[Any], info: Any) -> tuple[Any, str | None]:
    """The adapter for a server, and a note when the choice deserves one (pure).

    Among the adapters that accept the server, the one with the highest ``since`` not
    above its version wins (a server that reports no version is placed by what it shows:
    ``/features`` or a feature-flags reply mean v0.3.45 or newer, ``info.min_version``
    what its messages proved, else the oldest generation). A server newer than every
    adapter's ``verified`` version gets the newest adapter, and the note says so.
    """
    version = placed_version(info)
    fitting = [a for a in adapters if a.accepts(info) and tuple(a.since) <= version]
    if not fitting:
        raise LookupError(f"no adapter accepts ComfyUI {info.version or 'without a version'}")
    chosen = max(fitting, key=lambda a: (tuple(a.since), getattr(a, "priority", 0)))
    verified = [tuple(v) for a in adapters if (v := getattr(a, "verified", None))]
    note = None
    if verified and version > max(verified):
        shown = info.version or ".".join(map(str, version))
        note = (
            f"ComfyUI {shown} is newer than any adapter knows (verified up to "
            f"{'.'.join(map(str, max(verified)))}); using {chosen.name}"
        )
    return chosen, note
