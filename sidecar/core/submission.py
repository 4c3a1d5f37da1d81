"""ComfyUI's answer to ``POST /prompt``, read the same way on every version.

Pure. A 200 with an empty ``node_errors`` is queued; a 200 with node errors was
queued with only some outputs (PROTOCOL.md §2), which the sidecar refuses unless
configured to accept it; a 400 has a different shape on 0.0.2 (``error`` may be a
string, an empty ``node_errors`` is a list) and is normalised here.
"""

from __future__ import annotations

from typing import Any

import msgspec

__all__ = ["Queued", "Rejected", "node_error_details", "read_prompt_response"]


class Queued(msgspec.Struct):
    prompt_id: str
    number: int | None
    node_errors: dict[str, Any]


class Rejected(msgspec.Struct):
    code: str
    message: str
    details: dict[str, Any]
    prompt_id: str | None = None  # set when ComfyUI queued part of it anyway


def node_error_details(node_errors: Any) -> dict[str, Any]:
    """``{node_id: {class_type, errors: [{type, message, details, input}], dependent_outputs}}``."""
    if not isinstance(node_errors, dict):
        return {}
    out: dict[str, Any] = {}
    for node_id, entry in node_errors.items():
        if not isinstance(entry, dict):
            continue
        errors = []
        for err in entry.get("errors") or ():
            if not isinstance(err, dict):
                continue
            raw_extra = err.get("extra_info")
            extra: dict[str, Any] = raw_extra if isinstance(raw_extra, dict) else {}
            errors.append(
                {
                    "type": err.get("type"),
                    "message": err.get("message"),
                    "details": err.get("details"),
                    "input": extra.get("input_name"),
                }
            )
        out[str(node_id)] = {
            "class_type": entry.get("class_type"),
            "errors": errors,
            "dependent_outputs": [str(o) for o in entry.get("dependent_outputs") or ()],
        }
    return out


def _summary(nodes: dict[str, Any]) -> str:
    parts = []
    for node_id, entry in nodes.items():
        for err in entry["errors"]:
            what = f"{err['message']}"
            said, details = err.get("input"), err.get("details")
            if isinstance(said, str) and isinstance(details, str) and details.startswith(f"{said} - "):
                said = details  # a node's own check says why: "image - Invalid image file: cat.png"
            if said or details:
                what += f" ({said or details})"
            parts.append(f"node {node_id} {entry['class_type']}: {what}")
    return "; ".join(parts[:5])


def read_prompt_response(status: int, body: Any, accept_partial: bool = False) -> Queued | Rejected:
    """Classify one ``POST /prompt`` answer (``body`` is parsed JSON, or text when not JSON)."""
    if status == 200 and isinstance(body, dict) and isinstance(body.get("prompt_id"), str):
        nodes = node_error_details(body.get("node_errors"))
        number = body.get("number") if isinstance(body.get("number"), int) else None
        if nodes and not accept_partial:
            return Rejected(
                code="workflow_partially_invalid",
                message="ComfyUI accepted only some outputs: " + _summary(nodes),
                details={"node_errors": nodes},
                prompt_id=body["prompt_id"],
            )
        return Queued(prompt_id=body["prompt_id"], number=number, node_errors=body.get("node_errors") or {})
    if status == 400 and isinstance(body, dict):
        error = body.get("error")
        nodes = node_error_details(body.get("node_errors"))
        if isinstance(error, dict):
            comfy_type = error.get("type") or "unknown"
            message = str(error.get("message") or comfy_type)
            extra = error.get("extra_info") if isinstance(error.get("extra_info"), dict) else {}
            info = {"comfy_type": comfy_type, "comfy_details": error.get("details"), "extra_info": extra}
        else:
            comfy_type = str(error) if error else "unknown"
            message = comfy_type
            info = {"comfy_type": comfy_type}
        if nodes:
            message = f"{message}: {_summary(nodes)}"
        return Rejected(code="workflow_rejected", message=message, details={**info, "node_errors": nodes})
    text = body if isinstance(body, str) else msgspec.json.encode(body).decode()
    return Rejected(
        code="comfy_error",
        message=f"ComfyUI answered HTTP {status} to POST /prompt",
        details={"status": status, "body": text[:500]},
    )
