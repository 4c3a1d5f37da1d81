"""Fixtures for shell tests: simulated ComfyUI servers, a running sidecar, ZeroMQ clients.

Everything talks through real sockets on 127.0.0.1 (WebSocket and HTTP to the
simulator, TCP ZeroMQ to the sidecar). Nothing sleeps to synchronise: clients wait
on events under ``asyncio.timeout``; the slow joiner is handled by waiting for the
first event (heartbeats arrive every 50 ms here).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest
import zmq
import zmq.asyncio

from sidecar.app import Sidecar
from sidecar.config import (
    BackoffConfig,
    BridgeConfig,
    InstanceConfig,
    OutputsConfig,
    PreviewConfig,
    StateConfig,
    SubmitConfig,
    ZmqConfig,
)
from sidecar.curve import ClientCurve

WAIT_S = 15.0


def text_workflow() -> dict[str, Any]:
    """A 0.12.1 workflow whose GetImageSize node sends progress text (binary type 3): ``node.text``."""
    sized = {"width": ["2", 0], "height": ["2", 1], "batch_size": 1, "color": 0}  # linked from GetImageSize
    return {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 48, "batch_size": 2, "color": 0}},
        "2": {"class_type": "GetImageSize", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "EmptyImage", "inputs": sized},
        "4": {"class_type": "PreviewImage", "inputs": {"images": ["3", 0]}},
    }


def probe_workflow(steps: int = 4, fail_at: int = -1, seed: int | None = None, step_ms: int = 20) -> dict[str, Any]:
    """The traces' graph: EmptyImage -> BridgeProbe -> SaveImage, + PreviewImage and BridgeText."""
    seed = seed if seed is not None else uuid.uuid4().int % 100_000
    return {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": seed}},
        "2": {
            "class_type": "BridgeProbe",
            "inputs": {"image": ["1", 0], "steps": steps, "step_ms": step_ms, "fail_at": fail_at, "seed": seed},
            "_meta": {"title": "Probe"},
        },
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "bridge"}},
        "4": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
        "5": {"class_type": "BridgeText", "inputs": {"text": "bridge text output", "image": ["2", 0]}},
    }


async def first_match(items: list[Any], grew: asyncio.Event, pred: Callable[[Any], bool], timeout_s: float) -> Any:
    """The first item of ``items`` (a list that grows, setting ``grew``) for which ``pred`` holds."""
    start = 0
    async with asyncio.timeout(timeout_s):
        while True:
            for item in items[start:]:
                if pred(item):
                    return item
            start = len(items)
            grew.clear()
            await grew.wait()


class Client:
    """A backend as the Rust side would be: a DEALER for requests, a SUB for events."""

    def __init__(
        self,
        ctx: zmq.asyncio.Context,
        router: str,
        pub: str,
        topics: tuple[bytes, ...] = (b"",),
        curve: ClientCurve | None = None,
    ) -> None:
        self.router, self.pub = router, pub
        self.dealer = ctx.socket(zmq.DEALER)
        self.dealer.setsockopt(zmq.LINGER, 0)
        self.sub = ctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.LINGER, 0)
        if curve is not None:  # sidecar/curve.py: options before connect
            curve.apply(self.dealer)
            curve.apply(self.sub)
        self.dealer.connect(router)
        for topic in topics:
            self.sub.setsockopt(zmq.SUBSCRIBE, topic)
        self.sub.connect(pub)
        self.events: list[dict[str, Any]] = []
        self.images: dict[int, bytes] = {}
        self.topics: dict[int, bytes] = {}
        self._arrived = asyncio.Event()
        self._reader = asyncio.create_task(self._read())
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._replies = asyncio.create_task(self._read_replies())
        self._n = 0

    async def _read(self) -> None:
        while True:
            frames = await self.sub.recv_multipart()
            event = msgspec.msgpack.decode(frames[1])
            self.topics[event["seq"]] = frames[0]
            if len(frames) > 2:
                self.images[event["seq"]] = frames[2]
            self.events.append(event)
            self._arrived.set()

    async def _read_replies(self) -> None:
        while True:
            body = msgspec.msgpack.decode(await self.dealer.recv())
            fut = self._pending.pop(body.get("id") or "", None)
            if fut is not None and not fut.done():
                fut.set_result(body)

    async def request(self, op: str, **fields: Any) -> dict[str, Any]:
        self._n += 1
        rid = f"r{self._n}"
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[rid] = fut
        await self.dealer.send(msgspec.msgpack.encode({"op": op, "id": rid, **fields}))
        async with asyncio.timeout(WAIT_S):
            return await fut

    async def raw(self, body: bytes) -> dict[str, Any]:
        """Send raw bytes; the reply to a bad request has ``id`` null."""
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[""] = fut
        await self.dealer.send(body)
        async with asyncio.timeout(WAIT_S):
            return await fut

    async def wait_for(self, pred: Callable[[dict[str, Any]], bool], timeout_s: float = WAIT_S) -> dict[str, Any]:
        """The first event (already received or to come) for which ``pred`` holds."""
        return await first_match(self.events, self._arrived, pred, timeout_s)

    async def job_final(self, job_id: str, timeout_s: float = WAIT_S) -> dict[str, Any]:
        return await self.wait_for(
            lambda e: e["job_id"] == job_id and e["type"] in ("job.completed", "job.failed", "job.cancelled"),
            timeout_s,
        )

    async def tick(self, heartbeats: int = 1) -> None:
        """Let ``heartbeats`` heartbeats pass: an event-driven way to give the sidecar time."""
        seen = self.events[-1]["seq"] if self.events else 0
        await self.wait_for(lambda e: e["type"] == "heartbeat" and e["seq"] > seen + heartbeats - 1)

    def of_job(self, job_id: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["job_id"] == job_id]

    async def close(self) -> None:
        for task in (self._reader, self._replies):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.dealer.close(linger=0)
        self.sub.close(linger=0)


