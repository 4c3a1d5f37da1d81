"""SHELL: follow several sidecars at once, each by the snapshot procedure (docs/PROTOCOL.md §7.3).

One ``SUB`` connected to every sidecar's ``PUB`` (or to one ``comfy-bridge proxy``), and a
request socket per sidecar ``ROUTER`` (a fresh ``DEALER`` per request, as ``watch`` always did).
Each sidecar is a :class:`Member` with its own Clone state, keyed by the ``sidecar`` name its
snapshot and its events carry:

- its name is learnt by asking its ``ROUTER`` (``snapshot`` carries ``sidecar``); a ``ROUTER``
  that does not answer is asked again in the background;
- once its first event arrives (its subscription is in place, the slow joiner is past) it is
  snapshotted; while that request is out its events are held, then those the snapshot does not
  reflect are applied (§7.2 steps 3-5);
- when the stream refuses one of its events (a gap, a new ``run``) or when it comes back after a
  silence of ``silence_s``, that sidecar alone is snapshotted again; the others' events are applied
  meanwhile, since every snapshot runs in its own task.

What "applying" means is the caller's :class:`Stream`: ``watch`` draws lines, a test keeps
:class:`~sidecar.mirror.FleetMirror` s and latencies.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import msgspec
import zmq
import zmq.asyncio

from .cli_client import NoSidecar
from .curve import ClientCurve
from .errors import ConfigError
from .mirror import sidecar_of

__all__ = ["FleetSubscriber", "Member", "Stream", "ask"]

logger = logging.getLogger(__name__)

HELD_MAX = 100_000  # events of one sidecar held while its snapshot is out (a gap past this: snapshot again)


class Stream(Protocol):
    """What a :class:`FleetSubscriber` feeds: one sidecar's snapshot, and each event in order."""

    async def load(self, member: Member, snapshot: dict[str, Any]) -> None:
        """Start ``member``'s state again from ``snapshot`` (may ask ``member.router`` more)."""

    def apply(self, member: Member, event: dict[str, Any]) -> bool:
        """Apply one event of ``member``; False when events were lost (snapshot that sidecar)."""

    def note(self, member: Member | None, text: str) -> None:
        """Something to tell the user about a sidecar (silent, heard again, not answering)."""


@dataclass
class Member:
    """One sidecar of the fleet and where its stream stands."""

    name: str
    router: str
    state: str = "new"  # new (no snapshot yet), snapshotting, live
    held: list[dict[str, Any]] = field(default_factory=list)  # its events while a snapshot is out
    heard: float = 0.0  # time.monotonic() of its last event
    silent: bool = False
    run: str | None = None
    snapshots: int = 0


async def ask(
    ctx: zmq.asyncio.Context,
    router: str,
    op: str,
    timeout_s: float,
    curve: ClientCurve | None = None,
    **fields: Any,
) -> dict[str, Any]:
    """One request on a fresh DEALER (ZMQ_IMMEDIATE, deadline_ns); :class:`NoSidecar` when none answers."""
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    if curve is not None:
        curve.apply(dealer)
    dealer.setsockopt(zmq.IMMEDIATE, 1)
    try:
        dealer.connect(router)
        if not await dealer.poll(int(timeout_s * 1000), zmq.POLLOUT):  # type: ignore[call-arg]
            raise NoSidecar(f"no sidecar at {router} (none accepted a connection within {timeout_s:g} s)")
        deadline_ns = time.time_ns() + int(timeout_s * 1e9)
        await dealer.send(msgspec.msgpack.encode({"op": op, "id": op, "deadline_ns": deadline_ns, **fields}))
        if not await dealer.poll(int(timeout_s * 1000)):
            raise NoSidecar(f"no reply from the sidecar at {router} within {timeout_s:g} s")
        reply: dict[str, Any] = msgspec.msgpack.decode(await dealer.recv())
        return reply
    finally:
        dealer.close(0)


def check_endpoint(ctx: zmq.asyncio.Context, endpoint: str) -> None:
    """A :class:`ConfigError` naming ``endpoint`` when ZeroMQ cannot parse it."""
    probe = ctx.socket(zmq.DEALER)
    try:
        probe.connect(endpoint)
    except zmq.ZMQError as exc:
        raise ConfigError(f"endpoint {endpoint!r}: {exc} (expected e.g. tcp://127.0.0.1:5556)") from None
    finally:
        probe.close(0)


