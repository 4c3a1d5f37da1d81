"""SHELL: the bar moves while ComfyUI is silent: a timer for the trackers' :meth:`tick`.

ComfyUI sends nothing while a node such as a checkpoint load runs, so no frame can move a
job's percentage then. :class:`Ticker` calls each instance's
:meth:`~sidecar.core.tracker.InstanceTracker.tick` every :data:`TICK_S` while some
tracker is :attr:`~sidecar.core.tracker.InstanceTracker.ticking` (its running job's node
sends nothing and its duration was learned), and publishes the events as the read loop
does. Otherwise it sleeps until :meth:`Ticker.wake`, which the sidecar calls when a node
starts (``node.executing``): an idle sidecar, or one whose sampler is sending its steps,
never wakes for it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .instance import Instance

__all__ = ["TICK_S", "Ticker"]

TICK_S = 0.25
"""How often a silent node's time moves its job's percentage (at most one ``job.progress`` each)."""


class Ticker:
    """One timer for all instances; sleeps on an event while no tracker is ticking."""

    def __init__(self, instances: Mapping[str, Instance], tick_s: float = TICK_S) -> None:
        self.instances = instances
        self.tick_s = tick_s
        self._wake = asyncio.Event()
        self.ticks = 0  # timer rounds run (tests: none while idle)

    def wake(self) -> None:
        """A node started somewhere: look whether a tracker is ticking now."""
        self._wake.set()

    async def run(self) -> None:
        """Tick while a tracker is ticking, else wait for :meth:`wake`; until cancelled."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            while any(inst.tracker.ticking for inst in self.instances.values()):
                await asyncio.sleep(self.tick_s)
                self.ticks += 1
                now = time.time_ns()
                for inst in self.instances.values():
                    if inst.tracker.ticking:
                        try:
                            inst.emit(inst.tracker.tick(now))
                        except Exception:  # the supervision boundary: log, go on
                            inst.log.error("progress tick failed", exc_info=True)
