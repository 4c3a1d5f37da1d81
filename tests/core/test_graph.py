"""``sidecar.core.graph``: prompt shape checks and dependency arithmetic."""

from __future__ import annotations

from typing import Any

import pytest

from sidecar.core.graph import (
    KNOWN_OUTPUT_CLASSES,
    ancestors,
    check_workflow,
    links,
    node_title,
    output_nodes,
)
from tests.tracesupport import load, prompt_posts, trace_params

PROBE = {
    "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0}},
    "2": {
        "class_type": "BridgeProbe",
        "inputs": {"image": ["1", 0], "steps": 8},
        "_meta": {"title": "Probe"},
    },
    "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "bridge"}},
    "4": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
    "5": {"class_type": "BridgeText", "inputs": {"text": "t", "image": ["2", 0]}},
}


@pytest.mark.parametrize("path", trace_params("01", "02", "05", "06", "08", "11"))
def test_every_recorded_prompt_is_a_valid_api_workflow(path) -> None:
    """Prompts ComfyUI accepted pass ``check_workflow`` with no problem."""
    prompts = [r["request"]["prompt"] for _, r in prompt_posts(load(path)) if r["status"] == 200]
    assert prompts
    assert all(check_workflow(p) == [] for p in prompts)


@pytest.mark.parametrize("path", trace_params("01", "05"))
def test_recorded_output_nodes_are_the_nodes_with_executed_messages(path) -> None:
    """``output_nodes`` without /object_info finds exactly the nodes ComfyUI reported ``executed`` for."""
    records = load(path)
    ((_, post),) = [(i, r) for i, r in prompt_posts(records) if r["status"] == 200]
    history = [r for r in records if r["src"] == "http" and r["path"].startswith("/history/")]
    outputs = set(history[0]["response"][post["response"]["prompt_id"]]["prompt"][4])
    assert output_nodes(post["request"]["prompt"]) == outputs


@pytest.mark.parametrize(
    ("workflow", "problem"),
    [
        (None, "must be a map"),
        ([1, 2], "must be a map"),
        ({}, "no nodes"),
        ({"nodes": [], "links": []}, "UI format"),
        ({"1": "EmptyImage"}, "node '1' must be a map"),
        ({"1": {"inputs": {}}}, "no 'class_type'"),
        ({"1": {"class_type": ""}}, "no 'class_type'"),
        ({"1": {"class_type": "X", "inputs": [1]}}, "'inputs' must be a map"),
    ],
)
def test_check_workflow_names_each_shape_problem(workflow: Any, problem: str) -> None:
    """A non-API workflow is described, never raised on."""
    problems = check_workflow(workflow)
    assert problems and problem in problems[0]


def test_check_workflow_stops_listing_after_twenty_problems() -> None:
    """A huge broken prompt gives a bounded list of problems."""
    problems = check_workflow({str(i): {"inputs": {}} for i in range(100)})
    assert len(problems) == 21 and problems[-1].startswith("...")


def test_links_are_pairs_of_source_id_and_int_index() -> None:
    """Only ``[source, int]`` values are links; literals and odd lists are not."""
    node = {"inputs": {"a": ["1", 0], "b": [7, 1], "c": "1", "d": ["1", "0"], "e": [1, 2, 3], "f": 4}}
    assert links(node) == ["1", "7"]
    assert links({"inputs": "nope"}) == [] and links({}) == []


def test_output_nodes_use_the_instance_classes_when_known() -> None:
    """With /object_info classes, an unconsumed non-output node is not an output."""
    workflow = {**PROBE, "9": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}}}
    assert output_nodes(workflow) == {"3", "4", "5", "9"}
    assert output_nodes(workflow, {"SaveImage", "PreviewImage", "BridgeText"}) == {"3", "4", "5"}
    assert {"SaveImage", "PreviewImage", "BridgeText"} <= KNOWN_OUTPUT_CLASSES


def test_ancestors_follow_links_and_ignore_dead_ends_and_dangling_links() -> None:
    """Ancestors of outputs include their inputs only; a dangling link or unknown root adds nothing."""
    workflow = {**PROBE, "9": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}}}
    assert ancestors(workflow, {"3"}) == {"1", "2", "3"}
    assert ancestors(workflow, {"4"}) == {"1", "4"}
    assert ancestors(workflow, {"3", "4", "5"}) == {"1", "2", "3", "4", "5"}
    dangling = {**PROBE, "2": {"class_type": "BridgeProbe", "inputs": {"image": ["99", 0]}}}
    assert ancestors(dangling, {"3", "404"}) == {"2", "3"}


def test_ancestors_terminate_on_cycles() -> None:
    """A cyclic prompt (invalid, but possible input) does not loop forever."""
    cyclic = {
        "a": {"class_type": "X", "inputs": {"i": ["b", 0]}},
        "b": {"class_type": "Y", "inputs": {"i": ["a", 0]}},
    }
    assert ancestors(cyclic, {"a"}) == {"a", "b"}


def test_node_title_reads_class_and_meta_title() -> None:
    """``(class_type, title)``; None for a missing node or a missing/odd title."""
    assert node_title(PROBE, "2") == ("BridgeProbe", "Probe")
    assert node_title(PROBE, "3") == ("SaveImage", None)
    assert node_title(PROBE, "77") == (None, None)
    assert node_title({"1": {"class_type": "X", "_meta": {"title": 5}}}, "1") == ("X", None)
