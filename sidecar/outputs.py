"""The output fetcher: copies every file output of a job from ComfyUI into the output store.

ComfyUI keeps ``PreviewImage`` results in its temp folder, which it empties at start-up, and
``SaveImage`` results on the GPU host's disk. As soon as a ``node.output`` is published, the
instance hands the node's output to :meth:`OutputFetcher.offer` (never blocks: it only queues),
and ``outputs.concurrency`` worker tasks fetch each ``{filename, subfolder, type}`` entry over
``GET /view``, hash it (SHA-256, in a worker thread) and give it to the store, off the read loop.

Each entry is a :class:`~sidecar.protocol.events.StoredOutput` kept on the job (``Job.stored``,
in offer order): ``pending`` until its fetch ends, then ``stored`` (``ref``, ``size_bytes``,
``sha256``) with an ``output.stored`` event, or ``failed`` (``error``) with an ``output.failed``
event. Nothing is dropped silently: a full queue (``outputs.queue_size``), a file over
``outputs.max_file_bytes``, an HTTP error, a store that raises or a shutdown (of a job that
has ended) each fail the entry and say why. ComfyUI unreachable (a restart) and 5xx answers
are retried, ``outputs.attempts`` times in all, waiting ``retry_s``, then twice that, and so
on; other answers (404: the file is gone) fail at once.

Every entry is handed to ``save`` (the state file) when it is offered and when it ends, so a
sidecar restart keeps it: a job restored unfinished comes back with its entries, a stored one is
not fetched again, and :meth:`OutputFetcher.resume` queues those still ``pending`` (a crash, or a
graceful stop that left them unfetched: a stop fails only the entries of jobs that ended, an
unfinished job's wait for the next run, with no event until then).

Before a job's final event is made, the instance waits for that job's fetches
(:meth:`settle`, at most ``outputs.final_wait_s``), so the final event's ``stored`` lists
every entry with its outcome; one still ``pending`` then gets its ``output.*`` event later.
Bounds: at most ``concurrency`` files in memory, each at most ``max_file_bytes``.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .comfy_http import ComfyHttp, FileTooLarge
from .errors import ComfyProtocolError, ComfyUnavailable
from .plugins.api import OutputItem, OutputStore
from .protocol.events import OutputCounters, StoredOutput

if TYPE_CHECKING:
    from .config import OutputsConfig
    from .core.jobs import Job
    from .core.sequence import Sequencer
    from .protocol.wire import Event

__all__ = ["OutputFetcher", "file_entries"]

logger = logging.getLogger(__name__)


def file_entries(output: Any) -> list[tuple[str, str, str]]:
    """``(filename, subfolder, type)`` of every file in a node's UI output, in order, once each.

    A file is a map with a non-empty string ``filename`` inside one of the output's lists
    (``images``, ``gifs``, ``audio``, ...); ``subfolder`` defaults to ``""`` and ``type`` to
    ``"output"``, as ``/view`` reads them. Text and other values are not files. Pure.
    """
    if not isinstance(output, dict):
        return []
    found: dict[tuple[str, str, str], None] = {}
    for value in output.values():
        if not isinstance(value, list):
            continue
        for item in value:
            if not isinstance(item, dict):
                continue
            filename = item.get("filename")
            if not isinstance(filename, str) or not filename:
                continue
            subfolder = item.get("subfolder")
            kind = item.get("type")
            found[
                (
                    filename,
                    subfolder if isinstance(subfolder, str) else "",
                    kind if isinstance(kind, str) and kind else "output",
                )
            ] = None
    return list(found)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class _Fetch:
    __slots__ = ("entry", "http", "instance", "job", "ts_ns")

    def __init__(self, entry: StoredOutput, job: Job, instance: str, http: ComfyHttp, ts_ns: int) -> None:
        self.entry = entry
        self.job = job
        self.instance = instance
        self.http = http
        self.ts_ns = ts_ns


class OutputFetcher:
    """Fetches file outputs into ``store`` with ``config.concurrency`` workers; see the module docstring."""

    def __init__(
        self,
        store: OutputStore,
        config: OutputsConfig,
        publish: Callable[[Event], None],
        seq: Sequencer,
        save: Callable[[Job, StoredOutput], None] | None = None,
    ) -> None:
        self.store = store
        self.config = config
        self.publish = publish
        self.seq = seq
        self.save = save  # the state file: called with each entry offered, and again when it ends
        self.enabled = store.name != "none"
        self._queue: collections.deque[_Fetch] = collections.deque()
        self._wakeup = asyncio.Event()
        self._workers: list[asyncio.Task[None]] = []
        self._inflight: set[_Fetch] = set()
        self._pending: dict[str, int] = {}  # job id -> its entries still pending
        self._settled: dict[str, asyncio.Event] = {}  # job id -> set when it has none pending
        self._idle = asyncio.Event()
        self._idle.set()
        self._closing = False
        self._stop = asyncio.Event()  # set by aclose: a retry's wait ends at once
        self._fetched = 0
        self._failed = 0
        self._bytes = 0
        self._retries = 0

    def __repr__(self) -> str:
        return f"<OutputFetcher {self.store!r} {self.stats()}>"

    # Public

    def start(self) -> None:
        """Start the workers (on the running loop). Idempotent."""
        if self._workers or not self.enabled:
            return
        for n in range(self.config.concurrency):
            self._workers.append(asyncio.create_task(self._work(), name=f"outputs:{n}"))

    def offer(self, job: Job, node: str, output: Any, instance: str, http: ComfyHttp, now_ns: int) -> int:
        """Queue the files of ``node``'s ``output`` for ``job`` (fetched from ``instance``); never blocks.

        A file already offered for the same prompt and node is skipped (history repeats what the
        WebSocket said). Returns how many files were queued.
        """
        if not self.enabled:
            return 0
        files = file_entries(output)
        if not files:
            return 0
        offered = {(e.prompt_id, e.node, e.filename, e.subfolder, e.type) for e in job.stored}
        entries = []
        for filename, subfolder, kind in files:
            if (job.prompt_id, node, filename, subfolder, kind) in offered:
                continue
            entry = StoredOutput(
                node=node, filename=filename, subfolder=subfolder, type=kind, state="pending", prompt_id=job.prompt_id
            )
            job.stored.append(entry)
            self._save(job, entry)
            entries.append(entry)
        return self._enqueue(job, entries, instance, http, now_ns)

    def resume(self, job: Job, instance: str, http: ComfyHttp, now_ns: int) -> int:
        """Queue the entries of a job restored from the state file that were still ``pending`` (the
        last run stopped before their fetch ended); never blocks. Returns how many were queued."""
        if not self.enabled:
            return 0
        return self._enqueue(job, [e for e in job.stored if e.state == "pending"], instance, http, now_ns)

    def give_up(self, job: Job, instance: str, error: str) -> None:
        """Fail the entries of a restored job still ``pending`` that cannot be fetched (its instance is
        no longer configured), each published as ``output.failed``."""
        for entry in job.stored:
            if entry.state == "pending":
                self._end(job, instance, entry, error=error)

    def pending(self, job_id: str) -> int:
        """How many of the job's files are still being fetched."""
        return self._pending.get(job_id, 0)

    async def settle(self, job_id: str, timeout_s: float | None = None) -> bool:
        """Wait until none of the job's files is pending (at most ``timeout_s``, default
        ``outputs.final_wait_s``); False when some still are."""
        if not self._pending.get(job_id):
            return True
        settled = self._settled.get(job_id)
        if settled is None:
            settled = self._settled[job_id] = asyncio.Event()
        try:
            async with asyncio.timeout(self.config.final_wait_s if timeout_s is None else timeout_s):
                await settled.wait()
        except TimeoutError:
            logger.info(
                "job %s: %d output fetches still running after %.1f s (outputs.final_wait_s); its final event"
                " lists them as pending",
                job_id,
                self._pending.get(job_id, 0),
                self.config.final_wait_s if timeout_s is None else timeout_s,
            )
            return False
        return True

    async def job_finished(self, job_id: str) -> None:
        """Tell the store once the job's fetches are done (or have had ``final_wait_s``)."""
        if not self.enabled:
            return
        await self.settle(job_id)
        try:
            await self.store.job_finished(job_id)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.error("output store %r failed at the end of job %s", self.store.name, job_id, exc_info=True)

    async def aclose(self, timeout_s: float = 5.0) -> None:
        """Finish the fetches queued (for at most ``timeout_s``), fail what is left, close the store.

        Idempotent. Entries left unfetched are failed (and published) while the PUB socket is open.
        """
        if self._closing:
            return
        self._closing = True
        self._stop.set()
        if self._workers:
            try:
                async with asyncio.timeout(timeout_s):
                    await self._idle.wait()
            except TimeoutError:
                logger.warning("output fetcher: gave up after %.1f s with %d files unfetched", timeout_s, self._left())
            for task in self._workers:
                task.cancel()
            await asyncio.gather(*self._workers, return_exceptions=True)
            self._workers.clear()
        for item in [*self._inflight, *self._queue]:
            if item.entry.state == "pending" and item.job.active:
                self._leave(item.job, item.entry)
            elif item.entry.state == "pending":
                self._end(item.job, item.instance, item.entry, error="the sidecar shut down before it was fetched")
            self._release(item.job.job_id)
        self._inflight.clear()
        self._queue.clear()
        try:
            await self.store.aclose()
        except Exception:
            logger.error("output store %r failed to close", self.store.name, exc_info=True)

    def stats(self) -> OutputCounters:
        return OutputCounters(
            store=self.store.name,
            fetched=self._fetched,
            failed=self._failed,
            pending=self._left(),
            bytes=self._bytes,
            retries=self._retries,
        )

    # Private

    def _enqueue(self, job: Job, entries: list[StoredOutput], instance: str, http: ComfyHttp, now_ns: int) -> int:
        """Queue ``entries`` (pending, on ``job.stored``) for fetching; returns how many were queued.

        While shutting down, an unfinished job's entries stay pending (the next run fetches them)
        and a finished job's fail; past ``outputs.queue_size`` they fail.
        """
        queued = 0
        for entry in entries:
            if self._closing:
                if job.active:
                    self._leave(job, entry)
                else:
                    self._end(job, instance, entry, error="the sidecar is shutting down")
                continue
            if len(self._queue) >= self.config.queue_size:
                self._end(
                    job,
                    instance,
                    entry,
                    error=f"the fetch queue is full (outputs.queue_size = {self.config.queue_size})",
                )
                continue
            self._pending[job.job_id] = self._pending.get(job.job_id, 0) + 1
            self._queue.append(_Fetch(entry, job, instance, http, now_ns))
            self._idle.clear()
            queued += 1
        if queued:
            self._wakeup.set()
        return queued

    @staticmethod
    def _leave(job: Job, entry: StoredOutput) -> None:
        """A shutdown stopped the fetch of an unfinished job's file: it stays pending, as saved, and
        the next run fetches it (:meth:`resume`); no ``output.*`` event is published now."""
        logger.info("output %s of job %s left pending at shutdown: the next run fetches it", entry.filename, job.job_id)

    def _save(self, job: Job, entry: StoredOutput) -> None:
        if self.save is not None:
            self.save(job, entry)

    def _left(self) -> int:
        return len(self._queue) + len(self._inflight)

    async def _work(self) -> None:
        while True:
            if not self._queue:
                if not self._inflight:
                    self._idle.set()
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            item = self._queue.popleft()
            self._inflight.add(item)
            try:
                await self._fetch(item)
            except asyncio.CancelledError:
                raise  # aclose fails what is still in flight
            except Exception as exc:  # the worker boundary: the entry fails, the worker goes on
                logger.error("fetching %s of job %s failed", item.entry.filename, item.job.job_id, exc_info=True)
                if item.entry.state == "pending":
                    self._end(item.job, item.instance, item.entry, error=f"internal error: {exc.__class__.__name__}")
            self._inflight.discard(item)
            self._release(item.job.job_id)

    async def _fetch(self, item: _Fetch) -> None:
        entry, cfg = item.entry, self.config
        error = "not fetched"
        for attempt in range(1, cfg.attempts + 1):
            entry.attempts = attempt
            try:
                status, body, content_type = await item.http.view(
                    entry.filename, entry.subfolder, entry.type, cfg.max_file_bytes
                )
            except FileTooLarge as exc:
                self._end(item.job, item.instance, entry, error=f"larger than outputs.max_file_bytes: {exc}")
                return
            except (ComfyUnavailable, ComfyProtocolError) as exc:
                error = f"ComfyUI unreachable: {exc}"
            else:
                if status == 200:
                    await self._keep(item, body, content_type)
                    return
                error = f"GET /view answered HTTP {status}"
                if status == 404:
                    error += " (ComfyUI no longer has the file; a restart empties its temp folder)"
                if status < 500 and status != 429:
                    break
            if attempt < cfg.attempts:
                if await self._stopped_within(cfg.retry_s * 2 ** (attempt - 1)):
                    if item.job.active:
                        self._leave(item.job, entry)
                        return
                    error += "; the sidecar shut down before another try"
                    break
                self._retries += 1
        self._end(item.job, item.instance, entry, error=error)

    async def _stopped_within(self, delay_s: float) -> bool:
        """Wait ``delay_s`` before a retry; True at once if :meth:`aclose` has begun (no more tries)."""
        try:
            async with asyncio.timeout(delay_s):
                await self._stop.wait()
        except TimeoutError:
            return False
        return True

    async def _keep(self, item: _Fetch, body: bytes, content_type: str | None) -> None:
        entry, job = item.entry, item.job
        digest = await asyncio.to_thread(_sha256, body)
        stored = OutputItem(
            instance=item.instance,
            job_id=job.job_id,
            prompt_id=entry.prompt_id,
            node=entry.node,
            filename=entry.filename,
            subfolder=entry.subfolder,
            type=entry.type,
            content_type=content_type,
            size_bytes=len(body),
            sha256=digest,
            ts_ns=item.ts_ns,
        )
        try:
            ref = await self.store.put(stored, body)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logger.error(
                "output store %r could not keep %s of job %s",
                self.store.name,
                entry.filename,
                job.job_id,
                exc_info=True,
            )
            self._end(
                job,
                item.instance,
                entry,
                error=f"output store {self.store.name!r} failed: {exc.__class__.__name__}: {exc}",
            )
            return
        entry.ref, entry.size_bytes, entry.sha256, entry.content_type = ref, len(body), digest, content_type
        self._bytes += len(body)
        self._end(job, item.instance, entry)

    def _end(self, job: Job, instance: str, entry: StoredOutput, error: str | None = None) -> None:
        """The entry's outcome: counted, and published as ``output.stored`` or ``output.failed``."""
        if error is None:
            entry.state = "stored"
            self._fetched += 1
        else:
            entry.state, entry.error = "failed", error
            self._failed += 1
            logger.info("output %s of job %s (node %s) not stored: %s", entry.filename, job.job_id, entry.node, error)
        self._save(job, entry)
        kind = "output.stored" if error is None else "output.failed"
        self.publish(self.seq.event(kind, instance, job.job_id, entry, time.time_ns()))

    def _release(self, job_id: str) -> None:
        left = self._pending.get(job_id, 0) - 1
        if left > 0:
            self._pending[job_id] = left
            return
        self._pending.pop(job_id, None)
        settled = self._settled.pop(job_id, None)
        if settled is not None:
            settled.set()
