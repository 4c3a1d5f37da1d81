"""ComfyUI API-format prompts: shape checks and dependency arithmetic.

Pure. A prompt is ``{node_id: {"class_type": str, "inputs": {name: literal | [src_id, index]}}}``
(PROTOCOL.md §2). The sidecar checks the shape only; ComfyUI validates the rest,
and its answer is passed on to the backend.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

__all__ = [
    "KNOWN_OUTPUT_CLASSES",
    "ancestors",
    "check_workflow",
    "links",
    "node_title",
    "output_nodes",
    "will_run",
]

# Output classes of a stock ComfyUI, used when the instance's /object_info is not known.
KNOWN_OUTPUT_CLASSES = frozenset(
    {
        "SaveImage",
        "PreviewImage",
        "SaveAnimatedWEBP",
        "SaveAnimatedPNG",
        "SaveLatent",
        "SaveVideo",
        "SaveAudio",
        "PreviewAudio",
        "SaveWEBM",
        "BridgeText",
    }
)


def check_workflow(workflow: Any) -> list[str]:
    """Every reason ``workflow`` is not an API-format prompt (empty list: it is one)."""
    if not isinstance(workflow, Mapping):
        return ["workflow must be a map of node id to node"]
    if "nodes" in workflow and "links" in workflow:
        return ["workflow is in ComfyUI's UI format (nodes/links); export it with 'Save (API Format)'"]
    if not workflow:
        return ["workflow has no nodes"]
    problems: list[str] = []
    for node_id, node in workflow.items():
        if not isinstance(node, Mapping):
            problems.append(f"node {node_id!r} must be a map, got {type(node).__name__}")
            continue
        class_type = node.get("class_type")
        if not isinstance(class_type, str) or not class_type:
            problems.append(f"node {node_id!r} has no 'class_type' string")
        inputs = node.get("inputs", {})
        if not isinstance(inputs, Mapping):
            problems.append(f"node {node_id!r}: 'inputs' must be a map")
        if len(problems) >= 20:
            problems.append("... (more problems not listed)")
            break
    return problems


def links(node: Mapping[str, Any]) -> list[str]:
    """Ids of the nodes whose outputs feed ``node``."""
    inputs = node.get("inputs")
    if not isinstance(inputs, Mapping):
        return []
    return [
        str(value[0])
        for value in inputs.values()
        if isinstance(value, list) and len(value) == 2 and isinstance(value[1], int)
    ]


def output_nodes(workflow: Mapping[str, Any], output_classes: Collection[str] | None = None) -> set[str]:
    """Node ids that ComfyUI would execute as outputs.

    With the instance's output classes (from ``/object_info``) that is exact;
    without, the stock output classes plus any node nothing consumes.
    """
    if output_classes is not None:
        return {nid for nid, node in workflow.items() if node.get("class_type") in output_classes}
    consumed = {src for node in workflow.values() for src in links(node)}
    return {
        nid for nid, node in workflow.items() if node.get("class_type") in KNOWN_OUTPUT_CLASSES or nid not in consumed
    }


def ancestors(workflow: Mapping[str, Any], roots: Collection[str]) -> set[str]:
    """``roots`` and every node they depend on (bounded by the graph's size)."""
    seen: set[str] = set()
    stack = [r for r in roots if r in workflow]
    while stack:
        nid = stack.pop()
        if nid in seen:
            continue
        seen.add(nid)
        stack.extend(src for src in links(workflow[nid]) if src in workflow and src not in seen)
    return seen


def will_run(workflow: Mapping[str, Any], output_classes: Collection[str] | None, node_errors: Any = None) -> set[str]:
    """The nodes ComfyUI runs for ``workflow``: its outputs and their ancestors, less the outputs
    that ``POST /prompt``'s ``node_errors`` lists as depending on an invalid node."""
    outputs = output_nodes(workflow, output_classes)
    if isinstance(node_errors, dict):
        for err in node_errors.values():
            if isinstance(err, dict):
                outputs.difference_update(str(o) for o in err.get("dependent_outputs", ()))
    return ancestors(workflow, outputs)


def node_title(workflow: Mapping[str, Any], node_id: str) -> tuple[str | None, str | None]:
    """``(class_type, title)`` of a node; title from ``_meta.title`` when the prompt has one."""
    node = workflow.get(node_id)
    if not isinstance(node, Mapping):
        return None, None
    meta = node.get("_meta")
    title = meta.get("title") if isinstance(meta, Mapping) else None
    return node.get("class_type"), title if isinstance(title, str) else None
