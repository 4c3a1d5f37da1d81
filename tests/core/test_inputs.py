"""Input files of a job (issue 10): names checked, one folder per job, references rewritten. Pure."""

from __future__ import annotations

import hashlib

from sidecar.core.inputs import check_names, job_folder, referenced, rewrite


def test_each_job_has_its_own_folder_named_by_a_digest_of_its_id() -> None:
    """The folder is ``comfy-bridge/`` plus 16 hex digits of the job id's SHA-256, whatever the id holds."""
    folder = job_folder("a/b ../é")
    assert folder == "comfy-bridge/" + hashlib.sha256("a/b ../é".encode()).hexdigest()[:16]
    assert job_folder("one") != job_folder("two")


def test_names_that_are_not_plain_file_names_are_refused_each_with_its_reason() -> None:
    assert check_names(["cat.png", "mask (1).png", "é.webp"]) == []
    problems = check_names(["", "a/b.png", "..", "a\\b", "x\x00", " cat.png", "cat.png [input]", "x" * 256])
    assert len(problems) == 8
    assert (
        problems[1]
        == "files: 'a/b.png' must be a plain file name (no path separator, no control character, not '.' or '..')"
    )
    assert "must not start or end with a space" in problems[5]
    assert "annotation" in problems[6] and "1 to 255 characters" in problems[7]


def test_inputs_naming_a_file_are_rewritten_and_the_rest_is_left_alone() -> None:
    """A value equal to a file's name, alone or annotated ``[input]``, becomes ``folder/name``; links,
    other strings and the caller's workflow stay as they were."""
    workflow = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "cat.png"}},
        "2": {"class_type": "LoadImageMask", "inputs": {"image": "mask.png [input]", "channel": "alpha"}},
        "3": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
        "4": {"class_type": "BridgeText", "inputs": {"text": "cat.png is a cat"}},
    }
    out, used = rewrite(workflow, {"cat.png", "mask.png", "dog.png"}, "comfy-bridge/0123")
    assert used == {"cat.png", "mask.png"}
    assert out["1"]["inputs"] == {"image": "comfy-bridge/0123/cat.png"}
    assert out["2"]["inputs"] == {"image": "comfy-bridge/0123/mask.png [input]", "channel": "alpha"}
    assert out["3"] is workflow["3"] and out["4"] is workflow["4"]
    assert workflow["1"]["inputs"] == {"image": "cat.png"}  # not modified in place


def test_the_files_a_rewritten_workflow_names_are_found_again() -> None:
    """After a restart the job's files are known from its (rewritten, stored) workflow."""
    folder = job_folder("j")
    workflow, _ = rewrite(
        {"1": {"class_type": "LoadImage", "inputs": {"image": "cat.png [input]"}}, "2": {"inputs": {"x": 1}}},
        {"cat.png"},
        folder,
    )
    assert referenced(workflow, folder) == {"cat.png"}
    assert referenced(workflow, job_folder("another")) == set()
