"""What a ComfyUI server can do, and which version adapter serves it.

Pure. :class:`Capabilities` is what the shell acts on (how to submit, cancel and detect
the end of a job); adapters (``sidecar.plugins``) produce it. :func:`select_adapter`
picks the adapter for a server from what it shows at connect time: a server that
reports no ``comfyui_version`` (0.0.2 and other pre-0.1 builds) is placed by whether it
has ``/features`` or answered the feature-flags handshake (PROTOCOL.md §10).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec

__all__ = ["Capabilities", "parse_version", "select_adapter"]

FEATURE_FLAGS = (0, 3, 45)  # the first release with /features and the feature-flags handshake


class Capabilities(msgspec.Struct, frozen=True):
    """What the sidecar may do with one server (from its adapter)."""

    version: str | None
    execution_success: bool
    client_prompt_id: bool
    targeted_interrupt: bool
    preview_metadata: bool
    jobs_api: bool
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


def select_adapter(adapters: Sequence[Any], info: Any) -> tuple[Any, str | None]:
    """The adapter for a server, and a note when the choice deserves one (pure).

    Among the adapters that accept the server, the one with the highest ``since`` not
    above its version wins (a server that reports no version is placed by what it shows:
    ``/features`` or a feature-flags reply mean v0.3.45 or newer, else the oldest
    generation). A server newer than every adapter's ``verified`` version gets the newest
    adapter, and the note says so.
    """
    version = parse_version(info.version)
    if version is None:
        version = FEATURE_FLAGS if (info.features or info.feature_flags_reply) else (0, 0, 2)
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
