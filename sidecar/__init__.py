"""comfy-bridge: a sidecar that links a platform backend to ComfyUI instances.

Rings (STYLE.md): ``protocol/`` and ``core/`` are pure (no asyncio, sockets,
files, clock or randomness); everything else is the I/O shell around them.
Plugin authors import :data:`hookimpl` from here (see docs/plugins.md).
"""

from __future__ import annotations

from .plugins import hookimpl

__all__ = ["__version__", "hookimpl"]

__version__ = "0.1.0"
