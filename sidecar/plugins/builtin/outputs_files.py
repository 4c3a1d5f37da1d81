"""Built-in output stores: ``files`` (one file per output, under ``outputs.dir``) and ``none``.

``files`` layout, so that a person finds job, node and file:
``<dir>/<job_id>/<index:03d>-node<node>-<type>-<filename>`` (``001-node9-temp-ComfyUI_temp_abcde_00001_.png``),
where ``index`` counts the job's files from 1 in the order they were fetched (a file already there
under that name, from an earlier run, gets ``-2``, ``-3``... before its extension). The subfolder
is folded into the name (``<subfolder>_<filename>``). Every name is reduced to safe characters
(:func:`~sidecar.plugins.builtin.previews_files.safe_name`), so no id or file name can climb out
of ``dir``. Each file is written as a ``.part`` and renamed, in one worker-thread hop, so a reader
never sees half a file; ``put`` returns the absolute path.

Retention: ``max_total_bytes`` > 0 caps the total; past it, whole job directories are deleted,
the oldest first (never the directory of the file just written). The store keeps one small record
per job directory, found once at the first ``put`` by a scan (in a worker thread) that also takes
the directories earlier runs left, oldest first.

``none``: the sidecar fetches nothing (no ``output.*`` events, ``stored`` stays empty).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
from typing import TYPE_CHECKING, Any

from .. import hookimpl
from .previews_files import safe_name

if TYPE_CHECKING:
    from ...config import BridgeConfig
    from ..api import OutputItem, OutputStore

__all__ = ["OUTPUT_STORES", "FileOutputStore", "NoOutputStore", "bridge_make_output_store"]

logger = logging.getLogger(__name__)

OUTPUT_STORES = ("files", "none")
_PART = ".part"


def _write_new(directory: str, name: str, data: bytes) -> str:
    """Write ``data`` as ``directory/name`` (or ``name`` with ``-2``, ``-3``... if taken); return the path.

    Blocking: runs in a worker thread. Written to a ``.part`` file, then linked in place, so
    an existing file is never replaced and a reader never sees half of one.
    """
    os.makedirs(directory, exist_ok=True)
    stem, ext = os.path.splitext(name)
    part = os.path.join(directory, f".{name}{_PART}")
    try:
        with open(part, "wb") as handle:
            handle.write(data)
        n = 1
        while True:
            path = os.path.join(directory, name if n == 1 else f"{stem}-{n}{ext}")
            try:
                os.link(part, path)  # fails if the name is taken: never overwrite a stored output
                return path
            except FileExistsError:
                n += 1
    finally:
        with contextlib.suppress(OSError):
            os.remove(part)


def _dir_bytes(directory: str) -> int:
    total = 0
    for root, _dirs, files in os.walk(directory):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total


def _scan(root: str) -> list[tuple[int, str, int]]:
    """``(mtime_ns, job_dir, bytes)`` of the job directories under ``root``, oldest first. Blocking."""
    found = []
    try:
        entries = list(os.scandir(root))
    except OSError:
        return []
    for entry in entries:
        try:
            if entry.is_dir(follow_symlinks=False):
                found.append((entry.stat(follow_symlinks=False).st_mtime_ns, entry.path, _dir_bytes(entry.path)))
        except OSError:
            continue
    found.sort()
    return found


class FileOutputStore:
    """Outputs as files under ``directory``, with a total-size cap applied per job directory."""

    name = "files"

    def __init__(self, directory: str, max_total_bytes: int = 0) -> None:
        self.root = os.path.abspath(directory)
        self.max_total_bytes = max_total_bytes
        self._dirs: dict[str, int] = {}  # job directory -> its bytes, the oldest first
        self._counts: dict[str, int] = {}  # job directory -> files this store wrote there (names the next)
        self._busy: dict[str, int] = {}  # job directory -> puts writing there now (retention spares it)
        self._total = 0
        self._adopted = False
        self._closed = False

    def __repr__(self) -> str:
        return f"<FileOutputStore {self.root!r} max_total_bytes={self.max_total_bytes}>"

    # Public

    @property
    def total_bytes(self) -> int:
        return self._total

    def path_for(self, item: OutputItem, index: int) -> tuple[str, str]:
        """``(job directory, file name)`` for the job's ``index``-th file. Pure."""
        job_dir = os.path.join(self.root, safe_name(item.job_id))
        original = f"{item.subfolder}_{item.filename}" if item.subfolder else item.filename
        name = f"{index:03d}-node{safe_name(item.node, unique=False)}-{safe_name(item.type)}-{safe_name(original)}"
        return job_dir, name

    async def put(self, item: OutputItem, data: bytes) -> str:
        if self._closed:
            raise RuntimeError("the files output store is closed")
        if not self._adopted:
            self._adopted = True
            for _mtime, job_dir, size in await asyncio.to_thread(_scan, self.root):
                self._dirs[job_dir] = size
                self._total += size
        job_dir = os.path.join(self.root, safe_name(item.job_id))
        index = self._counts[job_dir] = self._counts.get(job_dir, 0) + 1  # taken before the await: puts run at once
        _, name = self.path_for(item, index)
        self._busy[job_dir] = self._busy.get(job_dir, 0) + 1
        try:
            path = await asyncio.to_thread(_write_new, job_dir, name, data)
        finally:
            left = self._busy.pop(job_dir) - 1
            if left:
                self._busy[job_dir] = left
        self._dirs[job_dir] = self._dirs.pop(job_dir, 0) + len(data)  # now the newest directory
        self._total += len(data)
        await self._apply_retention(job_dir)
        return path

    async def job_finished(self, job_id: str) -> None:
        """Nothing to do: retention acts as files land."""
        return None

    async def aclose(self) -> None:
        self._closed = True

    # Private

    async def _apply_retention(self, keep: str) -> None:
        if self.max_total_bytes <= 0:
            return
        while self._total > self.max_total_bytes:
            oldest = next((d for d in self._dirs if d != keep and d not in self._busy), None)
            if oldest is None:
                return  # only the job just written is left: it stays, whatever its size
            size = self._dirs.pop(oldest)
            self._counts.pop(oldest, None)
            self._total -= size
            try:
                await asyncio.to_thread(shutil.rmtree, oldest)
            except FileNotFoundError:
                pass
            except OSError as exc:
                logger.warning("cannot delete old outputs %s: %s", oldest, exc)
            else:
                logger.info(
                    "output store: deleted %s (%d bytes) to stay under %d bytes", oldest, size, self.max_total_bytes
                )


class NoOutputStore:
    """No output store: the sidecar fetches nothing."""

    name = "none"

    def __repr__(self) -> str:
        return "<NoOutputStore 'none'>"

    async def put(self, item: OutputItem, data: bytes) -> str:
        raise RuntimeError("the 'none' output store keeps nothing")

    async def job_finished(self, job_id: str) -> None:
        return None

    async def aclose(self) -> None:
        return None


@hookimpl
def bridge_make_output_store(name: str, options: dict[str, Any], config: BridgeConfig) -> OutputStore | None:
    if name == "files":
        return FileOutputStore(config.outputs.dir, config.outputs.max_total_bytes)
    if name == "none":
        return NoOutputStore()
    return None
