"""Validation of ``POST /prompt`` bodies, with each version's error shapes (trace 04).

:func:`validate_prompt` returns :class:`Accepted` (HTTP 200; ``node_errors`` may be
non-empty when only some output branches are valid) or :class:`Rejected` (HTTP 400
with the version's body).  Per-node errors follow ComfyUI's rules as observed:
required inputs, links to existing nodes and outputs, INT/FLOAT conversion,
min/max, combo lists; a link to a missing node is reported under the linking
node with the input of its first consumer (``exception_during_inner_validation``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .nodes import InputSpec, NodeSpec
from .scheduling import ancestors, is_link
from .versions import VersionProfile

__all__ = ["Accepted", "Rejected", "validate_prompt"]


@dataclass
class Accepted:
    """The prompt is queued: run ``outputs`` (in the server's order)."""

    outputs: list[str]
    node_errors: dict[str, Any] = field(default_factory=dict)


@dataclass
class Rejected:
    """The prompt is refused with HTTP 400 and ``body``."""

    body: dict[str, Any]


class _Dangling(Exception):
    def __init__(self, node_id: str, missing: str) -> None:
        super().__init__(missing)
        self.node_id = node_id
        self.missing = missing


def _error(kind: str, message: str, details: str = "", extra: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"type": kind, "message": message, "details": details, "extra_info": extra or {}}


def _empty_node_errors(profile: VersionProfile) -> Any:
    return [] if profile.error_style == "legacy" else {}


def _reject(profile: VersionProfile, error: Any, node_errors: Any = None) -> Rejected:
    if node_errors is None:
        node_errors = _empty_node_errors(profile)
    return Rejected({"error": error, "node_errors": node_errors})


def _fake_traceback(function: str, line: str) -> list[str]:
    return [f'  File "sidecar/simulator/validate.py", line 1, in {function}\n    {line}\n']


def validate_prompt(
    body: Mapping[str, Any],
    profile: VersionProfile,
    registry: Mapping[str, NodeSpec],
    file_exists: Callable[[str], bool] | None = None,
) -> Accepted | Rejected:
    """Validate a ``POST /prompt`` body the way ``profile``'s server does; ``file_exists`` says whether
    a loader's file input (``LoadImage``'s ``image``) names a file the server has (none: no file)."""
    prompt = body.get("prompt")
    if "prompt" not in body:
        if profile.error_style == "legacy":
            return _reject(profile, "no prompt")
        return _reject(profile, _error("no_prompt", "No prompt provided", "No prompt provided"))
    if not isinstance(prompt, Mapping):
        return _reject(profile, _error("invalid_prompt", "Prompt is not an object", "", {}))
    for node_id, node in prompt.items():
        class_type = node.get("class_type") if isinstance(node, Mapping) else None
        if not isinstance(class_type, str):
            return _reject(
                profile,
                _error(
                    "invalid_prompt",
                    "Cannot execute because a node is missing the class_type property.",
                    f"Node ID '#{node_id}'",
                ),
            )
        if class_type not in registry:
            if profile.error_style == "modern":
                title = (
                    node.get("_meta", {}).get("title", class_type)
                    if isinstance(node.get("_meta"), dict)
                    else class_type
                )
                extra = {"node_id": node_id, "class_type": class_type, "node_title": title}
                msg = f"Node '{class_type}' not found. The custom node may not be installed."
                return _reject(profile, _error("missing_node_type", msg, f"Node ID '#{node_id}'", extra))
            msg = f"Cannot execute because node {class_type} does not exist."
            return _reject(profile, _error("invalid_prompt", msg, f"Node ID '#{node_id}'"))
    outputs = profile.output_order(n for n, node in prompt.items() if registry[node["class_type"]].output_node)
    targets = body.get("partial_execution_targets") if profile.client_prompt_id else None
    if isinstance(targets, list):
        outputs = [o for o in outputs if o in {str(t) for t in targets}]
    if not outputs:
        return _reject(profile, _error("prompt_no_outputs", "Prompt has no outputs"))
    checker = _Checker(prompt, profile, registry, file_exists or (lambda _name: False))
    good = [o for o in outputs if checker.check_output(o)]
    node_errors: dict[str, Any] = {}
    for node_id, errors in checker.errors.items():
        dependents = [o for o in outputs if o not in good and node_id in ancestors(prompt, [o])]
        node_errors[node_id] = {
            "errors": errors,
            "dependent_outputs": dependents,
            "class_type": prompt[node_id]["class_type"],
        }
    if not good:
        error = _error("prompt_outputs_failed_validation", "Prompt outputs failed validation")
        return _reject(profile, error, node_errors)
    return Accepted(outputs=good, node_errors=node_errors)


class _Checker:
    def __init__(
        self,
        prompt: Mapping[str, Any],
        profile: VersionProfile,
        registry: Mapping[str, NodeSpec],
        file_exists: Callable[[str], bool],
    ):
        self.file_exists = file_exists
        self.prompt = prompt
        self.profile = profile
        self.registry = registry
        self.valid: dict[str, bool] = {}
        self.errors: dict[str, list[dict[str, Any]]] = {}

    # Public

    def check_output(self, node_id: str) -> bool:
        try:
            return self._check(node_id)
        except _Dangling as exc:
            self.valid[exc.node_id] = False
            self.errors.setdefault(exc.node_id, []).append(
                _error(
                    "exception_during_validation",
                    "Exception when validating node",
                    repr(exc.missing),
                    {
                        "exception_type": "KeyError",
                        "traceback": _fake_traceback("validate_inputs", "prompt[source_id]"),
                    },
                )
            )
            return False

    # Private

    def _spec(self, node_id: str) -> NodeSpec:
        return self.registry[self.prompt[node_id]["class_type"]]

    def _check(self, node_id: str) -> bool:
        if node_id in self.valid:
            return self.valid[node_id]
        self.valid[node_id] = True  # provisional: breaks cycles
        inputs = self.prompt[node_id].get("inputs", {})
        if not isinstance(inputs, Mapping):
            inputs = {}
        ok = True
        errors: list[dict[str, Any]] = []
        for spec in self._spec(node_id).inputs:
            if not spec.required and (not self.profile.validate_optional_inputs or spec.name not in inputs):
                continue
            if spec.name not in inputs:
                errors.append(
                    _error(
                        "required_input_missing",
                        "Required input is missing",
                        spec.name,
                        {"input_name": spec.name},
                    )
                )
                continue
            value = inputs[spec.name]
            if is_link(value):
                ok = self._check_link(node_id, spec, [str(value[0]), value[1]]) and ok
            elif spec.name == self._spec(node_id).validate_file:
                if not (isinstance(value, str) and self.file_exists(value)):
                    errors.append(self._invalid_file(spec, value))
            else:
                error = _check_literal(spec, value)
                if error is not None:
                    errors.append(error)
        if errors:
            self.errors.setdefault(node_id, []).extend(errors)
        self.valid[node_id] = ok and not errors
        return self.valid[node_id]

    def _invalid_file(self, spec: InputSpec, value: Any) -> dict[str, Any]:
        """``LoadImage.VALIDATE_INPUTS`` refusing a missing file; before the 2024-08 execution rewrite
        (0.0.2) the error also carried the input's config and value."""
        extra: dict[str, Any] = {"input_name": spec.name}
        if self.profile.error_style == "legacy":
            extra.update(input_config=spec.config(), received_value=value)
        details = f"{spec.name} - Invalid image file: {value}"
        return _error("custom_validation_failed", "Custom validation failed for node", details, extra)

    def _check_link(self, node_id: str, spec: InputSpec, link: list[Any]) -> bool:
        src, index = link
        if src not in self.prompt:
            raise _Dangling(node_id, src)
        src_outputs = self._spec(src).outputs
        received = src_outputs[index] if 0 <= index < len(src_outputs) else None
        if not spec.is_combo and received != spec.kind and "*" not in (received, spec.kind):
            details = f"{spec.name}, received_type({received}) mismatch input_type({spec.kind})"
            extra = {
                "input_name": spec.name,
                "input_config": spec.config(),
                "received_type": received,
                "linked_node": link,
            }
            self.errors.setdefault(node_id, []).append(
                _error("return_type_mismatch", "Return type mismatch between linked nodes", details, extra)
            )
            return False
        try:
            return self._check(src)
        except _Dangling as exc:
            if exc.node_id != src:
                raise
            self.valid[src] = False
            self.errors.setdefault(src, []).append(
                _error(
                    "exception_during_inner_validation",
                    "Exception when validating inner node",
                    repr(exc.missing),
                    {
                        "input_name": spec.name,
                        "input_config": spec.config(),
                        "exception_message": repr(exc.missing),
                        "exception_type": "KeyError",
                        "traceback": _fake_traceback("validate_inputs", "prompt[source_id]['class_type']"),
                        "linked_node": link,
                    },
                )
            )
            return False


def _check_literal(spec: InputSpec, value: Any) -> dict[str, Any] | None:
    extra: dict[str, Any] = {"input_name": spec.name, "input_config": spec.config(), "received_value": value}
    if spec.is_combo:
        assert isinstance(spec.kind, tuple)
        if value not in spec.kind:
            return _error(
                "value_not_in_list",
                "Value not in list",
                f"{spec.name}: '{value}' not in {list(spec.kind)}",
                extra,
            )
        return None
    if spec.kind in ("INT", "FLOAT"):
        try:
            number: float = int(value) if spec.kind == "INT" else float(value)
        except (TypeError, ValueError) as exc:
            extra["exception_message"] = str(exc)
            msg = f"Failed to convert an input value to a {spec.kind} value"
            return _error("invalid_input_type", msg, f"{spec.name}, {value}, {exc}", extra)
        extra["received_value"] = number
        options = spec.options or {}
        if "min" in options and number < options["min"]:
            msg = f"Value {number} smaller than min of {options['min']}"
            return _error("value_smaller_than_min", msg, spec.name, extra)
        if "max" in options and number > options["max"]:
            msg = f"Value {number} bigger than max of {options['max']}"
            return _error("value_bigger_than_max", msg, spec.name, extra)
    return None
