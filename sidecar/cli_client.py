"""SHELL: the client commands of ``comfy-bridge`` (``submit``, ``job``, ``jobs``, ``health``,
``snapshot``, ``ping``, ``cancel``, ``pause``, ``resume``): one request to a running sidecar, written the way
docs/PROTOCOL.md §2 asks a client to be.

Each request goes out on a fresh ``DEALER`` with ``ZMQ_IMMEDIATE`` (nothing is queued for a sidecar
that is not there) and carries ``deadline_ns`` = the moment the client stops waiting, so a request
the client gave up on is answered ``expired`` and has no effect if it still reaches a sidecar.
No sidecar within ``--timeout``: a plain message and :data:`EXIT_NO_SIDECAR`.
``submit --wait`` follows the job on the PUB socket to its end (a rich bar on a terminal, one line
per change elsewhere) and exits by the job's final state. With ``--curve-server-key`` and
``--curve-client-key`` (or their environment variables) both sockets use CURVE (sidecar/curve.py).
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

from .curve import ClientCurve, client_curve, handshake_failure, watch_handshake
from .errors import ConfigError, SidecarError

__all__ = [
    "EXIT_CODES",
    "EXIT_INTERNAL",
    "EXIT_INTERRUPTED",
    "EXIT_JOB_CANCELLED",
    "EXIT_JOB_FAILED",
    "EXIT_NO_SIDECAR",
    "EXIT_OK",
    "EXIT_REFUSED",
    "EXIT_USAGE",
    "NoSidecar",
    "client_command",
]

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_NO_SIDECAR = 3
EXIT_JOB_FAILED = 4
EXIT_JOB_CANCELLED = 5
EXIT_INTERNAL = 70
EXIT_INTERRUPTED = 130
# The README's exit-code table lists exactly these (tests/test_docs_readme.py).
EXIT_CODES: dict[int, str] = {
    EXIT_OK: "ok (`submit --wait`: the job completed)",
    EXIT_REFUSED: "the sidecar answered `ok: false` (the reply is printed)",
    EXIT_USAGE: "a configuration or usage error (bad flag, file or value; the state file held by another sidecar;"
    " a port in use)",
    EXIT_NO_SIDECAR: "no sidecar answered within `--timeout`",
    EXIT_JOB_FAILED: "`submit --wait`: the job failed",
    EXIT_JOB_CANCELLED: "`submit --wait`: the job was cancelled",
    EXIT_INTERNAL: "an unexpected error (a bug: the message says so; `--log-level DEBUG` shows the traceback)",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C, or a second SIGINT/SIGTERM while `run` shuts down)",
}

DEFAULT_ROUTER = "tcp://127.0.0.1:5555"
DEFAULT_PUB = "tcp://127.0.0.1:5556"
FINAL = {"job.completed": EXIT_OK, "job.failed": EXIT_JOB_FAILED, "job.cancelled": EXIT_JOB_CANCELLED}
FINAL_STATES = {"completed": EXIT_OK, "failed": EXIT_JOB_FAILED, "cancelled": EXIT_JOB_CANCELLED}


class NoSidecar(SidecarError):
    """No sidecar answered in time; the message says where and how long."""


def _socket(
    ctx: zmq.Context[Any], kind: int, endpoint: str, curve: ClientCurve | None = None, monitored: bool = False
) -> tuple[zmq.Socket[Any], zmq.Socket[Any] | None]:
    """The socket, connected; and with ``monitored``, a monitor of its failed handshakes
    (curve.handshake_failure, which closes it), else None."""
    sock: zmq.Socket[Any] = ctx.socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    if curve is not None:
        curve.apply(sock)
    if kind == zmq.DEALER:
        sock.setsockopt(zmq.IMMEDIATE, 1)  # queue nothing for a sidecar that is not connected (PROTOCOL.md §2)
    monitor = watch_handshake(sock) if monitored else None
    try:
        sock.connect(endpoint)
    except zmq.ZMQError as exc:
        if monitor is not None:
            monitor.close(linger=0)
        sock.close()
        raise ConfigError(f"endpoint {endpoint!r}: {exc} (expected e.g. {DEFAULT_ROUTER})") from None
    return sock, monitor


def request(
    ctx: zmq.Context[Any], router: str, body: dict[str, Any], timeout_s: float, curve: ClientCurve | None = None
) -> dict[str, Any]:
    """One request on a fresh DEALER; raises :class:`NoSidecar` when nothing answers in ``timeout_s``.

    With ZMQ_IMMEDIATE the socket takes the request only once a sidecar is connected: until then
    nothing is queued, so giving up leaves nothing behind to be delivered later.
    """
    sock, monitor = _socket(ctx, zmq.DEALER, router, curve, monitored=True)
    assert monitor is not None
    try:
        deadline_ns = time.time_ns() + int(timeout_s * 1e9)
        if not sock.poll(int(timeout_s * 1000), zmq.POLLOUT):
            why = handshake_failure(monitor, curve is not None)
            if why is not None:
                raise NoSidecar(f"a sidecar at {router} did not let this client in: {why}")
            raise NoSidecar(f"no sidecar at {router} (none accepted a connection within {timeout_s:g} s)")
        message = msgspec.msgpack.encode({"id": f"cli-{uuid.uuid4().hex[:8]}", **body, "deadline_ns": deadline_ns})
        try:
            sock.send(message, zmq.NOBLOCK)
        except zmq.Again:
            raise NoSidecar(f"no sidecar at {router} (the connection went away)") from None
        if not sock.poll(max(1, (deadline_ns - time.time_ns()) // 1_000_000)):
            raise NoSidecar(f"no reply from the sidecar at {router} within {timeout_s:g} s")
        reply: dict[str, Any] = msgspec.msgpack.decode(sock.recv())
        return reply
    finally:
        sock.disable_monitor()
        monitor.close(linger=0)
        sock.close()


def _files(specs: list[str]) -> dict[str, bytes]:
    """``--file [NAME=]PATH`` values -> ``{name: bytes}`` (the name defaults to the file's own)."""
    files = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep:
            name, path = Path(spec).name, spec
        try:
            files[name] = Path(path).read_bytes()
        except OSError as exc:
            raise ConfigError(f"--file {spec}: cannot read: {exc.strerror or exc}") from None
    return files


def _body(args: argparse.Namespace) -> dict[str, Any]:
    if args.command == "submit":
        try:
            workflow = json.loads(Path(args.file).read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"{args.file}: cannot read: {exc.strerror or exc}") from None
        except ValueError as exc:
            raise ConfigError(f"{args.file}: not valid JSON: {exc}") from None
        body: dict[str, Any] = {"op": "submit", "workflow": workflow}
        if args.job_id:
            body["job_id"] = args.job_id
        elif args.wait:
            body["job_id"] = uuid.uuid4().hex  # --wait follows the job by its id
        if args.instance:
            body["instance"] = args.instance
        if args.client_data is not None:
            try:
                body["client_data"] = json.loads(args.client_data)
            except ValueError as exc:
                raise ConfigError(f"--client-data: not valid JSON: {exc}") from None
        if args.files:
            body["files"] = _files(args.files)
        return body
    if args.command in ("job", "cancel", "pause"):
        return {"op": args.command, "job_id": args.job_id}
    if args.command == "resume":
        return {"op": "resume", "job_id": args.job_id, "instance": args.instance}
    if args.command == "jobs":
        body = {"op": "jobs", "active": args.active}
        if args.instance:
            body["instance"] = args.instance
        return body
    return {"op": args.command}


def client_command(args: argparse.Namespace) -> int:
    """Run one client command; returns its exit code (raises NoSidecar / ConfigError)."""
    if args.timeout <= 0:
        raise ConfigError(f"--timeout {args.timeout:g}: must be more than 0 seconds")
    body = _body(args)
    args.curve = client_curve(args.curve_server_key, args.curve_client_key)
    from .fleet import ask_all, endpoints, fleet_command, pick_instance

    waits = args.command == "submit" and args.wait
    routers, pubs = endpoints(args, need_pubs=waits)
    ctx: zmq.Context[Any] = zmq.Context()
    try:
        if len(routers) > 1:
            if not waits:
                return fleet_command(ctx, args, routers, body)
            router, body["instance"] = pick_instance(
                ask_all(ctx, routers, {"op": "health"}, args.timeout, args.curve), args.instance
            )
            return _submit_and_wait(ctx, args, body, router, pubs[routers.index(router)] if len(pubs) > 1 else pubs[0])
        if waits:
            return _submit_and_wait(ctx, args, body, routers[0], pubs[0])
        reply = request(ctx, routers[0], body, args.timeout, args.curve)
        print(json.dumps(reply, indent=2, default=str))
        return EXIT_OK if reply.get("ok") else EXIT_REFUSED
    finally:
        ctx.destroy(linger=0)


def _submit_and_wait(
    ctx: zmq.Context[Any], args: argparse.Namespace, body: dict[str, Any], router: str, pub: str
) -> int:
    """Subscribe, submit, follow the job to its end; the exit code says how it ended."""
    job_id = body["job_id"]
    run = request(ctx, router, {"op": "ping"}, args.timeout, args.curve)["result"]["run"]  # no sidecar: say so now
    sub, _ = _socket(ctx, zmq.SUB, pub, args.curve)
    for topic in (b"job.", b"progress.", b"instance."):  # instance.: heartbeats say the sidecar is there
        sub.setsockopt(zmq.SUBSCRIBE, topic)
    if not sub.poll(int(args.timeout * 1000)):  # the slow joiner: subscribed once anything arrives
        raise NoSidecar(f"no event from a sidecar at {pub} within {args.timeout:g} s (is --pub right?)")
    sub.recv_multipart()
    reply = request(ctx, router, body, args.timeout, args.curve)
    if not reply.get("ok"):
        print(json.dumps(reply, indent=2, default=str))
        return EXIT_REFUSED
    view = reply["result"]["job"]
    show = _Display(job_id, sys.stdout.isatty())
    try:
        show.update(view["state"], view["percent"], "")
        return _follow(ctx, args, router, sub, show, view, run)
    except KeyboardInterrupt:
        show.stop()
        print(f"comfy-bridge: stopped waiting; job {job_id} goes on (`comfy-bridge cancel {job_id}` stops it)")
        raise
    finally:
        show.stop()
        sub.close()


def _follow(
    ctx: zmq.Context[Any],
    args: argparse.Namespace,
    router: str,
    sub: zmq.Socket[Any],
    show: _Display,
    view: dict[str, Any],
    run: str,
) -> int:
    """Show the job's events until its final one; a new run (the sidecar restarted) re-reads its view."""
    job_id = view["job_id"]
    seen = view.get("job_seq", 0)  # job events up to here are in the view: skip them (PROTOCOL.md §7.2)
    if view["state"] in FINAL_STATES:
        return _ended(show, view["state"], view)
    node = ""
    while True:
        if not sub.poll(int(args.timeout * 1000)):
            found = request(ctx, router, {"op": "job", "job_id": job_id}, args.timeout, args.curve)  # silent: ask
            if found.get("ok") and found["result"]["state"] in FINAL_STATES:
                return _ended(show, found["result"]["state"], found["result"])
            continue
        event = msgspec.msgpack.decode(sub.recv_multipart()[1])
        if event["run"] != run:  # the sidecar restarted: job_seq starts again; take the job's view
            found = request(ctx, router, {"op": "job", "job_id": job_id}, args.timeout, args.curve)
            if found.get("ok"):
                run, seen = event["run"], found["result"].get("job_seq", 0)
                if found["result"]["state"] in FINAL_STATES:
                    return _ended(show, found["result"]["state"], found["result"])
                show.update(found["result"]["state"], found["result"]["percent"], node)
            continue
        if event["job_id"] != job_id:  # heartbeats and other jobs
            continue
        kind, data = event["type"], event["data"]
        if event.get("job_seq") is not None:
            if event["job_seq"] <= seen:
                continue
            seen = event["job_seq"]
        if kind in FINAL:
            found = request(ctx, router, {"op": "job", "job_id": job_id}, args.timeout, args.curve)
            result = found["result"] if found.get("ok") else {"state": FINAL_STATES_BY_EVENT[kind], **data}
            return _ended(show, result["state"], result)
        if kind == "node.executing":
            node = data.get("title") or data.get("class_type") or data.get("node") or ""
            show.update(None, None, node)
        elif kind == "job.progress":
            show.update(None, data["percent"], node)
        elif kind in ("job.accepted", "job.queued", "job.started", "job.paused"):
            show.update(kind.partition(".")[2], None, node)
        elif kind == "job.resumed":
            show.update("accepted", None, node)


FINAL_STATES_BY_EVENT = {kind: kind.partition(".")[2] for kind in FINAL}


def _ended(show: _Display, state: str, view: dict[str, Any]) -> int:
    show.update(state, view.get("percent"), "")
    show.stop()
    print(json.dumps(view, indent=2, default=str))
    return FINAL_STATES[state]


class _Display:
    """The job's progress: a rich bar on a terminal, else one line per change."""

    def __init__(self, job_id: str, tty: bool) -> None:
        self.job_id, self.state, self.percent, self.node = job_id, "accepted", 0.0, ""
        self.last = ""
        self.progress: Any = None
        if tty:
            from rich.markup import escape
            from rich.progress import BarColumn, Progress, TextColumn

            self.progress = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[info]}"))
            self.task = self.progress.add_task(escape(job_id), total=100, info="")
            self.progress.start()

    def update(self, state: str | None, percent: float | None, node: str) -> None:
        self.state = state or self.state
        self.percent = self.percent if percent is None else percent
        self.node = node
        text = f"{self.state:<9} {self.percent:5.1f}%" + (f"  node {node}" if node and self.state == "started" else "")
        if self.progress is not None:
            from rich.markup import escape

            self.progress.update(self.task, completed=self.percent, info=escape(text))
        elif text != self.last:
            print(f"{self.job_id}  {text}", flush=True)
        self.last = text

    def stop(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
