"""SHELL: one ComfyUI instance: its WebSocket loop, its HTTP client, its tracker.

The sidecar owns the reconnect loop (STYLE.md §16): ``connect -> handshake ->
read``, with the same clientId every time, ``instance.status`` events on every
change, and a backoff that can be woken early. Frames arrive as bytes (from
``data_received``, :mod:`.wsdirect`), are decoded by the pure decoder and fed to the pure
tracker; the events it returns are published at once, in order. Nothing on this
path blocks: history fetches after a prompt ends run in their own tasks.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, cast

import websockets
from websockets.asyncio.client import ClientConnection, connect

from .adapting import AdapterChoice
from .cancelling import Canceller
from .comfy_http import ComfyHttp
from .config import BridgeConfig, InstanceConfig
from .core.backoff import backoff
from .core.jobs import Job, JobBook
from .core.submission import Queued, Rejected
from .core.tracker import InstanceTracker
from .core.versions import Capabilities
from .credentials import Credentials, RedactingLogger, auth_refused, resolve
from .errors import AuthRefused, ComfyProtocolError, ComfyUnavailable
from .pausing import Pauser
from .plugins.api import PreviewItem, PreviewStore, ProtocolAdapter
from .posting import Outbox
from .protocol import comfy
from .protocol.events import InstanceStatus, InstanceView
from .protocol.wire import Event
from .recovery import Recovery
from .submitting import Submitter
from .wsdirect import DirectConnection

if TYPE_CHECKING:
    from .inputs import JobInputs
    from .outputs import OutputFetcher
    from .previews import PreviewWriter

__all__ = ["Instance"]

logger = logging.getLogger(__name__)

FEATURE_FLAGS = b'{"type": "feature_flags", "data": {"supports_preview_metadata": true}}'
ASIDE = (comfy.Skipped, comfy.Unknown, comfy.Malformed, comfy.FeatureFlags, comfy.ProgressState)  # see _odd
STABLE_AFTER_S = 10.0
FINAL_EVENTS = frozenset({"job.completed", "job.failed", "job.cancelled"})
STOPPED_EVENTS = FINAL_EVENTS | {"job.paused"}  # a cancel's or pause's confirmation waits for one


class Instance:
    """One configured ComfyUI instance. :meth:`run` is its supervised task."""

    def __init__(
        self,
        name: str,
        settings: InstanceConfig,
        config: BridgeConfig,
        book: JobBook,
        publish: Callable[[Event], None],
        adapters: Sequence[ProtocolAdapter],
        previews: PreviewStore | None = None,
        writer: PreviewWriter | None = None,
        persist: Callable[[Job], None] | None = None,
        inputs: JobInputs | None = None,
        access: Credentials | None = None,
        outputs: OutputFetcher | None = None,
    ) -> None:
        self.name = name
        self.inputs = inputs  # the jobs' input files, uploaded before each POST /prompt
        self.outputs = outputs  # copies file outputs from /view as soon as their node.output is out
        self.persist = persist  # saves a job's row at a change no event announces
        self.access = access or resolve(name, settings)  # a ConfigError names the key or variable
        self.url = self.access.url  # secrets masked: this one is logged, published and stored
        self.client_id = settings.client_id or f"comfy-bridge-{name}-{uuid.uuid4().hex[:12]}"
        self.config = config
        self.book = book
        self.publish = publish
        self.http = ComfyHttp(self.access, timeout_s=config.submit.http_timeout_s)
        self.tracker = InstanceTracker(name, book)
        self.tracker.previews = previews is not None and previews.name != "none"
        self.preview_store = previews
        self.preview_writer = writer
        self.state = "disconnected"
        self.last_connected_ns: int | None = None
        self.last_error: str | None = None
        self.frames = 0
        self.malformed = 0
        self.unknown = 0
        self._seen_bad: set[str | None] = set()
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self.log = logging.LoggerAdapter(logger, {"instance": name})
        self._ws: ClientConnection | None = None
        self.adapters = adapters
        self.adapter: ProtocolAdapter
        self.caps: Capabilities
        self.choice = AdapterChoice(self)  # sets adapter and caps; its decoder is reconfigured in place
        self.held: list[Job] = []
        self.ends: dict[str, asyncio.Event] = {}  # set when a job's final event is published
        self.canceller = Canceller(self)
        self.pauser = Pauser(self)
        self.recovery = Recovery(self)
        self.outbox = Outbox(self)
        self.submitter = Submitter(self)
        self.last_frame_ns = 0
        self._reconnect_now = False
        #: when the sidecar found this instance unreachable (its connection lost, or never made);
        #: None while connected. :class:`~sidecar.failover.Failover` reads it.
        self.down_since_ns: int | None = None
        self.down_warned = False  # the WARNING for crossing the failover threshold was logged
        self.reconnects = 0  # connections made after the first (metrics)
        self.previews_too_big = 0  # preview images over limits.preview_bytes: dropped, not published (health)
        # The WebSocket library logs the upgrade's headers at DEBUG: masked when there are secrets.
        ws_logger = logging.getLogger("websockets.client")
        self._ws_logger = RedactingLogger(ws_logger, self.access) if self.access.secrets else None
        if self.access.insecure:
            self.log.warning("%s: TLS certificate verification is off (tls_verify = false)", self.url)

    # Public

    @property
    def healthy(self) -> bool:
        return self.state == "connected"

    def load(self) -> int:
        """ComfyUI's queue plus the sidecar's own unfinished jobs on this instance."""
        return self.tracker.queue_remaining + self.book.active_on(self.name)

    def view(self) -> InstanceView:
        return InstanceView(
            name=self.name,
            url=self.url,
            state=self.state,
            client_id=self.client_id,
            version=self.caps.version,
            last_connected_ns=self.last_connected_ns,
            last_error=self.last_error,
            queue_remaining=self.tracker.queue_remaining,
            in_flight=self.book.active_on(self.name),
            frames=self.frames,
            malformed=self.malformed,
            unknown=self.unknown,
            adapter=self.adapter.name if self.last_connected_ns else None,
        )

    async def force_reconnect(self, reason: str = "silent socket") -> None:
        """Drop the WebSocket now and reconnect at once (then resync)."""
        self._reconnect_now = True
        if self._ws is not None:
            await self._ws.close(code=1001, reason=reason)

    def wake(self) -> None:
        """Cut a backoff wait short."""
        self._wake.set()

    async def run(self) -> None:
        """Connect, read, reconnect with backoff, forever; never raises but CancelledError."""
        cfg = self.config.backoff
        delays = backoff(cfg.initial_s, cfg.max_s, cfg.multiplier, random.random)
        while True:
            up_since = time.monotonic()
            try:
                await self._session()
            except asyncio.CancelledError:
                raise
            except (TimeoutError, OSError, ComfyUnavailable, ComfyProtocolError, websockets.WebSocketException) as exc:
                self.last_error = self._reason(exc)
            except Exception as exc:  # the supervision boundary: log, back off, go on
                self.log.error("instance loop failed", exc_info=True)
                self.last_error = self.access.redact(f"{exc.__class__.__name__}: {exc}")
            if time.monotonic() - up_since > STABLE_AFTER_S:
                delays = backoff(cfg.initial_s, cfg.max_s, cfg.multiplier, random.random)
            delay = next(delays)
            if self._reconnect_now:
                self._reconnect_now, delay = False, 0.0
            self.set_state("disconnected", error=self.last_error)
            # INFO when it goes down, DEBUG for each retry after (recovery: INFO; crossing the
            # failover threshold: one WARNING, from Failover)
            first = self.down_since_ns is None
            if first:
                self.down_since_ns = time.time_ns()
            refused = self.last_error is not None and self.last_error.startswith("authentication refused")
            log = (self.log.warning if refused else self.log.info) if first else self.log.debug
            log("%s unreachable (%s); retrying in %.2f s", self.url, self.last_error, delay)
            self.set_state("waiting", error=self.last_error, next_attempt_ns=time.time_ns() + int(delay * 1e9))
            self._wake.clear()
            try:
                async with asyncio.timeout(delay):
                    await self._wake.wait()
            except TimeoutError:
                pass

    async def submit(self, job: Job, moved_from: tuple[str, str | None] | None = None) -> Queued | Rejected:
        """``POST /prompt`` for ``job`` (:meth:`.submitting.Submitter.submit`)."""
        return await self.submitter.submit(job, moved_from)

    def hold(self, job: Job) -> None:
        """Keep ``job`` until this instance is connected, then submit it (``queue_anyway``)."""
        self.held.append(job)
        self.wake()

    async def cancel(self, job: Job) -> dict[str, Any]:
        """Send the cancel for ``job`` now; exactly one final event follows (see :mod:`.cancelling`)."""
        return await self.canceller.cancel(job)

    async def close(self) -> None:
        """Idempotent."""
        for task in list(self._tasks):
            task.cancel()
        if self._ws is not None:
            await self._ws.close()
        await self.http.close()

    # Private: one connection

    async def _session(self) -> None:
        self.set_state("connecting")
        stats = await self.http.system_stats()
        features = await self.http.has_features()
        self.tracker.output_classes = await self.http.output_classes()
        tls: dict[str, Any] = {"ssl": self.access.ssl} if self.access.ssl is not None else {}
        async with connect(
            self.access.ws_url(self.client_id),
            compression=None,
            max_size=self.config.limits.ws_frame_bytes,  # larger: websockets closes with 1009, we reconnect
            ping_interval=20,
            ping_timeout=20,
            close_timeout=1.0,
            open_timeout=self.config.submit.http_timeout_s,
            additional_headers=self.access.headers or None,
            create_connection=DirectConnection,
            logger=self._ws_logger,
            **tls,
        ) as ws:
            self._ws = ws
            await ws.send(FEATURE_FLAGS, text=True)
            self.choice.connected(stats, features)
            if self.caps.jobs_api:  # a per-job cancel endpoint is found by probing, never assumed
                self.choice.probed(await self.http.has_job_cancel())
            if self.last_connected_ns is not None:
                self.reconnects += 1
            self.last_connected_ns = time.time_ns()
            down_since = self.down_since_ns
            self.set_state("connected")
            self.log.info(
                "connected to %s (ComfyUI %s, adapter %s)%s",
                self.url,
                self.caps.version or "< 0.1",
                self.adapter.name,
                f" after {(self.last_connected_ns - down_since) / 1e9:.1f} s unreachable" if down_since else "",
            )
            self.last_frame_ns = time.time_ns()
            self.choice.want_node_state()
            session = [asyncio.create_task(self.recovery.resync()), asyncio.create_task(self.recovery.watch())]
            try:
                await self._read(cast(DirectConnection, ws))
            finally:
                self._ws = None
                for task in session:
                    task.cancel()

    def _reason(self, exc: Exception) -> str:
        """Why a connection failed or ended, as ``health`` and ``instance.status`` say it; no secrets."""
        if isinstance(exc, AuthRefused):
            return str(exc)
        if isinstance(exc, websockets.InvalidStatus) and exc.response.status_code in (401, 403):
            return auth_refused(exc.response.status_code, "the WebSocket upgrade")
        return self.access.redact(f"{exc.__class__.__name__}: {exc}")

    async def _read(self, ws: DirectConnection) -> None:
        """Handle every message: whole ones from ``data_received`` (:mod:`.wsdirect`), fragmented
        ones (never from ComfyUI itself) through ``recv()``; returns or raises when the socket ends."""
        decode = self.choice.decoder.decode  # stays valid: the decoder is reconfigured in place
        feed = self.tracker.feed
        publish = self.publish
        tracker = self.tracker
        aside = ASIDE

        def handle(frame: bytes) -> None:
            now = self.last_frame_ns = time.time_ns()
            self.frames += 1
            msg = decode(frame)
            if isinstance(msg, aside):
                self._odd(msg, frame, now)
                return
            for event in feed(msg, now):
                if event.image is not None:
                    if self._too_big(event):
                        continue
                    self._store_preview(event)
                publish(event)
            if tracker.wanted:  # a history to read, or file outputs to fetch
                self.after_feed()

        ws.start(handle)
        while True:
            try:
                frame = await ws.recv(decode=False)
            except websockets.ConnectionClosed:
                if ws.failure is not None:  # handling a message failed: the run loop logs it and reconnects
                    raise ws.failure from None
                raise
            handle(frame)

    def _too_big(self, event: Event) -> bool:
        """A preview image over ``limits.preview_bytes``: dropped (its ``index`` is skipped) and counted."""
        if len(event.image or b"") <= self.config.limits.preview_bytes:
            return False
        self.previews_too_big += 1
        return True

    def _store_preview(self, event: Event) -> None:
        """Inline stores keep the bytes on the event; others get a reference and a queued write."""
        store = self.preview_store
        if store is None or store.inline:
            return
        data = event.data
        item = PreviewItem(self.name, event.job_id or "", data.node, data.index, data.format, event.image, event.ts)  # type: ignore[arg-type]
        data.inline = False
        data.ref = store.ref(item)
        event.image = None
        if self.preview_writer is not None:
            self.preview_writer.offer(item, data.ref)

    def _odd(self, msg: comfy.ComfyMessage, frame: bytes, now: int) -> None:
        """Frames off the hot path: skipped, unknown, malformed, the flags reply, node state."""
        if isinstance(msg, comfy.Skipped):
            return
        if isinstance(msg, comfy.ProgressState):  # decoded only while node state is wanted
            self.emit(self.tracker.feed(msg, now))
            self.after_feed()
            if not self.tracker.state_wanted:
                self.choice.configure_decoder()  # restored: skip progress_state again
            return
        if isinstance(msg, comfy.FeatureFlags):
            self.choice.flags_replied()  # the next frame is read with the adapter chosen now
            return
        if isinstance(msg, comfy.Unknown):
            again = self.choice.decoder.decode(frame) if self.choice.refine(msg.type) else msg
            if not isinstance(again, comfy.Unknown):  # a later adapter knows it: this frame is read with it
                if isinstance(again, ASIDE):
                    self._odd(again, frame, now)
                else:
                    self.emit(self.tracker.feed(again, now))
                    self.after_feed()
                return
            self.unknown += 1
            key = msg.type
            if key not in self._seen_bad:
                self._seen_bad.add(key)
                self.log.debug("unknown message type %r (logged once)", key)
            return
        assert isinstance(msg, comfy.Malformed)
        self.malformed += 1
        key = f"malformed:{msg.type}"
        if key not in self._seen_bad:
            self._seen_bad.add(key)
            self.log.warning("malformed %s frame: %s (logged once per type)", msg.type or "text", msg.reason)

    # Private: after a prompt ends

    async def _finalize(self, job: Job) -> None:
        """Read the prompt's history (it can lag the end message), then publish the final event.

        When ComfyUI cannot be reached for it (killed or restarted just after the end), the
        final event waits: :class:`Recovery` reads the history after the reconnect, or ends
        the job as the socket said if a restarted ComfyUI lost it.
        """
        entry = None
        attempts = max(1, self.config.submit.history_attempts)
        for attempt in range(attempts):
            try:
                entry = await self.http.history(job.prompt_id or "")
            except ComfyUnavailable as exc:
                if self._ws is None or attempt == attempts - 1:  # the socket dropped too, or it is hopeless now
                    self.log.info("history of %s not read (%s); settled after reconnecting", job.prompt_id, exc)
                    self.recovery.await_history(job)
                    return
                self.log.info("history of %s not read: %s", job.prompt_id, exc)
            except ComfyProtocolError as exc:
                self.log.info("history of %s not read: %s", job.prompt_id, exc)
            if entry is not None or attempt == attempts - 1:
                break
            await asyncio.sleep(self.config.submit.history_retry_s * (attempt + 1))
        if self.outputs is not None and self.outputs.enabled:
            self.offer_outputs(job, entry)
            await self.outputs.settle(job.job_id)  # bounded: outputs.final_wait_s
        self.emit(self.tracker.finalize(job, entry, time.time_ns()))

    async def withdraw(self, prompt_id: str) -> None:
        """Remove a prompt the sidecar does not follow (:meth:`.submitting.Submitter.withdraw`)."""
        await self.submitter.withdraw(prompt_id)

    # Public: helpers for the cancel and recovery parts

    def after_feed(self) -> None:
        """What the last feed left for the shell: file outputs to fetch (first), histories to read."""
        tracker = self.tracker
        if not tracker.wanted:
            return
        produced = tracker.outputs_wanted()
        if produced and self.outputs is not None:
            now = time.time_ns()
            for job, node, output in produced:
                self.outputs.offer(job, node, output, self.name, self.http, now)
        for job in tracker.history_wanted():
            self.spawn(self._finalize(job))

    def offer_outputs(self, job: Job, history: Any) -> None:
        """Fetch the files of a ``/history`` entry's outputs that no ``executed`` frame offered (missed)."""
        if self.outputs is None or not isinstance(history, dict) or not job.active:
            return
        produced = history.get("outputs")
        if isinstance(produced, dict):
            now = time.time_ns()
            for node, output in produced.items():
                self.outputs.offer(job, str(node), output, self.name, self.http, now)

    def emit(self, events: list[Event]) -> None:
        """Publish events made outside the read loop (replayed early frames, ends, cancels)."""
        for event in events:
            if event.image is not None:
                if self._too_big(event):
                    continue
                self._store_preview(event)
            self.publish(event)
            if event.type in STOPPED_EVENTS and event.job_id is not None:
                ended = self.ends.pop(event.job_id, None)
                if ended is not None:
                    ended.set()
                if self.preview_writer is not None and event.type in FINAL_EVENTS:
                    self.spawn(self.preview_writer.job_finished(event.job_id))
                if self.outputs is not None and self.outputs.enabled:
                    self.spawn(self.outputs.job_finished(event.job_id))

    def release_held(self) -> None:
        """Post the jobs held for this instance now, one after the other in the order they were
        accepted; one that may have been posted already (a restart) is looked for in ComfyUI first
        (:meth:`Recovery.find_or_submit`)."""
        held, self.held = self.held, []
        self.post_in_order(held)  # also resumes the jobs a lost connection left waiting to be posted

    def post_in_order(self, jobs: list[Job], lost: dict[str, str | None] | None = None) -> None:
        """Queue ``jobs`` for posting, one at a time, oldest first (:class:`~sidecar.posting.Outbox`)."""
        self.outbox.add(jobs, lost)

    def spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:  # logged now, not at GC
            self.log.error("task %s failed", task.get_coro(), exc_info=exc)

    def set_state(self, state: str, error: str | None = None, next_attempt_ns: int | None = None) -> None:
        if state == self.state and state != "waiting":
            return
        self.state = state
        if state == "connected":
            self.last_error = None  # health's last_error says why an instance is not connected
            self.down_since_ns = None
            self.down_warned = False
            self.release_held()
        elif error is not None:
            self.last_error = error  # e.g. why the connection failed, or what made the instance degraded
        data = InstanceStatus(
            state=state, url=self.url, version=self.caps.version, error=error, next_attempt_ns=next_attempt_ns
        )
        self.publish(self.book.seq.event("instance.status", self.name, None, data, time.time_ns()))
