"""``comfy-bridge proxy`` stops cleanly on SIGTERM or SIGINT, also while events stream through it.

A signal that lands while the forwarding thread is busy between two polls (not asleep in one) does
not interrupt anything: if the Python handler only raises once ``zmq_proxy`` returns, it never runs,
and the proxy forwards on until it is killed (seen once in CI). Under a stream of events the
forwarding thread is busy most of the time, which makes that window wide.
"""

from __future__ import annotations

import asyncio
import signal
import threading
from pathlib import Path

import zmq
import zmq.asyncio

from .conftest import spawn_cli, stop


def pump(ctx: zmq.Context, endpoint: list[str], bound: threading.Event, done: threading.Event) -> None:
    """A stand-in sidecar PUB that sends events as fast as it can until ``done``."""
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    pub.bind("tcp://127.0.0.1:*")
    endpoint.append(pub.getsockopt_string(zmq.LAST_ENDPOINT))
    bound.set()
    body = b"x" * 200
    try:
        while not done.is_set():
            for _ in range(1000):
                pub.send_multipart((b"job.progress", body))
    finally:
        pub.close(0)


async def test_sigterm_while_events_stream_through_the_proxy_stops_it_with_exit_0(
    tmp_path: Path, zctx: zmq.asyncio.Context
) -> None:
    ctx = zmq.Context()
    endpoint: list[str] = []
    bound, done = threading.Event(), threading.Event()
    pumping = threading.Thread(target=pump, args=(ctx, endpoint, bound, done), daemon=True)
    pumping.start()
    try:
        assert await asyncio.to_thread(bound.wait, 10)
        for attempt in range(20):
            args = ("proxy", "--xsub", endpoint[0], "--xpub", "tcp://127.0.0.1:*")
            proc, match = await spawn_cli(*args, until=r"XPUB on (\S+),", cwd=tmp_path)
            sub = zctx.socket(zmq.SUB)
            sub.setsockopt(zmq.LINGER, 0)
            sub.setsockopt(zmq.SUBSCRIBE, b"")
            sub.connect(match.group(1))
            try:
                async with asyncio.timeout(10):
                    for _ in range(2000):  # events flow through the proxy
                        await sub.recv_multipart()
                proc.send_signal(signal.SIGTERM)
                try:
                    code: int | None = await stop(proc, None)
                except TimeoutError:
                    code = None
                assert code == 0, f"attempt {attempt}: exit {code} (None: still running after SIGTERM)"
            finally:
                sub.close(0)
                if proc.returncode is None:  # it hung: do not leave it behind
                    await stop(proc, signal.SIGKILL)
    finally:
        done.set()
        await asyncio.to_thread(pumping.join, 10)
        ctx.term()


async def test_sigint_stops_the_proxy_with_exit_0(tmp_path: Path) -> None:
    args = ("proxy", "--xsub", "tcp://127.0.0.1:1", "--xpub", "tcp://127.0.0.1:*")
    proc, _ = await spawn_cli(*args, until=r"XPUB on (\S+),", cwd=tmp_path)
    assert await stop(proc, signal.SIGINT) == 0
