"""Built-in preview store ``files``: one file per preview, under ``previews.dir``.

Layout, so that a person finds job, node and order: ``<dir>/<instance>/<job_id>/<index:05d>-node<node>.<ext>``
(``00003-node7.jpg``; ``-node_`` when the node is unknown). Each name is reduced to
``[A-Za-z0-9._-]`` without a leading dot, so no id can climb out of ``dir``; an instance or
job id that had to be changed gets a short hash of the original appended, so two ids never
share a directory. The ``preview`` event carries the absolute path (:meth:`FileStore.ref`,
pure string work on the read loop); the preview writer calls :meth:`FileStore.put` later,
which writes a ``.part`` file with aiofiles and renames it, so readers never see half an image.

Retention happens as files land, from sizes kept in memory (no directory scans per write):
``keep_per_job`` > 0 keeps the newest N files of each job; ``max_total_bytes`` > 0 caps the
total, deleting the oldest files of any job first (the file just written is always kept).
Files left by an earlier run are found once, by a scan in a worker thread before the first
write, and count towards the cap, oldest first.
"""

from __future__ import annotations

import asyncio
import collections
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
        # Every stored file, oldest first: path -> (job directory, size).
        self._files: dict[str, tuple[str, int]] = {}
        # The same files by job directory, oldest first.
        self._by_job: dict[str, collections.deque[str]] = {}
        self._total_bytes = 0
        self._adopted = False
        self._closed = False

    def __repr__(self) -> str:
        return f"<FileStore {self.root!r} keep_per_job={self.keep_per_job} max_total_bytes={self.max_total_bytes}>"

    # Public

    @property
    def total_bytes(self) -> int:
        """The size of the previews this store knows to be on disk."""
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
        self._track(path, job_dir, memoryview(item.image).nbytes)
        await self._apply_retention(path, job_dir)

    async def job_finished(self, job_id: str) -> None:
        """Nothing to do: retention acts as files land."""
        return None

    async def aclose(self) -> None:
        """No handle stays open between writes; later puts are refused. Idempotent."""
        self._closed = True

    # Private

    async def _write(self, path: str, image: bytes | memoryview) -> None:
        part = path + _PART
        try:
            try:
                handle = await aiofiles.open(part, "wb")
            except FileNotFoundError:  # first preview of the job (or its directory was trimmed)
                await aiofiles.os.makedirs(os.path.dirname(path), exist_ok=True)
                handle = await aiofiles.open(part, "wb")
            try:
                await handle.write(image)
            finally:
                await handle.close()
            await aiofiles.os.replace(part, path)
        except BaseException:
            with contextlib.suppress(OSError):
                await aiofiles.os.remove(part)
            raise

    def _track(self, path: str, job_dir: str, size: int) -> None:
        if path in self._files:  # the same preview written again: it becomes the newest
            self._forget(path)
        self._files[path] = (job_dir, size)
        self._by_job.setdefault(job_dir, collections.deque()).append(path)
        self._total_bytes += size

    def _forget(self, path: str) -> str | None:
        """Stop tracking ``path``; returns its job directory if that now holds no file."""
        job_dir, size = self._files.pop(path)
        self._total_bytes -= size
        paths = self._by_job[job_dir]
        if paths[0] == path:
            paths.popleft()
        else:
            paths.remove(path)
        if paths:
            return None
        del self._by_job[job_dir]
        return job_dir

    async def _apply_retention(self, newest: str, job_dir: str) -> None:
        doomed: list[str] = []
        emptied: list[str] = []

        def drop(path: str) -> None:
            doomed.append(path)
            empty_dir = self._forget(path)
            if empty_dir is not None:
                emptied.append(empty_dir)

        if self.keep_per_job > 0:
            paths = self._by_job[job_dir]
            while len(paths) > self.keep_per_job:
                drop(paths[0])
        if self.max_total_bytes > 0:
            while self._total_bytes > self.max_total_bytes:
                oldest = next(iter(self._files))
                if oldest == newest:
                    break
                drop(oldest)
        for path in doomed:
            try:
                await aiofiles.os.remove(path)
            except FileNotFoundError:
                pass
            except OSError as exc:
                logger.warning("cannot delete old preview %s: %s", path, exc)
        for directory in emptied:
            with contextlib.suppress(OSError):  # not empty (a file we do not track): keep it
                await aiofiles.os.rmdir(directory)

    async def _adopt_existing(self) -> None:
        found = await asyncio.to_thread(_scan, self.root)
        for _mtime_ns, path, job_dir, size in found:
            self._track(path, job_dir, size)
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
