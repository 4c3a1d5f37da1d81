"""Overall workflow percentage: monotonic, exactly 100 on success.

Pure. The denominator is the nodes that will really run: ancestors of the output
nodes ComfyUI will execute, minus those it serves from cache. A node counts one
unit; a running node with ``progress`` counts its fraction. Until the job has
succeeded the percentage stays below 100, so a subscriber can trust 100.

A plan's node sets (:meth:`ProgressPlan.nodes`) are what the state file keeps at
node boundaries; :meth:`ProgressPlan.resume` rebuilds the plan after a restart, so
the nodes that finished before it still count as done (PROTOCOL.md §6.5).
"""

from __future__ import annotations

from collections.abc import Collection
from typing import NamedTuple

__all__ = ["PlanNodes", "ProgressPlan"]

_CEILING = 99.9


class PlanNodes(NamedTuple):
    """A plan's nodes, sorted: what a sidecar restart must not forget."""

    will_run: tuple[str, ...]  # the denominator
    done: tuple[str, ...]
    cached: tuple[str, ...]
    current: str | None  # the node running (its fraction is not kept)


class ProgressPlan:
    """Tracks one job's progress. After each input method, call :meth:`percent_update`."""

    __slots__ = ("_will_run", "_cached", "_done", "_current", "_fraction", "_last")

    def __init__(self, will_run: Collection[str], floor: float = 0.0) -> None:
        """``floor``: the percentage already reported for this job (a resubmitted job never goes back)."""
        self._will_run = set(will_run)
        self._cached: set[str] = set()
        self._done: set[str] = set()
        self._current: str | None = None
        self._fraction = 0.0
        self._last = floor

    @classmethod
    def resume(cls, nodes: PlanNodes, floor: float) -> ProgressPlan:
        """The plan :meth:`nodes` described, reporting nothing below ``floor``.

        Its done nodes count as done; its current node runs on (a different node
        announced next means it finished).
        """
        plan = cls(nodes.will_run, floor)
        plan._done.update(nodes.done)
        plan._cached.update(nodes.cached)
        plan._will_run.update(nodes.done)
        plan._will_run.difference_update(nodes.cached)
        plan._current = nodes.current
        return plan

    # Public: inputs

    def receive_cached(self, nodes: Collection[str]) -> None:
        """Cached nodes never run: they leave the denominator."""
        self._will_run.difference_update(nodes)
        self._cached.update(nodes)

    def receive_executing(self, node: str) -> None:
        """``node`` starts; the node that ran before it has finished."""
        if self._current is not None and self._current != node:
            self._done.add(self._current)
        self._will_run.add(node)
        self._current = node
        self._fraction = 0.0

    def receive_progress(self, node: str | None, value: float, maximum: float) -> None:
        if node is not None and node != self._current:
            self.receive_executing(node)
        if maximum > 0:
            self._fraction = min(max(value / maximum, 0.0), 1.0)

    def receive_executed(self, node: str) -> None:
        """An output node finished; ComfyUI re-sends this for cached outputs, which never ran."""
        if node in self._cached:
            return
        self._done.add(node)
        self._will_run.add(node)
        if node == self._current:
            self._current = None
            self._fraction = 0.0

    def receive_state(self, finished: Collection[str], running: str | None, value: float, maximum: float) -> None:
        """A snapshot of node states (ComfyUI ``progress_state``), e.g. after frames were missed.

        ``finished`` nodes are done (cached ones excepted: they never ran); ``running`` is
        the current node at ``value`` of ``maximum``.
        """
        for node in finished:
            if node not in self._cached:
                self._done.add(node)
                self._will_run.add(node)
        if self._current in self._done:
            self._current, self._fraction = None, 0.0
        if running is not None and running not in self._done:
            if running != self._current:
                self._current, self._fraction = running, 0.0
                self._will_run.add(running)
            if maximum > 0:
                self._fraction = min(max(value / maximum, 0.0), 1.0)

    # Public: outputs

    def nodes(self) -> PlanNodes:
        """The node sets, to save at a node boundary (a few set copies: not per progress frame)."""
        return PlanNodes(
            tuple(sorted(self._will_run)), tuple(sorted(self._done)), tuple(sorted(self._cached)), self._current
        )

    @property
    def known(self) -> bool:
        """Whether the plan knows which nodes will run (False before ``job.queued``)."""
        return bool(self._will_run or self._cached)

    @property
    def percent(self) -> float:
        """The last percentage reported (0.0 before any)."""
        return self._last

    def percent_update(self) -> float | None:
        """The new percentage if it rose by at least 0.1 since the last report, else None."""
        total = len(self._will_run)
        if total == 0:
            return None
        units = len(self._done) + (self._fraction if self._current not in self._done else 0.0)
        value = min(round(100.0 * units / total, 1), _CEILING)
        if value < self._last + 0.1:
            return None
        self._last = value
        return value

    def percent_final(self) -> float | None:
        """100.0 on success, unless already reported."""
        if self._last >= 100.0:
            return None
        self._last = 100.0
        return 100.0
