"""Reconnect delays: exponential backoff with full jitter, as a pure generator.

Pure: randomness comes from the ``rng`` callable the caller passes (``random.random``
in the shell, a fixed sequence in tests).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

__all__ = ["backoff"]


def backoff(initial_s: float, max_s: float, multiplier: float, rng: Callable[[], float]) -> Iterator[float]:
    """Delays in seconds: attempt ``n`` waits ``uniform(0, min(max_s, initial_s * multiplier**n))``,
    never less than a tenth of ``initial_s`` (full jitter, AWS architecture blog)."""
    ceiling = initial_s
    while True:
        yield max(initial_s / 10, rng() * ceiling)
        ceiling = min(max_s, ceiling * multiplier)
