"""Simulated ComfyUI server: product code (``comfy-bridge simulate`` / ``demo``) and test fixture.

It reproduces the HTTP and WebSocket behaviour of the recorded ComfyUI versions
(``VERSIONS``; see ``tests/traces/`` and the shared PROTOCOL.md): validation and
its error shapes, the queue and history, per-version message sequences, binary
previews, caching, interrupts.  Modules: ``versions`` (behaviour profiles),
``nodes`` (class specs), ``validate``, ``scheduling`` (execution order),
``runtime`` (node behaviour), ``execution`` (one prompt run), ``engine`` (the
worker), ``hub`` (WebSocket clients and frames), ``state`` and ``jobs`` (queue,
history, files), ``images`` (JPEG/PNG without Pillow), ``routes``, ``server``.
This package may import aiohttp and the standard library only, never other
``sidecar`` packages.
"""

from __future__ import annotations

from .server import SimServer, serve
from .versions import VERSIONS, VersionProfile, get_profile

__all__ = ["VERSIONS", "SimServer", "VersionProfile", "get_profile", "serve"]