class Running:
    """A sidecar running in this event loop, with real TCP ZeroMQ sockets."""

    def __init__(self, sidecar: Sidecar, task: asyncio.Task[None], stop: asyncio.Event) -> None:
        self.sidecar = sidecar
        self.task = task
        self.stop = stop
        self.router = sidecar.router.endpoint
        self.pub = sidecar.publisher.endpoint

    async def close(self) -> None:
        """Graceful stop (idempotent); waits for the sidecar's task to end."""
        self.stop.set()
        async with asyncio.timeout(10):
            await self.task


def make_config(
    instances: dict[str, str | InstanceConfig],
    state: Path,
    zmq_options: dict[str, Any] | None = None,
    previews: PreviewConfig | None = None,
    outputs: OutputsConfig | None = None,
    **submit: Any,
) -> BridgeConfig:
    return BridgeConfig(
        instances={  # a URL, or a whole instance table (credentials, TLS)
            name: InstanceConfig(url=url) if isinstance(url, str) else url for name, url in instances.items()
        },
        zmq=ZmqConfig(router="tcp://127.0.0.1:*", pub="tcp://127.0.0.1:*", heartbeat_s=0.05, **(zmq_options or {})),
        backoff=BackoffConfig(initial_s=0.05, max_s=0.5, multiplier=2.0),
        submit=SubmitConfig(**submit),
        state=StateConfig(path=str(state)),
        previews=previews or PreviewConfig(store="inline"),  # most e2e tests check inline image frames
        # No output store unless a test asks for one (tests/shell/test_outputs_e2e.py, test_golden_live.py):
        # the other tests keep the timing they were written with (the simulators share this event loop)
        outputs=outputs or OutputsConfig(store="none", dir=str(state.parent / f"{state.stem}-outputs")),
    )


@pytest.fixture
async def zctx() -> AsyncIterator[zmq.asyncio.Context]:
    ctx = zmq.asyncio.Context()
    yield ctx
    ctx.destroy(linger=0)