class FleetSubscriber:
    """Follow the sidecars at ``routers`` through the ``pubs`` (theirs, or one proxy's)."""

    def __init__(
        self,
        ctx: zmq.asyncio.Context,
        routers: list[str],
        pubs: list[str],
        stream: Stream,
        timeout_s: float = 5.0,
        silence_s: float | None = None,
        topics: tuple[bytes, ...] = (b"",),
        curve: ClientCurve | None = None,
    ) -> None:
        self.ctx, self.routers, self.pubs, self.stream = ctx, list(dict.fromkeys(routers)), pubs, stream
        self.curve = curve  # the client's keys and the server key, the same for every sidecar
        self.timeout_s = timeout_s
        self.silence_s = silence_s if silence_s is not None else timeout_s
        self.topics = topics
        self.members: dict[str, Member] = {}
        self.snapshots: Counter[str] = Counter()
        self._tasks: set[asyncio.Task[None]] = set()
        self._sub: zmq.asyncio.Socket | None = None

    # Public

    async def start(self) -> None:
        """Subscribe, then learn every sidecar's name; :class:`NoSidecar` when none answers, or when
        no event comes from any within ``timeout_s`` (then the sidecars are snapshotted as they speak)."""
        for endpoint in (*self.routers, *self.pubs):
            check_endpoint(self.ctx, endpoint)
        sub = self._sub = self.ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        if self.curve is not None:
            self.curve.apply(sub)
        for topic in self.topics:
            sub.setsockopt(zmq.SUBSCRIBE, topic)
        for pub in dict.fromkeys(self.pubs):
            sub.connect(pub)
        found = await asyncio.gather(*(self._name(router) for router in self.routers), return_exceptions=True)
        failures = [exc for exc in found if isinstance(exc, BaseException)]
        for exc in failures:
            if not isinstance(exc, NoSidecar):  # two sidecars with one name, a bug: not worth waiting for
                raise exc
        if len(failures) == len(found):
            raise failures[0]
        for router, result in zip(self.routers, found, strict=True):
            if isinstance(result, BaseException):
                self.stream.note(None, f"sidecar at {router}: {result}; will ask again")
                self._spawn(self._name_later(router))
        if not await sub.poll(int(self.timeout_s * 1000)):
            raise NoSidecar(f"no event from a sidecar at {', '.join(self.pubs)} within {self.timeout_s:g} s")

    async def run(self, done: Callable[[], bool] = lambda: False, poll_s: float = 0.1) -> None:
        """Read events until ``done()`` (checked after each event and snapshot), or forever."""
        sub = self._sub
        assert sub is not None, "start() first"
        poll_ms = max(1, int(min(poll_s, self.silence_s / 4) * 1000))
        while not done():
            if await sub.poll(poll_ms):
                frames = await sub.recv_multipart()
                self._receive(msgspec.msgpack.decode(frames[1]))
            self._check_silence()

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._sub is not None:
            self._sub.close(0)

    @property
    def live(self) -> bool:
        """Every known sidecar has been snapshotted and follows its stream."""
        return bool(self.members) and all(m.state == "live" for m in self.members.values())

    # Private

    async def _name(self, router: str) -> str:
        snap = (await ask(self.ctx, router, "snapshot", self.timeout_s, self.curve))["result"]
        name = sidecar_of(snap)
        known = self.members.get(name)
        if known is not None and known.router != router:
            raise ConfigError(f"sidecars at {known.router} and {router} have the same name {name!r} (sidecar.name)")
        if known is None:
            self.members[name] = Member(name, router, heard=time.monotonic())
        return name

    async def _name_later(self, router: str) -> None:
        while True:
            await asyncio.sleep(self.timeout_s)
            try:
                name = await self._name(router)
            except NoSidecar:
                continue
            except ConfigError as exc:
                self.stream.note(None, f"sidecar at {router}: {exc}; not followed")
                return
            self.stream.note(self.members[name], f"sidecar {name} at {router}: answering")
            return

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _receive(self, event: dict[str, Any]) -> None:
        member = self.members.get(sidecar_of(event))
        if member is None:
            return  # a sidecar whose ROUTER we do not know (yet): nothing to snapshot it with
        member.heard = time.monotonic()
        if member.silent:
            member.silent = False
            self.stream.note(member, "heard again")
            if member.state == "live":
                self._resnapshot(member, event)  # 7.2 step 7: after a silence, snapshot again
                return
        if member.state != "live":
            if len(member.held) >= HELD_MAX:  # its ROUTER does not answer: keep the newest
                del member.held[: HELD_MAX // 2]
            member.held.append(event)
            if member.state == "new":
                self._resnapshot(member, None)
        elif not self.stream.apply(member, event):
            self._resnapshot(member, event)

    def _resnapshot(self, member: Member, event: dict[str, Any] | None) -> None:
        member.state = "snapshotting"
        if event is not None:
            member.held.append(event)
        self._spawn(self._snapshot(member))

    async def _snapshot(self, member: Member) -> None:
        try:
            reply = await ask(self.ctx, member.router, "snapshot", self.timeout_s, self.curve)
            if not reply.get("ok"):
                raise NoSidecar(f"snapshot refused: {reply.get('error')}")
            snap = reply["result"]
            await self.stream.load(member, snap)
        except NoSidecar as exc:
            member.state = "new"  # asked again at its next event
            self.stream.note(member, f"{exc}; will ask again")
            return
        member.run, member.snapshots = snap["run"], member.snapshots + 1
        self.snapshots[member.name] += 1
        held, member.held = member.held, []
        member.state = "live"
        for event in held:  # 7.2 step 4: what the snapshot reflects, or another run's, is dropped
            if member.state == "live" and event["run"] == snap["run"] and event["seq"] > snap["seq"]:
                if not self.stream.apply(member, event):
                    self._resnapshot(member, None)
            elif member.state != "live":
                member.held.append(event)

    def _check_silence(self) -> None:
        now = time.monotonic()
        for member in self.members.values():
            if not member.silent and now - member.heard > self.silence_s:
                member.silent = True
                self.stream.note(member, f"no event for {self.silence_s:g} s (not running?); waiting")
