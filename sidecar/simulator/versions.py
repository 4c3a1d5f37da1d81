"""Per-version behaviour profiles of the simulated ComfyUI server.

Every difference between the recorded ComfyUI versions (``tests/traces/<version>``
and ``PROTOCOL.md`` §10) is a field of :class:`VersionProfile`; the rest of the
simulator reads these flags and never compares version strings.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "SERVER_FEATURES",
    "VERSIONS",
    "VersionProfile",
    "get_profile",
]

#: Reply to the WS ``feature_flags`` handshake and body of ``GET /features`` (0.12.1).
SERVER_FEATURES: dict[str, Any] = {
    "supports_preview_metadata": True,
    "max_upload_size": 104857600,
    "extension": {"manager": {"supports_v4": True}},
}

ErrorStyle = Literal["legacy", "invalid_prompt", "modern"]
OrderRule = Literal["fewest_remaining", "ready_outputs_first"]


@dataclass(frozen=True)
class VersionProfile:
    """What one ComfyUI version does, as observed in its traces."""

    version: str
    #: ``execution_success`` is sent (since v0.0.3).
    execution_success: bool
    #: ``display_node`` in ``executing``/``executed`` and ``meta`` in history (since v0.1.0).
    display_node: bool
    #: ``timestamp`` in execution_* messages (absent on 0.0.2).
    timestamps: bool
    #: ``progress_state`` snapshots (since v0.3.45).
    progress_state: bool
    #: nodes that send progress text (binary type 3) exist, e.g. ``GetImageSize``; no trace records one.
    progress_text: bool
    #: WS ``feature_flags`` handshake, type-4 previews, ``GET /features`` (since v0.3.45).
    feature_flags: bool
    #: ``POST /prompt`` honours a client ``prompt_id`` (since v0.3.45).
    client_prompt_id: bool
    #: ``POST /interrupt {"prompt_id"}`` is targeted (since v0.3.58); older: global.
    targeted_interrupt: bool
    #: ``/api/jobs`` endpoints (since v0.7.0).
    api_jobs: bool
    #: every route also under ``/api`` (not on 0.0.2).
    api_prefix: bool
    #: ``extra_data.create_time`` in queue/history items (0.12.1 only in the traces).
    create_time: bool
    #: ``executed`` re-sent for cached output nodes (not on 0.0.2: trace 03).
    resend_cached_outputs: bool
    #: optional inputs are validated (not on 0.0.2: trace 04).
    validate_optional_inputs: bool
    #: shape family of ``POST /prompt`` 400 bodies (trace 04).
    error_style: ErrorStyle
    #: node execution order rule (see :mod:`sidecar.simulator.scheduling`).
    order_rule: OrderRule
    #: salt of the stand-in for the server's hash-ordered set of output nodes; None = sorted ids.
    output_order_salt: str | None
    #: ``exception_message`` ends with a newline (formatted exception, ≥ 0.3.44).
    exception_newline: bool
    #: ``current_outputs`` of ``execution_error``: dict of reprs (0.0.2) or list of ids.
    current_outputs_as_dict: bool
    #: a dangling link in an executed branch kills the prompt worker (0.0.2, trace 04).
    dangling_link_kills_worker: bool
    #: ``progress.node`` of a prompt without client_id is the node id (else null).
    broadcast_progress_node: bool
    #: ``input_order`` in ``/object_info`` (since ~v0.3).
    object_info_input_order: bool
    #: ``is_input_list`` and ``search_aliases`` in ``/object_info`` (0.12.1).
    object_info_v3_fields: bool
    #: tooltips in core node input configs (≥ 0.3.44).
    tooltips: bool
    #: ``/system_stats`` ``system`` object.
    system: dict[str, Any] = field(default_factory=dict)

    def output_order(self, node_ids: Iterable[str]) -> list[str]:
        """Order in which the server iterates a set of output node ids.

        The real server keeps the outputs in a Python ``set`` of strings: the order is
        arbitrary but stable within one process.  The traces record ``["3","4","5"]``
        (0.0.2), ``["3","5","4"]`` (0.3.44) and ``["4","5","3"]`` (0.12.1) for the
        probe graph; a salted CRC reproduces exactly those orders deterministically.
        """
        ids = list(dict.fromkeys(node_ids))
        salt = self.output_order_salt
        if salt is None:
            return sorted(ids, key=_id_sort_key)
        return sorted(ids, key=lambda i: (zlib.crc32(f"{salt}:{i}".encode()), i))


def _id_sort_key(node_id: str) -> tuple[int, str]:
    return (0, f"{int(node_id):012d}") if node_id.isdigit() else (1, node_id)


_PY = "3.11.7 (main, May  9 2026, 07:35:25) [GCC 12.2.0]"
_RAM_TOTAL = 25276502016
_RAM_FREE = 24176885760
_ARGV = ["main.py", "--cpu", "--listen", "127.0.0.1", "--disable-auto-launch"]

_PROFILES: dict[str, VersionProfile] = {
    "0.0.2": VersionProfile(
        version="0.0.2",
        execution_success=False,
        display_node=False,
        timestamps=False,
        progress_state=False,
        progress_text=False,
        feature_flags=False,
        client_prompt_id=False,
        targeted_interrupt=False,
        api_jobs=False,
        api_prefix=False,
        create_time=False,
        resend_cached_outputs=False,
        validate_optional_inputs=False,
        error_style="legacy",
        order_rule="fewest_remaining",
        output_order_salt=None,
        exception_newline=False,
        current_outputs_as_dict=True,
        dangling_link_kills_worker=True,
        broadcast_progress_node=False,
        object_info_input_order=False,
        object_info_v3_fields=False,
        tooltips=False,
        system={"os": "posix", "python_version": _PY, "embedded_python": False},
    ),
    "0.3.44": VersionProfile(
        version="0.3.44",
        execution_success=True,
        display_node=True,
        timestamps=True,
        progress_state=False,
        progress_text=False,
        feature_flags=False,
        client_prompt_id=False,
        targeted_interrupt=False,
        api_jobs=False,
        api_prefix=True,
        create_time=False,
        resend_cached_outputs=True,
        validate_optional_inputs=True,
        error_style="invalid_prompt",
        order_rule="ready_outputs_first",
        output_order_salt="0.3.44#10",
        exception_newline=True,
        current_outputs_as_dict=False,
        dangling_link_kills_worker=False,
        broadcast_progress_node=False,
        object_info_input_order=True,
        object_info_v3_fields=False,
        tooltips=True,
        system={
            "os": "posix",
            "ram_total": _RAM_TOTAL,
            "ram_free": _RAM_FREE,
            "comfyui_version": "0.3.44",
            "python_version": _PY,
            "pytorch_version": "2.14.1+cu130",
            "embedded_python": False,
            "argv": _ARGV,
        },
    ),
    "0.12.1": VersionProfile(
        version="0.12.1",
        execution_success=True,
        display_node=True,
        timestamps=True,
        progress_state=True,
        progress_text=True,
        feature_flags=True,
        client_prompt_id=True,
        targeted_interrupt=True,
        api_jobs=True,
        api_prefix=True,
        create_time=True,
        resend_cached_outputs=True,
        validate_optional_inputs=True,
        error_style="modern",
        order_rule="ready_outputs_first",
        output_order_salt="0.12.1#80",
        exception_newline=True,
        current_outputs_as_dict=False,
        dangling_link_kills_worker=False,
        broadcast_progress_node=True,
        object_info_input_order=True,
        object_info_v3_fields=True,
        tooltips=True,
        system={
            "os": "linux",
            "ram_total": _RAM_TOTAL,
            "ram_free": _RAM_FREE,
            "comfyui_version": "0.12.1",
            "required_frontend_version": "1.37.11",
            "installed_templates_version": "0.8.31",
            "required_templates_version": "0.8.31",
            "python_version": _PY,
            "pytorch_version": "2.14.1+cu130",
            "embedded_python": False,
            "argv": _ARGV,
        },
    ),
}

#: Versions the simulator can impersonate, oldest first.
VERSIONS: tuple[str, ...] = ("0.0.2", "0.3.44", "0.12.1")


def get_profile(version: str) -> VersionProfile:
    """Return the profile of ``version``; raise ``ValueError`` for an unknown one."""
    try:
        return _PROFILES[version]
    except KeyError:
        raise ValueError(f"unknown ComfyUI version {version!r}; known: {', '.join(VERSIONS)}") from None
