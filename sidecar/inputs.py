"""SHELL: the input files of unfinished jobs, kept on disk and uploaded before every ``POST /prompt``.

A ``submit`` with ``files`` (issue 10) has them written beside the state file,
``<state.path without its suffix>.inputs/<digest of the job id>/<name>``, before the job is
accepted: written into a ``.tmp`` folder first and renamed, so a folder that exists is
whole. SQLite rows never hold them. :meth:`JobInputs.upload` sends each file with
``POST /upload/image`` into the job's own folder of ComfyUI's input directory
(:func:`~sidecar.core.inputs.job_folder`, ``overwrite=true``: a second upload of the
same job's file replaces it) and checks ComfyUI stored it under that very name.
:meth:`~sidecar.instance.Instance.submit` calls it first thing, so every post of a job
uploads its files to the instance it is posted on: the first submit, a held job
released, a resubmission after ComfyUI lost the job, failover to another instance, a
job restored after a sidecar restart. The files leave the disk when the job ends
(:meth:`JobInputs.discard`); at start, the folders of jobs not restored unfinished are removed
(a job restored knows its files from its stored workflow, so one gone from the disk fails its
upload clearly).
ComfyUI's own copies stay in its input directory (it has no endpoint to delete them).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import LimitsConfig
from .core.inputs import check_names, job_folder, referenced, rewrite
from .core.submission import Rejected
from .errors import ComfyUnavailable, RequestError, over_limit

if TYPE_CHECKING:
    from .comfy_http import ComfyHttp

__all__ = ["JobInputs", "check_files"]

logger = logging.getLogger(__name__)


def _digest(job_id: str) -> str:
    return hashlib.sha256(job_id.encode()).hexdigest()[:32]


def check_files(files: Mapping[str, bytes], workflow: dict[str, Any], limits: LimitsConfig) -> None:
    """Refuse a submit's input files over a limit (``limit_exceeded``), badly named, or named by no
    node input of ``workflow`` (``invalid_request``)."""
    for name, data in files.items():
        if len(data) > limits.upload_file_bytes:
            what = f"input file {name!r} has {len(data)} bytes"
            raise over_limit("upload_file_bytes", limits.upload_file_bytes, what, file=name, size=len(data))
    total = sum(len(data) for data in files.values())
    if total > limits.upload_request_bytes:
        what = f"the input files have {total} bytes together"
        raise over_limit("upload_request_bytes", limits.upload_request_bytes, what, size=total)
    problems = check_names(files)
    used = rewrite(workflow, files, "")[1] if not problems else set(files)
    problems += [f"files: {name!r} is named by no node input of the workflow" for name in files if name not in used]
    if problems:
        raise RequestError("invalid_request", "; ".join(problems), {"field": "files", "problems": problems})


class JobInputs:
    """The input files of the unfinished jobs that have some, under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._names: dict[str, tuple[str, ...]] = {}  # job id -> its files' names, for jobs that have files
        self._tasks: set[asyncio.Task[None]] = set()

    # Public

    def names(self, job_id: str) -> tuple[str, ...]:
        """The names of ``job_id``'s input files (empty: it has none). No I/O."""
        return self._names.get(job_id, ())

    async def take(self, job_id: str, files: Mapping[str, bytes], workflow: dict[str, Any]) -> dict[str, Any]:
        """Write ``files`` for ``job_id`` (off the loop); returns ``workflow`` naming them in the job's
        own folder of ComfyUI's input directory. ``internal_error`` when the disk refuses them."""
        try:
            await asyncio.to_thread(self._write, job_id, dict(files))
        except OSError as exc:
            logger.error("could not store the input files of job %s: %s", job_id, exc)
            raise RequestError("internal_error", f"the sidecar could not store the input files: {exc}") from exc
        self._names[job_id] = tuple(files)
        return rewrite(workflow, files, job_folder(job_id))[0]

    def restore(self, unfinished: Iterable[tuple[str, dict[str, Any]]]) -> None:
        """At start (before serving): take back the files of the ``unfinished`` jobs, ``(job id,
        workflow)``, as their workflows name them (a file missing from the disk then fails its
        upload, and the job, clearly), and remove every other folder (jobs that ended while the
        sidecar was down, half-written ones)."""
        keep = set()
        for job_id, workflow in unfinished:
            names = referenced(workflow, job_folder(job_id))
            if names:
                self._names[job_id] = tuple(sorted(names))
                keep.add(_digest(job_id))
        if not self.root.is_dir():
            return
        for entry in self.root.iterdir():
            if entry.name not in keep:
                logger.info("removing input files left by a job that ended: %s", entry)
                shutil.rmtree(entry, ignore_errors=True)

    def discard(self, job_id: str) -> None:
        """``job_id`` ended: remove its files (in the background; nothing to do for a job without)."""
        if self._names.pop(job_id, None) is None:
            return
        task = asyncio.create_task(asyncio.to_thread(shutil.rmtree, self.path(job_id), True))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def upload(self, http: ComfyHttp, job_id: str, instance: str) -> Rejected | None:
        """Upload ``job_id``'s files to ``instance``; None when done (or when it has none), else why not
        (code ``upload_failed``)."""
        names = self.names(job_id)
        if not names:
            return None
        folder = job_folder(job_id)
        try:
            files = await asyncio.to_thread(self._read, job_id, names)
        except OSError as exc:
            message = f"the input files of job {job_id!r} are no longer on disk: {exc.strerror or exc}"
            return Rejected("upload_failed", message, {"instance": instance, "path": str(self.path(job_id))})
        for name in names:
            details: dict[str, Any] = {"instance": instance, "file": name, "subfolder": folder}
            try:
                status, body = await http.upload_image(name, files[name], folder)
            except ComfyUnavailable as exc:
                return Rejected("upload_failed", f"instance {instance!r}: input file {name!r}: {exc}", details)
            if status != 200:
                text = body if isinstance(body, str) else repr(body)
                message = f"instance {instance!r} answered HTTP {status} to POST /upload/image for input file {name!r}"
                return Rejected("upload_failed", message, {**details, "status": status, "body": text[:500]})
            if not isinstance(body, dict) or body.get("name") != name or body.get("subfolder") != folder:
                message = f"instance {instance!r} stored input file {name!r} as {body!r}, not {folder}/{name}"
                return Rejected("upload_failed", message, {**details, "answer": repr(body)[:500]})
        return None

    def path(self, job_id: str) -> Path:
        """The folder of ``job_id``'s files on the sidecar's disk."""
        return self.root / _digest(job_id)

    async def aclose(self) -> None:
        """Let the removals in flight finish."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=5.0)

    # Private

    def _write(self, job_id: str, files: dict[str, bytes]) -> None:
        final = self.path(job_id)
        tmp = final.with_name(final.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for name, data in files.items():
            (tmp / name).write_bytes(data)
        shutil.rmtree(final, ignore_errors=True)  # a job id taken again after its files were kept
        os.replace(tmp, final)

    def _read(self, job_id: str, names: tuple[str, ...]) -> dict[str, bytes]:
        folder = self.path(job_id)
        return {name: (folder / name).read_bytes() for name in names}
