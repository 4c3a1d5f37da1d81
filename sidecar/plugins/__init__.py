"""Plugins: the hook specifications, the objects hooks return, and the plugin manager.

One name, :data:`NAME` (``"comfy_bridge"``), serves as the pluggy project name (markers),
the entry-point group (``[project.entry-points.comfy_bridge]``) and, as ``bridge_``, the
prefix of every hook. Hooks run at start-up or connect time and return objects; the hot
path calls those objects, never the plugin manager. This package may import the
``protocol`` and ``core`` rings and the standard library; built-in plugins live in
``builtin/``. The guide for plugin authors is ``docs/plugins.md``.
"""

from __future__ import annotations

import pluggy

__all__ = ["NAME", "hookimpl", "hookspec"]

NAME = "comfy_bridge"

hookspec = pluggy.HookspecMarker(NAME)
hookimpl = pluggy.HookimplMarker(NAME)
