"""``sidecar.core.progress.ProgressPlan``: monotonic percent, exactly 100 only at the end."""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest

from sidecar.core.costs import DEFAULT_NODE_S, NodeCost, NodeCosts, NodeEstimate
from sidecar.core.jobs import JobBook
from sidecar.core.progress import Measured, PlanNodes, ProgressPlan
from sidecar.core.sequence import Sequencer
from sidecar.core.tracker import InstanceTracker
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


# Weighted by what nodes cost (issue 11 section 4) ---------------------------------------

S = 1_000_000_000  # ns per second

T2I = {
    "3": {"class_type": "KSampler", "inputs": {"steps": 20, "model": ["4", 0]}},
    "4": {"class_type": "CheckpointLoaderSimple", "inputs": {}},
    "5": {"class_type": "EmptyLatentImage", "inputs": {}},
    "6": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["4", 1]}},
    "7": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["4", 1]}},
    "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0]}},
    "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0]}},
}


def _learned() -> NodeCosts:
    """What earlier runs taught: a 2 s load, a 20-step sampler at 50 ms a step after 50 ms of set-up."""
    return NodeCosts(
        {
            "CheckpointLoaderSimple": NodeCost(2.0, None, 0, 3),
            "CLIPTextEncode": NodeCost(0.1, None, 0, 3),
            "EmptyLatentImage": NodeCost(0.0, None, 0, 3),
            "KSampler": NodeCost(1.05, 0.05, 20, 3),
            "VAEDecode": NodeCost(0.2, None, 0, 3),
            "SaveImage": NodeCost(0.1, None, 0, 3),
        }
    )


def _plan(costs: NodeCosts, workflow: dict[str, Any] = T2I, floor: float = 0.0) -> ProgressPlan:
    return ProgressPlan(workflow.keys(), floor, lambda node: costs.estimate(workflow, node))


def test_nodes_weigh_their_learned_seconds_and_eta_is_the_weight_left() -> None:
    """Cold text-to-image: the checkpoint load is 2.0 of 3.551 s (the latent weighs 1 ms), so it
    moves the bar to 56.3 % when it ends, not to one node of seven (14.3 %)."""
    plan = _plan(_learned())
    plan.receive_executing("4", 0)
    assert plan.percent_update() is None
    assert plan.eta_s() == 3.6
    plan.receive_executing("6", 2 * S)
    assert plan.percent_update() == 56.3
    assert plan.eta_s() == 1.6


def test_a_class_never_seen_weighs_the_default_and_leaves_eta_unknown() -> None:
    """An unseen class weighs DEFAULT_NODE_S; eta is nil until no node still to run is unseen."""
    costs = _learned()
    workflow = {**T2I, "10": {"class_type": "SomeCustomNode", "inputs": {}}}
    plan = _plan(costs, workflow)
    assert plan.eta_s() is None
    plan.receive_executing("10", 0)
    assert plan.eta_s() is None  # it runs: its own time is still unknown
    plan.receive_executing("4", 5 * S)
    assert plan.eta_s() == 3.6
    assert plan.percent_update() == round(100 * DEFAULT_NODE_S / (3.551 + DEFAULT_NODE_S), 1)