@pytest.fixture
async def sidecars(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    """Factory: ``await sidecars({"a": url}, **submit_options)`` -> :class:`Running`."""
    running: list[Running] = []

    async def start(
        instances: dict[str, str | InstanceConfig],
        zmq_options: dict[str, Any] | None = None,
        state: Path | None = None,
        previews: PreviewConfig | None = None,
        outputs: OutputsConfig | None = None,
        **submit: Any,
    ) -> Running:
        state = state or tmp_path / f"state-{len(running)}.sqlite3"
        sidecar = Sidecar(make_config(instances, state, zmq_options, previews, outputs, **submit))
        stop = asyncio.Event()
        task = asyncio.create_task(sidecar.run(stop.wait))
        handle = Running(sidecar, task, stop)
        running.append(handle)
        return handle

    yield start
    for handle in running:
        await handle.close()


@pytest.fixture
async def client(zctx: zmq.asyncio.Context) -> AsyncIterator[Callable[..., Any]]:
    """Factory: ``await client(running)`` -> a connected :class:`Client` that has seen an event."""
    clients: list[Client] = []

    async def connect(running: Running) -> Client:
        c = Client(zctx, running.router, running.pub)
        clients.append(c)
        await c.wait_for(lambda e: True)  # the slow joiner: subscribed once anything arrives
        return c

    yield connect
    for c in clients:
        await c.close()


async def connected(c: Client, *names: str) -> None:
    """Wait until every named instance reports ``connected`` (via health, no sleeping)."""
    async with asyncio.timeout(WAIT_S):
        while True:
            health = await c.request("health")
            states = {i["name"]: i["state"] for i in health["result"]["instances"]}
            if all(states.get(n) == "connected" for n in names):
                return
            asked_at = health["result"]["seq"]
            await c.wait_for(lambda e, seq=asked_at: e["type"] in ("instance.status", "heartbeat") and e["seq"] > seq)


CLI_ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


class LogLines(list[str]):
    """A process's stderr lines as they arrive; :meth:`wait_for` waits for one matching a regex."""

    def __init__(self) -> None:
        super().__init__()
        self.changed = asyncio.Event()

    def add(self, line: str) -> None:
        self.append(line)
        self.changed.set()

    async def wait_for(self, pattern: str, timeout_s: float = WAIT_S) -> re.Match[str]:
        line = await first_match(self, self.changed, lambda text: re.search(pattern, text) is not None, timeout_s)
        match = re.search(pattern, line)
        assert match is not None
        return match


async def _follow(proc: asyncio.subprocess.Process, lines: LogLines) -> None:
    while line := await proc.stderr.readline():  # type: ignore[union-attr]
        lines.add(line.decode())


async def spawn_cli(
    *args: str, until: str, cwd: Path | None = None, seen: LogLines | None = None
) -> tuple[asyncio.subprocess.Process, re.Match[str]]:
    """Run ``python -m sidecar ARGS`` as a real process until its log prints ``until`` (a regex).

    Returns the process and the match. Its stderr keeps being read in the background (into
    ``seen`` when given), so the child never blocks on a full pipe.
    """
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sidecar", *args, cwd=cwd, env=CLI_ENV, stderr=asyncio.subprocess.PIPE
    )
    lines = seen if seen is not None else LogLines()
    follower = asyncio.create_task(_follow(proc, lines))
    _drains.add(follower)
    follower.add_done_callback(_drains.discard)
    try:
        return proc, await lines.wait_for(until)
    except TimeoutError:
        raise AssertionError(f"process did not print {until!r}:\n{''.join(lines)}") from None


_drains: set[asyncio.Task[None]] = set()
SIDECAR_LISTENING = r"ROUTER on (\S+), PUB on (\S+),"


async def stop(proc: asyncio.subprocess.Process, sig: int | None = signal.SIGKILL) -> int:
    """Signal ``proc`` (if still running; None: no signal) and wait for it; returns its exit code."""
    if proc.returncode is None and sig is not None:
        proc.send_signal(sig)
    async with asyncio.timeout(WAIT_S):
        return await proc.wait()


async def spawn_sidecar(
    zctx: zmq.asyncio.Context, state: Path, *instances: str, seen: LogLines | None = None
) -> tuple[asyncio.subprocess.Process, Client]:
    """``comfy-bridge run`` as a real process on free ports, working in ``state``'s folder.

    ``instances`` are ``NAME=URL`` flags (none: the embedded simulator). Returns the process
    and a client that has seen its first event.
    """
    args = ["run", "--router", "tcp://127.0.0.1:*", "--pub", "tcp://127.0.0.1:*", "--state", str(state)]
    for flag in instances:
        args += ["--instance", flag]
    proc, match = await spawn_cli(*args, until=SIDECAR_LISTENING, cwd=state.parent, seen=seen)
    c = Client(zctx, match.group(1), match.group(2))
    await c.wait_for(lambda e: True)
    return proc, c


async def paused_instance(
    sims: Callable[..., Any], sidecars: Callable[..., Any], client: Callable[..., Any], stalled_s: float
) -> tuple[Any, Running, Client]:
    """A sidecar on a 0.0.2 simulator whose worker is paused (the queue takes work, starts nothing),
    with watchdogs quick enough for a test."""
    sim = await sims("0.0.2")
    running = await sidecars({"a": sim.url})
    recovery = running.sidecar.config.recovery
    recovery.silent_s, recovery.stalled_s, recovery.check_s = 0.2, stalled_s, 0.05
    c = await client(running)
    await connected(c, "a")
    sim.pause_worker()
    return sim, running, c


async def stubborn_job(sims: Any, sidecars: Any, client: Any) -> Client:
    """A ComfyUI that ignores interrupts, ``cancel.confirm_timeout_s`` 0.3, and job ``stubborn``
    (20 steps of 50 ms) submitted: for the unconfirmed cancel and pause tests."""
    sim = await sims("0.12.1", step_ms=None)
    sim.ignore_interrupts = True
    running = await sidecars({"a": sim.url})
    running.sidecar.config.cancel.confirm_timeout_s = 0.3
    c: Client = await client(running)
    await connected(c, "a")
    await c.request("submit", job_id="stubborn", workflow=probe_workflow(steps=20, step_ms=50))
    return c
