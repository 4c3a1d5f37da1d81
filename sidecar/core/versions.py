"""What a ComfyUI server can do, from what it shows at connect time.

Pure. The boundaries come from PROTOCOL.md §10. A server that reports no
``comfyui_version`` (0.0.2 and other pre-0.1 builds) is taken as the oldest
generation; a version newer than any boundary known here gets every capability.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec

__all__ = ["Capabilities", "capabilities", "parse_version", "select_adapter"]

EXECUTION_SUCCESS = (0, 0, 3)
DISPLAY_NODE = (0, 1, 0)
FEATURE_FLAGS = (0, 3, 45)
CLIENT_PROMPT_ID = (0, 3, 45)
TARGETED_INTERRUPT = (0, 3, 58)
JOBS_API = (0, 7, 0)


class Capabilities(msgspec.Struct, frozen=True):
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


def capabilities(system_stats: Any, features_ok: bool, flags_replied: bool, jobs_cancel: bool = False) -> Capabilities:
    """Capabilities from ``/system_stats``, whether ``/features`` answered 200, whether
    the feature-flags handshake got a reply, and whether a per-job cancel endpoint
    answered the sidecar's probe."""
    version = None
    if isinstance(system_stats, dict):
        system = system_stats.get("system")
        if isinstance(system, dict) and isinstance(system.get("comfyui_version"), str):
            version = system["comfyui_version"]
    parsed = parse_version(version)
    if parsed is None:
        parsed = FEATURE_FLAGS if (features_ok or flags_replied) else (0, 0, 2)
    return Capabilities(
        version=version,
        execution_success=parsed >= EXECUTION_SUCCESS,
        client_prompt_id=parsed >= CLIENT_PROMPT_ID,
        targeted_interrupt=parsed >= TARGETED_INTERRUPT,
        preview_metadata=flags_replied,
        jobs_api=parsed >= JOBS_API,
        jobs_cancel=jobs_cancel,
    )


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
