"""The event sequence: one ``seq`` counter and a ``run`` id for the whole sidecar.

Pure: the clock value is passed in. Every event is made here, so ``seq`` grows by
exactly one per event in the order events are made; the shell publishes them in
that same order (Clone pattern, ZeroMQ guide).
"""

from __future__ import annotations

from typing import Any

from ..protocol.wire import Event

__all__ = ["Sequencer"]


class Sequencer:
    __slots__ = ("run", "seq")

    def __init__(self, run: str, start: int = 0) -> None:
        self.run = run
        self.seq = start

    def event(self, type_: str, instance: str, job_id: str | None, data: Any, ts: int) -> Event:
        """The next event; ``seq`` is the last one made."""
        self.seq += 1
        return Event(self.seq, self.run, ts, type_, instance, job_id, data)
