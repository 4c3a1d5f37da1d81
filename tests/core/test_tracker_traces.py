"""``JobBook`` + ``InstanceTracker`` replayed against every recorded trace.

Expected values come from the trace records themselves (see ``tests/core/replay.py``:
the oracle reads raw JSON, never the code under test).
"""

from __future__ import annotations

import copy
from itertools import pairwise
from pathlib import Path
from typing import Any

import msgspec
import pytest

from sidecar.protocol.events import JobFailed
from tests.core.replay import END, Replay, TraceJob, replay
from tests.tracesupport import client_ids, frame_of, trace_params

ALL_TRACES = trace_params()
FINAL = ("job.completed", "job.failed")


def _unambiguous(run: Replay) -> list[TraceJob]:
    """Jobs whose prompt id no other job of the trace shares (08 reuses ids on purpose)."""
    ids = [tj.prompt_id for tj in run.jobs]
    return [tj for tj in run.jobs if ids.count(tj.prompt_id) == 1]


def _percents(run: Replay, tj: TraceJob) -> list[float]:
    return [e.data.percent for e in run.events_of(tj, "job.progress")]


def _class_of(tj: TraceJob, class_type: str) -> str:
    workflow = tj.post["request"]["prompt"]
    (node,) = [nid for nid, n in workflow.items() if n["class_type"] == class_type]
    return node


def _expected_previews(run: Replay, tj: TraceJob) -> list[tuple[str, int, bytes]]:
    """``(node, size, image bytes)`` per preview frame of the run, attributed from the raw records.

    Type 4 names its node; type 1 belongs to the node of the last ``executing`` this
    client received (with or without ``prompt_id``).
    """
    labels = client_ids(run.records)
    mine = {i for i, _ in tj.frames}
    last_node: str | None = None
    out = []
    for i, rec in enumerate(run.records):
        if not (rec["src"] == "ws" and rec["dir"] == "recv"):
            continue
        if (labels.get(rec["client"]) or rec["client"]) != tj.client_id:
            continue
        if rec["kind"] == "text":
            if rec["msg"]["type"] == "executing" and rec["msg"]["data"].get("node") is not None:
                last_node = rec["msg"]["data"]["node"]
            continue
        if i not in mine:
            continue
        header = rec["header"]
        frame, _ = frame_of(rec)
        node = header["metadata"]["node_id"] if header["event"] == 4 else last_node
        out.append((node, header["image_len"], frame[len(frame) - header["image_len"] :]))
    return out


# Every trace --------------------------------------------------------------------------


@pytest.mark.parametrize("path", ALL_TRACES)
def test_events_carry_contiguous_seq_in_the_order_they_are_made(path: Path) -> None:
    """``seq`` is 1, 2, 3, ... over all events, with one ``run`` and the job's instance."""
    run = replay(path)
    events = run.events
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert {e.run for e in events} <= {"run-test"}
    jobs = {tj.job.job_id: tj for tj in run.jobs}
    assert all(e.instance == jobs[e.job_id].client_id for e in events if e.job_id is not None)


@pytest.mark.parametrize("path", ALL_TRACES)
def test_each_job_ends_as_its_trace_ends(path: Path) -> None:
    """accepted -> queued -> started (if ComfyUI started it) -> one final event matching the trace."""
    run = replay(path)
    for tj in _unambiguous(run):
        types = [e.type for e in run.events_of(tj)]
        started = bool(tj.texts("execution_start"))
        assert types[:2] == ["job.accepted", "job.queued"], tj.job.job_id
        assert ("job.started" in types) == started
        if started:
            assert types[2] == "job.started"
        finals = [t for t in types if t in FINAL]
        terminal = tj.terminal
        if terminal is None:
            assert finals == [] and tj.job.active
            assert tj.job.state == ("started" if started else "queued")
            continue
        expected = "job.completed" if terminal[0] == "execution_success" else "job.failed"
        assert finals == [expected], tj.job.job_id
        assert types[-1] == expected
        assert tj.job.state == expected.removeprefix("job.")


@pytest.mark.parametrize("path", ALL_TRACES)
def test_progress_rises_and_reaches_exactly_100_only_on_success(path: Path) -> None:
    """``job.progress`` strictly increases, stays below 100 until the job completes, then is 100."""
    run = replay(path)
    for tj in _unambiguous(run):
        percents = _percents(run, tj)
        assert all(b > a for a, b in pairwise(percents)), percents
        assert all(0 <= p <= 100 for p in percents)
        if tj.job.state == "completed":
            assert percents[-1] == 100.0
            assert percents.count(100.0) == 1
            types = [e.type for e in run.events_of(tj)]
            assert types[-2:] == ["job.progress", "job.completed"]
            assert tj.job.view().percent == 100.0
        else:
            assert all(p < 100 for p in percents)


