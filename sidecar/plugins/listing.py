"""What ``comfy-bridge plugins`` prints: plugins, their hooks, stores and adapters.

:func:`describe` builds the text from a fresh plugin manager (the same one ``run``
would build from that config, so a plugin that fails to load fails here the same way,
with a :class:`~sidecar.plugins.manager.PluginError`). Pure string building otherwise:
no probing, no I/O of its own; the CLI passes the adapters it found by probing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from ..credentials import mask_url  # the URL of an instance may carry a password or a query token
from .manager import Plugins, get_plugin_manager

if TYPE_CHECKING:
    from ..config import BridgeConfig

__all__ = ["describe"]


def _version(since: object) -> str:
    try:
        return ".".join(str(part) for part in since)  # type: ignore[attr-defined]
    except TypeError:
        return str(since)


def _table(rows: Sequence[tuple[str, ...]], indent: str = "  ") -> list[str]:
    """Left-aligned columns, two spaces apart; no trailing spaces."""
    if not rows:
        return []
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    lines = []
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)] + [row[-1]]
        lines.append((indent + "  ".join(cells)).rstrip())
    return lines


def describe(config: BridgeConfig, adapters_by_instance: dict[str, str] | None = None) -> str:
    """The plugin report for ``config``.

    :param config: the configuration ``run`` would use (its ``[plugins] disabled`` and
        ``[previews]`` matter here).
    :param adapters_by_instance: the adapter name each instance uses, as found by
        probing; instances missing from it are shown as "not probed".
    :return: the text, ending with a newline. Raises ``PluginError`` as ``run`` would.
    """
    pm = get_plugin_manager(config)
    plugins = Plugins(pm)
    probed = adapters_by_instance or {}
    lines: list[str] = []

    registered = [(name, origin) for name, origin in plugins.listing() if pm.get_plugin(name) is not None]
    lines.append(f"plugins ({len(registered)}):")
    for name, origin in registered:
        plugin = pm.get_plugin(name)
        hooks = sorted(caller.name for caller in pm.get_hookcallers(plugin) or ())
        lines.append(f"  {name}  [{origin}]")
        lines.append(f"    hooks: {', '.join(hooks) if hooks else '(none)'}")
        made = tuple(getattr(plugin, "PREVIEW_STORES", ()))
        if made:
            lines.append(f"    preview stores: {', '.join(made)}")
        outputs = tuple(getattr(plugin, "OUTPUT_STORES", ()))
        if outputs:
            lines.append(f"    output stores: {', '.join(outputs)}")
    blocked = sorted(name for name, plugin in pm.list_name_plugin() if plugin is None)
    lines.append(f"disabled: {', '.join(blocked) if blocked else '(none)'}")

    stores = plugins.store_names()
    configured = config.previews.store
    lines.append("")
    lines.append(f"preview stores: {', '.join(stores) if stores else '(none)'}")
    note = "" if configured in stores else "  (no plugin lists it: `run` stops unless one makes it)"
    lines.append(f"  configured: {configured}{note}")
    output_stores = plugins.output_store_names()
    lines.append(f"output stores: {', '.join(output_stores) if output_stores else '(none)'}")
    note = "" if config.outputs.store in output_stores else "  (no plugin lists it: `run` stops unless one makes it)"
    lines.append(f"  configured: {config.outputs.store}{note}")

    adapters = sorted(plugins.protocol_adapters(), key=lambda a: (tuple(a.since), a.name))
    lines.append("")
    lines.append(f"adapters ({len(adapters)}):")
    rows = []
    for adapter in adapters:
        verified = getattr(adapter, "verified", None)
        extra = f"verified up to {_version(verified)}" if verified else ""
        rows.append((adapter.name, f"since {_version(adapter.since)}", extra))
    lines.extend(_table(rows))

    lines.append("")
    if config.instances:
        lines.append(f"instances ({len(config.instances)}), with the adapter each uses:")
        rows = []
        for name in sorted(config.instances):
            rows.append((name, mask_url(config.instances[name].url), probed.get(name) or "not probed"))
        lines.extend(_table(rows))
    else:
        lines.append("instances: (none configured: `run` starts a simulated ComfyUI)")
    return "\n".join(lines) + "\n"
