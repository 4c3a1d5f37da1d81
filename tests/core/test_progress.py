"""``sidecar.core.progress.ProgressPlan``: monotonic percent, exactly 100 only at the end."""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path

import pytest

from sidecar.core.progress import PlanNodes, ProgressPlan
from sidecar.protocol import comfy
from tests.tracesupport import frame_of, load, prompt_posts, trace_params, ws_recv


def test_empty_plan_reports_nothing_until_final() -> None:
    """No node will run (all cached): no intermediate percent, then 100 once."""
    plan = ProgressPlan(())
    assert plan.percent_update() is None
    assert plan.percent_final() == 100.0
    assert plan.percent_final() is None
    assert plan.percent == 100.0


def test_each_finished_node_counts_one_unit() -> None:
    """Nodes finish when the next starts or when they report ``executed``."""
    plan = ProgressPlan({"1", "2", "3", "4"})
    plan.receive_executing("1")
    assert plan.percent_update() is None
    plan.receive_executing("2")
    assert plan.percent_update() == 25.0
    plan.receive_executed("2")
    assert plan.percent_update() == 50.0


def test_progress_of_the_running_node_counts_its_fraction() -> None:
    """``progress`` value/max adds a fraction of the running node."""
    plan = ProgressPlan({"1", "2"})
    plan.receive_executing("1")
    plan.receive_progress("1", 1, 4)
    assert plan.percent_update() == 12.5
    plan.receive_progress(None, 3, 4)
    assert plan.percent_update() == 37.5


def test_percent_never_reaches_100_before_final() -> None:
    """Everything done still reports 99.9; only ``percent_final`` says 100."""
    plan = ProgressPlan({"1"})
    plan.receive_executing("1")
    plan.receive_progress("1", 8, 8)
    assert plan.percent_update() == 99.9
    plan.receive_executed("1")
    assert plan.percent_update() is None
    assert plan.percent_final() == 100.0


def test_cached_nodes_leave_the_denominator_and_their_executed_is_ignored() -> None:
    """Cached nodes never run; ComfyUI's re-sent ``executed`` for them counts nothing."""
    plan = ProgressPlan({"1", "2", "3", "4"})
    plan.receive_cached(["1", "4"])
    plan.receive_executed("4")
    assert plan.percent_update() is None
    plan.receive_executing("2")
    plan.receive_executing("3")
    assert plan.percent_update() == 50.0


def test_unplanned_node_joins_the_denominator_without_lowering_the_percent() -> None:
    """A node ComfyUI runs that the plan did not expect is counted; the percent never falls."""
    plan = ProgressPlan({"1", "2"})
    plan.receive_executing("1")
    plan.receive_progress("1", 1, 1)
    assert plan.percent_update() == 50.0
    plan.receive_executing("9")  # 1 of 3 done: 33.3 would be a fall
    assert plan.percent_update() is None
    assert plan.percent == 50.0
    plan.receive_executing("2")  # 2 of 3 done
    assert plan.percent_update() == 66.7


def test_small_rises_are_not_reported() -> None:
    """A rise under 0.1 point makes no update; the next real rise does."""
    plan = ProgressPlan({str(i) for i in range(2000)})
    plan.receive_executing("0")
    plan.receive_progress("0", 1, 1000)
    assert plan.percent_update() is None
    plan.receive_progress("0", 1000, 1000)
    assert plan.percent_update() == 0.1


def _mid_sampler() -> ProgressPlan:
    """Five nodes: 1 and 4 finished, 3 served from cache, sampler 2 at 5/10 when the sidecar stops."""
    plan = ProgressPlan({"1", "2", "3", "4", "5", "6"})
    plan.receive_cached(["3"])
    plan.receive_executing("1")
    plan.receive_executing("4")
    plan.receive_executing("2")
    plan.receive_progress("2", 5, 10)
    assert plan.percent_update() == 50.0  # (2 + 0.5) of 5
    return plan


def test_nodes_are_what_a_restart_must_keep() -> None:
    """The denominator, finished, cached and running nodes, sorted."""
    assert _mid_sampler().nodes() == PlanNodes(("1", "2", "4", "5", "6"), ("1", "4"), ("3",), "2")


