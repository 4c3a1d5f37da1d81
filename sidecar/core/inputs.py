"""Input files that travel with a job (issue 10): their names, their folder, the workflow's references.

Pure. ``submit`` carries ``files: {name: bytes}`` and the workflow names each file by
that name in a node input (``"image": "cat.png"`` in a ``LoadImage`` node). The sidecar
uploads the files into a folder of ComfyUI's input directory that only this job uses,
:func:`job_folder`, and posts the workflow with each such reference rewritten by
:func:`rewrite` to ``<folder>/<name>``: the ``subfolder/name`` form that ``LoadImage``,
``LoadImageMask`` and the other loaders resolve inside the input directory. An explicit
``" [input]"`` annotation (``"cat.png [input]"``) is kept after the rewritten name.
Two jobs that both send a ``cat.png`` never overwrite each other's file.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Mapping
from typing import Any

__all__ = ["ANNOTATION", "FOLDER", "MAX_NAME", "check_names", "job_folder", "referenced", "rewrite"]

FOLDER = "comfy-bridge"
"""The folder of ComfyUI's input directory that holds every job's own folder."""
ANNOTATION = " [input]"
MAX_NAME = 255
_ANNOTATIONS = (" [input]", " [output]", " [temp]")


def job_folder(job_id: str) -> str:
    """``comfy-bridge/<16 hex digits>``: the subfolder of ComfyUI's input directory for ``job_id``'s
    files (a digest: a job id may hold any character, a path may not)."""
    return f"{FOLDER}/{hashlib.sha256(job_id.encode()).hexdigest()[:16]}"


def check_names(names: Collection[str]) -> list[str]:
    """Why each name is not a plain file name ComfyUI can store and a workflow can name (empty: fine)."""
    problems = []
    for name in names:
        bad = None
        if not name or len(name) > MAX_NAME:
            bad = f"must have 1 to {MAX_NAME} characters"
        elif name in (".", "..") or any(c in name for c in "/\\") or any(ord(c) < 32 or ord(c) == 127 for c in name):
            bad = "must be a plain file name (no path separator, no control character, not '.' or '..')"
        elif name != name.strip():
            bad = "must not start or end with a space"
        elif name.endswith(_ANNOTATIONS):
            bad = "must not end with an annotation such as ' [input]'"
        if bad is not None:
            problems.append(f"files: {name!r} {bad}")
    return problems


def rewrite(workflow: Mapping[str, Any], names: Collection[str], folder: str) -> tuple[dict[str, Any], set[str]]:
    """``(workflow with each input naming a file rewritten to <folder>/<name>, the names it referred to)``.

    An input refers to a file when its value is the file's name, alone or followed by
    :data:`ANNOTATION`. Only changed nodes are copied; ``workflow`` is left as it was.
    """
    used: set[str] = set()
    out: dict[str, Any] = {}
    for node_id, node in workflow.items():
        inputs = node.get("inputs") if isinstance(node, Mapping) else None
        changed: dict[str, str] = {}
        if isinstance(inputs, Mapping):
            for key, value in inputs.items():
                if not isinstance(value, str):
                    continue
                base, note = (value[: -len(ANNOTATION)], ANNOTATION) if value.endswith(ANNOTATION) else (value, "")
                if base in names:
                    used.add(base)
                    changed[key] = f"{folder}/{base}{note}"
        out[node_id] = {**node, "inputs": {**inputs, **changed}} if changed else node  # type: ignore[dict-item]
    return out, used


def referenced(workflow: Mapping[str, Any], folder: str) -> set[str]:
    """The names of the files in ``folder`` that a rewritten ``workflow`` refers to (a job restored
    after a restart: which files it must upload, whether or not they are still on disk)."""
    prefix = folder + "/"
    names = set()
    for node in workflow.values():
        inputs = node.get("inputs") if isinstance(node, Mapping) else None
        for value in inputs.values() if isinstance(inputs, Mapping) else ():
            if isinstance(value, str) and value.startswith(prefix):
                names.add(value[len(prefix) :].removesuffix(ANNOTATION))
    return names
