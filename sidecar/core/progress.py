"""Overall workflow percentage: follows the time the work takes, monotonic, exactly 100 on success.

Pure, with no clock of its own: the clock value comes with each input (``now_ns``).

The denominator is the nodes that will really run: ancestors of the output nodes
ComfyUI will execute, minus those it serves from cache. Each node weighs what it is
expected to cost, in seconds (:class:`~sidecar.core.costs.NodeEstimate`, from the
durations learned per instance and class): a class never seen weighs
:data:`~sidecar.core.costs.DEFAULT_NODE_S`, so with nothing learned every node weighs the
same. A running node that reports steps weighs its steps: at its class's learned rate,
and at its own measured seconds per step once it has reported :data:`RATE_AFTER_STEPS`
more; its done part is then the time it has run. So the bar moves about evenly in time
whenever ComfyUI sends frames. A node that sends none while it runs (a checkpoint load,
or a sampler before its first step) moves it with time instead: :meth:`ProgressPlan.receive_tick`
counts the time it has run against its learned duration (its set-up, for a sampler), up to
:data:`TICK_HOLD` of it, so a node slower than learned holds the bar rather than overshooting,
and its end moves it on. Until the job has succeeded the percentage stays below 100, so a
subscriber can trust 100. :meth:`ProgressPlan.eta_s` is the weight still to run.

The plan also measures each node it sees start and end (from ``executing`` to the next
node's start, its ``executed``, or the prompt's success): :meth:`ProgressPlan.measured`
hands these durations to the tracker, which learns them for the next runs.

A paused job's plan (:meth:`ProgressPlan.pause`) keeps its finished nodes and drops the
interrupted node's share; the plan of its next prompt (:meth:`ProgressPlan.next_run`) counts
those nodes as done, also when ComfyUI serves them from its cache (they were this job's work),
so after a ``resume`` the percentage goes on from where it was.

A plan's node sets (:meth:`ProgressPlan.nodes`) are what the state file keeps at
node boundaries; :meth:`ProgressPlan.resume` rebuilds the plan after a restart, so
the nodes that finished before it still count as done (PROTOCOL.md §6.5).
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import NamedTuple

from .costs import DEFAULT_NODE_S, NodeEstimate

__all__ = ["RATE_AFTER_STEPS", "TICK_HOLD", "Measured", "PlanNodes", "ProgressPlan", "Weigh"]

_CEILING = 99.9
RATE_AFTER_STEPS = 3
"""Steps a running node reports after its first before its own seconds per step count."""
TICK_HOLD = 0.9
"""The share of a silent node's learned duration :meth:`ProgressPlan.receive_tick` counts at most."""
_UNKNOWN = NodeEstimate(DEFAULT_NODE_S, False)
_MIN_W = 0.001  # no node weighs nothing: a plan of instant nodes still moves

Weigh = Callable[[str], NodeEstimate]
"""Weighs a node id of the job's workflow before it runs."""


def _unweighed(node: str) -> NodeEstimate:
    return _UNKNOWN


class PlanNodes(NamedTuple):
    """A plan's nodes, sorted: what a sidecar restart must not forget."""

    will_run: tuple[str, ...]  # the denominator
    done: tuple[str, ...]
    cached: tuple[str, ...]
    current: str | None  # the node running (its fraction is not kept)


class Measured(NamedTuple):
    """A node seen from start to end: how long it ran and, if it reported steps, their rate."""

    node: str
    seconds: float
    steps: int  # its last ``max`` (0: it reported none)
    step_s: float | None  # seconds per step between its first and last reports; None if under two


