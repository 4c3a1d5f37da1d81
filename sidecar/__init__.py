"""comfy-bridge: a sidecar that links a platform backend to ComfyUI instances.

Rings (STYLE.md): ``protocol/`` and ``core/`` are pure (no asyncio, sockets,
files, clock or randomness); everything else is the I/O shell around them.
"""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"
