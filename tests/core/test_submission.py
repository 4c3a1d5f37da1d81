"""``sidecar.core.submission.read_prompt_response`` on every recorded ``POST /prompt`` answer."""

from __future__ import annotations

from typing import Any

import pytest

from sidecar.core.submission import Queued, Rejected, node_error_details, read_prompt_response
from tests.tracesupport import load, prompt_posts, trace_id, trace_paths


def _answers(*scenarios: str) -> list[Any]:
    params = []
    for path in trace_paths(*scenarios):
        for i, rec in prompt_posts(load(path)):
            body = rec["response"] if "response" in rec else rec.get("response_text")
            params.append(pytest.param(rec["status"], body, id=f"{trace_id(path)}@{i}-{rec['status']}"))
    return params


ANSWERS = _answers()


def _by_status(status: int, partial: bool | None = None) -> list[Any]:
    out = []
    for p in ANSWERS:
        code, body = p.values
        if code != status:
            continue
        if partial is not None and bool(isinstance(body, dict) and body.get("node_errors")) != partial:
            continue
        out.append(p)
    assert out, f"no recorded answer with status {status} (partial={partial})"
    return out


def _assert_node_details(details: dict[str, Any], node_errors: dict[str, Any]) -> None:
    """Per node: class_type, each error's type/message/input, dependent outputs, as recorded."""
    assert details.keys() == node_errors.keys()
    for node_id, entry in node_errors.items():
        got = details[node_id]
        assert got["class_type"] == entry["class_type"]
        assert got["dependent_outputs"] == [str(o) for o in entry["dependent_outputs"]]
        assert [(e["type"], e["message"], e["details"], e["input"]) for e in got["errors"]] == [
            (e["type"], e["message"], e["details"], e.get("extra_info", {}).get("input_name")) for e in entry["errors"]
        ]


@pytest.mark.parametrize(("status", "body"), _by_status(200, partial=False))
def test_clean_200_is_queued_with_the_servers_id_and_number(status: int, body: Any) -> None:
    """200 with empty ``node_errors`` ({} or 0.0.2's []) is Queued under the id ComfyUI returned."""
    result = read_prompt_response(status, body)
    assert result == Queued(prompt_id=body["prompt_id"], number=body["number"], node_errors={})


@pytest.mark.parametrize(("status", "body"), _by_status(200, partial=True))
def test_200_with_node_errors_is_rejected_as_partially_invalid(status: int, body: Any) -> None:
    """200 + ``node_errors`` is ``workflow_partially_invalid``, naming node, class and input."""
    result = read_prompt_response(status, body)
    assert isinstance(result, Rejected)
    assert result.code == "workflow_partially_invalid"
    assert result.prompt_id == body["prompt_id"]
    _assert_node_details(result.details["node_errors"], body["node_errors"])
    for node_id, entry in body["node_errors"].items():
        assert f"node {node_id} {entry['class_type']}" in result.message
        for err in entry["errors"]:
            assert err["message"] in result.message
            name = err.get("extra_info", {}).get("input_name")
            assert name is None or name in result.message


@pytest.mark.parametrize(("status", "body"), _by_status(200, partial=True))
def test_200_with_node_errors_is_queued_when_partial_runs_are_accepted(status: int, body: Any) -> None:
    """``accept_partial=True`` queues it and keeps ComfyUI's ``node_errors``."""
    result = read_prompt_response(status, body, accept_partial=True)
    assert result == Queued(prompt_id=body["prompt_id"], number=body["number"], node_errors=body["node_errors"])


@pytest.mark.parametrize(("status", "body"), _by_status(400))
def test_400_is_workflow_rejected_on_every_versions_shape(status: int, body: Any) -> None:
    """400 is ``workflow_rejected``: dict or string ``error``, dict or list ``node_errors``."""
    result = read_prompt_response(status, body)
    assert isinstance(result, Rejected)
    assert result.code == "workflow_rejected"
    assert result.prompt_id is None
    error = body["error"]
    if isinstance(error, dict):
        assert result.details["comfy_type"] == error["type"]
        assert result.details["comfy_details"] == error["details"]
        assert result.details["extra_info"] == error["extra_info"]
        assert result.message.startswith(error["message"])
    else:
        assert result.details["comfy_type"] == error
        assert result.message.startswith(error)
    node_errors = body["node_errors"] if isinstance(body["node_errors"], dict) else {}
    _assert_node_details(result.details["node_errors"], node_errors)
    for node_id, entry in node_errors.items():
        assert f"node {node_id} {entry['class_type']}" in result.message


def test_recorded_400s_include_both_error_shapes_and_list_node_errors() -> None:
    """The 400 corpus covers 0.0.2's string error and list ``node_errors`` and the dict shapes."""
    bodies = [p.values[1] for p in _by_status(400)]
    assert any(isinstance(b["error"], str) for b in bodies)
    assert any(isinstance(b["error"], dict) for b in bodies)
    assert any(isinstance(b["node_errors"], list) for b in bodies)
    assert any(isinstance(b["node_errors"], dict) and b["node_errors"] for b in bodies)


@pytest.mark.parametrize(("status", "body"), _by_status(500))
def test_500_text_is_a_comfy_error_with_the_body(status: int, body: Any) -> None:
    """500 plain text (non-JSON request body) is ``comfy_error`` carrying status and text."""
    assert isinstance(body, str)
    result = read_prompt_response(status, body)
    assert isinstance(result, Rejected)
    assert result.code == "comfy_error"
    assert result.details == {"status": 500, "body": body[:500]}
    assert "500" in result.message


@pytest.mark.parametrize(
    ("status", "body"),
    [
        pytest.param(200, {"number": 3, "node_errors": {}}, id="200-without-prompt-id"),
        pytest.param(200, "OK", id="200-text"),
        pytest.param(400, "Bad Request", id="400-text"),
        pytest.param(503, {"error": "busy"}, id="503-json"),
        pytest.param(404, None, id="404-empty"),
    ],
)
def test_unexpected_answers_are_comfy_errors(status: int, body: Any) -> None:
    """Anything that is not a recognisable 200 or 400 becomes ``comfy_error`` with the status."""
    result = read_prompt_response(status, body)
    assert isinstance(result, Rejected)
    assert result.code == "comfy_error"
    assert result.details["status"] == status
    assert isinstance(result.details["body"], str)


def test_long_error_bodies_are_cut_to_500_characters() -> None:
    """The body kept in ``details`` is bounded."""
    result = read_prompt_response(502, "x" * 5000)
    assert isinstance(result, Rejected) and result.details["body"] == "x" * 500


def test_non_integer_number_is_dropped() -> None:
    """A queue number that is not an int is reported as None, the prompt still queued."""
    assert read_prompt_response(200, {"prompt_id": "p", "number": "7", "node_errors": {}}) == Queued("p", None, {})


@pytest.mark.parametrize("junk", [None, [], "x", {"1": "not a dict"}, {"1": {"errors": ["bad", 5]}}])
def test_node_error_details_tolerates_junk(junk: Any) -> None:
    """Malformed ``node_errors`` never raise; unusable entries are skipped."""
    details = node_error_details(junk)
    assert all(entry["errors"] == [] for entry in details.values())
    assert set(details) <= {"1"}