@pytest.mark.parametrize("floor", [50.0, 40.0], ids=["graceful-stop", "crash"])
def test_a_resumed_plan_counts_finished_nodes_and_goes_on_from_the_running_node(floor: float) -> None:
    """Restored from its nodes (floor: the last percent published, or after a crash the one at the
    sampler's start), the plan's next report once ComfyUI's sampler goes on is above what was
    published before the restart; it never reports below its floor."""
    plan = ProgressPlan.resume(_mid_sampler().nodes(), floor)
    assert plan.percent == floor
    plan.receive_executing("2")  # ComfyUI re-announces the running node
    assert plan.percent_update() is None
    plan.receive_progress("2", 7, 10)
    assert plan.percent_update() == 54.0
    plan.receive_executing("5")
    assert plan.percent_update() == 60.0


def test_a_resumed_plan_counts_its_running_node_done_when_another_one_is_announced() -> None:
    """The sampler finished while the sidecar was down: ComfyUI announces the next node."""
    plan = ProgressPlan.resume(_mid_sampler().nodes(), 50.0)
    plan.receive_progress("5", 1, 10)
    assert plan.percent_update() == 62.0  # (3 + 0.1) of 5
    assert plan.nodes().done == ("1", "2", "4")


def test_a_resumed_plan_never_reports_below_its_floor() -> None:
    """Until the computed percentage passes the floor, nothing is reported."""
    plan = ProgressPlan.resume(PlanNodes(("1", "2"), (), (), "1"), 70.0)
    plan.receive_progress("1", 8, 10)
    assert plan.percent_update() is None and plan.percent == 70.0
    plan.receive_executing("2")
    plan.receive_progress("2", 5, 10)
    assert plan.percent_update() == 75.0


def test_a_plan_is_known_once_it_has_nodes() -> None:
    """A plan with no node sets (a job not queued yet, or a row of an older sidecar) is rebuilt on restore."""
    assert not ProgressPlan(()).known
    assert not ProgressPlan.resume(PlanNodes((), (), (), None), 10.0).known
    assert ProgressPlan.resume(PlanNodes((), (), ("1",), None), 10.0).known
    assert _mid_sampler().known


@pytest.mark.parametrize(("value", "maximum"), [(5, 0), (-3, 8), (12, 8)])
def test_odd_progress_values_are_clamped(value: float, maximum: float) -> None:
    """max 0 is ignored; value/max is clamped to [0, 1]."""
    plan = ProgressPlan({"1", "2"})
    plan.receive_progress("1", value, maximum)
    percent = plan.percent_update()
    assert percent is None or 0 < percent <= 50.0


@pytest.mark.parametrize("path", trace_params("01", "02", "05", "06", "09"))
def test_recorded_runs_give_a_rising_percent_below_100(path: Path) -> None:
    """Fed a trace's node messages directly, reported percentages rise strictly and stay < 100."""
    records = load(path)
    posts = [r for _, r in prompt_posts(records) if r["status"] == 200]
    decoder = comfy.Decoder()
    for post in posts:
        pid = post["response"]["prompt_id"]
        plan = ProgressPlan(post["request"]["prompt"].keys())
        reported = []
        for _, rec in ws_recv(records):
            frame, is_text = frame_of(rec)
            msg = decoder.decode(frame, is_text=is_text)
            if getattr(msg, "prompt_id", None) != pid:
                continue
            if isinstance(msg, comfy.ExecutionCached):
                plan.receive_cached(msg.nodes)
            elif isinstance(msg, comfy.Executing) and msg.node is not None:
                plan.receive_executing(msg.node)
            elif isinstance(msg, comfy.Progress):
                plan.receive_progress(msg.node, msg.value, msg.max)
            elif isinstance(msg, comfy.Executed):
                plan.receive_executed(msg.node)
            value = plan.percent_update()
            if value is not None:
                reported.append(value)
        assert all(b > a for a, b in pairwise(reported))
        assert all(0 < p < 100 for p in reported)
