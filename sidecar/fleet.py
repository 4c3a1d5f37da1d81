"""SHELL: the client commands against several sidecars (a fleet, docs/deployment.md).

``--router`` and ``--pub`` are repeatable; without ``--router`` the ``[fleet.NAME]`` tables of
``--config FILE`` (else ``./bridge.toml`` when present) name each sidecar's endpoints; with neither,
the one default sidecar. A ``DEALER`` connected to several ``ROUTER``\\ s would send each request
to the next one in turn, so every sidecar gets its own ``DEALER`` (docs/PROTOCOL.md §7.3), and the
requests to all of them go out together (:func:`ask_all`): one silent sidecar costs ``--timeout``
once, not once per sidecar.

- ``submit`` without ``--instance``: the least loaded connected instance of the fleet (ComfyUI's
  queue plus the sidecar's unfinished jobs on it, from each sidecar's ``health``), then the submit
  goes to that sidecar naming it; with ``--instance``: the sidecar that has that instance.
- ``job`` and ``cancel``: the sidecar that holds the job (the one not answering ``job_not_found``).
- ``jobs``: every sidecar's jobs together, each marked with its ``router``.
- ``health``, ``snapshot``, ``ping``: every sidecar's reply, by router.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import msgspec
import zmq

from .cli_client import (
    DEFAULT_PUB,
    DEFAULT_ROUTER,
    EXIT_NO_SIDECAR,
    EXIT_OK,
    EXIT_REFUSED,
    NoSidecar,
    _socket,
)
from .config import load
from .curve import ClientCurve
from .errors import ConfigError

__all__ = ["ask_all", "endpoints", "fleet_command", "pick_instance"]


def endpoints(args: argparse.Namespace, need_pubs: bool = False) -> tuple[list[str], list[str]]:
    """The routers and pubs the command talks to: the flags, else ``[fleet]``, else the defaults.

    ``pubs`` is one per router, or one for all (a proxy's XPUB); :class:`ConfigError` otherwise.
    """
    routers: list[str] = list(getattr(args, "router", None) or [])
    pubs: list[str] = list(getattr(args, "pub", None) or [])
    if not routers:
        fleet = _fleet_config(getattr(args, "config", None))
        if fleet:
            routers = [member.router for member in fleet.values()]
            pubs = pubs or [member.pub for member in fleet.values()]
        else:
            routers = [DEFAULT_ROUTER]
    if not pubs:
        if len(routers) > 1 and need_pubs:
            raise ConfigError("several --router: give a --pub for each, in the same order, or one (a proxy's)")
        pubs = [DEFAULT_PUB]
    if len(pubs) not in (1, len(routers)):
        raise ConfigError(f"{len(routers)} --router and {len(pubs)} --pub: give one --pub per --router, or one")
    return routers, pubs


def _fleet_config(path: str | None) -> dict[str, Any]:
    if path is None:
        if not Path("bridge.toml").is_file():
            return {}
        path = "bridge.toml"
    return dict(load(path).fleet)


def ask_all(
    ctx: zmq.Context[Any],
    routers: list[str],
    body: dict[str, Any],
    timeout_s: float,
    curve: ClientCurve | None = None,
) -> dict[str, dict[str, Any] | NoSidecar]:
    """Send ``body`` to every router at once (a DEALER each, ZMQ_IMMEDIATE, ``deadline_ns``); each
    router's reply, or a :class:`NoSidecar` saying why it has none, within ``timeout_s`` in all.
    ``curve``: the client's keys and the server key, the same for every sidecar of the fleet."""
    deadline = time.monotonic() + timeout_s
    deadline_ns = time.time_ns() + int(timeout_s * 1e9)
    sockets = {router: _socket(ctx, zmq.DEALER, router, curve)[0] for router in dict.fromkeys(routers)}
    unsent: dict[str, zmq.Socket[Any]] = dict(sockets)
    waiting: dict[str, zmq.Socket[Any]] = {}
    results: dict[str, dict[str, Any] | NoSidecar] = {}
    try:
        while (unsent or waiting) and (left := deadline - time.monotonic()) > 0:
            poller = zmq.Poller()
            for sock in unsent.values():
                poller.register(sock, zmq.POLLOUT)
            for sock in waiting.values():
                poller.register(sock, zmq.POLLIN)
            ready = dict(poller.poll(max(1, int(left * 1000))))
            for router, sock in list(unsent.items()):
                if ready.get(sock, 0) & zmq.POLLOUT:
                    message = {"id": f"cli-{uuid.uuid4().hex[:8]}", **body, "deadline_ns": deadline_ns}
                    try:
                        sock.send(msgspec.msgpack.encode(message), zmq.NOBLOCK)
                    except zmq.Again:
                        continue  # the connection went away: still unsent
                    waiting[router] = unsent.pop(router)
            for router, sock in list(waiting.items()):
                if ready.get(sock, 0) & zmq.POLLIN:
                    results[router] = msgspec.msgpack.decode(sock.recv())
                    del waiting[router]
        for router in unsent:
            results[router] = NoSidecar(f"no sidecar at {router} (none accepted a connection within {timeout_s:g} s)")
        for router in waiting:
            results[router] = NoSidecar(f"no reply from the sidecar at {router} within {timeout_s:g} s")
    finally:
        for sock in sockets.values():
            sock.close()
    return {router: results[router] for router in sockets}


def pick_instance(healths: dict[str, dict[str, Any] | NoSidecar], instance: str | None) -> tuple[str, str]:
    """(router, instance) for a submit: the named instance's sidecar, else the least loaded
    connected instance of all (load: ComfyUI's queue plus the sidecar's unfinished jobs there;
    ties go to the first listed). :class:`ConfigError` / :class:`NoSidecar` when there is none."""
    best: tuple[int, int, str, str] | None = None
    states: dict[str, str] = {}
    for order, (router, reply) in enumerate(healths.items()):
        if isinstance(reply, NoSidecar) or not reply.get("ok"):
            continue
        for view in reply["result"]["instances"]:
            states[f"{reply['result'].get('sidecar', router)}/{view['name']}"] = view["state"]
            if instance is not None:
                if view["name"] == instance:
                    return router, instance
                continue
            if view["state"] == "connected":
                load = view["queue_remaining"] + view["in_flight"]
                if best is None or (load, order) < best[:2]:
                    best = (load, order, router, view["name"])
    if not states:
        raise NoSidecar(f"no sidecar answered: {'; '.join(str(r) for r in healths.values())}")
    if instance is not None:
        raise ConfigError(f"--instance {instance}: no sidecar of the fleet has it (instances: {', '.join(states)})")
    if best is None:
        raise ConfigError(f"no instance of the fleet is connected: {json.dumps(states)}")
    return best[2], best[3]


def _print(value: Any) -> None:
    print(json.dumps(value, indent=2, default=str))


def _warn(failed: dict[str, NoSidecar]) -> None:
    for exc in failed.values():
        print(f"comfy-bridge: {exc}", file=sys.stderr)


def fleet_command(ctx: zmq.Context[Any], args: argparse.Namespace, routers: list[str], body: dict[str, Any]) -> int:
    """A client command (not ``submit --wait``) against several sidecars; returns its exit code."""
    timeout_s, curve = args.timeout, getattr(args, "curve", None)
    if args.command == "submit":
        healths = ask_all(ctx, routers, {"op": "health"}, timeout_s, curve)
        router, instance = pick_instance(healths, body.get("instance"))
        reply = ask_all(ctx, [router], {**body, "instance": instance}, timeout_s, curve)[router]
        if isinstance(reply, NoSidecar):
            raise reply
        print(f"comfy-bridge: submitted to {router}, instance {instance}", file=sys.stderr)
        _print(reply)
        return EXIT_OK if reply.get("ok") else EXIT_REFUSED
    if args.command in ("job", "cancel", "pause", "resume"):
        return _on_holder(ctx, args, routers, body)
    replies = ask_all(ctx, routers, body, timeout_s, curve)
    failed = {r: v for r, v in replies.items() if isinstance(v, NoSidecar)}
    answered = {r: v for r, v in replies.items() if not isinstance(v, NoSidecar)}
    _warn(failed)
    if not answered:
        raise next(iter(failed.values()))
    if args.command == "jobs":
        jobs = [
            {**job, "router": router}
            for router, reply in answered.items()
            if reply.get("ok")
            for job in reply["result"]["jobs"]
        ]
        jobs.sort(key=lambda job: job.get("created_ns", 0))
        ok = all(reply.get("ok") for reply in answered.values())
        _print({"ok": ok, "result": {"jobs": jobs}, "unreachable": list(failed)})
        return EXIT_OK if ok else EXIT_REFUSED
    _print(
        {
            "ok": not failed and all(r.get("ok") for r in answered.values()),
            "sidecars": answered,
            "unreachable": list(failed),
        }
    )
    if failed:
        return EXIT_NO_SIDECAR
    return EXIT_OK if all(reply.get("ok") for reply in answered.values()) else EXIT_REFUSED


def _on_holder(ctx: zmq.Context[Any], args: argparse.Namespace, routers: list[str], body: dict[str, Any]) -> int:
    """``job`` or ``cancel``: find the sidecar that holds the job, and ask it."""
    curve = getattr(args, "curve", None)
    replies = ask_all(ctx, routers, {"op": "job", "job_id": body["job_id"]}, args.timeout, curve)
    failed = {r: v for r, v in replies.items() if isinstance(v, NoSidecar)}
    holder = next(
        (r for r, v in replies.items() if not isinstance(v, NoSidecar) and v.get("ok")),
        None,
    )
    if holder is None:
        _warn(failed)
        if len(failed) == len(replies):
            raise next(iter(failed.values()))
        answered = [v for v in replies.values() if not isinstance(v, NoSidecar)]
        _print(answered[0])  # job_not_found (or the first error)
        return EXIT_NO_SIDECAR if failed else EXIT_REFUSED
    reply = replies[holder]
    if args.command == "cancel":
        got = ask_all(ctx, [holder], body, args.timeout, curve)[holder]
        if isinstance(got, NoSidecar):
            raise got
        reply = got
    assert not isinstance(reply, NoSidecar)
    _print(reply)
    return EXIT_OK if reply.get("ok") else EXIT_REFUSED
