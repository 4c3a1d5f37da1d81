"""The preview writer: a bounded queue between the read loops and the preview store.

The read loop hands each preview over with :meth:`PreviewWriter.offer`, which never
blocks; one writer task (:meth:`PreviewWriter.run`) calls the store's ``put`` one item at a
time. When ``queue_size`` images wait, the oldest is dropped and counted: a newer preview
of a job is worth more than an older one. ``asyncio.Queue`` cannot drop its oldest item, so
this is a ``deque`` plus an ``Event``.

A job's end (:meth:`PreviewWriter.job_finished`) travels through the same queue, so the
store hears of it after that job's pending images, and every store call comes from one
task at a time. A ``put`` cancelled with the writer task (shutdown cancels it before
:meth:`PreviewWriter.aclose`) goes back to the front of the queue, so ``aclose`` writes it.
Counts for ``health``: ``queued`` (images waiting), ``written``, ``dropped`` (queue full,
or still unwritten when ``aclose`` ends) and ``failed`` (``put`` raised); every offered
image ends in exactly one of the last three.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from typing import TypeAlias

    from .plugins.api import PreviewItem, PreviewStore

__all__ = ["PreviewWriter"]

logger = logging.getLogger(__name__)


class _JobEnd:
    """A queued ``job_finished``: forwarded to the store in queue order; never dropped."""

    __slots__ = ("done", "job_id")

    def __init__(self, job_id: str, done: asyncio.Future[None]) -> None:
        self.job_id = job_id
        self.done = done


if TYPE_CHECKING:
    _Entry: TypeAlias = tuple[PreviewItem, str | None] | _JobEnd


class PreviewWriter:
    """Writes previews to ``store`` from a queue of at most ``queue_size`` images."""

    def __init__(self, store: PreviewStore, queue_size: int) -> None:
        if queue_size < 1:
            raise ValueError("queue_size must be at least 1")
        self.store = store
        self.queue_size = queue_size
        self._pending: collections.deque[_Entry] = collections.deque()
        self._images = 0  # entries of _pending that are images (job ends take no room)
        self._wakeup = asyncio.Event()
        self._store_lock = asyncio.Lock()  # one store call at a time: run() and aclose() share the queue
        self._closing = False
        self._closed = asyncio.Event()
        self._written = 0
        self._dropped = 0
        self._failed = 0

    def __repr__(self) -> str:
        return f"<PreviewWriter {self.store!r} {self.stats()}>"

    # Public

    def offer(self, item: PreviewItem, ref: str | None) -> None:
        """Queue ``item`` for writing; never blocks. When full, the oldest image is dropped.

        ``item.image`` is usually a ``memoryview`` into the WebSocket frame it came in: it
        is queued as it is, not copied, and the view keeps that frame alive until written.
        """
        if self._closing:
            self._dropped += 1
            return
        if self._images >= self.queue_size:
            self._drop_oldest_image()
        self._pending.append((item, ref))
        self._images += 1
        self._wakeup.set()

    async def run(self) -> None:
        """The writer task: store the queued previews until :meth:`aclose` empties the queue.

        A ``put`` that raises is logged and counted; the task goes on with the next one.
        """
        while True:
            if self._pending:
                await self._step()
                continue
            if self._closing:
                return
            self._wakeup.clear()
            await self._wakeup.wait()

    async def job_finished(self, job_id: str) -> None:
        """Tell the store, once the job's queued previews are written; returns when it was told.

        After :meth:`aclose` has begun, the store is not told.
        """
        if self._closing:
            return
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append(_JobEnd(job_id, done))
        self._wakeup.set()
        await done

    async def aclose(self, timeout_s: float = 5.0) -> None:
        """Write what is pending (for at most ``timeout_s``), then close the store. Idempotent.

        Works whether or not :meth:`run` is still running. Images still pending at the
        deadline are dropped and counted.
        """
        if self._closing:
            await self._closed.wait()
            return
        self._closing = True
        self._wakeup.set()  # a waiting run() returns once the queue is empty
        try:
            async with asyncio.timeout(timeout_s):
                while self._pending:
                    await self._step()
        except TimeoutError:
            logger.warning("preview writer: gave up after %.1f s with %d previews unwritten", timeout_s, self._images)
        finally:
            self._abandon_pending()
            try:
                await self.store.aclose()
            finally:
                self._closed.set()

    def stats(self) -> dict[str, int]:
        """``queued``, ``written``, ``dropped`` and ``failed`` image counts."""
        return {"queued": self._images, "written": self._written, "dropped": self._dropped, "failed": self._failed}

    # Private

    def _drop_oldest_image(self) -> None:
        for position, entry in enumerate(self._pending):  # job ends are rare: usually position 0
            if not isinstance(entry, _JobEnd):
                del self._pending[position]
                self._images -= 1
                self._dropped += 1
                return

    async def _step(self) -> None:
        """Take the oldest entry and hand it to the store."""
        async with self._store_lock:
            if not self._pending:
                return
            entry = self._pending.popleft()
            if isinstance(entry, _JobEnd):
                await self._forward_job_end(entry)
                return
            self._images -= 1
            item, ref = entry
            try:
                await self.store.put(item, ref)
            except asyncio.CancelledError:
                # Back to the front: aclose() writes it if time allows, else counts it dropped.
                self._pending.appendleft(entry)
                self._images += 1
                raise
            except Exception:
                self._failed += 1
                logger.error(
                    "preview store %r could not store preview %d of job %s (%s)",
                    self.store.name,
                    item.index,
                    item.job_id,
                    item.instance,
                    exc_info=True,
                )
            else:
                self._written += 1

    async def _forward_job_end(self, entry: _JobEnd) -> None:
        try:
            await self.store.job_finished(entry.job_id)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.error("preview store %r failed at the end of job %s", self.store.name, entry.job_id, exc_info=True)
        finally:
            if not entry.done.done():
                entry.done.set_result(None)

    def _abandon_pending(self) -> None:
        """At close: count what was not written; release whoever waits on a job end."""
        while self._pending:
            entry = self._pending.popleft()
            if isinstance(entry, _JobEnd):
                if not entry.done.done():
                    entry.done.set_result(None)
            else:
                self._dropped += 1
        self._images = 0
