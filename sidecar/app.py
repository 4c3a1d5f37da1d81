"""SHELL: the sidecar process: instances, the two ZeroMQ sockets, requests, shutdown.

:class:`Sidecar` opens one supervised task per instance plus the router, serves
requests with the pure core, and shuts down in order (STYLE.md §17): stop
reading the ROUTER, answer the requests in flight, close the PUB (it lingers to send),
close the instances. ``run()`` takes an injectable ``shutdown_trigger``; the CLI
sets it from SIGINT/SIGTERM.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
import zmq
import zmq.asyncio

from .accepting import Accepting
from .config import BridgeConfig, metrics_address, sidecar_name
from .core.costs import NodeCosts
from .core.jobs import FINAL_STATES, PAUSED, Job, JobBook
from .core.sequence import Sequencer
from .core.submission import Queued, Rejected
from .credentials import resolve
from .curve import ServerCurve
from .endpoints import check_binds
from .errors import ConfigError, RequestError
from .failover import Failover
from .inputs import JobInputs
from .instance import Instance
from .outputs import OutputFetcher
from .pausing import Pausing
from .persistence import (
    NODE_BOUNDARIES,
    PERSISTED,
    instance_row,
    job_from_row,
    job_row,
    node_cost_rows,
    node_costs_from_rows,
    progress_of,
    stored_position,
)
from .plugins.manager import PluginError, Plugins, get_plugin_manager
from .previews import PreviewWriter
from .protocol import wire
from .protocol.events import (
    CurveCounters,
    EventCounters,
    HealthView,
    Heartbeat,
    JobFailed,
    JobView,
    PreviewCounters,
    StoreCounters,
    StoredOutput,
)
from .protocol.wire import Event, Reply, Request, ok_reply
from .publisher import Publisher
from .router import Router
from .statelock import StateLock
from .store import Store
from .ticker import Ticker

if TYPE_CHECKING:
    from .metrics import Metrics

__all__ = ["Sidecar"]

logger = logging.getLogger(__name__)


class Sidecar:
    """Everything one ``comfy-bridge run`` process holds."""

    def __init__(self, config: BridgeConfig) -> None:
        if not config.instances:
            raise ValueError("Sidecar needs at least one instance (the CLI adds the simulator)")
        self.config = config
        check_binds(config)  # also for a config built in code: no open bind without CURVE or the override
        # Keys read (and refused, naming the key) before anything binds or takes the state file.
        self.curve = ServerCurve(config.zmq.curve) if config.zmq.curve.server_secret_key else None
        # Credentials first: a variable not set stops start-up before anything is bound or opened.
        self._access = {name: resolve(name, settings) for name, settings in config.instances.items()}
        self.run_id = uuid.uuid4().hex
        self.name = sidecar_name(config)
        self.seq = Sequencer(self.run_id, sidecar=self.name)
        self.book = JobBook(self.seq)
        self._ctx = zmq.Context()
        self._actx = zmq.asyncio.Context.shadow(self._ctx)  # one context, one ZeroMQ I/O thread for both sockets
        self.plugins = Plugins(get_plugin_manager(config))
        self.adapters = self.plugins.protocol_adapters()
        if not self.adapters:
            raise PluginError("no protocol adapter is loaded; is the adapters plugin disabled (plugins.disabled)?")
        self.preview_store = self.plugins.make_preview_store(config.previews.store, config.previews.options, config)
        writer_needed = not self.preview_store.inline and self.preview_store.name != "none"
        self.preview_writer = PreviewWriter(self.preview_store, config.previews.queue_size) if writer_needed else None
        self.output_store = self.plugins.make_output_store(config.outputs.store, config.outputs.options, config)
        self.store = Store(config.state.path)
        self.state_lock = StateLock(config.state.path)  # one state file, one sidecar (issue 11)
        self.state_lock.acquire()
        try:
            self._start(config)
        except BaseException:
            if self.curve is not None:
                self.curve.stop()
            self.store.close()
            self.state_lock.release()
            raise

    def _start(self, config: BridgeConfig) -> None:
        self.store.open()
        stored = self.store.load_instances()
        secure = None
        if self.curve is not None:  # ZAP answers before either socket can take a connection
            self.curve.start(self._ctx)
            secure = self.curve.apply
        zc = config.zmq
        limits = config.limits
        self.publisher = Publisher(self._ctx, zc.pub, zc.pub_hwm, zc.pub_sndbuf_bytes, secure)
        self.router = Router(
            self._actx, zc.router, self.handle, limits.request_bytes, limits.upload_request_bytes, secure
        )
        self.inputs = JobInputs(Path(config.state.path).with_suffix(".inputs"))
        address = metrics_address(config)
        self.metrics: Metrics | None = None
        if address is not None:  # imported only when on: aiohttp's server and prometheus_client load slowly
            from .metrics import Metrics

            self.metrics = Metrics(self, *address)
        if self.metrics is not None:  # counted in a wrapper: nothing is added to publish when off
            self.publish = self.metrics.counting(self.publish)  # type: ignore[method-assign,assignment]
        self.outputs = OutputFetcher(self.output_store, config.outputs, self.publish, self.seq, self._save_output)
        self.instances: dict[str, Instance] = {}
        for name, settings in config.instances.items():
            previous = stored.get(name)
            same_url = previous is not None and previous.url == self._access[name].url  # as stored: masked
            if settings.client_id is None and previous is not None and same_url:
                settings = msgspec.structs.replace(settings, client_id=previous.client_id)
            self.instances[name] = Instance(
                name,
                settings,
                config,
                self.book,
                self.publish,
                self.adapters,
                self.preview_store,
                self.preview_writer,
                persist=self._persist,
                inputs=self.inputs,
                access=self._access[name],
                outputs=self.outputs,
            )
        costs = node_costs_from_rows(self.store.load_node_costs())
        for name, inst in self.instances.items():  # before the jobs are restored: their plans weigh by them
            inst.tracker.costs = costs.get(name) or NodeCosts()
        if self.metrics is not None:
            for name, inst in self.instances.items():
                self.metrics.watch_decoder(name, inst.choice.decoder)
        self._orphaned = self._restore_jobs()
        # every job not ended keeps its files (one paused, or held, included)
        self.inputs.restore((job.job_id, job.workflow) for job in self.book if job.state not in FINAL_STATES)
        self.failover = Failover(self.instances, self.book, self._persist)
        self.ticker = Ticker(self.instances)  # moves the bar while a node sends nothing
        self.accepting = Accepting(self)
        self.pausing = Pausing(self)
        self._closed = False

    # Public

    def publish(self, event: Event) -> None:
        """Publish ``event``; after a state transition, save the job's or instance's row; at a node
        boundary, the job's percentage and progress nodes; after either, the node costs learned.
        A node's start wakes the progress ticker (it ticks only while that node sends nothing)."""
        self.publisher.publish(event)
        kind = event.type
        if kind in PERSISTED:
            job = self.book.get(event.job_id or "")
            if job is not None:
                self.store.save_job(job_row(job))
                if job.state in FINAL_STATES:
                    self.inputs.discard(job.job_id)  # its files leave the disk (nothing to do without)
            self._save_costs(event)
        elif kind in NODE_BOUNDARIES:
            job = self.book.get(event.job_id or "")
            if job is not None and job.active:
                self.store.save_progress(job.job_id, *progress_of(job))
            self._save_costs(event)
            if kind == "node.executing":
                self.ticker.wake()
        elif kind == "instance.status":
            self.store.save_instance(instance_row(self.instances[event.instance]))

    async def run(self, shutdown_trigger: Callable[[], Awaitable[Any]] | None = None) -> None:
        """Serve until ``shutdown_trigger`` returns (or forever), then shut down gracefully."""
        try:
            if self.metrics is not None:
                try:
                    await self.metrics.start()
                except OSError as exc:
                    where = self.config.metrics.listen
                    raise ConfigError(f"key 'metrics.listen': cannot listen on {where}: {exc.strerror or exc}") from exc
            self.outputs.start()
            async with asyncio.TaskGroup() as group:
                # The ROUTER first: `ping` is answered in the first loop iteration, before any instance's
                # first HTTP call imports aiohttp's client (comfy_http).
                tasks = [group.create_task(self.router.serve(), name="router")]
                tasks += [group.create_task(inst.run(), name=f"instance:{n}") for n, inst in self.instances.items()]
                tasks.append(group.create_task(self._heartbeat(), name="heartbeat"))
                tasks.append(group.create_task(self.failover.run(), name="failover"))
                tasks.append(group.create_task(self.ticker.run(), name="ticker"))
                if self.preview_writer is not None:
                    tasks.append(group.create_task(self.preview_writer.run(), name="previews"))
                for job in self._orphaned:
                    failure = JobFailed(
                        code="unknown_instance",
                        message=f"instance {job.instance!r} is no longer configured",
                        prompt_id=job.prompt_id,
                    )
                    self.outputs.give_up(job, job.instance, f"not fetched: {failure.message}")
                    for event in self.book.fail(job, failure, time.time_ns()):
                        self.publish(event)
                if shutdown_trigger is None:
                    await asyncio.Future()
                await shutdown_trigger()  # type: ignore[misc]
                logger.info("shutting down")
                for task in tasks:
                    task.cancel()
        finally:
            await self.close()

    async def close(self, graceful_timeout_s: float = 5.0) -> None:
        """Idempotent: stop requests, answer those in flight, close sockets (the PUB lingers to send)."""
        if self._closed:
            return
        self._closed = True
        await self.router.drain(graceful_timeout_s)
        self.router.close()
        await self.outputs.aclose(graceful_timeout_s)  # before the PUB closes: what is left is published failed
        if self.metrics is not None:
            await self.metrics.close()
        for inst in self.instances.values():
            await inst.close()
        for job in self.book:  # the exact last percentage: the next run publishes nothing below it
            if job.active:
                self.store.save_progress(job.job_id, *progress_of(job))
        self.publisher.close()  # ZeroMQ sends what the subscribers' pipes hold for up to its linger
        if self.preview_writer is not None:
            await self.preview_writer.aclose(graceful_timeout_s)
        else:
            await self.preview_store.aclose()
        await self.inputs.aclose()
        await asyncio.to_thread(self.store.close, graceful_timeout_s)
        self.state_lock.release()
        if self.curve is not None:
            self.curve.stop()
        self._ctx.term()  # the shadow shares it

    async def handle(self, request: Request) -> Reply:
        """Serve one decoded request (the router turns RequestError into ``ok: false``)."""
        if isinstance(request, wire.Submit):
            return await self.accepting.handle(request)
        if isinstance(request, wire.Cancel):
            job = self.unfinished(await self.known_job(request.job_id), request.job_id)
            result = await self.instances[job.instance].cancel(job)
            if job.active:  # remember the request across a restart: its interrupt then ends as cancelled
                self._persist(job)
            return ok_reply(request.id, {"job_id": job.job_id, **result})
        if isinstance(request, (wire.Pause, wire.Resume)):
            return await self.pausing.handle(request)
        if isinstance(request, wire.GetJob):
            found = await self.lookup(request.job_id)
            if found is None:
                raise RequestError("job_not_found", f"no job {request.job_id!r}", {"job_id": request.job_id})
            return ok_reply(request.id, found if isinstance(found, JobView) else found.view())
        if isinstance(request, wire.ListJobs):
            return ok_reply(request.id, {"jobs": self.book.views(request.active, request.instance)})
        if isinstance(request, wire.Health):
            return ok_reply(request.id, self._health())
        if isinstance(request, wire.Snapshot):
            return ok_reply(request.id, self.snapshot())
        if isinstance(request, wire.Ping):
            return ok_reply(request.id, {"pong": True, "run": self.run_id, "seq": self.seq.seq})
        raise RequestError("unknown_op", f"op {request.__class__.__name__} is not served")

    def snapshot(self) -> dict[str, Any]:
        """State of every instance and unfinished job, and the ``seq`` it reflects.

        Built synchronously (no await), so no event can be made in between.
        """
        return {
            "seq": self.seq.seq,
            "run": self.run_id,
            "instances": [inst.view() for inst in self.instances.values()],
            "jobs": [job.view() for job in self.book if job.active],
            "sidecar": self.name,
        }

    # Private

    def _persist(self, job: Job) -> None:
        self.store.save_job(job_row(job))

    def _save_output(self, job: Job, entry: StoredOutput) -> None:
        """Save one of the job's file outputs (offered, or its fetch ended): one small row, queued."""
        n = stored_position(job, entry)
        if n is None:  # not expected: the fetcher saves entries of job.stored only; never raised into it
            logger.error("output %s of job %s is not in its list; not saved", entry.filename, job.job_id)
            return
        self.store.save_output(job.job_id, n, entry)

    def _save_costs(self, event: Event) -> None:
        """Save the node costs the event's instance learned (when a node ended: a row or two)."""
        inst = self.instances.get(event.instance)
        if inst is not None:
            changed = inst.tracker.costs.changed()
            if changed:
                self.store.save_node_costs(node_cost_rows(inst.name, changed, event.ts))

    def _restore_jobs(self) -> list[Job]:
        """Bring back the unfinished jobs of the last run; returns those whose instance is gone."""
        orphaned = []
        now = time.time_ns()
        for row in self.store.load_jobs(unfinished_only=True):
            job = job_from_row(row)
            self.book.restore(job)
            inst = self.instances.get(job.instance)
            if inst is not None:  # files the last run had not fetched yet (a copy it made is kept, not fetched)
                self.outputs.resume(job, inst.name, inst.http, now)
            if job.state == PAUSED:
                continue  # held by the sidecar until a resume places it
            if inst is None:
                orphaned.append(job)
            elif job.prompt_id is None:
                job.maybe_posted = True  # ComfyUI's answer never came: looked for, else posted, once connected
                inst.hold(job)
            else:
                inst.tracker.restore(job)
        if self.book:
            logger.info("restored %d unfinished jobs from %s", len(self.book), self.config.state.path)
        return orphaned

    async def _heartbeat(self) -> None:
        """A ``heartbeat`` event whenever nothing else went out for ``heartbeat_s`` (zguide HUGZ)."""
        interval = self.config.zmq.heartbeat_s
        while True:
            last = self.seq.seq
            await asyncio.sleep(interval)
            if self.seq.seq == last:
                up = sum(1 for inst in self.instances.values() if inst.healthy)
                active = sum(1 for job in self.book if job.active)
                data = Heartbeat(instances_up=up, instances=len(self.instances), jobs_active=active)
                self.publish(self.seq.event("heartbeat", "*", None, data, time.time_ns()))

    def _health(self) -> HealthView:
        writer = self.preview_writer.stats() if self.preview_writer is not None else {}
        return HealthView(
            run=self.run_id,
            seq=self.seq.seq,
            instances=[inst.view() for inst in self.instances.values()],
            events_published=self.publisher.published,
            events=EventCounters(**self.publisher.stats()),
            requests_served=self.router.served,
            bad_requests=self.router.bad,
            previews=PreviewCounters(
                store=self.preview_store.name,
                too_big=sum(inst.previews_too_big for inst in self.instances.values()),
                **writer,
            ),
            store=StoreCounters(path=str(self.config.state.path), writes=self.store.writes, errors=self.store.errors),
            outputs=self.outputs.stats(),
            curve=CurveCounters(**self.curve.stats()) if self.curve is not None else CurveCounters(),
            sidecar=self.name,
        )

    async def post(self, inst: Instance, job: Job) -> Queued | Rejected:
        """``inst.submit(job)`` for ``submit`` and ``resume``; an unexpected error fails the job
        (``internal_error``, published and stored: an accepted job always ends) and is raised."""
        try:
            return await inst.submit(job)
        except Exception:
            failure = JobFailed(code="internal_error", message="the sidecar failed to submit this job")
            for event in self.book.fail(job, failure, time.time_ns()):
                self.publish(event)
            raise

    async def known_job(self, job_id: str) -> Job | JobView:
        """The job (or the view of a finished one read back from the state file); ``job_not_found``."""
        found = await self.lookup(job_id)
        if found is None:
            raise RequestError("job_not_found", f"no job {job_id!r}", {"job_id": job_id})
        return found

    @staticmethod
    def unfinished(found: Job | JobView, job_id: str) -> Job:
        """``found`` if it has not ended; ``job_finished`` (nothing to cancel or pause) if it has."""
        if isinstance(found, JobView) or not found.active:
            raise RequestError(
                "job_finished", f"job {job_id!r} already {found.state}", {"job_id": job_id, "state": found.state}
            )
        return found

    async def lookup(self, job_id: str) -> Job | JobView | None:
        """The job (whole while unfinished), else its light record, else its row in the state file."""
        found = self.book.get(job_id) or self.book.view(job_id)
        return found if found is not None else await self._from_store(job_id)

    async def _from_store(self, job_id: str) -> Job | JobView | None:
        """A job the store knows but memory no longer does (finished before a restart, or forgotten).

        A finished one is kept as a light record (bounded), never whole.
        """
        row = await asyncio.to_thread(self.store.load_job, job_id)
        found = self.book.get(job_id) or self.book.view(job_id)
        if row is None or found is not None:
            return found
        job = job_from_row(row)
        if not job.active:
            self.book.remember(job)
            return job.view()
        self.book.restore(job)
        return job