@pytest.mark.parametrize("path", ALL_TRACES)
def test_node_events_mirror_the_recorded_node_messages(path: Path) -> None:
    """node.executing / node.output / node.cached follow the run's own messages, in order."""
    run = replay(path)
    for tj in _unambiguous(run):
        workflow = tj.post["request"]["prompt"]
        executing = [e.data for e in run.events_of(tj, "node.executing")]
        assert [d.node for d in executing] == tj.executing_nodes
        assert all(d.class_type == workflow[d.node]["class_type"] for d in executing)
        outputs = [(e.data.node, e.data.output) for e in run.events_of(tj, "node.output")]
        assert outputs == [(d["node"], d["output"]) for d in tj.texts("executed")]
        cached = [n for e in run.events_of(tj, "node.cached") for n in e.data.nodes]
        assert cached == tj.cached_nodes


@pytest.mark.parametrize("path", ALL_TRACES)
def test_completed_jobs_carry_the_history_outputs(path: Path) -> None:
    """``job.completed`` has every output of the /history record, plus those seen on the socket."""
    run = replay(path)
    for tj in _unambiguous(run):
        if tj.job.state != "completed":
            continue
        (done,) = run.events_of(tj, "job.completed")
        assert done.data.prompt_id == tj.prompt_id
        history = tj.history_outputs or {}
        for node, output in history.items():
            assert done.data.outputs[node] == output
        assert done.data.outputs.keys() == tj.ws_outputs.keys() | history.keys()
        assert done.data.outputs, "a completed job of these traces always has an output"


@pytest.mark.parametrize("path", ALL_TRACES)
def test_previews_are_attributed_to_the_node_that_made_them(path: Path) -> None:
    """Type 4 by its metadata, type 1 by the node last executing; bytes and sizes unchanged."""
    run = replay(path)
    for tj in _unambiguous(run):
        events = run.events_of(tj, "preview")
        expected = _expected_previews(run, tj)
        assert [(e.data.node, e.data.size_bytes, bytes(e.image)) for e in events] == expected
        assert [e.data.index for e in events] == list(range(len(events)))
        assert all(e.data.format == "jpeg" for e in events)


@pytest.mark.parametrize("path", ALL_TRACES)
def test_progress_denominator_is_the_nodes_that_really_run(path: Path) -> None:
    """The plan's denominator is the nodes that ran (cached and skipped ones excluded). With no node
    durations learned every node weighs the same: until a node has reported steps (then it weighs
    its measured time), when node k starts the percentage is k of the nodes that ran."""
    if path.name.startswith(("09", "10")):
        pytest.skip("messages were lost while disconnected; the run is not fully observed")
    run = replay(path, learn=False)
    checked = 0
    for tj in _unambiguous(run):
        if tj.job.state != "completed":
            continue
        ran = list(dict.fromkeys(tj.executing_nodes))
        assert set(tj.job.plan.nodes().will_run) == set(ran)
        last = 0.0
        seen: list[str] = []
        stepped = False
        for step in run.steps:
            mine = [e for e in step.events if e.job_id == tj.job.job_id]
            for e in mine:
                if e.type == "job.progress":
                    last = e.data.percent
            for e in mine:
                stepped = stepped or e.type == "node.progress"
                if e.type == "node.executing" and not stepped:
                    expected = min(round(100 * len(seen) / len(ran), 1), 99.9)
                    assert expected - 0.1 - 1e-9 <= last <= expected + 1e-9, (e.data.node, last, expected)
                    checked += 1
                if e.type == "node.executing":
                    seen.append(e.data.node)
    assert checked or not any(tj.executing_nodes for tj in run.jobs if tj.job.state == "completed")


def test_denominator_traces_include_cached_and_partially_invalid_runs() -> None:
    """The denominator check above really meets cached nodes and skipped (invalid) branches."""
    cached = partial = 0
    for param in trace_params("03", "04", "08"):
        run = replay(param.values[0])
        for tj in _unambiguous(run):
            if tj.job.state != "completed":
                continue
            cached += bool(tj.cached_nodes and tj.executing_nodes)
            partial += bool(tj.post["response"]["node_errors"] and tj.executing_nodes)
    assert cached >= 2
    assert partial >= 2


