"""Simulated ComfyUI server: product code (``comfy-bridge simulate`` / ``demo``) and test fixture.

It reproduces the HTTP and WebSocket behaviour of the recorded ComfyUI versions
(``VERSIONS``; see ``tests/traces/`` and the shared PROTOCOL.md): validation and
its error shapes, the queue and history, per-version message sequences, binary
previews, caching, interrupts.  Modules: ``versions`` (behaviour profiles),
``nodes`` (class specs), ``validate``, ``scheduling`` (execution order),
``runtime`` (node behaviour), ``execution`` (one prompt run), ``engine`` (the
worker), ``hub`` (WebSocket clients and frames), ``state`` and ``jobs`` (queue,
history, files), ``images`` (JPEG/PNG without Pillow), ``routes``, ``server``,
``fuzz`` (the fuzzing mode: ``SimServer(fuzz=SEED)`` / ``comfy-bridge simulate --fuzz SEED``
sends, after real frames, mutated copies that must not change any real job's fate: garbled
JSON, wrong types in known messages, binary previews cut inside their header, unknown
types, frames for prompts no one submitted; ``SimServer.fuzzer.sent`` counts them by kind).
This package may import aiohttp and the standard library only, never other
``sidecar`` packages.
"""

from __future__ import annotations

from .server import SimServer, serve
from .versions import VERSIONS, VersionProfile, get_profile

__all__ = ["VERSIONS", "SimServer", "VersionProfile", "get_profile", "serve"]
