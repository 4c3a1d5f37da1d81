"""The plugin manager: built-ins and entry-point plugins, registered the same way.

:func:`get_plugin_manager` does, in order (pytest, tox and datasette do the same):
``add_hookspecs``; ``set_blocked`` for every name in ``plugins.disabled``; load the
``comfy_bridge`` entry points; register each module of :data:`BUILTIN_PLUGINS`;
``check_pending``. A plugin that fails to import or register stops start-up with a
:class:`PluginError` naming it. :class:`Plugins` is the typed facade the sidecar calls.
No module-global manager, no import-time side effects.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
from typing import TYPE_CHECKING, Any

import pluggy

from ..errors import SidecarError
from . import NAME, hookspecs

if TYPE_CHECKING:
    from ..config import BridgeConfig
    from .api import OutputStore, PreviewStore, ProtocolAdapter

__all__ = ["BUILTIN_PLUGINS", "PluginError", "Plugins", "get_plugin_manager"]

logger = logging.getLogger(__name__)

BUILTIN_PLUGINS: tuple[str, ...] = (
    "sidecar.plugins.builtin.adapters",
    "sidecar.plugins.builtin.outputs_files",
    "sidecar.plugins.builtin.previews_files",
    "sidecar.plugins.builtin.previews_inline",
)


class PluginError(SidecarError):
    """A plugin could not be loaded, registered, or did not do what it must; names the plugin."""


def _entry_points() -> list[importlib.metadata.EntryPoint]:
    return sorted(importlib.metadata.entry_points(group=NAME), key=lambda ep: ep.name)


def get_plugin_manager(config: BridgeConfig | None = None) -> pluggy.PluginManager:
    """A new plugin manager with every enabled plugin registered and checked."""
    pm = pluggy.PluginManager(NAME)
    pm.add_hookspecs(hookspecs)
    disabled = set(config.plugins.disabled) if config is not None else set()
    for name in disabled:
        pm.set_blocked(name)
    for ep in _entry_points():
        if ep.name in disabled or pm.is_blocked(ep.name):
            continue
        try:
            plugin = ep.load()
        except Exception as exc:
            raise PluginError(
                f"plugin {ep.name!r} (entry point {ep.value!r}, from {_dist_of(ep)}) failed to import: "
                f"{exc.__class__.__name__}: {exc}"
            ) from exc
        _register(pm, plugin, ep.name, f"entry point of {_dist_of(ep)}")
    for module_name in BUILTIN_PLUGINS:
        if module_name in disabled:
            continue
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:
            raise PluginError(f"built-in plugin {module_name!r} failed to import: {exc}") from exc
        _register(pm, module, module_name, "built-in")
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        name = pm.get_name(exc.plugin) or repr(exc.plugin)
        origin = pm.__dict__.get("_bridge_origins", {}).get(name, "unknown origin")
        raise PluginError(f"plugin {name!r} ({origin}): {exc}") from exc
    return pm


def _dist_of(ep: importlib.metadata.EntryPoint) -> str:
    dist = ep.dist
    return f"{dist.name} {dist.version}" if dist is not None else "an unknown distribution"


def _register(pm: pluggy.PluginManager, plugin: object, name: str, origin: str) -> None:
    try:
        pm.register(plugin, name=name)
    except (pluggy.PluginValidationError, ValueError) as exc:
        raise PluginError(f"plugin {name!r} ({origin}) failed to register: {exc}") from exc
    pm.__dict__.setdefault("_bridge_origins", {})[name] = origin


class Plugins:
    """Typed calls into the plugin manager (tox's facade): one method per hook."""

    def __init__(self, pm: pluggy.PluginManager) -> None:
        self.pm = pm

    def make_preview_store(self, name: str, options: dict[str, Any], config: BridgeConfig) -> PreviewStore:
        hook, known = self.pm.hook.bridge_make_preview_store, self.store_names
        store: PreviewStore = self._make_store(hook, "preview store", "previews.store", known, name, options, config)
        return store

    def make_output_store(self, name: str, options: dict[str, Any], config: BridgeConfig) -> OutputStore:
        hook, known = self.pm.hook.bridge_make_output_store, self.output_store_names
        store: OutputStore = self._make_store(hook, "output store", "outputs.store", known, name, options, config)
        return store

    @staticmethod
    def _make_store(
        hook: Any,
        what: str,
        key: str,
        known: Any,
        name: str,
        options: dict[str, Any],
        config: BridgeConfig,
    ) -> Any:
        """The store ``name`` from the first plugin whose ``hook`` makes it; a PluginError names the
        store and what went wrong (the plugin failed; no plugin makes it, with the names known)."""
        try:
            store = hook(name=name, options=options, config=config)
        except SidecarError:
            raise
        except Exception as exc:
            raise PluginError(f"{what} {name!r}: its plugin failed: {exc.__class__.__name__}: {exc}") from exc
        if store is None:
            raise PluginError(f"no plugin makes the {what} {name!r} ({key}); known: {known()}")
        return store

    def output_store_names(self) -> list[str]:
        names: list[str] = []
        for plugin in self.pm.get_plugins():
            names.extend(getattr(plugin, "OUTPUT_STORES", ()))
        return sorted(set(names))

    def protocol_adapters(self) -> list[ProtocolAdapter]:
        adapters: list[ProtocolAdapter] = []
        for result in self.pm.hook.bridge_protocol_adapters():
            adapters.extend(result or ())
        return adapters

    def store_names(self) -> list[str]:
        names: list[str] = []
        for plugin in self.pm.get_plugins():
            names.extend(getattr(plugin, "PREVIEW_STORES", ()))
        return sorted(set(names))

    def listing(self) -> list[tuple[str, str]]:
        """``(name, origin)`` of every registered plugin, for ``comfy-bridge plugins``."""
        origins: dict[str, str] = self.pm.__dict__.get("_bridge_origins", {})
        return [(name, origins.get(name, "?")) for name, _ in sorted(self.pm.list_name_plugin())]