def test_a_node_that_leads_to_no_output_does_not_count() -> None:
    """With the instance's output classes, an extra dead-end node leaves every percentage unchanged."""
    classes = {"SaveImage", "PreviewImage", "BridgeText"}

    def add_dead_end(workflow: dict[str, Any]) -> dict[str, Any]:
        edited = copy.deepcopy(workflow)
        edited["99"] = {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}}
        return edited

    for param in trace_params("01", "02"):
        plain = replay(param.values[0], output_classes=classes)
        dead_end = replay(param.values[0], output_classes=classes, edit_workflow=add_dead_end)
        (a,), (b,) = plain.jobs, dead_end.jobs
        assert _percents(plain, a) == _percents(dead_end, b)
        assert _percents(plain, a)[0] < 100.0


# Scenario by scenario -----------------------------------------------------------------


@pytest.mark.parametrize("path", trace_params("01", "02"))
def test_successful_run_publishes_the_whole_life_of_the_job(path: Path) -> None:
    """01/02: queued, started, node events, previews, progress to 100, completed with history outputs."""
    run = replay(path)
    (tj,) = run.jobs
    assert tj.terminal is not None and tj.terminal[0] == "execution_success"
    types = [e.type for e in run.events_of(tj)]
    assert types[:3] == ["job.accepted", "job.queued", "job.started"]
    assert types[-1] == "job.completed"
    assert types.count("node.executing") == len(tj.executing_nodes) > 0
    assert types.count("node.progress") == len(tj.texts("progress")) > 0
    assert types.count("preview") == len(_expected_previews(run, tj)) > 0
    assert _percents(run, tj)[-1] == 100.0
    assert tj.history_outputs
    (done,) = run.events_of(tj, "job.completed")
    assert done.data.outputs == {**tj.ws_outputs, **tj.history_outputs}
    assert done.data.client_data == {"post": tj.post_index}
    probe = _class_of(tj, "BridgeProbe")
    assert {e.data.node for e in run.events_of(tj, "preview")} == {probe}


@pytest.mark.parametrize("path", trace_params("02"))
def test_legacy_previews_without_ids_go_to_the_running_node(path: Path) -> None:
    """02 (no feature flags): every type-1 preview is the BridgeProbe node's, the node executing."""
    run = replay(path)
    (tj,) = run.jobs
    kinds = {rec["header"]["event"] for _, rec in tj.frames if rec["kind"] == "binary"}
    assert kinds == {1}
    nodes = [e.data.node for e in run.events_of(tj, "preview")]
    assert nodes and set(nodes) == {_class_of(tj, "BridgeProbe")}


@pytest.mark.parametrize("path", trace_params("03"))
def test_cached_rerun_completes_at_100_without_executing_nodes(path: Path) -> None:
    """03: everything is cached: no node.executing, node.cached lists the nodes, progress is just 100."""
    run = replay(path)
    (tj,) = run.jobs
    assert tj.cached_nodes and not tj.executing_nodes
    assert tj.job.state == "completed"
    assert run.events_of(tj, "node.executing") == []
    assert [e.data.nodes for e in run.events_of(tj, "node.cached")] == [tj.cached_nodes]
    assert _percents(run, tj) == [100.0]
    (done,) = run.events_of(tj, "job.completed")
    assert tj.history_outputs and done.data.outputs == {**tj.ws_outputs, **tj.history_outputs}


@pytest.mark.parametrize("path", trace_params("05"))
def test_runtime_error_fails_with_the_node_exception_and_earlier_outputs(path: Path) -> None:
    """05: job.failed names node, exception type, message and traceback, and keeps finished outputs."""
    run = replay(path)
    (tj,) = run.jobs
    assert tj.terminal is not None
    kind, error = tj.terminal
    assert kind == "execution_error"
    assert error["node_id"] == _class_of(tj, "BridgeProbe") == "2"
    (failed,) = run.events_of(tj, "job.failed")
    data: JobFailed = failed.data
    assert data.code == "execution_error"
    assert data.prompt_id == tj.prompt_id
    assert (data.node, data.node_type) == (error["node_id"], error["node_type"])
    assert data.exception_type == error["exception_type"] and data.exception_type
    assert data.message == error["exception_message"].strip() and data.message
    assert data.traceback == error["traceback"] and data.traceback
    finished = {n: o for n, o in tj.ws_outputs.items() if n in error["executed"]}
    assert finished, "the PreviewImage branch finished before the error"
    for node, output in finished.items():
        assert data.outputs[node] == output
    for node, output in (tj.history_outputs or {}).items():
        assert data.outputs[node] == output
    assert tj.job.error == data and tj.job.state == "failed"
    assert max(_percents(run, tj)) < 100


