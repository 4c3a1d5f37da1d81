"""SHELL: a Prometheus endpoint (``[metrics] listen``; off by default).

Counting stays off the hot path's way: the published events are counted by a wrapper
around the sidecar's publish callable (a dict increment, a clock read and a bucket
increment per event), and ComfyUI frames by a wrapper around each instance's
decoder (a dict increment per frame), both installed only when metrics are on.
Everything else (instance state, reconnects, drops, failover) is read from counters
the sidecar already keeps, when Prometheus scrapes. The endpoint is served by aiohttp
on the event loop (``GET /metrics``), so a scrape reads the counters between two
frames, never concurrently with them.
"""

from __future__ import annotations

import bisect
import logging
import re
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from .protocol.wire import Event

if TYPE_CHECKING:
    from .app import Sidecar

__all__ = ["DURATION_BUCKETS_S", "LATENCY_BUCKETS_S", "Metrics"]

logger = logging.getLogger(__name__)

LATENCY_BUCKETS_S = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
DURATION_BUCKETS_S = (1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)
FINAL = frozenset({"job.completed", "job.failed", "job.cancelled"})
_CAMEL = re.compile(r"(?<!^)(?=[A-Z])")


class _Histogram:
    """Buckets made cumulative on export; observations in integer nanoseconds (one bisect, two
    integer additions: no float on the hot path)."""

    __slots__ = ("bounds", "bounds_ns", "counts", "total_ns")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.bounds_ns = tuple(round(b * 1e9) for b in bounds)
        self.counts = [0] * (len(bounds) + 1)
        self.total_ns = 0

    def observe_ns(self, value_ns: int) -> None:
        self.counts[bisect.bisect_left(self.bounds_ns, value_ns)] += 1
        self.total_ns += value_ns

    @property
    def total(self) -> float:
        return self.total_ns / 1e9

    def buckets(self) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        running = 0
        for bound, count in zip((*map(str, self.bounds), "+Inf"), self.counts, strict=True):
            running += count
            out.append((bound, running))
        return out


def _comfy_type(cls: type) -> str:
    """ComfyUI's message type for a decoded message class: ``ExecutionStart`` -> ``execution_start``."""
    return _CAMEL.sub("_", cls.__name__).lower()


