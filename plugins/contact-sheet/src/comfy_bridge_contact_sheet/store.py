"""The ``contact_sheet`` preview store: one file per preview, one ``index.html`` per job.

It implements comfy-bridge's ``PreviewStore`` protocol structurally (no subclassing):
:meth:`ContactSheetStore.ref` is pure string work, safe on the read loop; every file
operation goes through aiofiles (a worker thread), so nothing blocks the event loop.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING

import aiofiles
import aiofiles.os

from .sheet import SheetEntry, file_name, parse_file_name, render_sheet, safe_component

if TYPE_CHECKING:
    from sidecar.plugins.api import PreviewItem

__all__ = ["ContactSheetStore"]

_RECENT_JOBS = 256  # finished jobs remembered, so a late preview still reaches the sheet


class ContactSheetStore:
    """Writes ``<dir>/<job_id>/<index:05d>-node<node>.<ext>``, then ``index.html`` at job end.

    The sheet is built from the job's directory, so it also lists previews written before
    a restart; node ids written this run are captioned as ComfyUI sent them, older ones
    as their (sanitised) file names show them.
    """

    name = "contact_sheet"
    inline = False

    def __init__(self, directory: str | os.PathLike[str], *, columns: int = 4) -> None:
        self.directory = Path(os.path.abspath(directory))  # once: ref() then needs no cwd lookup
        self.columns = columns
        self.written = 0
        self.sheets = 0
        self._written: dict[str, dict[int, SheetEntry]] = {}  # job -> index -> entry, this run
        self._finished: OrderedDict[str, None] = OrderedDict()
        self._closed = False

    # Public

    def job_dir(self, job_id: str) -> Path:
        """The folder of one job's previews and sheet."""
        return self.directory / safe_component(job_id)

    def ref(self, item: PreviewItem) -> str:
        """The path the image will have. Pure: runs on the read loop."""
        return os.fspath(self.job_dir(item.job_id) / file_name(item.index, item.node, item.format))

    async def put(self, item: PreviewItem, ref: str | None) -> None:
        """Write the image (to a hidden temporary name, then renamed into place)."""
        if self._closed:
            raise RuntimeError("the contact_sheet preview store is closed")
        path = Path(ref) if ref is not None else Path(self.ref(item))
        await aiofiles.os.makedirs(path.parent, exist_ok=True)
        part = path.with_name(f".{path.name}.part")
        async with aiofiles.open(part, "wb") as file:
            await file.write(item.image)
        await aiofiles.os.replace(part, path)
        self.written += 1
        self._written.setdefault(item.job_id, {})[item.index] = SheetEntry(item.index, item.node, path.name)
        if item.job_id in self._finished:  # arrived after the sheet: write it again
            await self._write_sheet(item.job_id)

    async def job_finished(self, job_id: str) -> None:
        """Write the job's ``index.html`` (nothing when the job had no previews)."""
        self._finished[job_id] = None
        self._finished.move_to_end(job_id)
        while len(self._finished) > _RECENT_JOBS:
            self._finished.popitem(last=False)
        await self._write_sheet(job_id)

    async def aclose(self) -> None:
        """Write the sheets of jobs still running, so nothing written goes unlisted; later
        puts are refused. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for job_id in list(self._written):
            await self._write_sheet(job_id)

    # Private

    async def _write_sheet(self, job_id: str) -> None:
        folder = self.job_dir(job_id)
        this_run = self._written.pop(job_id, {})
        try:
            names = await aiofiles.os.listdir(folder)
        except FileNotFoundError:
            return
        entries = dict(this_run)
        for name in sorted(names):
            entry = parse_file_name(name)
            if entry is not None and entry.index not in this_run:
                entries[entry.index] = entry  # written before a restart; the last name wins
        if not entries:
            return
        page = render_sheet(job_id, entries.values(), self.columns)
        part = folder / ".index.html.part"
        async with aiofiles.open(part, "w", encoding="utf-8") as file:
            await file.write(page)
        await aiofiles.os.replace(part, folder / "index.html")
        self.sheets += 1