class ProgressPlan:
    """Tracks one job's progress. After each input method, call :meth:`percent_update`."""

    __slots__ = (
        "_weigh",
        "_w",
        "_est",
        "_total",
        "_done_w",
        "_unknown",
        "_cached",
        "_carried",
        "_done",
        "_current",
        "_fraction",
        "_cur_done",
        "_start_ns",
        "_first_ns",
        "_first_v",
        "_last_ns",
        "_last_v",
        "_steps",
        "_rated",
        "_measured",
        "_last",
    )
    _weigh: Weigh
    _w: dict[str, float]  # the nodes that will run (the denominator) and their weights
    _est: dict[str, NodeEstimate]
    _total: float
    _done_w: float
    _unknown: set[str]  # nodes not done whose weight is the default: no ETA
    _cached: set[str]
    _carried: set[str]  # done in an earlier prompt of the job (before a pause): done even if cached
    _done: set[str]
    _current: str | None
    _fraction: float
    _cur_done: float  # seconds of the current node's weight done
    _start_ns: int | None  # when the current node started (None: not seen)
    _first_ns: int  # when it reported its first step (of this count: a new max starts over)
    _first_v: float | None  # and which (None: none yet)
    _last_ns: int  # when it reported its latest
    _last_v: float
    _steps: float  # its last max
    _rated: bool  # its weight follows its own measured rate
    _measured: list[Measured]
    _last: float

    def __init__(self, will_run: Collection[str], floor: float = 0.0, weigh: Weigh | None = None) -> None:
        """``floor``: the percentage already reported for this job (a resubmitted job never goes back);
        ``weigh``: the estimate of a node (None: every node weighs the default)."""
        self._reset(weigh, floor)
        for node in will_run:
            self._add(node)

    @classmethod
    def resume(cls, nodes: PlanNodes, floor: float, weigh: Weigh | None = None) -> ProgressPlan:
        """The plan :meth:`nodes` described, reporting nothing below ``floor``.

        Its done nodes count as done; its current node runs on (a different node
        announced next means it finished).
        """
        plan = cls((), floor, weigh)
        plan._restore(nodes)
        return plan

    def next_run(self, will_run: Collection[str], weigh: Weigh | None = None) -> ProgressPlan:
        """The plan of the job's next prompt: ``will_run``, plus the nodes this plan finished, which
        count as done (also when served from cache); nothing below this plan's percentage."""
        plan = ProgressPlan(will_run, self._last, weigh)
        for node in sorted(self._done):
            plan._add(node)
            plan._finish(node)
        plan._carried = set(self._done)
        return plan

    def pause(self) -> None:
        """The job stopped for a pause: the running node's share is dropped (it restarts on resume)."""
        self._current, self._fraction, self._cur_done, self._start_ns = None, 0.0, 0.0, None

    def weigh_with(self, weigh: Weigh) -> None:
        """Weigh the nodes again with ``weigh`` (a restored plan, once the instance's costs are known)."""
        nodes = self.nodes()
        self._reset(weigh, self._last)
        self._restore(nodes)

    # Public: inputs

    def receive_cached(self, nodes: Collection[str]) -> None:
        """Cached nodes never run: they leave the denominator."""
        for node in nodes:
            if node in self._carried:
                continue  # done before a pause: the job did that work, it stays done
            weight = self._w.pop(node, None)
            if weight is not None:
                self._total -= weight
                if node in self._done:
                    self._done.discard(node)
                    self._done_w -= weight
            self._unknown.discard(node)
            if node == self._current:  # it does not run after all
                self._current, self._fraction, self._cur_done, self._start_ns = None, 0.0, 0.0, None
        self._cached.update(nodes)

    def receive_executing(self, node: str, now_ns: int | None = None) -> None:
        """``node`` starts (at ``now_ns``); the node that ran before it has finished."""
        if self._current is not None and self._current != node:
            self._end_current(now_ns)
        self._add(node)
        if self._current != node:
            self._start(node, now_ns)
        self._current = node
        self._fraction = 0.0
        self._cur_done = 0.0

    def receive_progress(self, node: str | None, value: float, maximum: float, now_ns: int | None = None) -> None:
        """``node`` (None: the current one) reports ``value`` of ``maximum`` steps at ``now_ns``.

        The hot path: a few float operations, no allocation beyond the floats.
        """
        current = self._current
        if node is not None and node != current:
            # its executing was missed: neither the node before it nor this one can be timed
            if current is not None:
                self._start_ns = None
            self.receive_executing(node, None)
            current = node
        if maximum <= 0 or current is None or current in self._done:
            return
        fraction = value / maximum
        self._fraction = fraction = 0.0 if fraction < 0.0 else 1.0 if fraction > 1.0 else fraction
        start = self._start_ns
        if start is not None and now_ns is not None:
            self._last_ns, self._last_v = now_ns, value
            first_v = self._first_v
            if first_v is None or value < first_v or maximum != self._steps:
                self._first_ns, self._first_v, self._steps = now_ns, value, maximum  # its steps (re)start
                first_v = value
            if value - first_v >= RATE_AFTER_STEPS:  # its own rate: the time it ran is its done part
                first_ns = self._first_ns
                rate = (now_ns - first_ns) / 1e9 / (value - first_v)
                weight = (first_ns - start) / 1e9 + (maximum - first_v) * rate
                if weight < _MIN_W:
                    weight = _MIN_W
                weights = self._w
                self._total += weight - weights[current]
                weights[current] = weight
                elapsed = (now_ns - start) / 1e9
                self._cur_done = elapsed if elapsed < weight else weight
                if not self._rated:
                    self._rated = True
                    self._unknown.discard(current)
                return
        est = self._est[current]
        step_s = est.step_s
        if step_s is None:
            self._cur_done = fraction * self._w[current]
            return
        overhead = est.overhead_s
        self._reweigh(current, overhead + maximum * step_s)
        done, weight = overhead + value * step_s, self._w[current]
        self._cur_done = done if done < weight else weight

    def receive_tick(self, now_ns: int) -> None:
        """Time passed (``now_ns``) while the current node sent nothing: while :attr:`ticking`, its
        done part is the time it has run, at most :data:`TICK_HOLD` of its learned duration (of its
        set-up, for a node that reports steps). It never lowers the done part; a frame or the
        node's end takes over as usual."""
        if not self.ticking:
            return
        node = self._current
        assert node is not None and self._start_ns is not None
        est = self._est[node]
        span = self._w[node] if est.step_s is None else est.overhead_s
        elapsed = (now_ns - self._start_ns) / 1e9
        limit = TICK_HOLD * span
        done = elapsed if elapsed < limit else limit
        if done > self._cur_done:
            self._cur_done = done

    def receive_executed(self, node: str, now_ns: int | None = None) -> None:
        """An output node finished; ComfyUI re-sends this for cached outputs, which never ran."""
        if node in self._cached:
            return
        self._add(node)
        if node == self._current:
            self._end_current(now_ns)
            self._current = None
            self._fraction = 0.0
            self._cur_done = 0.0
        else:
            self._finish(node)

    def receive_success(self, now_ns: int | None = None) -> None:
        """The prompt succeeded: the node running last has finished (its time is measured)."""
        if self._current is not None and self._current not in self._done:
            self._end_current(now_ns)
        self._current = None
        self._fraction = self._cur_done = 0.0

    def receive_state(self, finished: Collection[str], running: str | None, value: float, maximum: float) -> None:
        """A snapshot of node states (ComfyUI ``progress_state``), e.g. after frames were missed.

        ``finished`` nodes are done (cached ones excepted: they never ran); ``running`` is
        the current node at ``value`` of ``maximum``. Nothing of it is timed.
        """
        for node in finished:
            if node not in self._cached:
                self._add(node)
                self._finish(node)
        if self._current in self._done:
            self._current, self._fraction, self._cur_done = None, 0.0, 0.0
        if running is not None and running not in self._done:
            if running != self._current:
                self._add(running)
                self._start(running, None)
                self._current, self._fraction, self._cur_done = running, 0.0, 0.0
            self._start_ns = None
            self.receive_progress(running, value, maximum)

    # Public: outputs

    def nodes(self) -> PlanNodes:
        """The node sets, to save at a node boundary (a few set copies: not per progress frame)."""
        return PlanNodes(tuple(sorted(self._w)), tuple(sorted(self._done)), tuple(sorted(self._cached)), self._current)

    def measured(self) -> list[Measured]:
        """The nodes timed from start to end since the last call (for the tracker to learn)."""
        measured, self._measured = self._measured, []
        return measured

    @property
    def known(self) -> bool:
        """Whether the plan knows which nodes will run (False before ``job.queued``)."""
        return bool(self._w or self._cached)

    @property
    def ticking(self) -> bool:
        """Whether :meth:`receive_tick` can move the percentage: the running node was seen starting,
        has reported no step yet, and its class's duration (a sampler's set-up) was learned."""
        node = self._current
        if node is None or self._start_ns is None or self._first_v is not None or node in self._done:
            return False
        est = self._est.get(node)
        return est is not None and est.known and est.overhead_s > 0.0

    @property
    def percent(self) -> float:
        """The last percentage reported (0.0 before any)."""
        return self._last

    def eta_s(self) -> float | None:
        """Seconds of work still to run (one decimal); None while a node still to run weighs the default."""
        if self._unknown or not self._w:
            return None
        current = self._cur_done if self._current is not None and self._current not in self._done else 0.0
        return round(max(self._total - self._done_w - current, 0.0), 1)

    def percent_update(self) -> float | None:
        """The new percentage if it rose by at least 0.1 since the last report, else None."""
        total = self._total
        if total <= 0.0:
            return None
        units = self._done_w + (self._cur_done if self._current not in self._done else 0.0)
        raw = 100.0 * units / total
        if raw < self._last + 0.04:  # cannot round to a rise of 0.1: skip round(), 1 µs of a frame's few
            return None
        value = min(round(raw, 1), _CEILING)
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

    # Private

    def _reset(self, weigh: Weigh | None, floor: float) -> None:
        self._weigh = weigh or _unweighed
        self._w, self._est = {}, {}
        self._total = self._done_w = 0.0
        self._unknown, self._cached, self._done, self._carried = set(), set(), set(), set()
        self._current = None
        self._fraction = self._cur_done = 0.0
        self._start_ns = self._first_v = None
        self._first_ns = self._last_ns = 0
        self._last_v = self._steps = 0.0
        self._rated = False
        self._measured = []
        self._last = floor

    def _restore(self, nodes: PlanNodes) -> None:
        for node in (*nodes.will_run, *nodes.done):
            if node not in nodes.cached:
                self._add(node)
        for node in nodes.done:
            if node not in nodes.cached:
                self._finish(node)
        self._cached.update(nodes.cached)
        self._current = nodes.current
        if nodes.current is not None and nodes.current not in self._w and nodes.current not in nodes.cached:
            self._add(nodes.current)

    def _reweigh(self, node: str, weight: float) -> None:
        weight = weight if weight > _MIN_W else _MIN_W
        old = self._w[node]
        if weight != old:
            self._total += weight - old
            self._w[node] = weight

    def _add(self, node: str) -> None:
        """``node`` will run: it joins the denominator with its estimate."""
        if node in self._w:
            return
        est = self._weigh(node)
        self._est[node] = est
        self._w[node] = weight = max(est.seconds, _MIN_W)
        self._total += weight
        if not est.known:
            self._unknown.add(node)

    def _finish(self, node: str) -> None:
        if node not in self._done:
            self._done.add(node)
            self._done_w += self._w[node]
            self._unknown.discard(node)

    def _start(self, node: str, now_ns: int | None) -> None:
        self._start_ns = now_ns
        self._first_v = None
        self._first_ns = self._last_ns = 0
        self._last_v = self._steps = 0.0
        self._rated = False

    def _end_current(self, now_ns: int | None) -> None:
        """The current node finished at ``now_ns``: it counts done, and its time is kept if it was timed."""
        node = self._current
        if node is None:
            return
        start = self._start_ns
        if start is not None and now_ns is not None and now_ns >= start and node not in self._done:
            step_s = None
            if self._first_v is not None and self._last_v > self._first_v:
                step_s = (self._last_ns - self._first_ns) / 1e9 / (self._last_v - self._first_v)
            steps = int(self._steps) if step_s is not None else 0
            self._measured.append(Measured(node, (now_ns - start) / 1e9, steps, step_s))
        self._finish(node)
        self._start_ns = None
