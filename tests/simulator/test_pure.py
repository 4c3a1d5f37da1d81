"""Pure parts of the simulator: execution order rules, validation shapes, image encoders."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from sidecar.simulator import VERSIONS, get_profile
from sidecar.simulator.images import preview_jpeg, solid_jpeg
from sidecar.simulator.nodes import build_registry
from sidecar.simulator.scheduling import execution_order
from sidecar.simulator.validate import Accepted, Rejected, validate_prompt

from .conftest import probe_graph

RECORDED_ORDER = {
    "0.0.2": ["1", "4", "2", "3", "5"],
    "0.3.44": ["1", "4", "2", "3", "5"],
    "0.12.1": ["1", "4", "2", "5", "3"],
}
RECORDED_OUTPUTS = {"0.0.2": ["3", "4", "5"], "0.3.44": ["3", "5", "4"], "0.12.1": ["4", "5", "3"]}


def _validate(version: str, body: dict[str, Any]) -> Accepted | Rejected:
    profile = get_profile(version)
    return validate_prompt(body, profile, build_registry(profile))


@pytest.mark.parametrize("version", VERSIONS)
def test_execution_order_reproduces_the_traces(version: str) -> None:
    """The probe graph runs in the recorded node order, with the recorded output order."""
    profile = get_profile(version)
    result = _validate(version, {"prompt": probe_graph()})
    assert isinstance(result, Accepted)
    assert result.outputs == RECORDED_OUTPUTS[version]
    registry = build_registry(profile)
    graph = probe_graph()
    order = execution_order(
        profile.order_rule, graph, result.outputs, [], lambda n: registry[graph[n]["class_type"]].output_node
    )
    assert order == RECORDED_ORDER[version]


def test_cached_nodes_are_skipped_in_order() -> None:
    """Cached nodes are not run again; only what they feed is."""
    profile = get_profile("0.12.1")
    registry = build_registry(profile)
    graph = probe_graph()
    order = execution_order(
        profile.order_rule,
        graph,
        ["4", "5", "3"],
        ["1", "4"],
        lambda n: registry[graph[n]["class_type"]].output_node,
    )
    assert order == ["2", "5", "3"]


@pytest.mark.parametrize(
    ("version", "error"),
    [
        ("0.0.2", {"type": "invalid_prompt", "node_errors": []}),
        ("0.3.44", {"type": "invalid_prompt", "node_errors": {}}),
        ("0.12.1", {"type": "missing_node_type", "node_errors": {}}),
    ],
)
def test_unknown_class_shapes(version: str, error: dict[str, Any]) -> None:
    """Unknown classes are refused with each version's error type and empty node_errors type."""
    graph = probe_graph()
    graph["6"] = {"class_type": "NoSuchNodeClass", "inputs": {}}
    result = _validate(version, {"prompt": graph})
    assert isinstance(result, Rejected)
    assert result.body["error"]["type"] == error["type"]
    assert result.body["node_errors"] == error["node_errors"]


def test_optional_inputs_are_not_validated_on_0_0_2() -> None:
    """0.0.2 accepts a graph whose other output needs a broken node through an optional input."""
    graph = probe_graph()
    del graph["4"]
    del graph["2"]["inputs"]["steps"]
    old, new = _validate("0.0.2", {"prompt": graph}), _validate("0.3.44", {"prompt": graph})
    assert isinstance(old, Accepted) and old.outputs == ["5"]
    assert old.node_errors["2"]["dependent_outputs"] == ["3"]
    assert isinstance(new, Rejected) and new.body["node_errors"]["2"]["dependent_outputs"] == ["3", "5"]


def test_dangling_link_is_reported_with_the_first_consumer() -> None:
    """A link to a missing node is an error on the linking node, seen by its first consumer."""
    graph = probe_graph()
    graph["2"]["inputs"]["image"] = ["99", 0]
    result = _validate("0.12.1", {"prompt": graph})
    assert isinstance(result, Accepted) and result.outputs == ["4"]
    (error,) = result.node_errors["2"]["errors"]
    assert error["type"] == "exception_during_inner_validation"
    assert error["extra_info"]["input_name"] == "image"  # BridgeText (5) is validated before SaveImage (3)
    assert error["extra_info"]["linked_node"] == ["2", 0]


def test_link_type_mismatch_is_refused() -> None:
    """Linking an IMAGE into a LATENT input is a return_type_mismatch."""
    graph = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
        "2": {"class_type": "VAEDecode", "inputs": {"samples": ["1", 0], "vae": ["1", 0]}},
        "3": {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}},
    }
    result = _validate("0.12.1", {"prompt": graph})
    assert isinstance(result, Rejected)
    assert {e["type"] for e in result.body["node_errors"]["2"]["errors"]} == {"return_type_mismatch"}


def test_jpeg_structure_and_comment() -> None:
    """Previews keep the JFIF header first and differ only by their COM segment."""
    a, b = preview_jpeg((1, 2, 3), "step 1"), preview_jpeg((1, 2, 3), "step 2")
    base = solid_jpeg((1, 2, 3))
    assert a != b and a[:4] == b[:4] == bytes.fromhex("ffd8ffe0")
    assert a.replace(b"step 1", b"") != base and b"\xff\xfe" in a and b"\xff\xfe" not in base
    assert a[-2:] == b"\xff\xd9"


@pytest.mark.skipif(shutil.which("djpeg") is None, reason="djpeg (libjpeg-turbo-progs) not installed")
def test_jpeg_decodes_to_the_solid_colour(tmp_path: Path) -> None:
    """An independent decoder reads the preview back as a 64×64 image of the requested colour."""
    path = tmp_path / "p.jpg"
    path.write_bytes(preview_jpeg((200, 30, 90), "hello"))
    ppm = subprocess.run(["djpeg", "-pnm", str(path)], check=True, capture_output=True, timeout=10).stdout
    magic, size, _maxval, pixels = ppm.split(b"\n", 3)
    assert (magic, size) == (b"P6", b"64 64")
    assert {tuple(pixels[i : i + 3]) for i in range(0, len(pixels), 3)} <= {(200, 30, 90), (200, 31, 90)}