class Metrics:
    """The sidecar's counters, histograms and their HTTP endpoint."""

    def __init__(self, sidecar: Sidecar, host: str, port: int) -> None:
        self.sidecar = sidecar
        self.host = host
        self.port = port
        self.events: dict[str, int] = {}  # published events by type
        self.jobs: dict[tuple[str, str], int] = {}  # (instance, final state) -> jobs
        self.latency = _Histogram(LATENCY_BUCKETS_S)
        self.duration = _Histogram(DURATION_BUCKETS_S)
        self.frames: dict[str, dict[type, int]] = {}  # instance -> decoded message class -> frames
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(self))
        self._runner: web.AppRunner | None = None

    # Counting (installed only when metrics are on)

    def counting(self, publish: Callable[[Event], None]) -> Callable[[Event], None]:
        """``publish``, counting each event by type, its latency (``ts`` -> now) and final states."""
        events, latency, final = self.events, self.latency, FINAL
        counts, bounds, where = latency.counts, latency.bounds_ns, bisect.bisect_left
        time_ns = time.time_ns

        def publish_counted(event: Event) -> None:
            publish(event)
            kind = event.type
            events[kind] = events.get(kind, 0) + 1
            late = time_ns() - event.ts
            counts[where(bounds, late)] += 1
            latency.total_ns += late
            if kind in final:
                self._job_ended(event)

        return publish_counted

    def watch_decoder(self, instance: str, decoder: Any) -> None:
        """Count the frames ``decoder`` decodes by message type (wraps its ``decode`` in place)."""
        counts = self.frames.setdefault(instance, {})
        decode = decoder.decode

        def decode_counted(frame: bytes, *, is_text: bool | None = None) -> Any:
            msg = decode(frame, is_text=is_text)
            cls = msg.__class__
            counts[cls] = counts.get(cls, 0) + 1
            return msg

        decoder.decode = decode_counted

    # The endpoint

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._serve)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or ()
        if sockets:
            self.port = sockets[0].getsockname()[1]
        logger.info("metrics on http://%s:%d/metrics", self.host, self.port)

    async def close(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    def render(self) -> bytes:
        return generate_latest(self.registry)

    # Private

    async def _serve(self, request: web.Request) -> web.Response:
        return web.Response(body=self.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    def _job_ended(self, event: Event) -> None:
        key = (event.instance, event.type[4:])
        self.jobs[key] = self.jobs.get(key, 0) + 1
        job = self.sidecar.book.get(event.job_id or "")
        if job is not None:
            self.duration.observe_ns(max(0, event.ts - job.created_ns))


class _Collector(Collector):
    """Builds every metric family from the sidecar's counters at scrape time."""

    def __init__(self, metrics: Metrics) -> None:
        self.m = metrics

    def collect(self) -> Iterable[Metric]:
        return list(self._families())

    def _families(self) -> Iterator[Metric]:
        m, sidecar = self.m, self.m.sidecar
        frames = CounterMetricFamily(
            "comfy_bridge_frames", "ComfyUI WebSocket frames read, by message type", labels=["instance", "type"]
        )
        for name in sidecar.instances:
            counts = m.frames.get(name, {})
            for cls, count in sorted(counts.items(), key=lambda item: item[0].__name__):
                frames.add_metric([name, _comfy_type(cls)], count)
        yield frames
        events = CounterMetricFamily("comfy_bridge_events", "events published, by type", labels=["type"])
        for kind, count in sorted(m.events.items()):
            events.add_metric([kind], count)
        yield events
        dropped = CounterMetricFamily(
            "comfy_bridge_events_dropped", "events ZeroMQ refused to publish, by type", labels=["type"]
        )
        for kind, count in sorted(sidecar.publisher.stats()["dropped"].items()):
            dropped.add_metric([kind], count)
        yield dropped
        if sidecar.preview_writer is not None:
            previews = CounterMetricFamily(
                "comfy_bridge_previews_dropped", "previews dropped because the writer's queue was full"
            )
            previews.add_metric([], sidecar.preview_writer.stats()["dropped"])
            yield previews
        up = GaugeMetricFamily("comfy_bridge_instance_up", "1 while the instance is connected", labels=["instance"])
        state = GaugeMetricFamily(
            "comfy_bridge_instance_state", "1 for the instance's current state", labels=["instance", "state"]
        )
        down = GaugeMetricFamily(
            "comfy_bridge_instance_down_seconds",
            "how long the instance has been unreachable (0 while connected)",
            labels=["instance"],
        )
        reconnects = CounterMetricFamily(
            "comfy_bridge_reconnects", "connections to the instance after the first one", labels=["instance"]
        )
        forced = CounterMetricFamily(
            "comfy_bridge_forced_reconnects", "reconnects forced by the watchdogs", labels=["instance"]
        )
        malformed = CounterMetricFamily("comfy_bridge_frames_malformed", "malformed frames", labels=["instance"])
        now = time.time_ns()
        for name, inst in sidecar.instances.items():
            up.add_metric([name], 1.0 if inst.healthy else 0.0)
            state.add_metric([name, inst.state], 1.0)
            since = inst.down_since_ns
            down.add_metric([name], 0.0 if since is None else (now - since) / 1e9)
            reconnects.add_metric([name], inst.reconnects)
            forced.add_metric([name], inst.recovery.forced)
            malformed.add_metric([name], inst.malformed)
        yield from (up, state, down, reconnects, forced, malformed)
        jobs = CounterMetricFamily(
            "comfy_bridge_jobs_finished", "jobs that reached a final state", labels=["instance", "state"]
        )
        for (name, final), count in sorted(m.jobs.items()):
            jobs.add_metric([name, final], count)
        yield jobs
        active = GaugeMetricFamily("comfy_bridge_jobs_active", "unfinished jobs", labels=["instance"])
        for name in sidecar.instances:
            active.add_metric([name], sidecar.book.active_on(name))
        yield active
        moved = CounterMetricFamily("comfy_bridge_failover_moved", "jobs moved off an unreachable instance")
        moved.add_metric([], sidecar.failover.moved)
        yield moved
        failed = CounterMetricFamily(
            "comfy_bridge_failover_failed", "jobs failed with instance_down (no other instance connected)"
        )
        failed.add_metric([], sidecar.failover.failed)
        yield failed
        for name, doc, hist in (
            ("comfy_bridge_event_latency_seconds", "from the event's cause arriving (ts) to its publish", m.latency),
            ("comfy_bridge_job_duration_seconds", "from job.accepted to the job's final event", m.duration),
        ):
            family = HistogramMetricFamily(name, doc)
            family.add_metric([], hist.buckets(), sum_value=hist.total)
            yield family
