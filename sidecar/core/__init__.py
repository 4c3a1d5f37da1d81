"""PURE state machines: jobs, progress, the event sequence, backoff, version capabilities.

Fed with decoded messages and a clock value (``now_ns``), they return events.
May import ``sidecar.protocol``, the standard library's pure modules and msgspec;
never asyncio, sockets, files, time or random (a test enforces this).
"""
