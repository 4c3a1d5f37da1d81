"""Pure graph helpers: links, ancestors, and the execution order rules per version.

Two rules reproduce the recorded orders of the probe graph
(1→2→{3,5}, 1→4; outputs 3, 4, 5):

* ``fewest_remaining`` (0.0.2, the pre-2024-08 executor): repeatedly take the
  output node with the fewest nodes still to run (ties by id string), then run
  its missing ancestors depth-first in input order → 1,4,2,3,5.
* ``ready_outputs_first`` (0.3.44, 0.12.1): collect the nodes to run by walking
  each output node (in the server's output order) and its inputs, in that
  insertion order; then repeatedly run a ready node, preferring an output node,
  then a node feeding an output node, then the first ready node.  With output
  orders 3,5,4 (0.3.44) and 4,5,3 (0.12.1) this gives 1,4,2,3,5 and 1,4,2,5,3.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

__all__ = [
    "CycleError",
    "ancestors",
    "dangling_links",
    "execution_order",
    "is_link",
    "links",
]

Prompt = Mapping[str, Mapping[str, Any]]


class CycleError(Exception):
    """The remaining nodes depend on each other."""


def is_link(value: Any) -> bool:
    """True if an input value is a ``[source_node_id, output_index]`` link."""
    return (
        isinstance(value, list)
        and len(value) == 2
        and isinstance(value[0], str | int)
        and isinstance(value[1], int)
        and not isinstance(value[1], bool)
    )


def links(prompt: Prompt, node_id: str) -> list[str]:
    """Source node ids of ``node_id``'s links, in input order, existing nodes only, deduplicated."""
    inputs = prompt.get(node_id, {}).get("inputs", {})
    seen: list[str] = []
    if not isinstance(inputs, Mapping):
        return seen
    for value in inputs.values():
        if is_link(value):
            src = str(value[0])
            if src in prompt and src not in seen:
                seen.append(src)
    return seen


def dangling_links(prompt: Prompt, nodes: Iterable[str]) -> list[tuple[str, str]]:
    """``(node, missing_source)`` pairs among ``nodes`` whose links point at absent nodes."""
    found = []
    for node_id in nodes:
        inputs = prompt.get(node_id, {}).get("inputs", {})
        for value in inputs.values() if isinstance(inputs, Mapping) else ():
            if is_link(value) and str(value[0]) not in prompt:
                found.append((node_id, str(value[0])))
    return found


def ancestors(prompt: Prompt, roots: Iterable[str]) -> set[str]:
    """``roots`` and every node they depend on."""
    seen: set[str] = set()
    stack = [r for r in roots if r in prompt]
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        stack.extend(links(prompt, node))
    return seen


def execution_order(
    rule: str,
    prompt: Prompt,
    outputs: list[str],
    done: Iterable[str],
    is_output: Callable[[str], bool],
) -> list[str]:
    """Nodes to run, in order, to produce ``outputs`` when ``done`` nodes are cached."""
    finished = set(done)
    if rule == "fewest_remaining":
        return _fewest_remaining(prompt, outputs, finished)
    return _ready_outputs_first(prompt, outputs, finished, is_output)


def _fewest_remaining(prompt: Prompt, outputs: list[str], finished: set[str]) -> list[str]:
    order: list[str] = []
    remaining = [o for o in outputs if o in prompt]

    def still_needed(node: str) -> int:
        return len([n for n in ancestors(prompt, [node]) if n not in finished])

    def visit(node: str, path: frozenset[str]) -> None:
        if node in finished:
            return
        if node in path:
            raise CycleError(node)
        for src in links(prompt, node):
            visit(src, path | {node})
        finished.add(node)
        order.append(node)

    while remaining:
        remaining.sort(key=lambda o: (still_needed(o), o))
        visit(remaining.pop(0), frozenset())
    return order


def _ready_outputs_first(
    prompt: Prompt, outputs: list[str], finished: set[str], is_output: Callable[[str], bool]
) -> list[str]:
    pending: list[str] = []
    stack = [o for o in reversed(outputs) if o in prompt]
    while stack:
        node = stack.pop()
        if node in finished or node in pending:
            continue
        pending.append(node)
        stack.extend(reversed(links(prompt, node)))
    order: list[str] = []
    while pending:
        ready = [n for n in pending if all(src in finished for src in links(prompt, n))]
        if not ready:
            raise CycleError(pending[0])
        pick = next((n for n in ready if is_output(n)), None)
        if pick is None:
            pick = next(
                (n for n in ready if any(is_output(c) and n in links(prompt, c) for c in pending)),
                ready[0],
            )
        pending.remove(pick)
        finished.add(pick)
        order.append(pick)
    return order
