"""Built-in preview store ``files``: one file per preview, under ``previews.dir``.

Layout, so that a person finds job, node and order: ``<dir>/<instance>/<job_id>/<index:05d>-node<node>.<ext>``
(``00003-node7.jpg``; ``-node_`` when the node is unknown). Each name is reduced to
``[A-Za-z0-9._-]`` without a leading dot, so no id can climb out of ``dir``; an instance or
job id that had to be changed gets a short hash of the original appended, so two ids never
share a directory. The ``preview`` event carries the absolute path (:meth:`FileStore.ref`,
pure string work on the read loop); the preview writer calls :meth:`FileStore.put` later,
which writes a ``.part`` file and renames it, in one worker-thread hop per preview, so
readers never see half an image.

Retention happens as files land: ``keep_per_job`` > 0 keeps the newest N files of each job;
``max_total_bytes`` > 0 caps the total, deleting the oldest job's oldest files first (the file
just written is always kept). Memory stays flat however many previews are written: the store
keeps one small record per job directory (its file count and bytes, in the order the
directories were first written), never one per file. A directory is listed, in a worker
thread, only when retention must delete from it; the listing (oldest first by modification
time, then name) also corrects its record. Files left by an earlier run are found once, by a
scan in a worker thread before the first write, and count towards the cap, oldest first.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import re
from typing import TYPE_CHECKING, Any

import aiofiles
import aiofiles.os

from .. import hookimpl

if TYPE_CHECKING:
    from ...config import BridgeConfig
    from ..api import PreviewItem, PreviewStore

__all__ = ["EXTENSIONS", "PREVIEW_STORES", "FileStore", "bridge_make_preview_store", "safe_name"]

logger = logging.getLogger(__name__)

PREVIEW_STORES = ("files",)

EXTENSIONS = {"jpeg": "jpg", "jpg": "jpg", "png": "png", "webp": "webp"}
"""File extension by preview format; any other format is written as ``.bin``."""

MAX_NAME_CHARS = 80
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
_PREVIEW_FILE = re.compile(r"^-?\d{5,}-node[A-Za-z0-9._-]*\.[a-z]+$")
_PART = ".part"


def safe_name(text: str, *, unique: bool = True) -> str:
    """``text`` as one path component: safe characters only, never ``.``, ``..`` or hidden.

    With ``unique``, a name that had to change ends in ``-`` and 8 hex digits of the
    original's SHA-1, so ``a/b`` and ``a_b`` stay apart. Pure.
    """
    cleaned = _UNSAFE.sub("_", text).lstrip(".")[:MAX_NAME_CHARS]
    if unique and cleaned != text:
        cleaned = f"{cleaned}-{hashlib.sha1(text.encode('utf-8', 'surrogatepass')).hexdigest()[:8]}"
    return cleaned or "_"


def _write_file(path: str, image: bytes | memoryview) -> None:
    """Write ``image`` to ``path`` whole: into ``path.part``, then renamed (on a worker thread)."""
    part = path + _PART
    try:
        try:
            handle = open(part, "wb")  # noqa: SIM115
        except FileNotFoundError:  # first preview of the job (or its directory was trimmed)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            handle = open(part, "wb")  # noqa: SIM115
        with handle:
            handle.write(image)
        os.replace(part, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(part)
        raise


class _JobDir:
    """What the store knows of one job directory: how many previews, how many bytes."""

    __slots__ = ("bytes", "count")

    def __init__(self) -> None:
        self.count = 0
        self.bytes = 0


class FileStore:
    """Previews as files under ``directory``, with per-job and total-size retention.

    ``put`` must be called one at a time (the preview writer does).
    """

    name = "files"
    inline = False

    def __init__(self, directory: str, keep_per_job: int = 0, max_total_bytes: int = 0) -> None:
        self.root = os.path.abspath(directory)  # once, at start-up: ref() then needs no cwd lookup
        self.keep_per_job = keep_per_job
        self.max_total_bytes = max_total_bytes
        # Every job directory with previews, in the order it was first written (the oldest first).
        self._dirs: dict[str, _JobDir] = {}
        self._total_bytes = 0
        self._adopted = False
        self._closed = False

    def __repr__(self) -> str:
        return f"<FileStore {self.root!r} keep_per_job={self.keep_per_job} max_total_bytes={self.max_total_bytes}>"

    # Public

    @property
    def total_bytes(self) -> int:
        """The size of the previews this store knows to be on disk.

        A preview written again under the same name (a job restored after a restart numbers
        its previews from 0 again) counts twice until retention next lists its directory.
        """
        return self._total_bytes

    def ref(self, item: PreviewItem) -> str:
        """The absolute path the preview will have. Pure string work, safe on the read loop."""
        job_dir = os.path.join(self.root, safe_name(item.instance), safe_name(item.job_id))
        node = "_" if item.node is None else safe_name(item.node, unique=False)
        ext = EXTENSIONS.get(item.format.lower(), "bin")
        return os.path.join(job_dir, f"{item.index:05d}-node{node}.{ext}")

    async def put(self, item: PreviewItem, ref: str | None) -> None:
        """Write the image at ``ref`` (or at :meth:`ref`), then apply retention."""
        if self._closed:
            raise RuntimeError("the files preview store is closed")
        if not self._adopted:
            self._adopted = True
            await self._adopt_existing()
        path = ref if ref is not None else self.ref(item)
        await self._write(path, item.image)
        job_dir = os.path.dirname(path)
        record = self._dirs.get(job_dir)
        if record is None:
            record = self._dirs[job_dir] = _JobDir()
        size = memoryview(item.image).nbytes
        record.count += 1
        record.bytes += size
        self._total_bytes += size
        await self._apply_retention(path, job_dir, record)

    async def job_finished(self, job_id: str) -> None:
        """Nothing to do: retention acts as files land."""
        return None

    async def aclose(self) -> None:
        """No handle stays open between writes; later puts are refused. Idempotent."""
        self._closed = True

    # Private

    async def _write(self, path: str, image: bytes | memoryview) -> None:
        """One hop to a worker thread for the whole write (not one per file operation)."""
        await asyncio.to_thread(_write_file, path, image)

    async def _apply_retention(self, newest: str, job_dir: str, record: _JobDir) -> None:
        if self.keep_per_job > 0 and record.count > self.keep_per_job:
            await self._trim(job_dir, record, newest, keep=self.keep_per_job)
        if self.max_total_bytes <= 0:
            return
        stuck = 0  # directories in a row where nothing could be deleted
        while self._total_bytes > self.max_total_bytes and stuck < len(self._dirs):
            oldest_dir, oldest = next(iter(self._dirs.items()))
            deleted = await self._trim(oldest_dir, oldest, newest, cap=True)
            if deleted or oldest_dir not in self._dirs:
                stuck = 0
            elif oldest_dir == job_dir:
                break  # only the file just written is left: it stays, whatever its size
            else:  # nothing could be deleted there: try the next directory, this one goes last
                del self._dirs[oldest_dir]
                self._dirs[oldest_dir] = oldest
                stuck += 1

    async def _trim(self, job_dir: str, record: _JobDir, newest: str, keep: int = 0, cap: bool = False) -> int:
        """Delete ``job_dir``'s oldest previews: down to ``keep`` files, or (``cap``) until the total fits.

        Lists the directory first and corrects ``record`` from what is really there. The file
        ``newest`` is never deleted. Returns how many files were deleted; forgets an emptied
        directory, and removes it.
        """
        listed = await asyncio.to_thread(_list_previews, job_dir)
        on_disk = sum(size for _, _, size in listed)
        self._total_bytes += on_disk - record.bytes
        record.count, record.bytes = len(listed), on_disk
        deleted = 0
        for _mtime_ns, path, size in listed:
            if (keep and record.count <= keep) or (cap and self._total_bytes <= self.max_total_bytes):
                break
            if path == newest:
                continue
            try:
                await aiofiles.os.remove(path)
            except FileNotFoundError:
                pass
            except OSError as exc:
                logger.warning("cannot delete old preview %s: %s", path, exc)
                continue
            deleted += 1
            record.count -= 1
            record.bytes -= size
            self._total_bytes -= size
        if record.count == 0:
            del self._dirs[job_dir]
            with contextlib.suppress(OSError):  # not empty (a file we do not track): keep it
                await aiofiles.os.rmdir(job_dir)
        return deleted

    async def _adopt_existing(self) -> None:
        found = await asyncio.to_thread(_scan, self.root)
        for _mtime_ns, _path, job_dir, size in found:
            record = self._dirs.get(job_dir)
            if record is None:
                record = self._dirs[job_dir] = _JobDir()
            record.count += 1
            record.bytes += size
            self._total_bytes += size
        if found:
            logger.info(
                "preview store: %d files (%d bytes) from earlier runs under %s",
                len(found),
                self._total_bytes,
                self.root,
            )


def _scan(root: str) -> list[tuple[int, str, str, int]]:
    """``(mtime_ns, path, job_dir, size)`` of previews under ``root``, oldest first.

    Blocking: runs in a worker thread, once. Deletes ``.part`` files a crash left behind.
    """
    found: list[tuple[int, str, str, int]] = []
    for instance in _subdirs(root):
        for job in _subdirs(instance):
            try:
                entries = list(os.scandir(job))
            except OSError:
                continue
            for entry in entries:
                try:
                    if not entry.is_file(follow_symlinks=False):
                        continue
                    if entry.name.endswith(_PART):
                        os.remove(entry.path)
                    elif _PREVIEW_FILE.match(entry.name):
                        st = entry.stat(follow_symlinks=False)
                        found.append((st.st_mtime_ns, entry.path, job, st.st_size))
                except OSError:
                    continue
    found.sort()
    return found


def _list_previews(job_dir: str) -> list[tuple[int, str, int]]:
    """``(mtime_ns, path, size)`` of the previews in ``job_dir``, oldest first. Blocking."""
    found: list[tuple[int, str, int]] = []
    try:
        entries = list(os.scandir(job_dir))
    except OSError:
        return found
    for entry in entries:
        try:
            if entry.is_file(follow_symlinks=False) and _PREVIEW_FILE.match(entry.name):
                st = entry.stat(follow_symlinks=False)
                found.append((st.st_mtime_ns, entry.path, st.st_size))
        except OSError:
            continue
    found.sort()
    return found


def _subdirs(path: str) -> list[str]:
    try:
        with os.scandir(path) as entries:
            return sorted(e.path for e in entries if e.is_dir(follow_symlinks=False))
    except OSError:
        return []


@hookimpl
def bridge_make_preview_store(name: str, options: dict[str, Any], config: BridgeConfig) -> PreviewStore | None:
    if name != "files":
        return None
    previews = config.previews
    return FileStore(
        directory=previews.dir,
        keep_per_job=previews.keep_per_job,
        max_total_bytes=previews.max_total_bytes,
    )
