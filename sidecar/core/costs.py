"""What a node costs: durations learned per instance and class from earlier runs.

Pure. :class:`NodeCosts` holds one instance's learned costs by ``class_type``: how long a
node of that class took (an exponential average over its runs) and, for a class that
reports steps (a sampler), its seconds per step and the number of steps it ran. The
tracker feeds it the durations it measures at node ends (:meth:`NodeCosts.learn`);
:meth:`NodeCosts.estimate` weighs a node of a workflow for the progress plan. The shell
loads the table from the state file at start and saves what :meth:`NodeCosts.changed`
returns (a few rows at node ends, never per progress frame).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from functools import partial
from typing import Any, NamedTuple

__all__ = ["DEFAULT_NODE_S", "NodeCost", "NodeCosts", "NodeEstimate"]

DEFAULT_NODE_S = 1.0
"""The weight of a node whose class this instance never ran: one second."""
_ALPHA = 0.5  # weight of the newest run in the average: the estimate follows a changed machine in a few runs
_MAX_S = 7 * 24 * 3600.0  # a measured duration beyond a week is not a node's cost


class NodeCost(NamedTuple):
    """One class's learned cost on one instance."""

    seconds: float  # the whole node, averaged over its runs
    step_s: float | None  # seconds per step, averaged; None if it never reported steps
    steps: int  # the steps of its last run that reported them (0: none)
    runs: int  # runs learned from


class NodeEstimate(NamedTuple):
    """The weight of one node of a workflow, before it runs."""

    seconds: float  # what it is expected to take
    known: bool  # learned from earlier runs (False: :data:`DEFAULT_NODE_S`)
    step_s: float | None = None  # learned seconds per step, if its class reports steps
    overhead_s: float = 0.0  # the part of ``seconds`` outside its steps


_UNKNOWN = NodeEstimate(DEFAULT_NODE_S, False)


def _valid(value: float | None) -> bool:
    return value is not None and math.isfinite(value) and 0.0 <= value <= _MAX_S


class NodeCosts:
    """One instance's learned node costs, by class."""

    __slots__ = ("_by_class", "_changed")

    def __init__(self, learned: Mapping[str, NodeCost] | None = None) -> None:
        """``learned``: rows read back from the state file; an unusable one is left out."""
        self._by_class: dict[str, NodeCost] = {}
        self._changed: dict[str, NodeCost] = {}
        for class_type, cost in (learned or {}).items():
            if _valid(cost.seconds) and cost.runs > 0 and (cost.step_s is None or _valid(cost.step_s)):
                self._by_class[class_type] = NodeCost(cost.seconds, cost.step_s, max(cost.steps, 0), cost.runs)

    def __len__(self) -> int:
        return len(self._by_class)

    def get(self, class_type: str) -> NodeCost | None:
        return self._by_class.get(class_type)

    def learn(self, class_type: str, seconds: float, steps: int = 0, step_s: float | None = None) -> None:
        """A node of ``class_type`` ran for ``seconds`` (``steps`` reported, ``step_s`` each, if any)."""
        if not _valid(seconds):
            return
        if step_s is not None and not _valid(step_s):
            step_s = None
        old = self._by_class.get(class_type)
        if old is None:
            cost = NodeCost(seconds, step_s, steps if step_s is not None else 0, 1)
        else:
            new_step = old.step_s
            if step_s is not None:
                new_step = step_s if old.step_s is None else old.step_s + _ALPHA * (step_s - old.step_s)
            cost = NodeCost(
                old.seconds + _ALPHA * (seconds - old.seconds),
                new_step,
                steps if step_s is not None else old.steps,
                old.runs + 1,
            )
        self._by_class[class_type] = cost
        self._changed[class_type] = cost

    def changed(self) -> dict[str, NodeCost]:
        """The classes learned since the last call (to save), and forget that they changed."""
        changed, self._changed = self._changed, {}
        return changed

    def learn_nodes(
        self, workflow: Mapping[str, Any], measured: Iterable[tuple[str, float, int, float | None]]
    ) -> None:
        """Learn each ``(node, seconds, steps, step_s)`` of ``workflow`` under the node's class type
        (a progress plan's :meth:`~sidecar.core.progress.ProgressPlan.measured`)."""
        for node, seconds, steps, step_s in measured:
            class_type = _class_of(workflow.get(node))
            if class_type is not None:
                self.learn(class_type, seconds, steps, step_s)

    def weigher(self, workflow: Mapping[str, Any]) -> Callable[[str], NodeEstimate]:
        """:meth:`estimate` for the nodes of ``workflow`` (a progress plan's ``weigh``)."""
        return partial(self.estimate, workflow)

    def estimate(self, workflow: Mapping[str, Any], node: str) -> NodeEstimate:
        """The weight of ``node`` of ``workflow``: its class's learned cost, else the default.

        A class that reports steps weighs its set-up plus its steps at the learned rate; the
        number of steps is the node's own ``steps`` input when it has one (a sampler's), else
        the steps of the class's last run.
        """
        spec = workflow.get(node)
        class_type = _class_of(spec)
        cost = self._by_class.get(class_type) if class_type is not None else None
        if cost is None:
            return _UNKNOWN
        if cost.step_s is None:
            return NodeEstimate(cost.seconds, True, None, cost.seconds)
        overhead = max(cost.seconds - cost.steps * cost.step_s, 0.0)
        inputs = spec.get("inputs") if isinstance(spec, dict) else None
        hint = inputs.get("steps") if isinstance(inputs, dict) else None
        steps = hint if isinstance(hint, int) and not isinstance(hint, bool) and 0 < hint <= 1_000_000 else cost.steps
        return NodeEstimate(overhead + steps * cost.step_s, True, cost.step_s, overhead)


def _class_of(spec: Any) -> str | None:
    """A workflow node's ``class_type``, if it has one."""
    class_type = spec.get("class_type") if isinstance(spec, dict) else None
    return class_type if isinstance(class_type, str) else None