@pytest.mark.parametrize("path", trace_params("06"))
def test_interrupted_runs_fail_with_code_interrupted(path: Path) -> None:
    """06: a run ComfyUI interrupted is job.failed ``interrupted`` at its node, with its finished outputs."""
    run = replay(path)
    interrupted = 0
    for tj in run.jobs:
        assert tj.terminal is not None
        kind, data = tj.terminal
        if kind != "execution_interrupted":
            assert tj.job.state == "completed"
            continue
        interrupted += 1
        (failed,) = run.events_of(tj, "job.failed")
        assert failed.data.code == "interrupted"
        assert (failed.data.node, failed.data.prompt_id) == (data["node_id"], tj.prompt_id)
        for node, output in tj.ws_outputs.items():
            assert failed.data.outputs[node] == output
        assert run.events_of(tj, "job.completed") == []
    assert interrupted >= 3


@pytest.mark.parametrize("path", trace_params("09"))
def test_reconnect_reannouncement_does_not_repeat_node_executing(path: Path) -> None:
    """09: the ``executing`` without prompt_id after a same-clientId reconnect makes no new event."""
    run = replay(path)
    labels = client_ids(run.records)
    same = [tj for tj in run.jobs if sum(1 for c in labels.values() if c == tj.client_id) > 1]
    (tj,) = same
    bare = [
        (i, rec["msg"]["data"]["node"])
        for i, rec in enumerate(run.records)
        if rec.get("dir") == "recv"
        and rec.get("kind") == "text"
        and rec["msg"]["type"] == "executing"
        and "prompt_id" not in rec["msg"]["data"]
    ]
    assert len(bare) == 1, "the trace has one re-announcement"
    ((index, node),) = bare
    nodes = [e.data.node for e in run.events_of(tj, "node.executing")]
    assert nodes == tj.executing_nodes
    assert nodes.count(node) == 1
    assert tj.job.state == "completed" and _percents(run, tj)[-1] == 100.0
    after = [
        e
        for step in run.steps
        if step.index > index
        for e in step.events
        if e.job_id == tj.job.job_id and e.type == "preview"
    ]
    assert after and {e.data.node for e in after} == {node}


@pytest.mark.parametrize("path", trace_params("01", "02", "03", "05", "06", "11"))
@pytest.mark.parametrize("defer", [4, 40, END], ids=["4-frames", "40-frames", "end-of-trace"])
def test_messages_that_beat_the_post_answer_are_replayed_on_submit(path: Path, defer: int) -> None:
    """Frames fed before ``submitted`` give each job the same events as an in-order replay."""

    def per_job(run: Replay) -> dict[str, list[Any]]:
        return {
            tj.job.job_id: [
                (e.type, msgspec.to_builtins(e.data), None if e.image is None else bytes(e.image))
                for e in run.events_of(tj)
            ]
            for tj in run.jobs
        }

    assert per_job(replay(path, defer=defer)) == per_job(replay(path))


def test_a_reused_prompt_id_gets_its_own_run_not_the_previous_ones_leftovers() -> None:
    """08 (0.12.1): resubmitting a finished prompt id follows the new run to its own outputs."""
    reused = []
    for param in trace_params("08"):
        run = replay(param.values[0])
        finished_first = [
            (a, b)
            for n, a in enumerate(run.jobs)
            for b in run.jobs[n + 1 :]
            if a.prompt_id == b.prompt_id
            and a.terminal is not None
            and a.frames
            and b.post["t_request"] > a.frames[-1][1]["t"]
        ]
        reused.extend((run, a, b) for a, b in finished_first)
    assert reused, "0.12.1/08 resubmits a prompt id after it finished"
    for run, first, second in reused:
        assert first.job.state == "completed"
        assert second.texts("execution_start") and second.executing_nodes
        types = [e.type for e in run.events_of(second)]
        assert types[:3] == ["job.accepted", "job.queued", "job.started"]
        assert [e.data.node for e in run.events_of(second, "node.executing")] == second.executing_nodes
        (done,) = run.events_of(second, "job.completed")
        for node, output in second.ws_outputs.items():
            assert done.data.outputs[node] == output