def test_a_sampler_weighs_its_steps_at_the_learned_rate_then_at_its_own() -> None:
    """Warm run (loaders cached) of 20 steps: at the first step the sampler counts its learned set-up
    and one step (0.1 of 1.35 s: 7.4 %, its share of the time; one node of three at 1/20 would be 1.7 %).
    Once it has reported 3 more steps its own rate (here 100 ms, twice the learned one) sets its
    weight, and its done part is the time it ran."""
    plan = _plan(_learned())
    plan.receive_cached(["4", "5", "6", "7"])
    plan.receive_executing("3", 0)
    plan.receive_progress("3", 1, 20, S // 10)
    assert plan.percent_update() == 7.4
    assert plan.eta_s() == 1.2
    for step in (2, 3, 4):
        plan.receive_progress("3", step, 20, step * S // 10)
    # weight: 0.1 s to the first step + 19 steps of 0.1 s = 2.0 s; done: 0.4 s; total 2.3 s
    assert plan.percent_update() == round(100 * 0.4 / 2.3, 1)
    assert plan.eta_s() == 1.9


def test_percent_holds_when_a_sampler_proves_slower_and_never_goes_back() -> None:
    """The learned rate said 50 ms a step; it runs at 200 ms: the weight grows, the percentage holds
    until the work catches up, then rises again, and stays below 100 until the end."""
    plan = _plan(_learned())
    plan.receive_cached(["4", "5", "6", "7"])
    plan.receive_executing("3", 0)
    reported = []
    for step in range(1, 21):
        plan.receive_progress("3", step, 20, step * S // 5)
        value = plan.percent_update()
        if value is not None:
            reported.append(value)
    plan.receive_executing("8", 4 * S)
    plan.receive_executed("9", 4 * S + S // 3)
    reported.extend(v for v in (plan.percent_update(), plan.percent_final()) if v is not None)
    assert reported == sorted(reported) and len(set(reported)) == len(reported)
    assert reported[-1] == 100.0 and reported[-2] <= 99.9


def test_measured_durations_are_what_the_nodes_took() -> None:
    """From executing to the next node's start, to its executed, or to the prompt's success; a
    sampler's rate between its first and last steps. A node whose start was not seen is not timed."""
    plan = _plan(NodeCosts())
    plan.receive_executing("4", 0)
    plan.receive_executing("6", 2 * S)
    plan.receive_executing("3", 2 * S + S // 10)
    for step in range(1, 5):
        plan.receive_progress("3", step, 4, 2 * S + S // 10 + step * S // 20)
    plan.receive_executing("8", 2 * S + 4 * S // 10)
    plan.receive_executed("8", 2 * S + 5 * S // 10)
    plan.receive_executing("9", 2 * S + 5 * S // 10)
    plan.receive_success(2 * S + 6 * S // 10)
    measured = {m.node: m for m in plan.measured()}
    assert measured["4"] == Measured("4", 2.0, 0, None)
    assert measured["3"].seconds == pytest.approx(0.3) and measured["3"].steps == 4
    assert measured["3"].step_s == pytest.approx(0.05)
    assert measured["8"].seconds == pytest.approx(0.1) and measured["9"].seconds == pytest.approx(0.1)
    assert plan.measured() == []
    resumed = ProgressPlan.resume(plan.nodes()._replace(current="9", done=("3", "4")), 50.0)
    resumed.receive_executing("8", 10 * S)  # the running node's start was before the restart
    resumed.receive_progress("5", 1, 2, 11 * S)  # its executing was missed
    resumed.receive_success(12 * S)
    assert [m.node for m in resumed.measured()] == []


def test_a_restored_plan_is_weighed_again_and_never_reports_below_its_floor() -> None:
    """``weigh_with`` on a plan resumed from its node sets: done nodes count their weights."""
    costs = _learned()
    plan = ProgressPlan.resume(PlanNodes(("3", "4", "5", "6", "7", "8", "9"), ("4", "5", "6", "7"), (), "3"), 40.0)
    plan.weigh_with(lambda node: costs.estimate(T2I, node))
    assert plan.percent == 40.0 and plan.nodes().current == "3"
    plan.receive_progress("3", 10, 20)
    assert plan.percent_update() == round(100 * (2.201 + 0.05 + 0.5) / 3.551, 1)
    assert plan.eta_s() == 0.8


def test_costs_average_the_runs_and_weigh_a_sampler_by_its_steps_input() -> None:
    """The first run sets a class's cost; later ones move it halfway; unusable values are ignored."""
    costs = NodeCosts()
    costs.learn("VAEDecode", 0.4)
    costs.learn("VAEDecode", 0.2)
    costs.learn("VAEDecode", float("nan"))
    costs.learn("VAEDecode", -1.0)
    assert costs.get("VAEDecode") == NodeCost(0.30000000000000004, None, 0, 2)
    costs.learn("KSampler", 1.05, 20, 0.05)
    assert costs.changed().keys() == {"VAEDecode", "KSampler"}
    assert costs.changed() == {}
    long = {"3": {"class_type": "KSampler", "inputs": {"steps": 300}}}
    assert costs.estimate(long, "3") == NodeEstimate(pytest.approx(0.05 + 300 * 0.05), True, 0.05, pytest.approx(0.05))
    assert costs.estimate({"3": {"class_type": "KSampler"}}, "3").seconds == pytest.approx(1.05)
    assert costs.estimate(long, "missing") == NodeEstimate(DEFAULT_NODE_S, False)
    broken = NodeCosts(
        {"A": NodeCost(float("inf"), None, 0, 1), "B": NodeCost(0.5, -1.0, 3, 1), "C": NodeCost(1, None, 0, 1)}
    )
    assert len(broken) == 1 and broken.get("C") is not None


def test_a_running_node_reported_cached_leaves_the_plan_and_later_frames_do_no_harm() -> None:
    """Out-of-order frames: a node announced running then listed as cached stops counting."""
    plan = _plan(_learned())
    plan.receive_executing("4", 0)
    plan.receive_cached(["4"])
    plan.receive_progress(None, 1, 2, S)
    plan.receive_executed("9", 2 * S)
    assert plan.nodes().current is None and "4" not in plan.nodes().will_run
    assert plan.percent_update() == round(100 * 0.1 / 1.551, 1)
    assert [m.node for m in plan.measured()] == []


# Moved by time while a node sends nothing (issue 11 section 4: the held gap) ----------------


def test_a_silent_node_with_a_learned_duration_moves_the_bar_with_time_and_holds_before_its_end() -> None:
    """Cold text-to-image, the checkpoint load learned at 2 s (of 3.551 s): ticks every 0.5 s move
    the percent with the time it ran (14.1, 28.2, 42.2 %), up to 90 % of the node (50.7 %), where a
    load slower than learned holds; its end then moves the bar to its whole weight (56.3 %).
    Monotonic, never above 99.9, eta_s falls with the time."""
    plan = _plan(_learned())
    plan.receive_executing("4", 0)
    assert plan.ticking
    reported, etas = [], []
    for half in range(1, 9):  # 0.5 s .. 4 s: the load takes twice what was learned
        plan.receive_tick(half * S // 2)
        value = plan.percent_update()
        if value is not None:
            reported.append(value)
            etas.append(plan.eta_s())
    assert reported == [14.1, 28.2, 42.2, 50.7]  # then held at 90 % of 2 s
    assert etas == [3.1, 2.6, 2.1, 1.8]
    plan.receive_executing("6", 4 * S)
    assert plan.nodes().current == "6" and plan.ticking  # the text encode, learned too
    assert plan.percent_update() == 56.3
    assert reported == sorted(reported) and max(reported) <= 99.9


def test_a_silent_node_that_ends_earlier_than_learned_jumps_to_done() -> None:
    """Ticks counted 0.5 s of a 2 s load; it ends at 0.6 s: the next node's start counts it whole."""
    plan = _plan(_learned())
    plan.receive_executing("4", 0)
    plan.receive_tick(S // 2)
    assert plan.percent_update() == 14.1
    plan.receive_executing("6", 6 * S // 10)
    assert plan.percent_update() == 56.3
    plan.receive_tick(7 * S // 10)  # the text encode runs: 0.1 s learned, 90 % of it at most
    assert plan.percent_update() == round(100 * (2.0 + 0.09) / 3.551, 1)
    plan.receive_tick(10 * S)
    assert plan.percent_update() is None  # held at 90 % of the encode


def test_no_tick_moves_an_unlearned_node_a_stepping_node_or_an_untimed_one() -> None:
    """Nothing learned: a tick does nothing. A sampler's set-up (learned 50 ms) moves with time until
    its first step, then only its steps do. A node whose start was not seen is not moved."""
    plan = _plan(NodeCosts())
    plan.receive_executing("4", 0)
    assert not plan.ticking
    plan.receive_tick(5 * S)
    assert plan.percent_update() is None
    learned = _plan(_learned())
    learned.receive_cached(["4", "5", "6", "7"])
    learned.receive_executing("3", 0)
    assert learned.ticking
    learned.receive_tick(S)
    assert learned.percent_update() == round(100 * 0.045 / 1.35, 1)  # 90 % of its 50 ms set-up
    learned.receive_progress("3", 1, 20, S + S // 10)
    assert not learned.ticking
    reported = learned.percent_update()
    learned.receive_tick(3 * S)
    assert learned.percent_update() is None and reported is not None
    resumed = ProgressPlan.resume(PlanNodes(("3", "4"), (), (), "4"), 0.0, lambda n: _learned().estimate(T2I, n))
    assert not resumed.ticking
    resumed.receive_tick(S)
    assert resumed.percent_update() is None


def test_the_tracker_ticks_the_running_job_only_while_its_node_is_silent_and_learned() -> None:
    """``InstanceTracker.tick`` publishes ``job.progress`` (with eta_s) for the running job while its
    checkpoint load runs, by the same rules as a frame's; nothing when no job runs or once it ended."""
    book = JobBook(Sequencer("run-test"))
    tracker = InstanceTracker("sim", book)
    tracker.costs = _learned()
    assert not tracker.ticking and tracker.tick(S) == []
    job, _ = book.accept("j1", "sim", T2I, None, 0)
    tracker.submitted(job, "p1", 1, {}, 0)
    tracker.feed(comfy.ExecutionStart(prompt_id="p1"), 0)
    assert not tracker.ticking
    tracker.feed(comfy.Executing(node="4", prompt_id="p1"), S)
    assert tracker.ticking
    events = tracker.tick(S + S // 2)
    assert [(e.type, e.data.percent, e.data.eta_s, e.ts) for e in events] == [  # type: ignore[union-attr]
        ("job.progress", 14.1, 3.1, S + S // 2)
    ]
    assert tracker.tick(S + S // 2) == []  # no rise: nothing
    assert tracker.progress_ns == S  # a tick is not ComfyUI at work
    tracker.feed(comfy.Executing(node=None, prompt_id="p1"), 2 * S)
    assert not tracker.ticking and tracker.tick(3 * S) == []


# Pause and resume (issue 10 section 3) -------------------------------------------------------


def test_a_resumed_plan_counts_the_nodes_done_before_the_pause_even_when_cached() -> None:
    """Five equal nodes, three done and the fourth half way when paused (70 %): the resumed prompt
    serves the three from cache, and the bar goes on from 70 (the fourth restarts: it holds, then
    rises), never back, to 100 only at the end."""
    plan = ProgressPlan({"1", "2", "3", "4", "5"})
    for node in ("1", "2", "3", "4"):
        plan.receive_executing(node)
    plan.receive_progress("4", 5, 10)
    assert plan.percent_update() == 70.0
    plan.pause()
    assert plan.nodes().current is None and plan.percent == 70.0

    resumed = plan.next_run({"1", "2", "3", "4", "5"})
    resumed.receive_cached(["1", "2", "3"])
    assert resumed.nodes().done == ("1", "2", "3") and "1" in resumed.nodes().will_run
    resumed.receive_executing("4")
    resumed.receive_progress("4", 5, 10)
    assert resumed.percent_update() is None  # 70 again: held, not reported twice
    resumed.receive_progress("4", 8, 10)
    assert resumed.percent_update() == 76.0  # (3 + 0.8) of 5: from where it was, not from 0 of 2
    resumed.receive_executing("5")
    assert resumed.percent_update() == 80.0
    assert resumed.percent_final() == 100.0


def test_a_plan_with_nothing_done_is_a_fresh_plan_with_its_floor() -> None:
    """``next_run`` of an empty plan (a first submit, a resubmission) adds nothing: cached nodes leave."""
    first = ProgressPlan((), floor=12.5).next_run({"1", "2"})
    first.receive_cached(["1"])
    assert first.nodes() == PlanNodes(("2",), (), ("1",), None) and first.percent == 12.5
