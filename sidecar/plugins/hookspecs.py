"""Every hook a comfy-bridge plugin can implement.

Hooks are synchronous and run at start-up (or, for adapters, when the plugin manager is
built); they return objects that the sidecar then calls. Nothing calls a hook per frame.
Each hook's section in ``docs/plugins.md`` must show the signature below (a test checks).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import hookspec

if TYPE_CHECKING:
    from ..config import BridgeConfig
    from .api import OutputStore, PreviewStore, ProtocolAdapter

__all__ = ["bridge_make_output_store", "bridge_make_preview_store", "bridge_protocol_adapters"]


@hookspec(firstresult=True)
def bridge_make_preview_store(name: str, options: dict[str, Any], config: BridgeConfig) -> PreviewStore | None:
    """Make the preview store named ``name`` (``previews.store`` in ``bridge.toml``).

    :param name: the store's name as configured, e.g. ``"files"``.
    :param options: the ``[previews.options]`` table from ``bridge.toml`` (may be empty).
    :param config: the whole configuration.
    :return: a :class:`~sidecar.plugins.api.PreviewStore`, or None when ``name`` is not
        yours.

    Stops at first non-None result. Runs once at start-up; a store that no plugin makes
    stops start-up with an error naming it.
    """
    return None


@hookspec(firstresult=True)
def bridge_make_output_store(name: str, options: dict[str, Any], config: BridgeConfig) -> OutputStore | None:
    """Make the output store named ``name`` (``outputs.store`` in ``bridge.toml``).

    :param name: the store's name as configured, e.g. ``"files"``.
    :param options: the ``[outputs.options]`` table from ``bridge.toml`` (may be empty).
    :param config: the whole configuration.
    :return: an :class:`~sidecar.plugins.api.OutputStore`, or None when ``name`` is not
        yours.

    Stops at first non-None result. Runs once at start-up; a store that no plugin makes
    stops start-up with an error naming it.
    """
    return None


@hookspec
def bridge_protocol_adapters() -> list[ProtocolAdapter]:
    """Offer adapters for ComfyUI versions (or forks).

    :return: a list of :class:`~sidecar.plugins.api.ProtocolAdapter` objects.

    Every plugin's lists are collected. Runs once at start-up; the choice per instance
    is made at each connect by ``select_adapter`` from what the server shows.
    """
    return []
